//! Admission of TCP connections to the router's gRPC port: how many may be
//! open at once, and how long a new one may take to start speaking HTTP/2.
//!
//! The router's other limits ([`crate::limits`]) act on requests, which only
//! exist once a connection has sent the HTTP/2 preface and a HEADERS frame.
//! A hostile client can hold resources before that: open connections and send
//! nothing (slow-loris), or a few bytes and stall. Each such connection costs a
//! file descriptor, a task and hyper's buffers, and tonic puts no bound on
//! their number. Two guards close that gap:
//!
//! - **At most `max_connections` open at once** ([`Admission`]): the accept
//!   loop takes a slot before it accepts, and the slot is released when the
//!   connection is dropped. With every slot taken the router stops accepting;
//!   new connections wait in the kernel's listen backlog (bounded by the
//!   kernel) instead of costing the router memory, and are accepted as slots
//!   free up.
//! - **The HTTP/2 connection preface within `handshake_timeout`**
//!   ([`Admitted`]): a connection whose first [`PREFACE_BYTES`] bytes have not
//!   arrived by then gets a read error, and hyper closes it, freeing its slot.
//!   After the preface, HTTP/2 keepalive pings (configured on the server) find
//!   peers that stopped answering, and the request timeout bounds a call whose
//!   body trickles in.
//!
//! Why a wrapper and not a tower layer: tower layers see requests, and these
//! connections never produce one.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_util::sync::PollSemaphore;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4,
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`): what every client sends first.
pub const PREFACE_BYTES: usize = 24;

/// The router's listener with its connection limit: yields [`Admitted`]
/// connections, at most `max_connections` alive at once.
#[derive(Debug)]
pub struct Admission {
    incoming: TcpIncoming,
    slots: PollSemaphore,
    /// The slot taken for the next connection, held while `incoming` has
    /// none to give.
    slot: Option<OwnedSemaphorePermit>,
    handshake_timeout: Duration,
    /// Kept to report how many connections are open.
    semaphore: Arc<Semaphore>,
    max_connections: usize,
}

impl Admission {
    /// `max_connections` must be at least 1 (the config validates it).
    pub fn new(
        incoming: TcpIncoming,
        max_connections: usize,
        handshake_timeout: Duration,
    ) -> Admission {
        let semaphore = Arc::new(Semaphore::new(max_connections));
        Admission {
            incoming,
            slots: PollSemaphore::new(semaphore.clone()),
            slot: None,
            handshake_timeout,
            semaphore,
            max_connections,
        }
    }

    /// Connections open now (a slot taken but not yet used counts too).
    pub fn open(&self) -> usize {
        self.max_connections
            .saturating_sub(self.semaphore.available_permits())
    }
}

impl Stream for Admission {
    type Item = io::Result<Admitted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.slot.is_none() {
            // The semaphore is never closed, so `None` does not happen; were
            // it to, ending the stream stops the server rather than spinning.
            match ready!(this.slots.poll_acquire(cx)) {
                Some(slot) => this.slot = Some(slot),
                None => return Poll::Ready(None),
            }
        }
        match ready!(Pin::new(&mut this.incoming).poll_next(cx)) {
            Some(Ok(stream)) => match this.slot.take() {
                Some(slot) => Poll::Ready(Some(Ok(Admitted {
                    stream,
                    _slot: slot,
                    preface_left: PREFACE_BYTES,
                    handshake: Some(Box::pin(tokio::time::sleep(this.handshake_timeout))),
                }))),
                // Unreachable: the slot was taken above.
                None => Poll::Ready(Some(Err(io::Error::other("no connection slot")))),
            },
            Some(Err(error)) => Poll::Ready(Some(Err(error))),
            None => Poll::Ready(None),
        }
    }
}

/// An accepted connection holding its slot until dropped, and refusing to
/// wait longer than the handshake timeout for the HTTP/2 preface.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Preface bytes not yet received.
    preface_left: usize,
    /// Running until the preface arrived; `None` after.
    handshake: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(handshake) = &mut this.handshake
            && handshake.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if this.handshake.is_some() {
            this.preface_left = this.preface_left.saturating_sub(read);
            if this.preface_left == 0 {
                this.handshake = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

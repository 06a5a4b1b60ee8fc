//! The chaos test's own TCP fault proxy: one [`Link`] per connection path of
//! the fleet (router → a logic server, a logic server → its order DB or the
//! ledger), listening on the port cells.yaml names and forwarding to the
//! port the part really listens on (`up --listen-offset`).
//!
//! A link is in one of three modes, switched at any time:
//! - **pass**: bytes are copied both ways as they come;
//! - **delay(ms)**: every chunk read, either way, is written `ms` later
//!   (latency, as a slow network adds it; throughput falls with it);
//! - **cut**: every open connection is dropped at once (both sockets closed:
//!   the peers see a reset or EOF mid-request) and each new one is closed
//!   as soon as it is accepted, until the link is healed back to pass;
//! - **blackhole**: a silent partition — nothing is forwarded either way and
//!   nothing is closed (a new connection is accepted and left waiting), so
//!   the peers see no error, only silence, until their own timeouts; at the
//!   heal everything held flows on, as TCP resumes after a partition.
//!
//! Why our own and not toxiproxy: nothing to install, and the test drives it
//! directly from the nemesis (no HTTP API in between), so a fault starts
//! exactly when the schedule says.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What a link does to its traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Cut,
    Blackhole,
}

/// One proxied path: a listener on `listen` forwarding to `target`.
pub struct Link {
    pub name: String,
    mode: watch::Sender<Mode>,
    /// Connections accepted over the link's life (for the report).
    accepted: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Listens on `listen` (bound now, so a failure is the caller's at
    /// once) and forwards every connection to `target`.
    pub async fn start(name: &str, listen: SocketAddr, target: SocketAddr) -> Link {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|error| panic!("proxy {name}: cannot listen on {listen}: {error}"));
        let (mode, watching) = watch::channel(Mode::Pass);
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors, say: try again, without spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if *watching.borrow() == Mode::Cut {
                    drop(client); // refused: closed as soon as accepted
                    continue;
                }
                tokio::spawn(forward(client, target, watching.clone()));
            }
        });
        Link {
            name: name.to_owned(),
            mode,
            accepted,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.set(Mode::Cut);
        self.task.abort();
    }
}

/// One connection: connect to `target`, then copy both ways under the
/// link's mode until either side closes or the link is cut.
async fn forward(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if !through_blackhole(&mut mode).await {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return; // the part is down (killed, restarting): the client sees EOF
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone());
    let down = pump(server_read, client_write, mode.clone());
    let cut = async {
        loop {
            if *mode.borrow_and_update() == Mode::Cut {
                return;
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
    };
    // Whichever ends first ends the connection: dropping the halves closes
    // both sockets.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        () = cut => {}
    }
}

/// Copies `from` to `to`, each chunk held back by the delay in force when
/// it was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let current = *mode.borrow();
        if let Mode::Delay(delay) = current {
            tokio::time::sleep(delay).await;
        }
        if !through_blackhole(&mut mode).await {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Waits while the link is a blackhole; false when it was cut (or the
/// link is gone) instead of healed.
async fn through_blackhole(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Blackhole => {}
            Mode::Cut => return false,
            Mode::Pass | Mode::Delay(_) => return true,
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Every link of the fleet, by name.
#[derive(Default)]
pub struct Proxy {
    pub links: Vec<Link>,
}

impl Proxy {
    pub async fn add(&mut self, name: &str, listen: SocketAddr, target: SocketAddr) {
        self.links.push(Link::start(name, listen, target).await);
    }

    pub fn link(&self, name: &str) -> &Link {
        self.links
            .iter()
            .find(|link| link.name == name)
            .unwrap_or_else(|| panic!("no proxy link {name}"))
    }

    /// Every link back to pass.
    pub fn heal_all(&self) {
        for link in &self.links {
            link.set(Mode::Pass);
        }
    }
}

/// "ping" through `socket`, which must come back.
async fn round_trip(socket: &mut TcpStream) -> std::io::Result<()> {
    socket.write_all(b"ping").await?;
    let mut answer = [0u8; 4];
    socket.read_exact(&mut answer).await?;
    assert_eq!(&answer, b"ping");
    Ok(())
}

/// The proxy's modes on a real socket pair (an echo server behind a link):
/// pass echoes, delay holds each chunk back at least its delay each way,
/// blackhole answers nothing until healed and then delivers what it held,
/// cut ends an open connection and closes new ones at once, heal passes
/// again.
#[test]
fn chaos_proxy_passes_delays_cuts_and_heals() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let link = Link::start("test", listen, target).await;
        let mut open = TcpStream::connect(listen).await.unwrap();
        round_trip(&mut open).await.unwrap();

        let delay = Duration::from_millis(150);
        link.set(Mode::Delay(delay));
        let started = std::time::Instant::now();
        round_trip(&mut open).await.unwrap();
        let took = started.elapsed();
        eprintln!("a round trip through a link delayed {delay:?} took {took:?}");
        assert!(took >= 2 * delay, "{took:?}");

        link.set(Mode::Blackhole);
        open.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        let silent =
            tokio::time::timeout(Duration::from_millis(200), open.read_exact(&mut answer)).await;
        assert!(silent.is_err(), "a blackholed link answered: {silent:?}");
        link.set(Mode::Pass);
        open.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ping", "held bytes flow on after the heal");

        link.set(Mode::Cut);
        let mut byte = [0u8; 1];
        let ended = open.read(&mut byte).await;
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
        let mut refused = TcpStream::connect(listen).await.unwrap();
        assert!(round_trip(&mut refused).await.is_err());

        link.set(Mode::Pass);
        let mut healed = TcpStream::connect(listen).await.unwrap();
        round_trip(&mut healed).await.unwrap();
        assert_eq!(link.accepted(), 3);
    });
}

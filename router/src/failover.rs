//! Calling a cell: its servers in order, each attempt with a share of what is
//! left of the call's deadline, and the one mapping from what happened to the
//! status a client sees.
//!
//! A logic server that dies or stalls must not be visible to clients. So:
//!
//! - **Only a cell's handler answers.** A status that came over the wire as
//!   the call's gRPC status is the cell's answer. Anything else — a refused,
//!   reset or GOAWAYed connection, an h2 protocol error, `UNKNOWN` or
//!   `CANCELLED` (no handler of a cell gives either) — is a *transport*
//!   failure: it says nothing about the request, and the next server of the
//!   cell is tried.
//! - **A stalled server costs one attempt, not the call.** Each attempt gets an
//!   equal share of what is left of the deadline per server still to try
//!   ([`attempt_budget`]); the last server gets all of it. An attempt that runs
//!   out is abandoned (its stream reset) and counts, like a transport
//!   failure, towards ejecting the server ([`Directory::call_failed`]).
//! - **Retrying is for idempotent calls in the same cell.** Open, Grab, Get
//!   and History are idempotent; a Send is retried only on the servers of the
//!   cell its suffix names, with the same idempotency key, so the cell's
//!   idempotency row makes a second attempt replay the first. Whether a Send
//!   may move to *another* cell is decided by [`CellError::NoAnswer::reached`]:
//!   only when no attempt can have reached a handler.
//! - **`UNKNOWN` is never an answer of this service**: [`client_status`] maps
//!   every code, exhaustively, and every status the router returns passes
//!   through it.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tonic::{Code, Status, transport::Channel};
use tracing::Instrument;

use crate::{deadline::Deadline, directory::Directory};

/// Why a call to a cell returned no response.
#[derive(Debug)]
pub(crate) enum CellError {
    /// A handler of the cell answered with this status (metadata included),
    /// and the caller's policy did not retry it elsewhere.
    Answered(Status),
    /// No handler answered: every server failed in transport or ran out of
    /// time, or the deadline passed. `status` is the client's answer
    /// (`UNAVAILABLE` or `DEADLINE_EXCEEDED`); `reached` says whether an
    /// attempt may have reached a handler (so a Send may have been debited).
    NoAnswer { status: Status, reached: bool },
}

impl CellError {
    /// What the client sees.
    pub(crate) fn into_status(self) -> Status {
        match self {
            CellError::Answered(status) => client_status(&status),
            CellError::NoAnswer { status, .. } => client_status(&status),
        }
    }
}

/// How one attempt on one server ended, when it did not return a response.
enum Failed {
    /// The server's handler answered.
    Answered(Status),
    /// Below gRPC: `reached` says whether the request may have reached the
    /// server's handler.
    Transport { status: Status, reached: bool },
    /// The attempt's share of the deadline ran out.
    TimedOut,
}

/// Whether `status` is an answer of a cell's handler: it arrived as the call's
/// gRPC status (tonic attaches the underlying error as the source of every
/// status it makes from a transport failure) with a code a handler gives.
pub(crate) fn from_handler(status: &Status) -> bool {
    std::error::Error::source(status).is_none()
        && !matches!(status.code(), Code::Unknown | Code::Cancelled)
}

/// Whether a call failed before it reached a server (so it did nothing there):
/// only a transport error whose cause is a refused or unroutable connection.
/// Statuses that come from a cell (over the wire) carry no source, so a cell's
/// own `UNAVAILABLE` — which may follow a debit — never counts as "not reached".
pub(crate) fn never_reached(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// The time one attempt may take: all that is `left` on the last server, an
/// equal share of it per server still to try otherwise.
pub(crate) fn attempt_budget(left: Duration, servers_left: usize) -> Duration {
    let servers_left = u32::try_from(servers_left.max(1)).unwrap_or(u32::MAX);
    left / servers_left
}

/// Calls `cell` on `servers` in order until one answers: `attempt(channel,
/// budget)` makes one call (with `budget` as its gRPC timeout). A transport
/// failure or an attempt out of time moves to the next server; so does a
/// handler's answer for which `retry_answer` holds. Every attempt runs within
/// the call's `deadline`.
pub(crate) async fn call_cell<T, F, Fut>(
    directory: &Directory,
    cell: &str,
    servers: &[impl AsRef<str>],
    deadline: Deadline,
    retry_answer: impl Fn(&Status) -> bool,
    mut attempt: F,
) -> Result<T, CellError>
where
    F: FnMut(Channel, Duration) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut last_answer: Option<Status> = None;
    let mut last_transport: Option<Status> = None;
    let mut reached = false;
    for (index, server) in servers.iter().enumerate() {
        let server = server.as_ref();
        let Some(left) = deadline.remaining() else {
            break;
        };
        let budget = attempt_budget(left, servers.len() - index);
        let started = Instant::now();
        let span = tracing::info_span!(
            "cell_call",
            otel.kind = "client",
            cell,
            server,
            attempt = index + 1,
        );
        let failed = match directory.channel(server) {
            Err(status) => Failed::Transport {
                status,
                reached: false,
            },
            Ok(channel) => {
                // Entered while the request is built too, so the trace
                // context it carries names this attempt's span.
                let call = span.in_scope(|| attempt(channel, budget));
                let answered = tokio::time::timeout(budget, call).instrument(span).await;
                match answered {
                    Ok(Ok(response)) => {
                        directory.call_answered(server);
                        directory
                            .metrics()
                            .observe_attempt(cell, "ok", started.elapsed());
                        return Ok(response.into_inner());
                    }
                    Ok(Err(status)) if from_handler(&status) => Failed::Answered(status),
                    Ok(Err(status)) => {
                        let reached = !never_reached(&status);
                        Failed::Transport { status, reached }
                    }
                    Err(_elapsed) => Failed::TimedOut,
                }
            }
        };
        let outcome = match &failed {
            Failed::Answered(_) => "answered",
            Failed::Transport { .. } => "transport",
            Failed::TimedOut => "timeout",
        };
        directory
            .metrics()
            .observe_attempt(cell, outcome, started.elapsed());
        match failed {
            Failed::Answered(status) => {
                directory.call_answered(server);
                if !retry_answer(&status) {
                    return Err(CellError::Answered(status));
                }
                last_answer = Some(status);
            }
            Failed::Transport {
                status,
                reached: this_reached,
            } => {
                tracing::debug!(cell, server = %server, %status, "transport failure; next server");
                directory.call_failed(server);
                reached |= this_reached;
                last_transport = Some(status);
            }
            Failed::TimedOut => {
                tracing::warn!(cell, server = %server, ?budget, "no answer within the attempt's time; next server");
                directory.call_failed(server);
                reached = true;
            }
        }
    }
    if deadline.remaining().is_none() {
        return Err(CellError::NoAnswer {
            status: Status::deadline_exceeded(format!(
                "the call's deadline passed before cell {cell} answered"
            )),
            reached,
        });
    }
    if let Some(status) = last_answer {
        return Err(CellError::Answered(status));
    }
    let cause = match &last_transport {
        Some(status) => format!(" (last: {})", status.message()),
        None if servers.is_empty() => " (it has no server)".to_owned(),
        None => String::new(),
    };
    Err(CellError::NoAnswer {
        status: Status::unavailable(format!("cell {cell}: no server answered{cause}; retry")),
        reached,
    })
}

/// The one mapping from a status to what a client of the router sees: the code
/// (every one listed, so a new one cannot slip through) and the message,
/// without metadata. Handlers' answers keep their code; what no handler
/// gives — `UNKNOWN`, `CANCELLED`, a transport failure of any code — becomes
/// `UNAVAILABLE` (retryable: idempotent calls are, and a Send is with its
/// key).
pub(crate) fn client_status(status: &Status) -> Status {
    let transport = std::error::Error::source(status).is_some();
    let code = match status.code() {
        // Not an error; never passed here as one.
        Code::Ok => Code::Internal,
        Code::Unknown | Code::Cancelled => Code::Unavailable,
        _ if transport => Code::Unavailable,
        code @ (Code::InvalidArgument
        | Code::DeadlineExceeded
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss
        | Code::Unauthenticated) => code,
    };
    let message = if transport || code != status.code() {
        format!("a server did not answer ({}); retry", status.message())
    } else {
        status.message().to_owned()
    };
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    #[test]
    fn handlers_answers_keep_their_code_and_nothing_else_reaches_a_client_as_unknown() {
        for code in ALL {
            let answered = client_status(&Status::new(code, "the cell's words"));
            let expected = match code {
                Code::Ok => Code::Internal,
                Code::Unknown | Code::Cancelled => Code::Unavailable,
                other => other,
            };
            assert_eq!(answered.code(), expected, "{code:?}");
            assert_ne!(answered.code(), Code::Unknown);
            assert_ne!(answered.code(), Code::Cancelled);
            if expected == code {
                assert_eq!(answered.message(), "the cell's words");
            }
            assert!(answered.metadata().is_empty());
        }
    }

    #[test]
    fn transport_failures_of_any_code_are_unavailable() {
        let reset = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert_eq!(reset.code(), Code::Unknown, "tonic's own mapping");
        assert!(!from_handler(&reset));
        let mapped = client_status(&reset);
        assert_eq!(mapped.code(), Code::Unavailable);
        assert!(mapped.message().contains("connection reset"), "{mapped:?}");
        // tonic's other transport statuses carry their cause as the source
        // too, whatever code it gave them.
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        ))));
        let timed_out = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(refused.code(), Code::Unavailable);
        assert_eq!(timed_out.code(), Code::Cancelled);
        for status in [refused, timed_out] {
            assert!(!from_handler(&status), "{status:?}");
            assert_eq!(client_status(&status).code(), Code::Unavailable);
        }
        // A status a handler sent has no source, and UNKNOWN/CANCELLED are
        // no handler's answers.
        assert!(from_handler(&Status::unavailable("order DB down")));
        assert!(from_handler(&Status::resource_exhausted("slow down")));
        assert!(!from_handler(&Status::cancelled("Timeout expired")));
        assert!(!from_handler(&Status::unknown("transport error")));
    }

    #[test]
    fn each_attempt_gets_a_fair_share_and_the_last_all_that_is_left() {
        let left = Duration::from_millis(1_800);
        assert_eq!(attempt_budget(left, 3), Duration::from_millis(600));
        assert_eq!(attempt_budget(left, 2), Duration::from_millis(900));
        assert_eq!(attempt_budget(left, 1), left);
        assert_eq!(attempt_budget(left, 0), left);
    }

    /// A refused connection is recognised from tonic's real error, and a
    /// status a server sends is never taken for "not reached".
    #[tokio::test]
    async fn only_refused_connections_count_as_never_reached() {
        use redcell_proto::v1::{self as pb, red_envelope_client::RedEnvelopeClient};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let status = RedEnvelopeClient::new(channel)
            .grab(pb::GrabRequest {
                envelope_id: "x".into(),
            })
            .await
            .unwrap_err();
        assert!(never_reached(&status), "{status:?}");
        assert!(!from_handler(&status), "a refused connection: {status:?}");
        assert_eq!(client_status(&status).code(), Code::Unavailable);
        let from_a_cell =
            Status::unavailable("payment system unavailable: error connecting to server");
        assert!(!never_reached(&from_a_cell));
        assert!(from_handler(&from_a_cell));
    }
}

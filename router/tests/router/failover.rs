//! A logic server that dies or stalls is not visible to clients (issue 8):
//! the router moves a call whose server failed in transport or ran out of its
//! share of the deadline to the cell's next server, maps what no handler
//! answered to `UNAVAILABLE`, and never answers `UNKNOWN` or `CANCELLED`; a
//! cell's HTTP/2 server survives the burst of stream resets a router sends
//! after a stall; a call whose deadline passed answers `DEADLINE_EXCEEDED`.
//!
//! Stalls and deaths are made deterministic with [`Stack::stall_cell_server`]
//! (the server's only worker thread blocked, as SIGSTOP would) and
//! [`Stack::kill_stalled_cell_server`] (its runtime dropped while stalled, so
//! calls are surely in flight on the connections it drops). Every wait is a
//! bounded poll of an observable condition; nothing asserts on wall-clock time.

use std::time::Duration;

use redcell_proto::internal::AsUser;
use redcell_proto::v1::{self as pb, red_envelope_client::RedEnvelopeClient};
use redcell_router::route;
use tokio::task::JoinSet;
use tonic::{Code, Status, transport::Channel};

use crate::stack::{Builder, INTERNAL_TOKEN, POLL, POLL_ATTEMPTS, Stack};

/// The index (in the cell's server list) of the server the router tries
/// first for `envelope_id` while all are healthy.
fn preferred_server(stack: &Stack, envelope_id: &str) -> usize {
    let cell = stack.cell(&stack.cell_of(envelope_id));
    let topology = stack.router.topology.load();
    let routed = topology.cell(cell.name).unwrap();
    let first = route::rendezvous(routed, envelope_id)[0].to_owned();
    cell.servers
        .iter()
        .position(|server| server.address.to_string() == first)
        .unwrap()
}

/// Polls until `condition` holds; panics naming `what` if it never does.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..POLL_ATTEMPTS {
        if condition() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("timed out waiting until {what}");
}

/// An Open by `user` with an optional client deadline (`grpc-timeout`).
async fn open(
    stack: &Stack,
    user: &str,
    envelope_id: &str,
    timeout: Option<Duration>,
) -> Result<pb::OpenResponse, Status> {
    let mut request = tonic::Request::new(pb::OpenRequest {
        envelope_id: envelope_id.to_owned(),
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    stack
        .client(user)
        .open(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Asserts every Open answered OK with a share (none UNKNOWN, CANCELLED or
/// anything else), that the amounts add up to what the envelope held and no
/// user got two shares, by the envelope's own record.
async fn assert_all_opened(
    stack: &Stack,
    envelope: &pb::Envelope,
    results: Vec<(String, Result<pb::OpenResponse, Status>)>,
) {
    let failed: Vec<(&String, Code, &str)> = results
        .iter()
        .filter_map(|(user, result)| {
            result
                .as_ref()
                .err()
                .map(|status| (user, status.code(), status.message()))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} Opens failed: {failed:#?}\nrouter view: {}",
        failed.len(),
        results.len(),
        stack.router_view()
    );
    let mut total = 0;
    for (user, result) in &results {
        let opened = result.as_ref().unwrap();
        assert_eq!(opened.status(), pb::ShareStatus::Available, "{user}");
        assert!(opened.amount_cents >= 1, "{user}: {opened:?}");
        total += opened.amount_cents;
    }
    let got = stack
        .client(&envelope.sender)
        .get(pb::GetRequest {
            envelope_id: envelope.id.clone(),
            page_token: String::new(),
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let mut users: Vec<&str> = got.claims.iter().map(|c| c.user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    assert_eq!(users.len(), got.claims.len(), "a user holds two shares");
    assert_eq!(got.claims.len(), results.len());
    assert_eq!(
        got.claims.iter().map(|c| c.amount_cents).sum::<i64>(),
        total,
        "the answers are the envelope's claims"
    );
}

/// kill -9 of one of a cell's two servers with Opens in flight on it: every
/// Open answers OK (the router retries it on the other server), and the
/// money adds up. Found from outside: 1-9 in-flight calls per kill answered
/// `UNKNOWN "transport error"` or `CANCELLED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_opens_in_flight_fails_none_of_them() {
    const OPENS: u32 = 24;
    let mut stack = Builder {
        servers_per_cell: 2,
        ..Builder::default()
    }
    .start()
    .await;
    let envelope = stack.send("sender", "kill", 10_000, OPENS).await;
    let cell = stack.cell_of(&envelope.id);
    let victim = preferred_server(&stack, &envelope.id);
    let victim_address = stack.cell(&cell).servers[victim].address.to_string();

    // Stalled first, so the Opens below are surely in flight on it when it
    // dies: each goes to it first (it is still SERVING for the router).
    let stall = stack.stall_cell_server(&cell, victim).await;
    let mut opens = JoinSet::new();
    for index in 0..OPENS {
        let user = format!("opener-{index}");
        let client = stack.client(&user);
        let id = envelope.id.clone();
        opens.spawn(async move {
            let mut client = client;
            let result = client
                .open(pb::OpenRequest { envelope_id: id })
                .await
                .map(tonic::Response::into_inner);
            (user, result)
        });
    }
    // The router's health checks notice the silence (3 missed): by then
    // every Open above has long been sent to the stalled server.
    let directory = stack.router.directory.clone();
    wait_until("the router sees the stalled server silent", || {
        !directory.is_serving(&victim_address)
    })
    .await;
    stack.kill_stalled_cell_server(&cell, victim, stall).await;

    let mut results = Vec::new();
    while let Some(joined) = opens.join_next().await {
        results.push(joined.unwrap());
    }
    assert_all_opened(&stack, &envelope, results).await;
    stack.check_money().await;
}

/// A server that stalls (a GC-like pause, SIGSTOP, a full disk) with Opens in
/// flight on it: each is moved to the cell's other server once its share of
/// the deadline runs out, and answers OK well within the client's deadline;
/// found from outside, they hung until the client's deadline and answered
/// `CANCELLED`. When the server resumes, the streams the router reset while it
/// was stalled do not cost the router its connection: calls on it succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_delays_calls_but_fails_none() {
    const OPENS: u32 = 12;
    let mut stack = Builder {
        servers_per_cell: 2,
        ..Builder::default()
    }
    .start()
    .await;
    let envelope = stack.send("sender", "stall", 10_000, OPENS + 1).await;
    let cell = stack.cell_of(&envelope.id);
    let stalled = preferred_server(&stack, &envelope.id);
    let stall = stack.stall_cell_server(&cell, stalled).await;

    // A client deadline shorter than the router's own budget (10 s here):
    // without failover every one of these would run into it.
    let deadline = Duration::from_secs(8);
    let mut opens = JoinSet::new();
    for index in 0..OPENS {
        let user = format!("opener-{index}");
        let client = stack.client(&user);
        let id = envelope.id.clone();
        opens.spawn(async move {
            let mut client = client;
            let mut request = tonic::Request::new(pb::OpenRequest { envelope_id: id });
            request.set_timeout(deadline);
            let result = client.open(request).await.map(tonic::Response::into_inner);
            (user, result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = opens.join_next().await {
        results.push(joined.unwrap());
    }
    assert_all_opened(&stack, &envelope, results).await;

    // Resumed: it reads every stream the router opened and reset meanwhile.
    // The router's connection to it survives that, and it serves again.
    let address = stack.cell(&cell).servers[stalled].address.to_string();
    stall.resume();
    let directory = stack.router.directory.clone();
    wait_until("the resumed server is back in rotation", || {
        directory.is_serving(&address)
    })
    .await;
    // It may still be working through the streams it read on resuming (a
    // reset stream whose request had arrived whole still reaches the
    // handler): count from once its counter has stopped moving.
    let mut before = stack.envelope_requests(&cell)[stalled];
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = stack.envelope_requests(&cell)[stalled];
        if now == before {
            break;
        }
        before = now;
    }
    let last = open(&stack, "last-opener", &envelope.id, None)
        .await
        .unwrap();
    assert_eq!(last.status(), pb::ShareStatus::Available);
    assert_eq!(
        stack.envelope_requests(&cell)[stalled],
        before + 1,
        "the resumed server served the envelope again"
    );
    stack.check_money().await;
}

/// The cell's HTTP/2 server, as a router meets it: one connection carries
/// every call. While the server is stalled the router abandons many calls
/// (their streams reset before the server accepted them); when it resumes,
/// h2's default rapid-reset guard (20 such streams) answered with GOAWAY and
/// dropped the connection with every other call on it (`UNKNOWN` or
/// `RESOURCE_EXHAUSTED "h2 protocol error"`). The calls still waiting on the
/// connection must be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reset_streams_after_a_stall_keeps_the_connection() {
    const ABANDONED: usize = 200;
    const WAITING: usize = 8;
    let mut stack = Builder::default().start().await;
    let envelope = stack.send("sender", "resets", 10_000, WAITING as u32).await;
    let cell = stack.cell_of(&envelope.id);
    let channel = Channel::from_shared(format!("http://{}", stack.cell(&cell).servers[0].address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = |user: &str| {
        RedEnvelopeClient::with_interceptor(
            channel.clone(),
            AsUser::new(user)
                .unwrap()
                .with_internal(INTERNAL_TOKEN)
                .unwrap(),
        )
    };
    let get = || pb::GetRequest {
        envelope_id: envelope.id.clone(),
        page_token: String::new(),
        page_size: 1,
    };
    // The connection is up and serving.
    client("reader").get(get()).await.unwrap();

    let stall = stack.stall_cell_server(&cell, 0).await;
    // Calls that will wait for their answer, on the one connection.
    let mut waiting = JoinSet::new();
    for index in 0..WAITING {
        let mut client = client(&format!("opener-{index}"));
        let id = envelope.id.clone();
        waiting.spawn(async move {
            client
                .open(pb::OpenRequest { envelope_id: id })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    // Calls abandoned while it is stalled: each is sent, then dropped once
    // the client has sent it (its stream reset), as a router does when its
    // client's deadline passes or it moves the call to another server.
    let mut abandoned = JoinSet::new();
    for _ in 0..ABANDONED {
        let mut client = client("impatient");
        let request = get();
        abandoned.spawn(async move { client.get(request).await });
    }
    // Let them go out on the connection (the stalled server's socket buffers
    // them), then abandon them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    abandoned.abort_all();
    while abandoned.join_next().await.is_some() {}
    stall.resume();

    let mut answers = Vec::new();
    while let Some(joined) = waiting.join_next().await {
        answers.push(joined.unwrap());
    }
    let failed: Vec<&Status> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "calls waiting on the connection failed: {failed:#?}"
    );
    // And the connection keeps serving.
    client("reader").get(get()).await.unwrap();
    stack.check_money().await;
}

/// `message` with a client deadline (`grpc-timeout`) of `timeout`.
fn within<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A call whose deadline passes before its cell answers (every server of the
/// cell stalled) answers `DEADLINE_EXCEEDED` from the router. Found from
/// outside: such calls answered `UNAVAILABLE "cell X has no server"` once the
/// deadline had passed between attempts, or hung until the client's own
/// deadline and answered `CANCELLED` (tonic's "Timeout expired").
///
/// The router's budget (2 s) is far shorter than the client's deadline (30 s),
/// so the answer seen is the router's, not the client's own timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_answers_deadline_exceeded() {
    let mut stack = Builder {
        servers_per_cell: 2,
        cell_timeout: Duration::from_secs(2),
        ..Builder::default()
    }
    .start()
    .await;
    let envelope = stack.send("sender", "late", 1_000, 2).await;
    let cell = stack.cell_of(&envelope.id);
    let stalls = vec![
        stack.stall_cell_server(&cell, 0).await,
        stack.stall_cell_server(&cell, 1).await,
    ];
    let deadline = Duration::from_secs(30);
    let mut client = stack.client("late");
    let id = envelope.id.clone();
    let results: Vec<(&str, Result<(), Status>)> = vec![
        (
            "Open",
            client
                .open(within(
                    pb::OpenRequest {
                        envelope_id: id.clone(),
                    },
                    deadline,
                ))
                .await
                .map(drop),
        ),
        (
            "Grab",
            client
                .grab(within(
                    pb::GrabRequest {
                        envelope_id: id.clone(),
                    },
                    deadline,
                ))
                .await
                .map(drop),
        ),
        (
            "Get",
            client
                .get(within(
                    pb::GetRequest {
                        envelope_id: id.clone(),
                        page_token: String::new(),
                        page_size: 0,
                    },
                    deadline,
                ))
                .await
                .map(drop),
        ),
        (
            "History",
            client
                .history(within(
                    pb::HistoryRequest {
                        direction: pb::HistoryDirection::Sent.into(),
                        page_token: String::new(),
                        page_size: 0,
                    },
                    deadline,
                ))
                .await
                .map(drop),
        ),
    ];
    for (call, result) in results {
        let status = result.expect_err(call);
        assert_eq!(status.code(), Code::DeadlineExceeded, "{call}: {status:?}");
        assert!(
            std::error::Error::source(&status).is_none(),
            "{call}: the router's answer, not the client's own timer: {status:?}"
        );
    }
    drop(stalls);
    stack.check_money().await;
}

/// kill -9 of logic servers with Sends in flight on them: each Send is tried
/// again on its cell's other server with the same idempotency key, and
/// answers OK, paid once. Found from outside: such Sends answered `UNKNOWN`
/// (the client's retry with the same key then succeeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_killed_with_sends_in_flight_fail_none_and_debit_once() {
    const SENDERS: usize = 8;
    const TOTAL: i64 = 1_000;
    let mut stack = Builder {
        servers_per_cell: 2,
        ..Builder::default()
    }
    .start()
    .await;
    let north = ["n1", "n2", "n3"];
    // Senders whose Send goes first to server 0 of its (north) cell, by the
    // router's draw and rendezvous order.
    let topology = stack.router.topology.load();
    let region = topology.region_digit("north").unwrap();
    let mut senders = Vec::new();
    for index in 0.. {
        let sender = format!("payer-{index}");
        let draw = route::stable_hash(&[sender.as_bytes(), b"k"]);
        let (_, cell) = route::mint_suffix(&topology, region, draw, |_| true).unwrap();
        let cell = &topology.cells()[cell];
        let first = route::rendezvous(cell, &format!("{sender}/k"))[0].to_owned();
        if stack.cell(&cell.name).servers[0].address.to_string() == first {
            senders.push((sender, cell.name.clone()));
        }
        if senders.len() == SENDERS {
            break;
        }
    }
    drop(topology);
    for (sender, _) in &senders {
        stack.fund(sender, TOTAL).await;
    }

    let mut stalls = Vec::new();
    for cell in north {
        stalls.push((cell, stack.stall_cell_server(cell, 0).await));
    }
    let mut sends = JoinSet::new();
    for (sender, cell) in &senders {
        let mut client = stack.client(sender);
        let (sender, cell) = (sender.clone(), cell.clone());
        sends.spawn(async move {
            let result = client
                .send(crate::stack::lucky(TOTAL, 2, "k"))
                .await
                .map(tonic::Response::into_inner);
            (sender, cell, result)
        });
    }
    let directory = stack.router.directory.clone();
    let stalled: Vec<String> = north
        .iter()
        .map(|cell| stack.cell(cell).servers[0].address.to_string())
        .collect();
    wait_until("the router sees the stalled servers silent", || {
        stalled.iter().all(|address| !directory.is_serving(address))
    })
    .await;
    for (cell, stall) in stalls {
        stack.kill_stalled_cell_server(cell, 0, stall).await;
    }

    while let Some(joined) = sends.join_next().await {
        let (sender, cell, result) = joined.unwrap();
        let envelope = result
            .unwrap_or_else(|status| {
                panic!(
                    "{sender}'s Send failed: {status:?}\nrouter view: {}",
                    stack.router_view()
                )
            })
            .envelope
            .unwrap();
        assert_eq!(stack.cell_of(&envelope.id), cell, "{sender}: its cell");
        assert_eq!(envelope.sender, sender);
        // Paid once: one envelope, one debit.
        let mut mine = 0;
        for other in &stack.cells {
            let orders = other.orders.connect().await.unwrap();
            let count: i64 = orders
                .query_one(
                    "SELECT count(*) FROM envelopes WHERE sender = $1",
                    &[&sender],
                )
                .await
                .unwrap()
                .get(0);
            mine += count;
        }
        assert_eq!(mine, 1, "{sender}: one envelope");
        assert_eq!(stack.ledger.balance(&sender).await.unwrap(), 0, "{sender}");
    }
    stack.check_money().await;
}

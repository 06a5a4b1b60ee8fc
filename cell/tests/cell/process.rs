//! The logic server as a process: the real `cell` binary killed with SIGKILL
//! mid-load loses no acknowledged Open and no money; health follows the order
//! DB; a graceful stop finishes the batches in flight; configuration errors
//! exit 78 before the port is bound.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redcell_harness::PgServer;
use redcell_proto::v1::{self as pb};
use tokio::{sync::Notify, task::JoinHandle};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::stack::{self, Client, Stack, StackBuilder};

/// Polls of a condition, 50 ms apart, before a test gives up (a hang guard,
/// never a performance threshold).
const POLLS: usize = 600;
const POLL: Duration = Duration::from_millis(50);

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A file in the temp directory, removed on drop.
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    pub(crate) fn new(tag: &str, contents: &str) -> TempFile {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "redcell-cell-test-{}-{n}-{tag}",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A port nothing listens on right now (bound, read, released).
pub(crate) fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The `cell` binary as a child process, its stderr in a temp file. Killed
/// (SIGKILL) and reaped on drop, on every path out of a test.
pub(crate) struct CellProcess {
    child: Child,
    stderr: TempFile,
}

impl CellProcess {
    pub(crate) fn spawn(args: &[String]) -> CellProcess {
        CellProcess::spawn_with_env(args, &[])
    }

    /// Like [`CellProcess::spawn`], with these environment variables set.
    pub(crate) fn spawn_with_env(args: &[String], env: &[(&str, &str)]) -> CellProcess {
        let stderr = TempFile::new("cell.stderr", "");
        let file = std::fs::File::create(stderr.path()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cell"));
        // Only the flags given here configure it, whatever the test's environment.
        for name in [
            "REDCELL_TOPOLOGY",
            "REDCELL_TOPOLOGY_RELOAD_MS",
            "REDCELL_CELL",
            "REDCELL_LISTEN",
            "REDCELL_DB_DSN",
            "REDCELL_LEDGER_DSN",
            "REDCELL_DB_POOL",
            "REDCELL_LEDGER_POOL",
            "REDCELL_ENVELOPE_TTL_SECS",
            "REDCELL_OPEN_STRATEGY",
            "REDCELL_LANE_QUEUE_CAP",
            "REDCELL_LANE_BATCH_MAX",
            "REDCELL_LANE_IDLE_SECS",
            "REDCELL_MAX_COUNT",
            "REDCELL_MAX_TOTAL_CENTS",
            "REDCELL_WORKER_INTERVAL_MS",
            "REDCELL_RECOVERY_GRACE_SECS",
            "REDCELL_INTERNAL_TOKEN",
            "REDCELL_LOG_JSON",
            // the failpoints build's test switches (cell/src/failpoints.rs)
            "FAILPOINTS",
            "REDCELL_CRASH_AT",
            "REDCELL_CLOCK_SKEW_SECS",
        ] {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        let child = command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        CellProcess { child, stderr }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGKILL, then reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CellProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The flags of a logic server of n1 in `stack`'s topology file `topology`.
pub(crate) fn cell_args(stack: &Stack, topology: &Path, listen: SocketAddr) -> Vec<String> {
    [
        "--topology",
        &topology.display().to_string(),
        "--cell",
        "n1",
        "--listen",
        &listen.to_string(),
        "--ledger-dsn",
        &stack.ledger_db.dsn,
        "--worker-interval-ms",
        "50",
        "--recovery-grace-secs",
        "1",
        "--internal-token",
        crate::stack::INTERNAL_TOKEN,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The server's health for the client API, `None` when it does not answer.
async fn health(channel: &Channel) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel.clone());
    let request = HealthCheckRequest {
        service: redcell_cell::health::SERVICE.to_owned(),
    };
    match tokio::time::timeout(Duration::from_secs(5), client.check(request)).await {
        Ok(Ok(response)) => Some(response.into_inner().status()),
        _ => None,
    }
}

async fn wait_for_health(channel: &Channel, wanted: ServingStatus) {
    let mut last = None;
    for _ in 0..POLLS {
        last = health(channel).await;
        if last == Some(wanted) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("health never became {wanted:?}; last answer {last:?}");
}

/// Waits until the child reports SERVING; fails at once if it exits.
pub(crate) async fn wait_serving(process: &mut CellProcess, channel: &Channel) {
    for _ in 0..POLLS {
        if let Some(status) = process.exited() {
            panic!(
                "cell exited ({status}) before serving; stderr:\n{}",
                process.stderr()
            );
        }
        if health(channel).await == Some(ServingStatus::Serving) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("cell never reported SERVING; stderr:\n{}", process.stderr());
}

fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

/// A LUCKY Send of `total` cents in `count` shares under idempotency key `key`.
pub(crate) fn send_request(key: &str, total: i64, count: u32) -> pb::SendRequest {
    pb::SendRequest {
        total_cents: total,
        count,
        kind: pb::EnvelopeKind::Lucky.into(),
        greeting: "恭喜发财".into(),
        recipients: Vec::new(),
        idempotency_key: key.to_owned(),
    }
}

/// Funds `sender` and sends a LUCKY envelope through `channel` (key
/// `key-SENDER`), acknowledged ACTIVE; its id.
pub(crate) async fn send_via(
    stack: &mut Stack,
    channel: &Channel,
    sender: &str,
    total: i64,
    count: u32,
) -> String {
    stack.fund(sender, total).await;
    let envelope = Stack::client_on(channel, sender)
        .send(send_request(&format!("key-{sender}"), total, count))
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    assert_eq!(envelope.status(), pb::EnvelopeStatus::Active);
    envelope.id
}

/// Opens until an answer that is not a retryable refusal.
async fn open_retrying(client: &mut Client, envelope: &str) -> pb::OpenResponse {
    let request = pb::OpenRequest {
        envelope_id: envelope.to_owned(),
    };
    for _ in 0..POLLS {
        match client.open(request.clone()).await {
            Ok(reply) => return reply.into_inner(),
            Err(status) if retryable(status.code()) => tokio::time::sleep(POLL).await,
            Err(status) => panic!("open of {envelope} failed: {status}"),
        }
    }
    panic!("open of {envelope} still refused after {POLLS} attempts");
}

/// (envelope, user, reply).
type Reply = (String, String, pb::OpenResponse);

/// Concurrent Opens that a test interrupts (kill or stop) after `threshold`
/// replies: every reply received, and every (envelope, user) not answered.
struct Load {
    replies: Mutex<Vec<Reply>>,
    unfinished: Mutex<Vec<(String, String)>>,
    /// Set just before the interruption: from then on an error ends a user's run.
    interrupted: AtomicBool,
    milestone: Notify,
    threshold: usize,
}

impl Load {
    fn new(threshold: usize) -> Arc<Load> {
        Arc::new(Load {
            replies: Mutex::new(Vec::new()),
            unfinished: Mutex::new(Vec::new()),
            interrupted: AtomicBool::new(false),
            milestone: Notify::new(),
            threshold,
        })
    }

    fn record(&self, envelope: &str, user: &str, reply: pb::OpenResponse) {
        let mut replies = self.replies.lock().unwrap();
        replies.push((envelope.to_owned(), user.to_owned(), reply));
        if replies.len() == self.threshold {
            self.milestone.notify_one();
        }
    }

    /// One task per user, opening its envelopes in order; retryable refusals
    /// are retried until the load is interrupted.
    fn start(self: &Arc<Load>, work: Vec<(Client, String, Vec<String>)>) -> Vec<JoinHandle<()>> {
        work.into_iter()
            .map(|(mut client, user, envelopes)| {
                let load = self.clone();
                tokio::spawn(async move {
                    for (index, envelope) in envelopes.iter().enumerate() {
                        let request = pb::OpenRequest {
                            envelope_id: envelope.clone(),
                        };
                        loop {
                            match client.open(request.clone()).await {
                                Ok(reply) => {
                                    load.record(envelope, &user, reply.into_inner());
                                    break;
                                }
                                Err(_) if load.interrupted.load(Ordering::SeqCst) => {
                                    let mut unfinished = load.unfinished.lock().unwrap();
                                    for rest in &envelopes[index..] {
                                        unfinished.push((rest.clone(), user.clone()));
                                    }
                                    return;
                                }
                                Err(status) if retryable(status.code()) => {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                                Err(status) => panic!("{user} opening {envelope}: {status}"),
                            }
                        }
                    }
                })
            })
            .collect()
    }

    async fn reached(&self) {
        tokio::time::timeout(POLL * POLLS as u32, self.milestone.notified())
            .await
            .expect("the load never reached its interruption point");
    }

    fn replies(&self) -> Vec<Reply> {
        self.replies.lock().unwrap().clone()
    }

    fn unfinished(&self) -> Vec<(String, String)> {
        self.unfinished.lock().unwrap().clone()
    }
}

async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        tokio::time::timeout(POLL * POLLS as u32, task)
            .await
            .expect("an Open never returned")
            .unwrap();
    }
}

/// Users `u0..` each opening every envelope, starting at a different one.
fn users_opening(
    channel: &Channel,
    users: usize,
    envelopes: &[String],
) -> Vec<(Client, String, Vec<String>)> {
    (0..users)
        .map(|index| {
            let user = format!("u{index}");
            let mut order = envelopes.to_vec();
            order.rotate_left(index % envelopes.len());
            (Stack::client_on(channel, &user), user, order)
        })
        .collect()
}

fn taken(replies: &[Reply], envelope: &str) -> HashSet<(String, i64)> {
    replies
        .iter()
        .filter(|(id, _, reply)| id == envelope && reply.status() == pb::ShareStatus::Available)
        .map(|(_, user, reply)| (user.clone(), reply.amount_cents))
        .collect()
}

/// Per envelope: the shares answered AVAILABLE are exactly the stored claims,
/// all `count` shares are taken and they sum to `total`.
async fn assert_answers_are_the_claims(
    stack: &Stack,
    envelopes: &[String],
    total: i64,
    count: u32,
    replies: &[Reply],
) {
    for envelope in envelopes {
        let stored = stack.claims(envelope).await;
        assert_eq!(
            stored.len(),
            count as usize,
            "{envelope}: every share taken"
        );
        assert_eq!(
            stored.iter().map(|(_, amount)| amount).sum::<i64>(),
            total,
            "{envelope}: shares sum to the total"
        );
        let stored: HashSet<(String, i64)> = stored.into_iter().collect();
        assert_eq!(
            stored,
            taken(replies, envelope),
            "{envelope}: the shares answered are the shares stored"
        );
    }
}

const KILL_ENVELOPES: usize = 3;
const KILL_SHARES: u32 = 100;
const KILL_TOTAL: i64 = 100_000;
const KILL_USERS: usize = 150;
const KILL_AFTER_REPLIES: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_open_and_no_money() {
    let listen = free_port();
    let mut stack = StackBuilder::default().start_external(&[listen]).await;
    let topology = TempFile::new("cells.yaml", &stack.topology_text);
    let args = cell_args(&stack, topology.path(), listen);
    let channel = Stack::channel_to(listen);
    let mut process = CellProcess::spawn(&args);
    wait_serving(&mut process, &channel).await;

    let mut envelopes = Vec::new();
    for index in 0..KILL_ENVELOPES {
        let sender = format!("sender{index}");
        envelopes.push(send_via(&mut stack, &channel, &sender, KILL_TOTAL, KILL_SHARES).await);
    }
    let all_pairs = KILL_ENVELOPES * KILL_USERS;

    // Many users open concurrently; the process dies after the 60th reply.
    let load = Load::new(KILL_AFTER_REPLIES);
    let tasks = load.start(users_opening(&channel, KILL_USERS, &envelopes));
    load.reached().await;
    load.interrupted.store(true, Ordering::SeqCst);
    process.kill();
    join_all(tasks).await;

    let before_kill = load.replies();
    let unfinished = load.unfinished();
    assert!(before_kill.len() >= KILL_AFTER_REPLIES);
    assert!(
        !unfinished.is_empty(),
        "the kill came after the load had finished: not mid-load"
    );
    assert_eq!(before_kill.len() + unfinished.len(), all_pairs);
    let acknowledged: Vec<&Reply> = before_kill
        .iter()
        .filter(|(_, _, reply)| reply.status() == pb::ShareStatus::Available)
        .collect();
    assert!(!acknowledged.is_empty());

    // With the process dead: every acknowledged share is already durable.
    for (envelope, user, reply) in &acknowledged {
        let stored = stack.claims(envelope).await;
        assert!(
            stored.contains(&(user.clone(), reply.amount_cents)),
            "{user} was answered {} cents of {envelope} but it is not stored",
            reply.amount_cents
        );
    }

    // The same binary, the same port.
    let mut process = CellProcess::spawn(&args);
    wait_serving(&mut process, &channel).await;

    // Opening again returns the acknowledged share, unchanged.
    for (envelope, user, reply) in &acknowledged {
        let mut client = Stack::client_on(&channel, user);
        let again = open_retrying(&mut client, envelope).await;
        assert_eq!(&again, reply, "{user} reopening {envelope} after the crash");
    }

    // The rest of the load completes.
    let rest = Load::new(usize::MAX);
    let work = unfinished
        .iter()
        .map(|(envelope, user)| {
            (
                Stack::client_on(&channel, user),
                user.clone(),
                vec![envelope.clone()],
            )
        })
        .collect();
    join_all(rest.start(work)).await;
    assert!(rest.unfinished().is_empty());
    let mut replies = before_kill;
    replies.extend(rest.replies());
    assert_eq!(replies.len(), all_pairs, "every Open answered once");
    assert!(replies.iter().all(|(_, _, reply)| matches!(
        reply.status(),
        pb::ShareStatus::Available | pb::ShareStatus::Exhausted
    )));
    assert_answers_are_the_claims(&stack, &envelopes, KILL_TOTAL, KILL_SHARES, &replies).await;

    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.held_cents, 0);
    assert_eq!(
        report.claims,
        i64::from(KILL_SHARES) * KILL_ENVELOPES as i64
    );
    assert!(
        process.exited().is_none(),
        "the restarted cell died; stderr:\n{}",
        process.stderr()
    );
}

/// One outage of the order DB: the logic server reports NOT_SERVING and
/// refuses with UNAVAILABLE, moving no money; then it recovers on its own.
async fn outage(
    stack: &mut Stack,
    pg: &mut PgServer,
    channel: &Channel,
    crash: bool,
    round: usize,
) {
    let envelope = stack
        .send(
            &format!("sender{round}"),
            pb::EnvelopeKind::Lucky,
            10_000,
            20,
        )
        .await;
    let mut early = stack.client(0, &format!("early{round}"));
    let first = early
        .open(pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status(), pb::ShareStatus::Available);
    let payer = format!("payer{round}");
    stack.fund(&payer, 5_000).await;
    let send = pb::SendRequest {
        total_cents: 5_000,
        count: 5,
        kind: pb::EnvelopeKind::Equal.into(),
        greeting: String::new(),
        recipients: Vec::new(),
        idempotency_key: format!("outage-{round}"),
    };

    if crash {
        pg.kill9().unwrap();
    } else {
        pg.stop().await.unwrap();
    }
    wait_for_health(channel, ServingStatus::NotServing).await;
    let late = format!("late{round}");
    let refused = stack
        .client(0, &late)
        .open(pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let refused = stack
        .client(0, &payer)
        .send(send.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        stack.ledger.balance(&payer).await.unwrap(),
        5_000,
        "a refused Send debits nothing"
    );

    pg.restart().await.unwrap();
    wait_for_health(channel, ServingStatus::Serving).await;
    let opened = stack
        .client(0, &late)
        .open(pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.status(), pb::ShareStatus::Available);
    let again = early
        .open(pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "the share opened before the outage");
    let sent = stack
        .client(0, &payer)
        .send(send)
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    assert_eq!(sent.status(), pb::EnvelopeStatus::Active);
    assert_eq!(stack.ledger.balance(&payer).await.unwrap(), 0);
    let stored: HashSet<(String, i64)> = stack.claims(&envelope.id).await.into_iter().collect();
    let expected: HashSet<(String, i64)> = [
        (format!("early{round}"), first.amount_cents),
        (late, opened.amount_cents),
    ]
    .into_iter()
    .collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_order_database() {
    // The order DB on a server of this test's own, to stop and to crash.
    let mut pg = PgServer::start().await.unwrap();
    let orders_script = redcell_migrations::script(redcell_migrations::ORDER_DB);
    pg.ensure_template(stack::ORDERS_TEMPLATE, &[&orders_script])
        .await
        .unwrap();
    let orders = pg.clone_database(stack::ORDERS_TEMPLATE).await.unwrap();
    let shared = redcell_harness::shared().await.unwrap();
    let ledger_script = redcell_migrations::script(redcell_migrations::LEDGER);
    shared
        .ensure_template(stack::LEDGER_TEMPLATE, &[&ledger_script])
        .await
        .unwrap();
    let ledger_db = shared.clone_database(stack::LEDGER_TEMPLATE).await.unwrap();
    let mut stack = StackBuilder::default().start_on(orders, ledger_db).await;
    let channel = Stack::channel_to(stack.address(0));
    wait_for_health(&channel, ServingStatus::Serving).await;

    outage(&mut stack, &mut pg, &channel, false, 0).await;
    outage(&mut stack, &mut pg, &channel, true, 1).await;

    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.claims, 4);
    assert_eq!(report.pending_payments, 0);
    drop(stack);
    drop(pg);
}

const STOP_ENVELOPES: usize = 2;
const STOP_SHARES: u32 = 150;
const STOP_TOTAL: i64 = 60_000;
const STOP_USERS: usize = 200;
const STOP_AFTER_REPLIES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_finishes_the_batches_in_flight() {
    // Server 0 takes the load and is stopped; server 1 stays up (its workers
    // settle, and it serves the Opens server 0 refused).
    let mut stack = StackBuilder {
        servers: 2,
        ..StackBuilder::default()
    }
    .start()
    .await;
    let mut envelopes = Vec::new();
    for index in 0..STOP_ENVELOPES {
        let envelope = stack
            .send(
                &format!("sender{index}"),
                pb::EnvelopeKind::Lucky,
                STOP_TOTAL,
                STOP_SHARES,
            )
            .await;
        envelopes.push(envelope.id);
    }
    let server0 = Stack::channel_to(stack.address(0));
    let load = Load::new(STOP_AFTER_REPLIES);
    let tasks = load.start(users_opening(&server0, STOP_USERS, &envelopes));
    load.reached().await;
    load.interrupted.store(true, Ordering::SeqCst);
    let answered_at_stop = load.replies().len();
    stack.stop_server(0).await;
    join_all(tasks).await;

    let all_pairs = STOP_ENVELOPES * STOP_USERS;
    assert!(
        answered_at_stop < all_pairs,
        "the stop came after the load had finished"
    );
    let during = load.replies();
    let unfinished = load.unfinished();
    assert_eq!(during.len() + unfinished.len(), all_pairs);
    // Every batch that began committed completely and its callers got their
    // answers: the stored claims are exactly the shares answered, no more.
    for envelope in &envelopes {
        let stored: HashSet<(String, i64)> = stack.claims(envelope).await.into_iter().collect();
        assert_eq!(
            stored,
            taken(&during, envelope),
            "{envelope}: after the stop, the claims stored are the shares answered"
        );
    }
    // Nothing half-written: every claim has its transfer, every envelope adds
    // up. (Settled first: server 1's settlement worker is running, and the
    // money check reads the order DB and the ledger one after the other.)
    stack.drain_settlement().await;
    stack.check_money().await;

    // The Opens server 0 refused complete on server 1.
    let server1 = Stack::channel_to(stack.address(1));
    let rest = Load::new(usize::MAX);
    let work = unfinished
        .iter()
        .map(|(envelope, user)| {
            (
                Stack::client_on(&server1, user),
                user.clone(),
                vec![envelope.clone()],
            )
        })
        .collect();
    join_all(rest.start(work)).await;
    let mut replies = during;
    replies.extend(rest.replies());
    assert_eq!(replies.len(), all_pairs);
    assert_answers_are_the_claims(&stack, &envelopes, STOP_TOTAL, STOP_SHARES, &replies).await;

    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.held_cents, 0);
    assert_eq!(
        report.claims,
        i64::from(STOP_SHARES) * STOP_ENVELOPES as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_exit_78_before_binding() {
    let listen = free_port();
    let good = stack::topology_text(&[listen], "postgres://redcell@127.0.0.1:9/cell_n1");
    let bad = good.replace("minting:\n  epoch: 0\n", "minting:\n  epoch: 7\n");
    assert_ne!(bad, good);
    let good = TempFile::new("good.yaml", &good);
    let bad = TempFile::new("bad.yaml", &bad);
    let missing = std::env::temp_dir().join(format!(
        "redcell-cell-test-{}-missing.yaml",
        std::process::id()
    ));
    let ledger = "postgres://redcell@127.0.0.1:9/ledger";
    let args = |topology: &Path, cell: &str, ledger: &str, extra: &[&str]| {
        let mut args: Vec<String> = [
            "--topology",
            &topology.display().to_string(),
            "--cell",
            cell,
            "--listen",
            &listen.to_string(),
            "--ledger-dsn",
            ledger,
            "--internal-token",
            crate::stack::INTERNAL_TOKEN,
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    };
    let no_env: &[(&str, &str)] = &[];
    let cases = [
        (
            "unknown --cell",
            args(good.path(), "nope", ledger, &[]),
            "cell: --cell: unknown cell \"nope\" (cells: n1, n2, s1)\n".to_owned(),
        ),
        (
            "malformed --ledger-dsn",
            args(good.path(), "n1", "not a dsn", &[]),
            "cell: --ledger-dsn: malformed PostgreSQL DSN\n".to_owned(),
        ),
        (
            "invalid topology",
            args(bad.path(), "n1", ledger, &[]),
            format!(
                "cell: {}: minting.epoch: epoch 7 is not declared under epochs\n",
                bad.path().display()
            ),
        ),
        (
            "--lane-queue-cap 0",
            args(good.path(), "n1", ledger, &["--lane-queue-cap", "0"]),
            "cell: --lane-queue-cap: must be at least 1\n".to_owned(),
        ),
        (
            "unreadable topology",
            args(&missing, "n1", ledger, &[]),
            format!("cell: --topology: cannot read {}: ", missing.display()),
        ),
        // The merged committer needs connections left for the lanes' loads.
        (
            "--merge-in-flight not below --db-pool",
            args(good.path(), "n1", ledger, &["--merge-in-flight", "16"]),
            "cell: --merge-in-flight: must be below --db-pool (16) so lanes can still load envelopes, got 16\n"
                .to_owned(),
        ),
        (
            "--max-message-bytes 0",
            args(good.path(), "n1", ledger, &["--max-message-bytes", "0"]),
            "cell: --max-message-bytes: must be at least 1\n".to_owned(),
        ),
        // Limits the arithmetic cannot carry: a count above the i32 columns,
        // a total whose double overflows i64.
        (
            "--max-count above i32::MAX",
            args(good.path(), "n1", ledger, &["--max-count", "2147483648"]),
            "cell: --max-count: must be at most 2147483647 (shares are counted in 32-bit columns), got 2147483648\n"
                .to_owned(),
        ),
        (
            "--max-total-cents above i64::MAX / 2",
            args(
                good.path(),
                "n1",
                ledger,
                &["--max-total-cents", "4611686018427387904"],
            ),
            "cell: --max-total-cents: must be at most 4611686018427387903 (twice a total must fit in 64 bits), got 4611686018427387904\n"
                .to_owned(),
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(name, args, expected)| (name, args, no_env, expected));
    // Every flag has an environment fallback: these values arrive only
    // through the environment and are refused like the flags.
    let from_env = [
        (
            "REDCELL_LANE_QUEUE_CAP=0",
            args(good.path(), "n1", ledger, &[]),
            &[("REDCELL_LANE_QUEUE_CAP", "0")][..],
            "cell: --lane-queue-cap: must be at least 1\n".to_owned(),
        ),
        (
            "REDCELL_MAX_COUNT above i32::MAX",
            args(good.path(), "n1", ledger, &[]),
            &[("REDCELL_MAX_COUNT", "4294967295")][..],
            "cell: --max-count: must be at most 2147483647 (shares are counted in 32-bit columns), got 4294967295\n"
                .to_owned(),
        ),
        (
            "REDCELL_MERGE_IN_FLIGHT=0",
            args(good.path(), "n1", ledger, &[]),
            &[("REDCELL_MERGE_IN_FLIGHT", "0")][..],
            "cell: --merge-in-flight: must be at least 1\n".to_owned(),
        ),
        (
            "REDCELL_WORKER_INTERVAL_MS=0",
            args(good.path(), "n1", ledger, &[]),
            &[("REDCELL_WORKER_INTERVAL_MS", "0")][..],
            "cell: --worker-interval-ms: must be at least 1\n".to_owned(),
        ),
    ];
    for (name, args, env, expected) in cases.chain(from_env) {
        let process = CellProcess::spawn_with_env(&args, env);
        expect_config_exit(name, process, listen, &expected).await;
    }
}

/// Waits for `process` to exit 78 without ever binding `listen`, with
/// `expected` in its stderr; its stderr.
async fn expect_config_exit(
    name: &str,
    mut process: CellProcess,
    listen: SocketAddr,
    expected: &str,
) -> String {
    let mut status = None;
    for _ in 0..POLLS {
        assert!(
            std::net::TcpStream::connect(listen).is_err(),
            "{name}: the port was bound"
        );
        status = process.exited();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let stderr = process.stderr();
    let status = status.unwrap_or_else(|| panic!("{name}: cell did not exit; stderr:\n{stderr}"));
    assert_eq!(
        status.code(),
        Some(78),
        "{name}: exit code; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(expected),
        "{name}: stderr {stderr:?} lacks {expected:?}"
    );
    assert!(!stderr.contains("serving"), "{name}: {stderr}");
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "{name}: the port was bound"
    );
    stderr
}

/// The flags of a logic server of n1 whose topology file is `topology`, with
/// a ledger nobody listens on (these servers never get that far).
fn schema_args(topology: &Path, listen: SocketAddr) -> Vec<String> {
    [
        "--topology",
        &topology.display().to_string(),
        "--cell",
        "n1",
        "--listen",
        &listen.to_string(),
        "--ledger-dsn",
        "postgres://redcell@127.0.0.1:9/ledger",
        "--internal-token",
        crate::stack::INTERNAL_TOKEN,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// An order DB that answers with a schema this binary was not built for is
/// refused at start like a bad flag (exit 78, before binding), naming the
/// schema, its version and what to run; the password of its DSN is not shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_db_with_another_schema_exits_78_naming_it() {
    use redcell_migrations::{ORDER_DB, Schema};
    let server = redcell_harness::shared().await.unwrap();
    let expected = Schema::Orders.expected_version();
    let newer = expected + 1;
    // (database, how it is prepared, what stderr must say)
    let cases: [(&str, &str, String); 4] = [
        (
            "schema_never_migrated",
            "",
            format!(
                "the order DB schema was never migrated (this binary expects version {expected}); run `cellctl migrate --cell n1`"
            ),
        ),
        (
            "schema_behind",
            "behind",
            format!(
                "the order DB schema is at version 1, this binary expects version {expected}; migrate it; run `cellctl migrate --cell n1`"
            ),
        ),
        (
            "schema_newer",
            "newer",
            format!(
                "the database has migration {newer}, newer than this binary knows; upgrade the binary"
            ),
        ),
        (
            "schema_latin1",
            "latin1",
            "the order DB's encoding is LATIN1; redcell stores text as UTF8".to_owned(),
        ),
    ];
    for (database, preparation, message) in cases {
        if preparation == "latin1" {
            let admin = server.connect("postgres").await.unwrap();
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE {database} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
                ))
                .await
                .unwrap();
        } else {
            server.create_database(database).await.unwrap();
        }
        let mut client = server.connect(database).await.unwrap();
        match preparation {
            "behind" => {
                redcell_migrations::apply(&mut client, &ORDER_DB[..1])
                    .await
                    .unwrap();
            }
            "newer" | "latin1" => {
                redcell_migrations::apply(&mut client, ORDER_DB)
                    .await
                    .unwrap();
            }
            _ => {}
        }
        if preparation == "newer" {
            client
                .execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, 'future', 0)",
                    &[&newer],
                )
                .await
                .unwrap();
        }
        if preparation == "behind" && expected == 1 {
            continue; // nothing to be behind of
        }
        // The DSN carries a password the message must not repeat.
        let plain = server.dsn(database);
        let (user, host) = plain.split_once('@').unwrap();
        let dsn = format!("{user}:hunter2-secret@{host}");
        assert!(dsn.contains("hunter2-secret"), "{dsn}");
        let listen = free_port();
        let topology = TempFile::new("schema.yaml", &stack::topology_text(&[listen], &dsn));
        let process = CellProcess::spawn(&schema_args(topology.path(), listen));
        let stderr = expect_config_exit(database, process, listen, &message).await;
        let shown = redcell_migrations::display_dsn(&dsn);
        assert!(
            stderr.contains(&format!("cell: order DB {shown}: ")),
            "{database}: {stderr}"
        );
        assert!(!stderr.contains("hunter2-secret"), "{database}: {stderr}");
    }
}

/// The built-in ledger is held to the same rule: a cell whose order DB is
/// current but whose ledger was never migrated exits 78 naming the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_ledger_exits_78_naming_it() {
    let (orders, _ledger) = stack::databases().await;
    let server = redcell_harness::shared().await.unwrap();
    server
        .create_database("ledger_never_migrated")
        .await
        .unwrap();
    let ledger = server.dsn("ledger_never_migrated");
    let listen = free_port();
    let topology = TempFile::new("ledger.yaml", &stack::topology_text(&[listen], &orders.dsn));
    let mut args = schema_args(topology.path(), listen);
    let ledger_at = args.iter().position(|arg| arg == "--ledger-dsn").unwrap() + 1;
    args[ledger_at] = ledger.clone();
    let expected = redcell_migrations::Schema::Ledger.expected_version();
    let message = format!(
        "cell: ledger {}: the ledger schema was never migrated (this binary expects version {expected}); run `cellctl migrate --ledger`",
        redcell_migrations::display_dsn(&ledger)
    );
    expect_config_exit(
        "unmigrated ledger",
        CellProcess::spawn(&args),
        listen,
        &message,
    )
    .await;
}

/// An order DB that is down at start is an outage, not an error: the server
/// starts NOT_SERVING, and when the database comes back unmigrated it stays
/// NOT_SERVING (logged as a schema error) until it is migrated, then serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_db_down_at_start_is_checked_before_serving() {
    let mut pg = PgServer::start().await.unwrap();
    pg.create_database("late_orders").await.unwrap();
    let dsn = pg.dsn("late_orders");
    pg.stop().await.unwrap();
    let shared = redcell_harness::shared().await.unwrap();
    let ledger_script = redcell_migrations::script(redcell_migrations::LEDGER);
    shared
        .ensure_template(stack::LEDGER_TEMPLATE, &[&ledger_script])
        .await
        .unwrap();
    let ledger_db = shared.clone_database(stack::LEDGER_TEMPLATE).await.unwrap();

    let listen = free_port();
    let topology = TempFile::new("late.yaml", &stack::topology_text(&[listen], &dsn));
    let mut args = schema_args(topology.path(), listen);
    let ledger_at = args.iter().position(|arg| arg == "--ledger-dsn").unwrap() + 1;
    args[ledger_at] = ledger_db.dsn.clone();
    let mut process = CellProcess::spawn(&args);
    let channel = Stack::channel_to(listen);
    wait_for_health(&channel, ServingStatus::NotServing).await;
    assert!(process.exited().is_none(), "{}", process.stderr());

    // The database comes back, never migrated: logged, still NOT_SERVING.
    pg.restart().await.unwrap();
    let expected = redcell_migrations::Schema::Orders.expected_version();
    let logged =
        format!("the order DB schema was never migrated (this binary expects version {expected})");
    let mut seen = false;
    for _ in 0..POLLS {
        if process.stderr().contains(&logged) {
            seen = true;
            break;
        }
        assert!(process.exited().is_none(), "{}", process.stderr());
        tokio::time::sleep(POLL).await;
    }
    assert!(
        seen,
        "the schema problem was never logged; stderr:\n{}",
        process.stderr()
    );
    assert_eq!(health(&channel).await, Some(ServingStatus::NotServing));
    assert!(
        !process.stderr().contains("reachable: SERVING"),
        "reported SERVING before the schema was checked:\n{}",
        process.stderr()
    );

    // Migrated: it serves, and a Send goes through.
    let mut client = pg.connect("late_orders").await.unwrap();
    redcell_migrations::apply(&mut client, redcell_migrations::ORDER_DB)
        .await
        .unwrap();
    wait_serving(&mut process, &channel).await;
    // The schema answers: an envelope of n1 nobody sent is NOT_FOUND.
    let unknown = "2501011000000000001123".to_owned();
    let missing = Stack::client_on(&channel, "late")
        .get(pb::GetRequest {
            envelope_id: unknown.clone(),
            ..pb::GetRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_eq!(missing.message(), format!("envelope {unknown} not found"));
    process.kill();
    drop(pg);
}

/// Sends SIGHUP to the child.
fn hangup(process: &CellProcess) {
    let status = Command::new("kill")
        .args(["-HUP", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until the child's stderr has `count` lines containing `text`; fails
/// at once if it exits.
async fn wait_for_log(process: &mut CellProcess, text: &str, count: usize) {
    for _ in 0..POLLS {
        if let Some(status) = process.exited() {
            panic!("cell exited ({status}); stderr:\n{}", process.stderr());
        }
        if process.stderr().matches(text).count() >= count {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("cell never logged {text:?}; stderr:\n{}", process.stderr());
}

/// SIGHUP makes the real binary reread cells.yaml (DESIGN.md §3 hot reload).
/// Its file watch is set to an hour, so only the signal explains a reload. A
/// bad file read on SIGHUP is refused with a log line and the cell keeps
/// serving the old topology; the grown one is then taken without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_topology_and_a_bad_file_is_refused() {
    use crate::reload::{GAINED_SUFFIX, epoch_of, grown_text, send_on};

    let listen = free_port();
    let mut stack = StackBuilder::default().start_external(&[listen]).await;
    let topology = TempFile::new("hup.yaml", &stack.topology_text);
    let mut args = cell_args(&stack, topology.path(), listen);
    args.extend(["--topology-reload-ms".to_owned(), "3600000".to_owned()]);
    let channel = Stack::channel_to(listen);
    let mut process = CellProcess::spawn(&args);
    wait_serving(&mut process, &channel).await;

    // A bad file: refused on SIGHUP and logged; epoch 0 keeps serving.
    std::fs::write(topology.path(), "version: 1\ncells: [").unwrap();
    hangup(&process);
    wait_for_log(&mut process, "topology reload refused", 1).await;
    stack.fund("gained", 1_000).await;
    let refused = send_on(&channel, "gained", 1_000, Some(GAINED_SUFFIX))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let old = send_via(&mut stack, &channel, "old", 1_000, 4).await;
    assert_eq!(epoch_of(&old), "00", "{old}");

    // The grown topology, written and signalled: n1 now mints suffix 600
    // under epoch 1 (the same Send, same key, already funded).
    let grown = grown_text(&stack.topology_text);
    std::fs::write(topology.path(), &grown).unwrap();
    hangup(&process);
    wait_for_log(&mut process, "topology reloaded", 1).await;
    let gained = send_on(&channel, "gained", 1_000, Some(GAINED_SUFFIX))
        .await
        .unwrap();
    assert_eq!(epoch_of(&gained.id), "01", "{}", gained.id);
    assert!(gained.id.ends_with(GAINED_SUFFIX), "{}", gained.id);
    for envelope in [&gained.id, &old] {
        let mut client = Stack::client_on(&channel, "opener");
        let reply = open_retrying(&mut client, envelope).await;
        assert_eq!(reply.status(), pb::ShareStatus::Available, "{reply:?}");
    }
    assert!(process.exited().is_none(), "stderr:\n{}", process.stderr());

    stack.topology = std::sync::Arc::new(redcell_topology::Topology::parse(&grown).unwrap());
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.pending_payments, 0);
    assert_eq!(report.claims, 2);
    process.kill();
}

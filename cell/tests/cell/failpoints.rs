//! Fail points (issue 16 item 2): the real `cell` binary, built with the
//! `failpoints` feature, is told to stop at one point (`REDCELL_CRASH_AT`,
//! see cell/src/failpoints.rs), is SIGKILLed while it sits there, and a fresh
//! server on the same order DB and ledger takes over. Each test checks what
//! the client was told against what is stored: no acknowledged operation
//! lost, nobody paid twice, pending work drained, and the money invariants
//! of DESIGN §5 (`Stack::check_money`: reconcile + conservation).
//!
//! The archive point is hit by `cellctl archive`, a library call into the
//! cell crate: it is crashed in this process instead (the run's task panics
//! at the point, so its transaction never commits, as when cellctl dies).

use std::{net::SocketAddr, time::Duration};

use redcell_proto::v1::{self as pb};
use tonic::transport::Channel;

use crate::{
    process::{CellProcess, TempFile, cell_args, free_port, send_request, send_via, wait_serving},
    stack::{self, Stack, StackBuilder},
};

/// Polls before a test gives up waiting (a hang guard, not a timing claim).
const POLLS: usize = 600;
const POLL: Duration = Duration::from_millis(50);

/// A cell process of n1 that stops at one fail point, and everything to
/// replace it by a fresh one.
pub(crate) struct Crash {
    pub stack: Stack,
    _topology: TempFile,
    pub channel: Channel,
    args: Vec<String>,
    process: CellProcess,
}

impl Crash {
    /// Databases, then a server that holds at `point` when it gets there.
    /// `extra` replaces flags of [`cell_args`] (e.g. the envelope TTL).
    pub async fn start(point: &str, extra: &[(&str, &str)]) -> Crash {
        Crash::start_with(&[("REDCELL_CRASH_AT", point)], extra).await
    }

    /// Databases, then a server with the environment `env` (the switches of
    /// cell/src/failpoints.rs) and the flags `extra`.
    pub async fn start_with(env: &[(&str, &str)], extra: &[(&str, &str)]) -> Crash {
        let listen: SocketAddr = free_port();
        let stack = StackBuilder::default().start_external(&[listen]).await;
        let topology = TempFile::new("failpoint.yaml", &stack.topology_text);
        let mut args = cell_args(&stack, topology.path(), listen);
        for (flag, value) in extra {
            set_flag(&mut args, flag, value);
        }
        let channel = Stack::channel_to(listen);
        let mut process = CellProcess::spawn_with_env(&args, env);
        wait_serving(&mut process, &channel).await;
        Crash {
            stack,
            _topology: topology,
            channel,
            args,
            process,
        }
    }

    /// Waits until the server logged that it sits at `point`.
    pub async fn reached(&mut self, point: &str) {
        let line = format!("fail point {point} reached");
        for _ in 0..POLLS {
            if let Some(status) = self.process.exited() {
                panic!("cell exited ({status}); stderr:\n{}", self.process.stderr());
            }
            if self.process.stderr().contains(&line) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "the cell never reached {point}; stderr:\n{}",
            self.process.stderr()
        );
    }

    /// SIGKILL at the point, then a fresh server (no fail point) on the same
    /// databases and port.
    pub async fn kill_and_restart(&mut self) {
        self.process.kill();
        self.process = CellProcess::spawn(&self.args);
        wait_serving(&mut self.process, &self.channel).await;
    }

    pub fn client(&self, user: &str) -> stack::Client {
        Stack::client_on(&self.channel, user)
    }

    /// Row values of the order DB, one `bigint`/`smallint` column.
    pub async fn value(&self, sql: &str, id: &str) -> i64 {
        let client = self.stack.orders.connect().await.unwrap();
        let row = client.query_one(sql, &[&id]).await.unwrap();
        row.try_get::<_, i64>(0)
            .or_else(|_| row.try_get::<_, i16>(0).map(i64::from))
            .or_else(|_| row.try_get::<_, i32>(0).map(i64::from))
            .unwrap()
    }

    pub async fn status(&self, id: &str) -> i64 {
        self.value("SELECT status FROM envelopes WHERE id = $1", id)
            .await
    }

    /// Waits until envelope `id` has status `code` (DB codes: 2 ACTIVE,
    /// 4 EXPIRED, 5 CANCELLED).
    pub async fn wait_status(&self, id: &str, code: i64) {
        let mut last = 0;
        for _ in 0..POLLS {
            last = self.status(id).await;
            if last == code {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("envelope {id} stayed in status {last}, never {code}");
    }

    /// A server holding at `point` with alice's acknowledged 100.00 envelope.
    pub async fn with_envelope(point: &str, extra: &[(&str, &str)]) -> (Crash, String) {
        let mut crash = Crash::start(point, extra).await;
        let channel = crash.channel.clone();
        let id = send_via(&mut crash.stack, &channel, "alice", 10_000, 5).await;
        (crash, id)
    }

    /// [`Crash::with_envelope`], then bob's Open of it, in flight when the
    /// server is killed at `point` and restarted.
    pub async fn open_killed_at(point: &str) -> (Crash, String) {
        let (mut crash, id) = Crash::with_envelope(point, &[]).await;
        let mut client = crash.client("bob");
        let request = open(&id);
        crash
            .kill_in_flight(point, "Open", async move { client.open(request).await })
            .await;
        (crash, id)
    }

    /// Runs `call` until the server sits at `point`, SIGKILLs and restarts it,
    /// and checks the client was refused (`what` names the call in the log).
    pub async fn kill_in_flight<T: Send + std::fmt::Debug + 'static>(
        &mut self,
        point: &str,
        what: &str,
        call: impl Future<Output = Result<T, tonic::Status>> + Send + 'static,
    ) {
        let in_flight = tokio::spawn(call);
        self.reached(point).await;
        self.kill_and_restart().await;
        let refused = in_flight.await.unwrap().unwrap_err();
        println!("the {what} in flight at the kill: {refused:?}");
    }

    /// `user` opens `id` (retrying while the cell restarts) and is given an
    /// available share.
    pub async fn open_available(&self, user: &str, id: &str) -> pb::OpenResponse {
        let share = stack::open_retrying(&mut self.client(user), id).await;
        assert_eq!(share.status(), pb::ShareStatus::Available);
        share
    }

    /// Settlement drained, then the money invariants checked.
    pub async fn settled_report(&self) -> redcell_cell::reconcile::Report {
        self.stack.drain_settlement().await;
        self.stack.check_money().await
    }

    /// Still running after everything the test did.
    pub fn assert_alive(&mut self) {
        assert!(
            self.process.exited().is_none(),
            "the restarted cell died; stderr:\n{}",
            self.process.stderr()
        );
    }
}

/// Sets `flag` to `value` in `args` (replacing it when present: clap takes a
/// flag once).
pub(crate) fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|arg| arg == flag) {
        Some(at) => args[at + 1] = value.to_owned(),
        None => args.extend([flag.to_owned(), value.to_owned()]),
    }
}

fn open(envelope: &str) -> pb::OpenRequest {
    pb::OpenRequest {
        envelope_id: envelope.to_owned(),
    }
}

/// Killed between the sender's debit and activation: the Send was never
/// acknowledged; recovery finds the debit and activates the envelope; the
/// client's retry (same key) gets that envelope; the sender paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_killed_after_the_debit_activates_once_and_charges_once() {
    const POINT: &str = "send::after_debit";
    let mut crash = Crash::start(POINT, &[]).await;
    crash.stack.fund("alice", 10_000).await;
    let request = send_request("order-1", 10_000, 5);
    let mut client = crash.client("alice");
    let in_flight = tokio::spawn({
        let request = request.clone();
        async move { client.send(request).await }
    });
    crash.reached(POINT).await;
    assert_eq!(crash.stack.ledger.balance("alice").await.unwrap(), 0);
    crash.kill_and_restart().await;
    let refused = in_flight.await.unwrap().unwrap_err();
    println!("the Send in flight at the kill: {refused:?}");

    // The envelope was written pending before the debit; recovery (grace 1 s)
    // resolves it by asking the ledger: debited, so ACTIVE.
    let client = crash.stack.orders.connect().await.unwrap();
    let id: String = client
        .query_one(
            "SELECT envelope_id FROM send_requests WHERE idempotency_key = 'order-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    crash.wait_status(&id, 2).await;
    // The client's retry of the same Send: the same envelope, no new debit.
    let retried = crash
        .client("alice")
        .send(request)
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    assert_eq!(retried.id, id);
    assert_eq!(retried.status(), pb::EnvelopeStatus::Active);
    let ledger = &crash.stack.ledger;
    assert_eq!(ledger.balance("alice").await.unwrap(), 0, "charged once");
    assert_eq!(
        ledger
            .entries_count_by_prefix(stack::SEND_KEYS)
            .await
            .unwrap(),
        1,
        "one debit"
    );
    let share = crash.open_available("bob", &id).await;
    let report = crash.settled_report().await;
    assert_eq!(report.pending_payments, 0);
    assert_eq!(report.held_cents, 10_000 - share.amount_cents);
    crash.assert_alive();
}

/// Killed before a lane's commit: the Open was never acknowledged and nothing
/// was written; the retry takes the share once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_killed_before_the_commit_writes_nothing_and_the_retry_takes_one_share() {
    const POINT: &str = "lane::before_commit";
    let (mut crash, id) = Crash::open_killed_at(POINT).await;
    assert!(
        crash.stack.claims(&id).await.is_empty(),
        "nothing committed"
    );

    let share = crash.open_available("bob", &id).await;
    let again = stack::open_retrying(&mut crash.client("bob"), &id).await;
    assert_eq!(again.amount_cents, share.amount_cents, "the same share");
    assert_eq!(
        crash.stack.claims(&id).await,
        vec![("bob".to_owned(), share.amount_cents)]
    );
    let report = crash.settled_report().await;
    assert_eq!(report.claims, 1);
    assert_eq!(
        crash.stack.ledger.balance("bob").await.unwrap(),
        share.amount_cents
    );
    crash.assert_alive();
}

/// Killed after a lane's commit, before its replies: the share is stored
/// though the client never heard of it; its retry answers that very share
/// (no second one), and its transfer settles once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_killed_after_the_commit_answers_the_stored_share_on_retry() {
    const POINT: &str = "lane::after_commit";
    let (mut crash, id) = Crash::open_killed_at(POINT).await;
    let stored = crash.stack.claims(&id).await;
    assert_eq!(stored.len(), 1, "the commit happened: {stored:?}");
    let (user, amount) = stored[0].clone();
    assert_eq!(user, "bob");

    let retried = crash.open_available("bob", &id).await;
    assert_eq!(
        retried.amount_cents, amount,
        "the retry answers the stored share"
    );
    assert_eq!(crash.stack.claims(&id).await, stored, "no second share");
    let report = crash.settled_report().await;
    assert_eq!(report.claims, 1);
    assert_eq!(crash.stack.ledger.balance("bob").await.unwrap(), amount);
    assert_eq!(report.held_cents, 10_000 - amount);
    crash.assert_alive();
}

/// Killed between the ledger's credit and marking the transfer done: the
/// receiver is credited, the transfer still pending; the fresh server credits
/// it again under the same key, which the ledger answers without a second
/// entry, and marks it done: paid exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_killed_after_the_credit_pays_the_receiver_once() {
    const POINT: &str = "settlement::after_credit";
    let (mut crash, id) = Crash::with_envelope(POINT, &[]).await;
    let share = crash.open_available("bob", &id).await;
    crash.reached(POINT).await;
    let ledger = &crash.stack.ledger;
    assert_eq!(ledger.balance("bob").await.unwrap(), share.amount_cents);
    let pending = crash
        .value(
            "SELECT count(*) FROM transfers WHERE envelope_id = $1 AND status = 1",
            &id,
        )
        .await;
    assert_eq!(pending, 1, "credited, not yet marked done");
    crash.kill_and_restart().await;
    crash.stack.drain_settlement().await;
    let ledger = &crash.stack.ledger;
    assert_eq!(
        ledger.balance("bob").await.unwrap(),
        share.amount_cents,
        "credited once"
    );
    let key = stack::claim_key(&id, share.sequence);
    assert_eq!(
        ledger.entries_count_by_prefix(&key).await.unwrap(),
        1,
        "one entry under {key}"
    );
    let report = crash.stack.check_money().await;
    assert_eq!(report.claims, 1);
    assert_eq!(report.pending_transfers, 0);
    assert_eq!(report.held_cents, 10_000 - share.amount_cents);
    crash.assert_alive();
}

/// Killed inside the expiry transaction (the envelope marked EXPIRED and its
/// refund written, not committed): neither survives; the fresh server expires
/// it again and refunds exactly the remainder, once; no share after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_killed_before_its_commit_refunds_exactly_once_after_restart() {
    const POINT: &str = "expiry::inside";
    let (mut crash, id) = Crash::with_envelope(POINT, &[("--envelope-ttl-secs", "2")]).await;
    let share = crash.open_available("bob", &id).await;
    crash.reached(POINT).await;
    crash.kill_and_restart().await;
    // (The fresh server may already have expired it again: either state is
    // fine here, only one refund ever.)
    crash.wait_status(&id, 4).await;
    let refunds = crash
        .value(
            "SELECT count(*) FROM transfers WHERE envelope_id = $1 AND kind = 2",
            &id,
        )
        .await;
    assert_eq!(refunds, 1, "one refund transfer");
    let refunded = crash
        .value(
            "SELECT amount_cents FROM transfers WHERE envelope_id = $1 AND kind = 2",
            &id,
        )
        .await;
    assert_eq!(
        refunded,
        10_000 - share.amount_cents,
        "exactly the remainder"
    );
    let late = stack::open_retrying(&mut crash.client("carol"), &id).await;
    assert_eq!(late.status(), pb::ShareStatus::Expired);
    let report = crash.settled_report().await;
    assert_eq!(report.claims, 1);
    assert_eq!(report.held_cents, 0);
    assert_eq!(crash.stack.ledger.balance("alice").await.unwrap(), refunded);
    crash.assert_alive();
}

/// `cellctl archive` crashing between its export and its delete (in this
/// process: the run panics at the point): every row is still there, no
/// `archives` row names the files, the books balance; the re-run archives it
/// all and the books still balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_crashing_after_the_export_deletes_nothing_and_reruns() {
    use redcell_cell::archive::{self, Counts, Record, Table};

    let mut stack = StackBuilder::default().start().await;
    let envelope = stack.send("alice", pb::EnvelopeKind::Equal, 3_000, 1).await;
    let share = stack::open_retrying(&mut stack.client(0, "bob"), &envelope.id).await;
    assert_eq!(share.amount_cents, 3_000);
    stack.drain_settlement().await;
    let before = stack.check_money().await;
    let snapshot = stack.snapshot().await;
    // Tomorrow: every envelope of this test was minted before it.
    let tomorrow = redcell_topology::MintDate::from_system_time(
        std::time::SystemTime::now() + Duration::from_secs(86_400),
    )
    .unwrap();
    let record = Record {
        directory: "/nonexistent/failpoint-test".to_owned(),
        manifest: "manifest.json".to_owned(),
        manifest_sha256: "0".repeat(64),
    };
    let run = |dsn_client: tokio_postgres::Client| {
        let record = record.clone();
        async move {
            let mut client = dsn_client;
            let run = archive::begin(&mut client, tomorrow)
                .await
                .unwrap()
                .expect("a settled envelope to archive");
            let mut exported = Counts::default();
            for table in Table::ALL {
                let mut lines = Vec::new();
                let rows = run
                    .export(table, |line| {
                        lines.push(line.to_owned());
                        Ok(())
                    })
                    .await
                    .unwrap();
                exported.set(table, rows);
            }
            run.finish(&record, exported).await.unwrap()
        }
    };

    let crashed = {
        let scenario = fail::FailScenario::setup();
        fail::cfg("archive::after_export", "panic").unwrap();
        let crashed = tokio::spawn(run(stack.orders.connect().await.unwrap())).await;
        scenario.teardown();
        crashed
    };
    assert!(
        crashed.as_ref().is_err_and(|error| error.is_panic()),
        "the run was to crash at the point: {crashed:?}"
    );
    assert_eq!(stack.snapshot().await, snapshot, "nothing deleted");
    let client = stack.orders.connect().await.unwrap();
    let archives: i64 = client
        .query_one("SELECT count(*) FROM archives", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(archives, 0, "no archives row names the exported files");
    let after_crash = stack.check_money().await;
    assert_eq!(after_crash.envelopes, before.envelopes);

    let deleted = tokio::spawn(run(stack.orders.connect().await.unwrap()))
        .await
        .unwrap();
    assert_eq!(deleted.get(Table::Envelopes), 1);
    assert_eq!(deleted.get(Table::Claims), 1);
    let report = stack.check_money().await;
    assert_eq!(report.envelopes, 0);
    assert_eq!(report.archived_envelopes, 1);
    assert_eq!(stack.ledger.balance("bob").await.unwrap(), 3_000);
}

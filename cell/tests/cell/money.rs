//! The money flow of a cell (DESIGN.md §4, §5, §8): expiry and its exact
//! refund, opens racing expiry, settlement with conservation checkpoints,
//! recovery of `PENDING_PAYMENT` through fault-injecting payment systems,
//! insufficient balance, Send idempotency, envelope kinds, and Get.
//!
//! Every test that moves money ends with `drain_settlement` + `check_money`
//! (zero reconcile discrepancies and ledger conservation). Waits for workers
//! are bounded polls, never wall-clock thresholds.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use redcell_payments::{
    Debit, DebitOutcome, DebitResolution, EntryKind, Payments, PaymentsError, PgLedger,
};
use redcell_proto::v1 as pb;
use tokio::{sync::watch, time::Instant};
use tonic::Code;

use crate::stack::{
    Client, SEND_KEYS, Stack, StackBuilder, open_retrying as open, refund_key, retryable, send_key,
};

// Stored envelope status codes (migrations/sql/orders/0001_orders.sql).
const PENDING_PAYMENT: i16 = 1;
const ACTIVE: i16 = 2;
const EXHAUSTED: i16 = 3;
const EXPIRED: i16 = 4;
const CANCELLED: i16 = 5;

/// Polls happen every 50 ms, at most 600 times: 30 s for any worker.
const POLL: Duration = Duration::from_millis(50);
const POLLS: usize = 600;

// ---------------------------------------------------------------------------
// Helpers.

fn request(kind: pb::EnvelopeKind, total: i64, count: u32, key: &str) -> pb::SendRequest {
    pb::SendRequest {
        total_cents: total,
        count,
        kind: kind.into(),
        greeting: "money".into(),
        recipients: Vec::new(),
        idempotency_key: key.into(),
    }
}

async fn send(
    stack: &Stack,
    sender: &str,
    request: pb::SendRequest,
) -> Result<pb::Envelope, tonic::Status> {
    stack.client(0, sender).send(request).await.map(|response| {
        response
            .into_inner()
            .envelope
            .expect("Send returns the envelope")
    })
}

/// One Grab, retrying the retryable codes (bounded).
async fn grab(client: &mut Client, envelope: &str) -> pb::ShareStatus {
    for _ in 0..1000 {
        let request = pb::GrabRequest {
            envelope_id: envelope.to_owned(),
        };
        match client.grab(request).await {
            Ok(response) => return response.into_inner().status(),
            Err(status) if retryable(&status) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(status) => panic!("Grab of {envelope} failed: {status:?}"),
        }
    }
    panic!("Grab of {envelope} stayed retryable for 1000 attempts");
}

async fn get(
    stack: &Stack,
    envelope: &str,
    page_token: &str,
    page_size: u32,
) -> Result<pb::GetResponse, tonic::Status> {
    stack
        .client(0, "viewer")
        .get(pb::GetRequest {
            envelope_id: envelope.to_owned(),
            page_token: page_token.to_owned(),
            page_size,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// One `bigint` (or `count(*)`) from the order DB.
async fn orders_i64(
    stack: &Stack,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    let client = stack.orders.connect().await.unwrap();
    client.query_one(sql, params).await.unwrap().get(0)
}

async fn table_count(stack: &Stack, table: &str) -> i64 {
    orders_i64(stack, &format!("SELECT count(*) FROM {table}"), &[]).await
}

/// The stored status code of an envelope.
async fn stored_status(stack: &Stack, envelope: &str) -> i16 {
    let client = stack.orders.connect().await.unwrap();
    client
        .query_one("SELECT status FROM envelopes WHERE id = $1", &[&envelope])
        .await
        .unwrap()
        .get(0)
}

/// Waits (bounded) until the stored status of `envelope` satisfies `done`.
async fn wait_status(stack: &Stack, envelope: &str, done: impl Fn(i16) -> bool) -> i16 {
    let mut status = 0;
    for _ in 0..POLLS {
        status = stored_status(stack, envelope).await;
        if done(status) {
            return status;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("envelope {envelope} still has status {status} after 30 s");
}

/// The refund transfers of an envelope: (key, user, amount).
async fn refunds(stack: &Stack, envelope: &str) -> Vec<(String, String, i64)> {
    let client = stack.orders.connect().await.unwrap();
    client
        .query(
            "SELECT key, user_id, amount_cents FROM transfers WHERE envelope_id = $1 AND kind = 2",
            &[&envelope],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// The envelope a sender's idempotency key names, if any.
async fn envelope_of_key(stack: &Stack, sender: &str, key: &str) -> Option<String> {
    let client = stack.orders.connect().await.unwrap();
    client
        .query_opt(
            "SELECT envelope_id FROM send_requests WHERE sender = $1 AND idempotency_key = $2",
            &[&sender, &key],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

async fn balance(stack: &Stack, account: &str) -> i64 {
    stack.ledger.balance(account).await.unwrap()
}

fn expires_at(envelope: &pb::Envelope) -> SystemTime {
    SystemTime::try_from(envelope.expires_at.expect("expires_at")).unwrap()
}

// ---------------------------------------------------------------------------
// Payment systems with faults, wrapping the stack's real ledger.

/// The test's hold on a fault-injecting payment system (shared by the clones
/// every logic server gets).
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Debits still to fail; `usize::MAX`: all of them.
    debit_failures: Arc<AtomicUsize>,
    /// While false, `resolve_debit` is `Unavailable`: the recovery worker can
    /// resolve nothing until the test lets it.
    resolve_open: Arc<AtomicBool>,
    /// `debit` calls seen.
    debit_calls: Arc<AtomicUsize>,
}

impl Faults {
    fn failing_debits(failures: usize) -> Faults {
        let faults = Faults::default();
        faults.debit_failures.store(failures, Ordering::SeqCst);
        faults
    }

    fn let_recovery_resolve(&self) {
        self.resolve_open.store(true, Ordering::SeqCst);
    }

    fn take_failure(&self) -> bool {
        self.debit_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                usize::MAX => Some(usize::MAX),
                left => Some(left - 1),
            })
            .is_ok()
    }

    async fn resolve<P: Payments>(
        &self,
        inner: &P,
        key: &str,
    ) -> Result<DebitResolution, PaymentsError> {
        if !self.resolve_open.load(Ordering::SeqCst) {
            return Err(PaymentsError::Unavailable(format!(
                "test: resolve_debit({key}) held back"
            )));
        }
        inner.resolve_debit(key).await
    }
}

/// Performs the real debit, then loses the answer: the cell sees
/// `Unavailable` although the sender paid.
#[derive(Debug, Clone)]
struct DebitThenFail<P> {
    inner: P,
    faults: Faults,
}

impl<P: Payments> Payments for DebitThenFail<P> {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        self.faults.debit_calls.fetch_add(1, Ordering::SeqCst);
        let outcome = self.inner.debit(debit).await?;
        if self.faults.take_failure() {
            return Err(PaymentsError::Unavailable(format!(
                "test: the answer to debit {} ({outcome:?}) was lost",
                debit.key
            )));
        }
        Ok(outcome)
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        self.inner.credit(key, account, cents).await
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        self.faults.resolve(&self.inner, key).await
    }
}

/// Fails before the debit reaches the ledger: nobody paid.
#[derive(Debug, Clone)]
struct FailBeforeDebit<P> {
    inner: P,
    faults: Faults,
}

impl<P: Payments> Payments for FailBeforeDebit<P> {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        self.faults.debit_calls.fetch_add(1, Ordering::SeqCst);
        if self.faults.take_failure() {
            return Err(PaymentsError::Unavailable(format!(
                "test: debit {} never reached the ledger",
                debit.key
            )));
        }
        self.inner.debit(debit).await
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        self.inner.credit(key, account, cents).await
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        self.faults.resolve(&self.inner, key).await
    }
}

/// Credits wait until the gate opens (before touching the ledger), so
/// transfers stay pending for as long as the test wants.
#[derive(Debug, Clone)]
struct GatedCredits<P> {
    inner: P,
    open: watch::Receiver<bool>,
}

impl<P: Payments> Payments for GatedCredits<P> {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        self.inner.debit(debit).await
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        let mut open = self.open.clone();
        let opened = open.wait_for(|open| *open).await.map(|_| ());
        if opened.is_err() {
            return Err(PaymentsError::Unavailable("test: the gate is gone".into()));
        }
        self.inner.credit(key, account, cents).await
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        self.inner.resolve_debit(key).await
    }
}

// ---------------------------------------------------------------------------
// 1. Expiry.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_refunds_exactly_the_remainder_to_the_sender() {
    let mut stack = StackBuilder {
        servers: 2,
        ttl: Duration::from_secs(2),
        ..StackBuilder::default()
    }
    .start()
    .await;
    let envelope = stack
        .send("sender", pb::EnvelopeKind::Lucky, 10_000, 10)
        .await;
    let id = envelope.id.clone();
    let sender_before = balance(&stack, "sender").await;

    let mut opened = HashMap::new();
    for user in ["u0", "u1", "u2", "u3"] {
        let reply = open(&mut stack.client(0, user), &id).await;
        assert_eq!(reply.status(), pb::ShareStatus::Available, "{user}");
        assert!(reply.amount_cents >= 1);
        opened.insert(user.to_owned(), reply);
    }
    let claimed: i64 = opened.values().map(|reply| reply.amount_cents).sum();

    // The expiry worker turns it EXPIRED (seen through Get, from the DB).
    let mut expired = None;
    for _ in 0..POLLS {
        let envelope = get(&stack, &id, "", 0).await.unwrap().envelope.unwrap();
        if envelope.status() == pb::EnvelopeStatus::Expired {
            expired = Some(envelope);
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let expired = expired.expect("the envelope expires within 30 s");
    assert_eq!(expired.remaining_cents, 0);
    assert_eq!(expired.remaining_count, 0);
    assert_eq!(expired.total_cents, 10_000);

    // Exactly one refund, of exactly the remainder, to the sender.
    let refund = refunds(&stack, &id).await;
    assert_eq!(
        refund,
        vec![(refund_key(&id), "sender".to_owned(), 10_000 - claimed)],
        "one refund of total - sum(claims)"
    );

    // Later Opens and Grabs answer EXPIRED on both servers (server 1 loads
    // the envelope from the DB); the four openers keep their shares.
    for server in 0..2 {
        for user in ["late", "sender"] {
            let mut client = stack.client(server, user);
            let reply = open(&mut client, &id).await;
            assert_eq!(
                reply.status(),
                pb::ShareStatus::Expired,
                "Open {user}@{server}"
            );
            assert_eq!(reply.amount_cents, 0);
            assert_eq!(
                grab(&mut client, &id).await,
                pb::ShareStatus::Expired,
                "Grab {user}@{server}"
            );
        }
        for (user, first) in &opened {
            let mut client = stack.client(server, user);
            assert_eq!(
                open(&mut client, &id).await,
                *first,
                "{user} replays its share"
            );
            assert_eq!(grab(&mut client, &id).await, pb::ShareStatus::AlreadyOpened);
        }
    }
    assert_eq!(stack.claims(&id).await.len(), 4, "no share after expiry");

    stack.drain_settlement().await;
    assert_eq!(
        balance(&stack, "sender").await,
        sender_before + 10_000 - claimed,
        "the sender gets the remainder back"
    );
    for (user, reply) in &opened {
        assert_eq!(balance(&stack, user).await, reply.amount_cents, "{user}");
    }
    let report = stack.check_money().await;
    assert_eq!(report.held_cents, 0);
    assert_eq!(report.pending_transfers, 0);
}

// ---------------------------------------------------------------------------
// 2. Opens racing expiry.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_racing_expiry_never_lose_an_acknowledged_share_nor_pay_twice() {
    const USERS: u64 = 40;
    let mut stack = StackBuilder {
        servers: 2,
        ttl: Duration::from_millis(1500),
        ..StackBuilder::default()
    }
    .start()
    .await;
    for round in 0..4u64 {
        let sender = format!("racer{round}");
        stack.fund(&sender, 10_000).await;
        let envelope = send(
            &stack,
            &sender,
            request(pb::EnvelopeKind::Lucky, 10_000, 10, "race"),
        )
        .await
        .unwrap();
        let id = envelope.id.clone();
        let until_expiry = expires_at(&envelope)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let expiry = Instant::now() + until_expiry;

        // User i first opens at expiry + (4 i - 60 - 30 round) ms: a call
        // takes tens of ms here, so across the rounds from a few to more than
        // 10 users reach the lane before the expiry. Then every user keeps
        // re-opening every 20 ms until expiry + 400 ms.
        let mut tasks = Vec::new();
        for index in 0..USERS {
            let user = format!("r{round}u{index}");
            let mut client = stack.client(usize::from(index % 2 == 1), &user);
            let id = id.clone();
            let first =
                expiry - Duration::from_millis(60 + 30 * round) + Duration::from_millis(4 * index);
            let last = expiry + Duration::from_millis(400);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(first).await;
                let mut answers = Vec::new();
                loop {
                    answers.push(open(&mut client, &id).await);
                    if Instant::now() >= last {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (user, answers)
            }));
        }
        let mut answers = HashMap::new();
        for task in tasks {
            let (user, replies) = task.await.unwrap();
            answers.insert(user, replies);
        }

        // Wait for the worker's verdict: EXPIRED (with a refund) or EXHAUSTED.
        let status = wait_status(&stack, &id, |status| status != ACTIVE).await;
        let stored: HashMap<String, i64> = stack.claims(&id).await.into_iter().collect();
        let claimed: i64 = stored.values().sum();

        let mut acknowledged = HashMap::new();
        for (user, replies) in &answers {
            let first = replies[0];
            if first.status() == pb::ShareStatus::Available {
                assert!(
                    replies.iter().all(|reply| *reply == first),
                    "{user}: an acknowledged share must replay unchanged: {replies:?}"
                );
                assert_eq!(
                    stored.get(user),
                    Some(&first.amount_cents),
                    "{user} was told {first:?}: the claim must be stored (round {round})"
                );
                acknowledged.insert(user.clone(), first.amount_cents);
            } else {
                assert!(
                    replies
                        .iter()
                        .all(|reply| reply.status() != pb::ShareStatus::Available),
                    "{user}: refused, then given a share: {replies:?}"
                );
                for reply in replies {
                    match reply.status() {
                        pb::ShareStatus::Expired => {}
                        pb::ShareStatus::Exhausted => assert_eq!(stored.len(), 10),
                        other => panic!("{user}: unexpected answer {other:?}"),
                    }
                }
                assert!(
                    !stored.contains_key(user),
                    "{user} was refused but holds a claim (round {round})"
                );
            }
        }
        assert_eq!(
            stored.len(),
            acknowledged.len(),
            "every stored claim was acknowledged (round {round})"
        );

        let refund = refunds(&stack, &id).await;
        let refunded: i64 = refund.iter().map(|(_, _, amount)| amount).sum();
        match status {
            EXPIRED => {
                assert!(stored.len() < 10);
                assert_eq!(refund.len(), 1, "one refund (round {round})");
                assert_eq!(refund[0].1, sender);
            }
            EXHAUSTED => assert!(refund.is_empty(), "no refund of an exhausted envelope"),
            other => panic!("unexpected status {other}"),
        }
        assert_eq!(
            claimed + refunded,
            10_000,
            "claims {claimed} + refund {refunded} == total (round {round}, {} claims)",
            stored.len()
        );
        let first_answers = |status: pb::ShareStatus| {
            answers
                .values()
                .filter(|replies| replies[0].status() == status)
                .count()
        };
        println!(
            "round {round}: status {status}, {} shares taken, {} users refused EXPIRED, \
             {} EXHAUSTED, refund {refunded}",
            stored.len(),
            first_answers(pb::ShareStatus::Expired),
            first_answers(pb::ShareStatus::Exhausted),
        );
    }
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.held_cents, 0);
}

// ---------------------------------------------------------------------------
// 3. Settlement and conservation checkpoints.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_holds_at_every_checkpoint_and_settlement_pays_every_claim() {
    let (gate, gate_rx) = watch::channel(false);
    let mut stack = StackBuilder::default()
        .start_with(|ledger: PgLedger| GatedCredits {
            inner: ledger,
            open: gate_rx,
        })
        .await;
    let plan: [(&str, pb::EnvelopeKind, i64, u32); 4] = [
        ("s0", pb::EnvelopeKind::Lucky, 10_000, 8),
        ("s0", pb::EnvelopeKind::Lucky, 7_777, 5),
        ("s1", pb::EnvelopeKind::Lucky, 12_345, 10),
        ("s2", pb::EnvelopeKind::Equal, 5_000, 4),
    ];
    for sender in ["s0", "s1", "s2"] {
        stack.fund(sender, 30_000).await;
    }
    let mut envelopes = Vec::new();
    for (index, (sender, kind, total, count)) in plan.iter().enumerate() {
        let key = format!("env{index}");
        let envelope = send(&stack, sender, request(*kind, *total, *count, &key))
            .await
            .unwrap();
        envelopes.push(envelope.id);
    }
    let sent: i64 = plan.iter().map(|(_, _, total, _)| total).sum();
    let report = stack.check_money().await;
    assert_eq!(report.held_cents, sent);

    // (user, envelope) -> the first answer; replays must match it.
    let mut results: HashMap<(String, String), pb::OpenResponse> = HashMap::new();
    let taken = |results: &HashMap<(String, String), pb::OpenResponse>| {
        results
            .values()
            .filter(|reply| reply.status() == pb::ShareStatus::Available)
            .count() as i64
    };

    // Rounds with settlement held: everything opened is still in the cell.
    for round in 0..4usize {
        let users = (round * 3..round * 3 + 4)
            .map(|index| format!("r{}", index % 10))
            .collect();
        round_of_opens(&stack, &envelopes, users, &mut results).await;
        let report = stack.check_money().await;
        assert_eq!(report.claims, taken(&results), "round {round}");
        assert_eq!(
            report.pending_transfers,
            taken(&results),
            "nothing settles while credits are held (round {round})"
        );
        assert_eq!(report.held_cents, sent, "round {round}");
        assert_eq!(report.settled_cents, 0);
    }

    // Let settlement run: pending transfers drain to zero.
    gate.send_replace(true);
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.pending_transfers, 0);
    // One more round of opens with settlement running, then drain again.
    let users = (10..15).map(|index| format!("r{index}")).collect();
    round_of_opens(&stack, &envelopes, users, &mut results).await;
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.pending_transfers, 0);
    assert_eq!(report.claims, taken(&results));

    // Every receiver holds the sum of its shares; senders paid their totals.
    let mut expected: HashMap<String, i64> = HashMap::new();
    for ((user, _), reply) in &results {
        *expected.entry(user.clone()).or_default() += reply.amount_cents;
    }
    let client = stack.orders.connect().await.unwrap();
    let stored: HashMap<String, i64> = client
        .query(
            "SELECT user_id, sum(amount_cents)::bigint FROM claims GROUP BY user_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for (user, cents) in &expected {
        assert_eq!(
            stored.get(user).copied().unwrap_or(0),
            *cents,
            "{user} stored"
        );
        assert_eq!(balance(&stack, user).await, *cents, "{user} balance");
    }
    let remaining = orders_i64(
        &stack,
        "SELECT COALESCE(sum(remaining_cents), 0)::bigint FROM envelopes WHERE status = 2",
        &[],
    )
    .await;
    assert_eq!(report.held_cents, remaining);
    let received: i64 = expected.values().sum();
    assert_eq!(
        received + remaining,
        sent,
        "opened + still in envelopes == sent"
    );
    for (sender, paid) in [("s0", 17_777), ("s1", 12_345), ("s2", 5_000)] {
        assert_eq!(balance(&stack, sender).await, 30_000 - paid, "{sender}");
    }
}

/// Every user opens every envelope, all at once; a user's later answers for
/// an envelope must equal its first.
async fn round_of_opens(
    stack: &Stack,
    envelopes: &[String],
    users: Vec<String>,
    results: &mut HashMap<(String, String), pb::OpenResponse>,
) {
    let mut tasks = Vec::new();
    for user in users {
        for id in envelopes {
            let mut client = stack.client(0, &user);
            let (user, id) = (user.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let reply = open(&mut client, &id).await;
                ((user, id), reply)
            }));
        }
    }
    for task in tasks {
        let (at, reply) = task.await.unwrap();
        match results.get(&at) {
            Some(first) => assert_eq!(*first, reply, "{at:?} replays its first answer"),
            None => {
                results.insert(at, reply);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Recovery of PENDING_PAYMENT.

/// `payer`, funded with `funds`, sends `send_request` to a cell whose payment
/// system is `faulty` around the real ledger, with recovery after 1 s: the
/// Send fails `UNAVAILABLE` and leaves its envelope `PENDING_PAYMENT`.
/// Returns the stack and that envelope's ID.
async fn a_send_left_pending<P, F>(
    faulty: F,
    funds: i64,
    send_request: &pb::SendRequest,
) -> (Stack, String)
where
    P: Payments + Clone,
    F: FnOnce(PgLedger) -> P,
{
    let mut stack = StackBuilder {
        recovery_grace: Duration::from_secs(1),
        ..StackBuilder::default()
    }
    .start_with(faulty)
    .await;
    stack.fund("payer", funds).await;
    let status = send(&stack, "payer", send_request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let id = envelope_of_key(&stack, "payer", &send_request.idempotency_key)
        .await
        .expect("the pending envelope is recorded");
    assert_eq!(stored_status(&stack, &id).await, PENDING_PAYMENT);
    (stack, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_activates_a_send_whose_debit_happened() {
    let faults = Faults::failing_debits(usize::MAX);
    let hold = faults.clone();
    let send_request = request(pb::EnvelopeKind::Lucky, 10_000, 5, "pay-once");
    let (stack, id) = a_send_left_pending(
        move |ledger| DebitThenFail {
            inner: ledger,
            faults: hold,
        },
        15_000,
        &send_request,
    )
    .await;
    let debit = stack.ledger.entry(&send_key(&id)).await.unwrap();
    assert_eq!(
        debit.map(|entry| (entry.kind, entry.account, entry.amount_cents)),
        Some((EntryKind::Debit, "payer".to_owned(), 10_000))
    );
    assert_eq!(balance(&stack, "payer").await, 5_000);
    // Paid but unresolved: the cell holds the money.
    let report = stack.check_money().await;
    assert_eq!((report.pending_payments, report.held_cents), (1, 10_000));

    // A retry while the answer is still lost: UNAVAILABLE again, no second debit.
    let status = send(&stack, "payer", send_request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(faults.debit_calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        stack
            .ledger
            .entries_count_by_prefix(SEND_KEYS)
            .await
            .unwrap(),
        1
    );
    assert_eq!(balance(&stack, "payer").await, 5_000);

    // The recovery worker asks the ledger: debited -> ACTIVE.
    faults.let_recovery_resolve();
    wait_status(&stack, &id, |status| status != PENDING_PAYMENT).await;
    assert_eq!(stored_status(&stack, &id).await, ACTIVE);

    // A retry now returns the same envelope, and still one debit.
    let envelope = send(&stack, "payer", send_request).await.unwrap();
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.status(), pb::EnvelopeStatus::Active);
    assert_eq!(
        stack
            .ledger
            .entries_count_by_prefix(SEND_KEYS)
            .await
            .unwrap(),
        1
    );
    assert_eq!(table_count(&stack, "envelopes").await, 1);

    // Openable, with exact money.
    let mut sum = 0;
    for user in ["a", "b", "c", "d", "e"] {
        let reply = open(&mut stack.client(0, user), &id).await;
        assert_eq!(reply.status(), pb::ShareStatus::Available, "{user}");
        sum += reply.amount_cents;
    }
    assert_eq!(sum, 10_000);
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!((report.pending_payments, report.held_cents), (0, 0));
    assert_eq!(balance(&stack, "payer").await, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retry_finishes_a_send_whose_debit_answer_was_lost() {
    let faults = Faults::failing_debits(1);
    let hold = faults.clone();
    let mut stack = StackBuilder::default()
        .start_with(move |ledger| DebitThenFail {
            inner: ledger,
            faults: hold,
        })
        .await;
    stack.fund("payer", 4_000).await;
    let send_request = request(pb::EnvelopeKind::Equal, 4_000, 4, "retry-me");
    let status = send(&stack, "payer", send_request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let id = envelope_of_key(&stack, "payer", "retry-me").await.unwrap();

    // Recovery is held back: the retry itself must finish the Send.
    let envelope = send(&stack, "payer", send_request).await.unwrap();
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.status(), pb::EnvelopeStatus::Active);
    assert_eq!(
        stack
            .ledger
            .entries_count_by_prefix(SEND_KEYS)
            .await
            .unwrap(),
        1
    );
    assert_eq!(balance(&stack, "payer").await, 0);
    for user in ["a", "b", "c", "d"] {
        let reply = open(&mut stack.client(0, user), &id).await;
        assert_eq!(reply.amount_cents, 1_000, "{user}");
    }
    stack.drain_settlement().await;
    stack.check_money().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_cancels_a_send_whose_debit_never_happened() {
    let faults = Faults::failing_debits(usize::MAX);
    let hold = faults.clone();
    let send_request = request(pb::EnvelopeKind::Lucky, 10_000, 5, "never-paid");
    let (stack, id) = a_send_left_pending(
        move |ledger| FailBeforeDebit {
            inner: ledger,
            faults: hold,
        },
        10_000,
        &send_request,
    )
    .await;
    let key = send_key(&id);
    assert_eq!(stack.ledger.entry(&key).await.unwrap(), None);
    let report = stack.check_money().await;
    assert_eq!((report.pending_payments, report.held_cents), (1, 0));

    faults.let_recovery_resolve();
    wait_status(&stack, &id, |status| status != PENDING_PAYMENT).await;
    assert_eq!(stored_status(&stack, &id).await, CANCELLED);
    let entry = stack.ledger.entry(&key).await.unwrap().unwrap();
    assert_eq!(entry.kind, EntryKind::Void, "{entry:?}");
    assert_eq!(entry.amount_cents, 0);
    assert_eq!(
        balance(&stack, "payer").await,
        10_000,
        "the sender keeps its money"
    );

    // A late debit under the key can no longer take the money.
    assert_eq!(
        stack
            .ledger
            .debit(Debit {
                key: &key,
                order: "never-paid",
                account: "payer",
                cents: 10_000
            })
            .await
            .unwrap(),
        DebitOutcome::Voided
    );
    // A retry of the Send asks the payment system whether its order was paid
    // for another envelope meanwhile (a retry in another cell): while the
    // debits still fail, it cannot know, and says so (retryable)...
    let status = send(&stack, "payer", send_request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(stored_status(&stack, &id).await, CANCELLED);
    // ... then learns it was cancelled; nothing opens.
    faults.debit_failures.store(0, Ordering::SeqCst);
    let status = send(&stack, "payer", send_request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("cancelled"), "{status:?}");
    let status = stack
        .client(0, "opener")
        .open(pb::OpenRequest {
            envelope_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        stack
            .ledger
            .entries_count_by_prefix(SEND_KEYS)
            .await
            .unwrap(),
        1
    );
    assert_eq!(balance(&stack, "payer").await, 10_000);
    assert_eq!(table_count(&stack, "claims").await, 0);
    assert_eq!(table_count(&stack, "transfers").await, 0);
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!((report.pending_payments, report.held_cents), (0, 0));
}

/// A Send cancelled here (its debit never happened) whose client retried it
/// into another cell meanwhile, which paid the order: a later retry that
/// reaches this cell again must name that envelope (`ALREADY_EXISTS`,
/// `x-redcell-paid-envelope`), not answer "cancelled" while the money is
/// spent. The other cell is the test, paying the order in the ledger under
/// an envelope ID of cell n2, as n2's Send would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_send_whose_order_another_cell_paid_names_that_envelope() {
    let faults = Faults::failing_debits(1);
    let hold = faults.clone();
    let send_request = request(pb::EnvelopeKind::Lucky, 4_000, 4, "raced");
    let (stack, id) = a_send_left_pending(
        move |ledger| FailBeforeDebit {
            inner: ledger,
            faults: hold,
        },
        10_000,
        &send_request,
    )
    .await;
    faults.let_recovery_resolve();
    wait_status(&stack, &id, |status| status != PENDING_PAYMENT).await;
    assert_eq!(stored_status(&stack, &id).await, CANCELLED);

    // Cell n2 (suffixes 500-999) took the retry and paid the order.
    let in_n2 = format!("{}{}", &id[..19], "742");
    assert_ne!(in_n2, id);
    let paid = stack
        .ledger
        .debit(Debit {
            key: &send_key(&in_n2),
            order: "raced",
            account: "payer",
            cents: 4_000,
        })
        .await
        .unwrap();
    assert_eq!(paid, DebitOutcome::Debited);

    let status = send(&stack, "payer", send_request).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(
        status.message(),
        format!("idempotency_key: already paid for envelope {in_n2}")
    );
    let named = status
        .metadata()
        .get(redcell_proto::internal::PAID_ENVELOPE_METADATA)
        .map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(named.as_deref(), Some(in_n2.as_str()));
    // Nothing changed here: the envelope stays cancelled, unpaid, unopened.
    assert_eq!(stored_status(&stack, &id).await, CANCELLED);
    assert_eq!(table_count(&stack, "envelopes").await, 1);
    assert_eq!(table_count(&stack, "claims").await, 0);
    assert_eq!(balance(&stack, "payer").await, 6_000);

    // n2's envelope is not in this cell's books: refund it as n2 would at
    // expiry, so conservation over this cell and the ledger holds again.
    stack
        .ledger
        .credit(&refund_key(&in_n2), "payer", 4_000)
        .await
        .unwrap();
    let report = stack.check_money().await;
    assert_eq!((report.pending_payments, report.held_cents), (0, 0));
}

/// An Open that arrives while the envelope is still `PENDING_PAYMENT` is
/// refused; once recovery made it `ACTIVE`, Opens must succeed (the lane must
/// not keep serving the unpaid state it loaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_refused_while_payment_is_pending_does_not_stick() {
    let faults = Faults::failing_debits(usize::MAX);
    let hold = faults.clone();
    let mut stack = StackBuilder::default()
        .start_with(move |ledger| DebitThenFail {
            inner: ledger,
            faults: hold,
        })
        .await;
    stack.fund("payer", 3_000).await;
    let status = send(
        &stack,
        "payer",
        request(pb::EnvelopeKind::Lucky, 3_000, 3, "early-bird"),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let id = envelope_of_key(&stack, "payer", "early-bird")
        .await
        .unwrap();

    let mut early = stack.client(0, "early");
    let status = early
        .open(pb::OpenRequest {
            envelope_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "not paid yet: {status:?}"
    );

    faults.let_recovery_resolve();
    wait_status(&stack, &id, |status| status != PENDING_PAYMENT).await;
    assert_eq!(stored_status(&stack, &id).await, ACTIVE);

    // Same server (so the same lane), a new user, after the DB says ACTIVE.
    let answer = stack
        .client(0, "late")
        .open(pb::OpenRequest {
            envelope_id: id.clone(),
        })
        .await;
    assert!(
        matches!(&answer, Ok(reply) if reply.get_ref().status() == pb::ShareStatus::Available),
        "the envelope is ACTIVE in the order DB, yet Open answers {answer:?}"
    );
    open(&mut early, &id).await;
    open(&mut stack.client(0, "third"), &id).await;
    stack.drain_settlement().await;
    stack.check_money().await;
}

// ---------------------------------------------------------------------------
// 5. Insufficient balance.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_beyond_the_balance_fails_and_writes_nothing() {
    let mut stack = StackBuilder::default().start().await;
    stack.fund("poor", 500).await;
    let entries_before = stack.ledger.entries_count_by_prefix("").await.unwrap();

    for (sender, available) in [("poor", 500), ("nobody", 0)] {
        let status = send(
            &stack,
            sender,
            request(pb::EnvelopeKind::Lucky, 1_000, 2, "too-much"),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("balance")
                && status.message().contains(&format!("{available} available")),
            "the message names the balance: {status:?}"
        );
    }
    for table in ["envelopes", "send_requests", "transfers", "claims"] {
        assert_eq!(table_count(&stack, table).await, 0, "{table}");
    }
    assert_eq!(balance(&stack, "poor").await, 500);
    assert_eq!(balance(&stack, "nobody").await, 0);
    assert_eq!(stack.ledger.total_balance().await.unwrap(), 500);
    // No money-moving entry: each refused Send's debit key is voided (so a
    // racing retry's debit of it can never land; see
    // a_refused_send_raced_by_its_retry_never_debits_a_vanished_envelope),
    // and that is all the ledger gained.
    let sends = stack.ledger.totals_by_prefix(SEND_KEYS).await.unwrap();
    assert_eq!(
        (sends.debits, sends.credits, sends.voids),
        (0, 0, 2),
        "{sends:?}"
    );
    assert_eq!(
        stack.ledger.entries_count_by_prefix("").await.unwrap(),
        entries_before + 2,
        "the two voids, nothing else"
    );

    // The key stayed unused: once funded, the same key sends.
    stack.fund("poor", 500).await;
    let envelope = send(
        &stack,
        "poor",
        request(pb::EnvelopeKind::Lucky, 1_000, 2, "too-much"),
    )
    .await
    .unwrap();
    assert_eq!(envelope.status(), pb::EnvelopeStatus::Active);
    assert_eq!(balance(&stack, "poor").await, 0);
    stack.drain_settlement().await;
    stack.check_money().await;
}

// ---------------------------------------------------------------------------
// 6. Send idempotency.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_idempotent_by_key() {
    let mut stack = StackBuilder::default().start().await;
    stack.fund("sender", 8_000).await;

    // The same key twice: one envelope, one debit.
    let once = request(pb::EnvelopeKind::Lucky, 5_000, 5, "same");
    let first = send(&stack, "sender", once.clone()).await.unwrap();
    let second = send(&stack, "sender", once.clone()).await.unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(
        stack
            .ledger
            .entries_count_by_prefix(SEND_KEYS)
            .await
            .unwrap(),
        1
    );
    assert_eq!(balance(&stack, "sender").await, 3_000);

    // Five concurrent Sends with one key; the balance covers only one.
    let burst = request(pb::EnvelopeKind::Lucky, 3_000, 3, "burst");
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let mut client = stack.client(0, "sender");
        let burst = burst.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                match client.send(burst.clone()).await {
                    Ok(response) => return response.into_inner().envelope.unwrap(),
                    Err(status) if retryable(&status) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(status) => panic!("concurrent Send failed: {status:?}"),
                }
            }
            panic!("concurrent Send stayed retryable");
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        let envelope = task.await.unwrap();
        assert_eq!(envelope.status(), pb::EnvelopeStatus::Active);
        ids.insert(envelope.id);
    }
    assert_eq!(ids.len(), 1, "one envelope for one key: {ids:?}");
    assert_eq!(
        stack
            .ledger
            .entries_count_by_prefix(SEND_KEYS)
            .await
            .unwrap(),
        2
    );
    assert_eq!(balance(&stack, "sender").await, 0);
    assert_eq!(table_count(&stack, "envelopes").await, 2);
    assert_eq!(table_count(&stack, "send_requests").await, 2);

    // The same key with different contents: INVALID_ARGUMENT naming the key.
    let mut variants = Vec::new();
    let mut changed = once.clone();
    changed.total_cents = 6_000;
    variants.push(changed);
    let mut changed = once.clone();
    changed.count = 4;
    variants.push(changed);
    let mut changed = once.clone();
    changed.kind = pb::EnvelopeKind::Equal.into();
    variants.push(changed);
    let mut changed = once.clone();
    changed.greeting = "other words".into();
    variants.push(changed);
    for variant in variants {
        let status = send(&stack, "sender", variant.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{variant:?}: {status:?}"
        );
        assert!(
            status.message().contains("idempotency_key"),
            "names the field: {status:?}"
        );
    }
    // The key is per sender: another sender may use it.
    stack.fund("other", 5_000).await;
    let theirs = send(&stack, "other", once).await.unwrap();
    assert_ne!(theirs.id, first.id);
    assert_eq!(table_count(&stack, "envelopes").await, 3);
    assert_eq!(
        stack
            .ledger
            .entries_count_by_prefix(SEND_KEYS)
            .await
            .unwrap(),
        3
    );
    stack.drain_settlement().await;
    stack.check_money().await;
}

/// For EXCLUSIVE the recipient is part of the contents: reusing the key for
/// another recipient must not return (and so silently re-address) the first
/// envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_for_another_recipient_is_refused() {
    let mut stack = StackBuilder::default().start().await;
    stack.fund("sender", 1_000).await;
    let mut to_bob = request(pb::EnvelopeKind::Exclusive, 1_000, 1, "gift");
    to_bob.recipients = vec!["bob".into()];
    let envelope = send(&stack, "sender", to_bob.clone()).await.unwrap();
    assert_eq!(envelope.recipients, vec!["bob".to_owned()]);

    let mut to_carol = to_bob;
    to_carol.recipients = vec!["carol".into()];
    let answer = send(&stack, "sender", to_carol).await;
    assert!(
        matches!(&answer, Err(status) if status.code() == Code::InvalidArgument
            && status.message().contains("idempotency_key")),
        "the same key for another recipient answered {answer:?}"
    );
    stack.drain_settlement().await;
    stack.check_money().await;
}

// ---------------------------------------------------------------------------
// 7. Kinds.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_and_exclusive_envelopes_split_as_promised() {
    let mut stack = StackBuilder {
        servers: 2,
        ..StackBuilder::default()
    }
    .start()
    .await;

    // EQUAL 1000 / 10: every share 100.
    let equal = stack
        .send("sender", pb::EnvelopeKind::Equal, 1_000, 10)
        .await;
    let mut sequences = HashSet::new();
    for index in 0..10usize {
        let user = format!("e{index}");
        let reply = open(&mut stack.client(index % 2, &user), &equal.id).await;
        assert_eq!(reply.status(), pb::ShareStatus::Available, "{user}");
        assert_eq!(reply.amount_cents, 100, "{user}");
        sequences.insert(reply.sequence);
    }
    assert_eq!(sequences, (1..=10).collect());
    let reply = open(&mut stack.client(0, "e10"), &equal.id).await;
    assert_eq!(reply.status(), pb::ShareStatus::Exhausted);
    assert!(
        stack
            .claims(&equal.id)
            .await
            .iter()
            .all(|(_, amount)| *amount == 100)
    );

    // EXCLUSIVE to bob: bob gets it all, nobody else is eligible.
    stack.fund("giver", 2_500).await;
    let mut to_bob = request(pb::EnvelopeKind::Exclusive, 2_500, 1, "for-bob");
    to_bob.recipients = vec!["bob".into()];
    let exclusive = send(&stack, "giver", to_bob).await.unwrap();
    let id = exclusive.id.clone();
    for server in 0..2 {
        for user in ["carol", "giver"] {
            let mut client = stack.client(server, user);
            assert_eq!(
                grab(&mut client, &id).await,
                pb::ShareStatus::NotEligible,
                "Grab {user}@{server}"
            );
            let reply = open(&mut client, &id).await;
            assert_eq!(
                reply.status(),
                pb::ShareStatus::NotEligible,
                "Open {user}@{server}"
            );
            assert_eq!(reply.amount_cents, 0);
        }
    }
    let mut bob = stack.client(1, "bob");
    assert_eq!(grab(&mut bob, &id).await, pb::ShareStatus::Available);
    let reply = open(&mut bob, &id).await;
    assert_eq!(
        (reply.status(), reply.amount_cents, reply.sequence),
        (pb::ShareStatus::Available, 2_500, 1)
    );
    assert_eq!(grab(&mut bob, &id).await, pb::ShareStatus::AlreadyOpened);
    for server in 0..2 {
        let mut carol = stack.client(server, "carol");
        assert_eq!(
            open(&mut carol, &id).await.status(),
            pb::ShareStatus::NotEligible
        );
        assert_eq!(grab(&mut carol, &id).await, pb::ShareStatus::NotEligible);
    }
    assert_eq!(stack.claims(&id).await, vec![("bob".to_owned(), 2_500)]);

    stack.drain_settlement().await;
    assert_eq!(balance(&stack, "bob").await, 2_500);
    assert_eq!(balance(&stack, "carol").await, 0);
    assert_eq!(balance(&stack, "giver").await, 0);
    for index in 0..10 {
        assert_eq!(balance(&stack, &format!("e{index}")).await, 100);
    }
    let report = stack.check_money().await;
    assert_eq!(report.held_cents, 0);
}

// ---------------------------------------------------------------------------
// 8. Get.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pages_through_the_claims_in_sequence_order() {
    let mut stack = StackBuilder::default().start().await;
    let envelope = stack
        .send("sender", pb::EnvelopeKind::Lucky, 7_000, 10)
        .await;
    let id = envelope.id.clone();
    let mut opened = Vec::new();
    for index in 0..7 {
        let user = format!("g{index}");
        let reply = open(&mut stack.client(0, &user), &id).await;
        assert_eq!(reply.status(), pb::ShareStatus::Available);
        opened.push((user, reply));
    }

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = get(&stack, &id, &token, 3).await.unwrap();
        let details = page.envelope.as_ref().unwrap();
        assert_eq!(details.id, id);
        assert_eq!(details.sender, "sender");
        assert_eq!(details.status(), pb::EnvelopeStatus::Active);
        assert_eq!((details.total_cents, details.count), (7_000, 10));
        pages.push(page.claims.clone());
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    let claims: Vec<pb::Claim> = pages.into_iter().flatten().collect();
    assert_eq!(
        claims
            .iter()
            .map(|claim| claim.sequence)
            .collect::<Vec<_>>(),
        (1..=7).collect::<Vec<u32>>(),
        "sequence order"
    );
    for claim in &claims {
        let (_, reply) = opened
            .iter()
            .find(|(user, _)| *user == claim.user)
            .unwrap_or_else(|| panic!("claim of {} nobody opened", claim.user));
        assert_eq!(
            (claim.amount_cents, claim.sequence),
            (reply.amount_cents, reply.sequence),
            "{}",
            claim.user
        );
        assert!(claim.opened_at.is_some());
    }
    let claimed: i64 = claims.iter().map(|claim| claim.amount_cents).sum();
    let details = get(&stack, &id, "", 0).await.unwrap();
    assert_eq!(details.claims.len(), 7, "page_size 0 is the default page");
    assert!(details.next_page_token.is_empty());
    let details = details.envelope.unwrap();
    assert_eq!(
        (details.remaining_cents, details.remaining_count),
        (7_000 - claimed, 3)
    );

    for malformed in ["abc", "-1", "3x", "99999999999999999999"] {
        let status = get(&stack, &id, malformed, 3).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{malformed}: {status:?}"
        );
        assert!(status.message().contains("page_token"), "{status:?}");
    }
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.held_cents, 7_000 - claimed);
}

// ---------------------------------------------------------------------------
// 7. Money holes found from outside (issue 8): each test fails on the code
//    before its fix.

/// A one-shot signal between the test and a payment system's calls.
#[derive(Debug, Clone)]
struct Signal(Arc<watch::Sender<bool>>);

impl Default for Signal {
    fn default() -> Signal {
        Signal(Arc::new(watch::channel(false).0))
    }
}

impl Signal {
    fn raise(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut raised = self.0.subscribe();
        let _ = raised.wait_for(|raised| *raised).await;
    }
}

/// Stages the race of a Send refused for balance with its own retry: the
/// first debit is refused (really, by the ledger) and its answer is held
/// until the second debit call has begun; the second is held at its start
/// until the test lets it go.
#[derive(Debug, Clone, Default)]
struct RacedRefusal<P> {
    inner: P,
    debits: Arc<AtomicUsize>,
    first_refused: Signal,
    second_started: Signal,
    second_go: Signal,
}

impl<P: Payments> Payments for RacedRefusal<P> {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        match self.debits.fetch_add(1, Ordering::SeqCst) {
            0 => {
                let outcome = self.inner.debit(debit).await;
                self.first_refused.raise();
                self.second_started.wait().await;
                outcome
            }
            1 => {
                self.second_started.raise();
                self.second_go.wait().await;
                self.inner.debit(debit).await
            }
            _ => self.inner.debit(debit).await,
        }
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        self.inner.credit(key, account, cents).await
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        self.inner.resolve_debit(key).await
    }
}

/// Send(K) is refused for balance; its retry (a double click) finds the
/// pending envelope and goes to pay it; a credit lands on the sender; the
/// first Send forgets the envelope; then the retry's debit reaches the
/// ledger. Before the fix the retry took the money for an envelope that no
/// longer existed (INTERNAL "vanished", an orphan debit, the key dead
/// forever). Now the refusal voids the debit key before anything is
/// deleted: the retry is refused, no money moves, and the key sends later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_raced_by_its_retry_never_debits_a_vanished_envelope() {
    let race = RacedRefusal::<()>::default();
    let (debits, first_refused, second_started, second_go) = (
        race.debits.clone(),
        race.first_refused.clone(),
        race.second_started.clone(),
        race.second_go.clone(),
    );
    let mut stack = StackBuilder::default()
        .start_with(move |ledger| RacedRefusal {
            inner: ledger,
            debits,
            first_refused,
            second_started,
            second_go,
        })
        .await;
    stack.fund("payer", 500).await;
    let send_request = request(pb::EnvelopeKind::Lucky, 1_000, 5, "double-click");

    let mut first_client = stack.client(0, "payer");
    let first_request = send_request.clone();
    let first = tokio::spawn(async move { first_client.send(first_request).await });
    race.first_refused.wait().await;
    let refused_id = envelope_of_key(&stack, "payer", "double-click")
        .await
        .expect("the pending envelope exists while its debit is refused");

    let mut retry_client = stack.client(0, "payer");
    let retry_request = send_request.clone();
    let retry = tokio::spawn(async move { retry_client.send(retry_request).await });
    race.second_started.wait().await;

    let status = first.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("insufficient balance"),
        "{status:?}"
    );
    // The sender tops up (or a share she opened is credited) meanwhile.
    stack.fund("payer", 1_000).await;
    race.second_go.raise();

    let status = retry.await.unwrap().unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "the retry of a refused Send is refused, not paid: {status:?}"
    );
    let entry = stack.ledger.entry(&send_key(&refused_id)).await.unwrap();
    assert_eq!(
        entry.map(|entry| entry.kind),
        Some(EntryKind::Void),
        "the refused key is void: no debit can land"
    );
    assert_eq!(balance(&stack, "payer").await, 1_500, "no money moved");
    for table in ["envelopes", "send_requests", "claims", "transfers"] {
        assert_eq!(table_count(&stack, table).await, 0, "{table}");
    }

    // The key is not dead: now funded, the same Send goes through, once.
    let envelope = send(&stack, "payer", send_request.clone()).await.unwrap();
    assert_ne!(envelope.id, refused_id);
    assert_eq!(envelope.status(), pb::EnvelopeStatus::Active);
    let again = send(&stack, "payer", send_request).await.unwrap();
    assert_eq!(again.id, envelope.id);
    assert_eq!(balance(&stack, "payer").await, 500);
    let mut sum = 0;
    for user in ["a", "b", "c", "d", "e"] {
        sum += open(&mut stack.client(0, user), &envelope.id)
            .await
            .amount_cents;
    }
    assert_eq!(sum, 1_000);
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!((report.pending_payments, report.held_cents), (0, 0));
}

/// The payment shard of some senders is down: `resolve_debit` of their keys
/// fails, every other key resolves.
#[derive(Debug, Clone)]
struct ShardDown<P> {
    inner: P,
    faults: Faults,
    /// Debit keys whose shard does not answer `resolve_debit`.
    down: Arc<std::sync::Mutex<HashSet<String>>>,
    resolve_calls: Arc<AtomicUsize>,
}

impl<P: Payments> Payments for ShardDown<P> {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        // The debit happens; its answer is lost for the first `faults` calls.
        let outcome = self.inner.debit(debit).await?;
        if self.faults.take_failure() {
            return Err(PaymentsError::Unavailable("test: answer lost".into()));
        }
        Ok(outcome)
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        self.inner.credit(key, account, cents).await
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        self.resolve_calls.fetch_add(1, Ordering::SeqCst);
        if self.down.lock().unwrap().contains(key) {
            return Err(PaymentsError::Unavailable(format!(
                "test: the shard of {key} is down"
            )));
        }
        self.faults.resolve(&self.inner, key).await
    }
}

/// Two paid Sends left pending (their debit answers lost); the older one's
/// payment shard is down. Before the fix the recovery batch stopped at the
/// first failure, in `created_at` order, so the younger, resolvable one
/// stayed pending with its sender's money held for as long as the shard was
/// down. Now each envelope is handled on its own and the failing one backs
/// off, its state kept in the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unresolvable_pending_send_does_not_block_the_others() {
    let faults = Faults::failing_debits(2);
    faults.let_recovery_resolve();
    let down = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let resolve_calls = Arc::new(AtomicUsize::new(0));
    let (hold, held_down, calls) = (faults.clone(), down.clone(), resolve_calls.clone());
    let mut stack = StackBuilder {
        recovery_grace: Duration::from_secs(1),
        ..StackBuilder::default()
    }
    .start_with(move |ledger| ShardDown {
        inner: ledger,
        faults: hold,
        down: held_down,
        resolve_calls: calls,
    })
    .await;
    stack.fund("stuck", 3_000).await;
    stack.fund("fine", 2_000).await;
    // The stuck sender's shard goes down before its Send (it is older).
    let stuck_request = request(pb::EnvelopeKind::Lucky, 3_000, 3, "stuck-send");
    let status = send(&stack, "stuck", stuck_request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let stuck = envelope_of_key(&stack, "stuck", "stuck-send")
        .await
        .unwrap();
    down.lock().unwrap().insert(send_key(&stuck));
    let fine_request = request(pb::EnvelopeKind::Lucky, 2_000, 2, "fine-send");
    let status = send(&stack, "fine", fine_request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let fine = envelope_of_key(&stack, "fine", "fine-send").await.unwrap();

    // Recovery activates the resolvable one while the other keeps failing.
    wait_status(&stack, &fine, |status| status != PENDING_PAYMENT).await;
    assert_eq!(stored_status(&stack, &fine).await, ACTIVE);
    assert_eq!(stored_status(&stack, &stuck).await, PENDING_PAYMENT);
    // The failing one is backing off, with its error kept for operators.
    for _ in 0..POLLS {
        if orders_i64(
            &stack,
            "SELECT count(*) FROM envelopes WHERE id = $1 AND payment_checks > 0 \
             AND next_payment_check > now() AND last_payment_error LIKE '%shard%down%'",
            &[&stuck],
        )
        .await
            == 1
        {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        orders_i64(
            &stack,
            "SELECT count(*) FROM envelopes WHERE id = $1 AND payment_checks > 0 \
             AND last_payment_error LIKE '%shard%down%'",
            &[&stuck]
        )
        .await,
        1
    );
    let report = stack.check_money().await;
    assert_eq!(
        (report.pending_payments, report.held_cents),
        (1, 3_000 + 2_000),
        "the stuck Send's money is held, the active one's remainder too"
    );

    // The shard comes back: the stuck one is activated on a later attempt.
    down.lock().unwrap().clear();
    wait_status(&stack, &stuck, |status| status != PENDING_PAYMENT).await;
    assert_eq!(stored_status(&stack, &stuck).await, ACTIVE);
    for (id, users) in [(&stuck, ["a", "b", "c"].as_slice()), (&fine, &["a", "b"])] {
        for user in users {
            assert_eq!(
                open(&mut stack.client(0, user), id).await.status(),
                pb::ShareStatus::Available
            );
        }
    }
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!((report.pending_payments, report.held_cents), (0, 0));
}

/// Credits announce that they started, then hang until the test lets them go.
#[derive(Debug, Clone, Default)]
struct HungCredits<P> {
    inner: P,
    started: Signal,
    go: Signal,
}

impl<P: Payments> Payments for HungCredits<P> {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        self.inner.debit(debit).await
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        self.started.raise();
        self.go.wait().await;
        self.inner.credit(key, account, cents).await
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        self.inner.resolve_debit(key).await
    }
}

/// Settlement never waits on the payment system inside an order-DB
/// transaction: while a credit hangs, the transfer being credited holds no
/// row lock and no session sits idle in a transaction (before the fix, the
/// batch's `FOR UPDATE` transaction stayed open across every ledger call,
/// holding locks and a pooled connection for as long as the ledger was slow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_holds_no_lock_while_the_payment_system_is_slow() {
    let hung = HungCredits::<()>::default();
    let (started, go) = (hung.started.clone(), hung.go.clone());
    let mut stack = StackBuilder::default()
        .start_with(move |ledger| HungCredits {
            inner: ledger,
            started,
            go,
        })
        .await;
    let envelope = stack.send("sender", pb::EnvelopeKind::Equal, 300, 3).await;
    let reply = open(&mut stack.client(0, "opener"), &envelope.id).await;
    assert_eq!(reply.amount_cents, 100);
    hung.started.wait().await;

    let client = stack.orders.connect().await.unwrap();
    let locked = client
        .simple_query(
            "BEGIN; SELECT id FROM transfers WHERE status = 1 FOR UPDATE NOWAIT; ROLLBACK",
        )
        .await;
    assert!(
        locked.is_ok(),
        "a credit in flight must not hold the transfer's row lock: {locked:?}"
    );
    let idle_in_transaction = orders_i64(
        &stack,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state = 'idle in transaction'",
        &[],
    )
    .await;
    assert_eq!(
        idle_in_transaction, 0,
        "no transaction waits on the payment system"
    );

    hung.go.raise();
    stack.drain_settlement().await;
    assert_eq!(balance(&stack, "opener").await, 100);
    stack.check_money().await;
}

/// The database's clock stamps a Send: `created_at` is the transaction's
/// `now()` (the same instant as its idempotency row), `expires_at` is exactly
/// the TTL later, and Send answers the stored values, to the microsecond, as
/// Get does. Before the fix the logic server's clock stamped it (recovery
/// compares `created_at` with the DB's `now()`, so a lagging server made
/// fresh Sends look stuck), with nanoseconds Get never showed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_clock_stamps_a_send() {
    let ttl = Duration::from_secs(3_600);
    let mut stack = StackBuilder {
        ttl,
        ..StackBuilder::default()
    }
    .start()
    .await;
    let sent = stack
        .send("sender", pb::EnvelopeKind::Lucky, 1_000, 4)
        .await;
    let stamps_agree = orders_i64(
        &stack,
        "SELECT count(*) FROM envelopes e JOIN send_requests s ON s.envelope_id = e.id \
         WHERE e.id = $1 AND e.created_at = s.created_at \
         AND e.expires_at = e.created_at + interval '3600 seconds'",
        &[&sent.id],
    )
    .await;
    assert_eq!(
        stamps_agree, 1,
        "created_at is the DB's now(), expires_at = +TTL"
    );
    let stored = get(&stack, &sent.id, "", 10)
        .await
        .unwrap()
        .envelope
        .unwrap();
    assert_eq!(sent.created_at, stored.created_at);
    assert_eq!(sent.expires_at, stored.expires_at);
    assert_eq!(sent.created_at.unwrap().nanos % 1_000, 0, "microseconds");
    assert_eq!(
        expires_at(&sent)
            .duration_since(SystemTime::try_from(sent.created_at.unwrap()).unwrap())
            .unwrap(),
        ttl
    );
    stack.check_money().await;
}

//! The cell-level committer and batched settlement (issue 15 item 2), on a
//! real order DB and ledger:
//! * many lanes committing at once through the merged committer, merged
//!   into few transactions, every Open answered with its share;
//! * a merged group in which one envelope lost its version check (another
//!   server wrote it): the others commit, the stale one replans and ends
//!   correct;
//! * batched credits: replayed and repeated keys credit once, a reused key is
//!   refused for that credit only;
//! * settlement through a ledger that is down, then loses its answers, then
//!   recovers: transfers stay pending, then drain, each credited once;
//! * the pure outcome mapping of a merged commit, property-tested.
//!
//! Every test that moves money ends with the money check of DESIGN §5.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use proptest::prelude::*;
use redcell_cell::{
    lane::{Lanes, MergeConfig, MergedCommitter},
    share::ShareStatus,
    store::{CommitOutcome, Found, OpenWrite, merged_outcomes, why_not_updated},
};
use redcell_payments::{
    Credit, Debit, DebitOutcome, DebitResolution, Payments, PaymentsError, PgLedger,
};
use redcell_proto::v1 as pb;
use redcell_topology::EnvelopeId;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::stack::{Stack, StackBuilder, open_retrying};

const POLL: Duration = Duration::from_millis(20);

/// Lanes of this test (besides the stack's servers) whose batches go through
/// a merged committer with one transaction in flight, so batches that arrive
/// while it runs are merged into the next one.
fn merged_lanes(stack: &Stack) -> (Lanes, MergedCommitter) {
    let pool = redcell_cell::db::pool(&stack.orders.dsn, 8).unwrap();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let committer = MergedCommitter::start(
        pool.clone(),
        MergeConfig {
            max_envelopes: 256,
            in_flight: 1,
            linger: Duration::ZERO,
        },
        &tracker,
        cancel.clone(),
    );
    let lanes = Lanes::with_committer(
        pool,
        Arc::new(committer.clone()),
        redcell_cell::lane::LaneConfig::default(),
        tracker,
        cancel,
    );
    (lanes, committer)
}

/// Holds envelope `id`'s row locked until the returned transaction ends, and
/// waits until an envelope update waits on it.
async fn hold_row(stack: &Stack, id: &str) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let holder = stack.orders.connect().await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute("SELECT 1 FROM envelopes WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let observer = stack.orders.connect().await.unwrap();
    (holder, observer)
}

async fn wait_for_lock_waiter(observer: &tokio_postgres::Client) {
    for attempt in 0.. {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE 'UPDATE envelopes%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= 1 {
            return;
        }
        assert!(attempt < 1500, "no envelope update waited on the held row");
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_for_batches(committer: &MergedCommitter, batches: u64) {
    for attempt in 0.. {
        if committer.stats().batches.load(Ordering::Relaxed) >= batches {
            return;
        }
        assert!(
            attempt < 1500,
            "the lanes never handed over {batches} batches"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn send_many(stack: &mut Stack, sender: &str, envelopes: usize, count: u32) -> Vec<String> {
    let mut ids = Vec::with_capacity(envelopes);
    for index in 0..envelopes {
        let envelope = stack
            .send(
                &format!("{sender}-{index}"),
                pb::EnvelopeKind::Lucky,
                1_000,
                count,
            )
            .await;
        ids.push(envelope.id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_lanes_commit_together_through_the_merged_committer() {
    let mut stack = StackBuilder::default().start().await;
    let ids = send_many(&mut stack, "sender", 24, 5).await;
    let (lanes, committer) = merged_lanes(&stack);

    // The first batch blocks on a held row; everything sent meanwhile waits
    // for the one transaction slot and is merged into the next group.
    let (holder, observer) = hold_row(&stack, &ids[0]).await;
    let blocked = tokio::spawn({
        let lanes = lanes.clone();
        let id: EnvelopeId = ids[0].parse().unwrap();
        async move { lanes.open(id, "user-0-0".into()).await }
    });
    wait_for_lock_waiter(&observer).await;
    let mut opens = Vec::new();
    for (envelope, id) in ids.iter().enumerate().skip(1) {
        for user in 0..3 {
            let lanes = lanes.clone();
            let id: EnvelopeId = id.parse().unwrap();
            opens.push(tokio::spawn(async move {
                lanes.open(id, format!("user-{envelope}-{user}")).await
            }));
        }
    }
    wait_for_batches(&committer, ids.len() as u64).await;
    holder.batch_execute("ROLLBACK").await.unwrap();

    let first = blocked.await.unwrap().unwrap();
    assert_eq!(first.status, ShareStatus::Available);
    for open in opens {
        let opened = open.await.unwrap().unwrap();
        assert_eq!(opened.status, ShareStatus::Available, "{opened:?}");
    }
    let batches = committer.stats().batches.load(Ordering::Relaxed);
    let transactions = committer.stats().transactions.load(Ordering::Relaxed);
    println!("merged committer: {batches} lane batches in {transactions} transactions");
    assert!(
        transactions < batches,
        "nothing was merged: {batches} batches in {transactions} transactions"
    );
    for (envelope, id) in ids.iter().enumerate() {
        let claims = stack.claims(id).await;
        let expected = if envelope == 0 { 1 } else { 3 };
        assert_eq!(claims.len(), expected, "claims of {id}: {claims:?}");
    }
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.claims, 1 + 3 * (ids.len() as i64 - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_envelope_in_a_merged_group_replans_while_the_others_commit() {
    let mut stack = StackBuilder::default().start().await;
    let ids = send_many(&mut stack, "sender", 4, 10).await;
    let (lanes, committer) = merged_lanes(&stack);
    let parsed: Vec<EnvelopeId> = ids.iter().map(|id| id.parse().unwrap()).collect();

    // Warm this server's lanes of envelopes 1..=3 (each one Open).
    for (index, id) in parsed.iter().enumerate().skip(1) {
        let warm = lanes.open(*id, format!("warm-{index}")).await.unwrap();
        assert_eq!(warm.status, ShareStatus::Available);
    }
    // Another server writes envelope 2: this server's lane of it is stale.
    let other = open_retrying(&mut stack.client(0, "elsewhere"), &ids[2]).await;
    assert_eq!(other.status(), pb::ShareStatus::Available);

    // Block the slot with envelope 0, then queue one Open on each of 1, 2, 3:
    // they go out as one merged group in which envelope 2 fails its check.
    let (holder, observer) = hold_row(&stack, &ids[0]).await;
    let blocked = tokio::spawn({
        let lanes = lanes.clone();
        let id = parsed[0];
        async move { lanes.open(id, "blocked".into()).await }
    });
    wait_for_lock_waiter(&observer).await;
    let before = committer.stats().transactions.load(Ordering::Relaxed);
    let mut opens = Vec::new();
    for (index, id) in parsed.iter().enumerate().skip(1) {
        let lanes = lanes.clone();
        let id = *id;
        opens.push(tokio::spawn(async move {
            lanes.open(id, format!("merged-{index}")).await
        }));
    }
    wait_for_batches(&committer, 3 + 1 + 3).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        blocked.await.unwrap().unwrap().status,
        ShareStatus::Available
    );
    for open in opens {
        assert_eq!(open.await.unwrap().unwrap().status, ShareStatus::Available);
    }
    // The group of 1, 2, 3 committed 1 and 3; 2 replanned alone.
    let transactions = committer.stats().transactions.load(Ordering::Relaxed) - before;
    let batches = committer.stats().batches.load(Ordering::Relaxed);
    assert_eq!(
        (transactions, batches),
        (2, 3 + 1 + 3 + 1),
        "the merged group, then envelope 2's replanned batch"
    );

    let stale = stack.claims(&ids[2]).await;
    let users: HashSet<&str> = stale.iter().map(|(user, _)| user.as_str()).collect();
    assert_eq!(
        users,
        HashSet::from(["warm-2", "elsewhere", "merged-2"]),
        "{stale:?}"
    );
    for index in [1, 3] {
        assert_eq!(stack.claims(&ids[index]).await.len(), 2);
    }
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.claims, 1 + 2 + 3 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_credits_are_idempotent_per_key() {
    let mut stack = StackBuilder::default().start().await;
    let ledger = stack.ledger.clone();
    // Deposit keys: the reconciler knows them as money put in from outside.
    let (a, b, c, d) = (
        redcell_payments::deposit_key("alice", "batch-a"),
        redcell_payments::deposit_key("bob", "batch-b"),
        redcell_payments::deposit_key("carol", "batch-c"),
        redcell_payments::deposit_key("alice", "batch-d"),
    );
    ledger.credit(&a, "alice", 100).await.unwrap();
    let credits = [
        // A replay of a key credited before: no money moves.
        Credit {
            key: &a,
            account: "alice",
            cents: 100,
        },
        Credit {
            key: &b,
            account: "bob",
            cents: 70,
        },
        // The same key twice in one batch: credited once.
        Credit {
            key: &b,
            account: "bob",
            cents: 70,
        },
        // A key reused for another amount: refused, alone.
        Credit {
            key: &a,
            account: "alice",
            cents: 5,
        },
        // Not an amount: refused before anything is written.
        Credit {
            key: &c,
            account: "carol",
            cents: 0,
        },
        Credit {
            key: &d,
            account: "alice",
            cents: 30,
        },
    ];
    let outcomes = ledger.credit_batch(&credits).await;
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok() && outcomes[2].is_ok());
    assert!(
        matches!(&outcomes[3], Err(PaymentsError::KeyConflict { key }) if *key == a),
        "{:?}",
        outcomes[3]
    );
    assert!(matches!(outcomes[4], Err(PaymentsError::InvalidAmount(0))));
    assert!(outcomes[5].is_ok());
    // Replaying the whole batch moves nothing more.
    let again = ledger.credit_batch(&credits).await;
    assert_eq!(
        again.iter().map(Result::is_ok).collect::<Vec<_>>(),
        [true, true, true, false, false, true]
    );
    assert_eq!(ledger.balance("alice").await.unwrap(), 130);
    assert_eq!(ledger.balance("bob").await.unwrap(), 70);
    assert_eq!(ledger.balance("carol").await.unwrap(), 0);
    assert!(ledger.discrepancies().await.unwrap().is_empty());
    // These credits are the test's deposits for the conservation check.
    stack.deposits += 200;
    stack.check_money().await;
}

/// What [`FlakyLedger`] does with credits.
const HEALTHY: u8 = 0;
/// Every credit fails before reaching the ledger.
const DOWN: u8 = 1;
/// Credits reach the ledger, but the answer is lost (reported unavailable).
const ANSWERS_LOST: u8 = 2;

/// A ledger whose credits fail as the test says; debits always work.
#[derive(Debug, Clone)]
struct FlakyLedger {
    inner: PgLedger,
    mode: Arc<AtomicU8>,
}

impl FlakyLedger {
    fn lost(&self) -> Option<PaymentsError> {
        match self.mode.load(Ordering::SeqCst) {
            DOWN => Some(PaymentsError::Unavailable("test: ledger down".into())),
            _ => None,
        }
    }
}

impl Payments for FlakyLedger {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        self.inner.debit(debit).await
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        if let Some(error) = self.lost() {
            return Err(error);
        }
        self.inner.credit(key, account, cents).await?;
        match self.mode.load(Ordering::SeqCst) {
            ANSWERS_LOST => Err(PaymentsError::Unavailable("test: answer lost".into())),
            _ => Ok(()),
        }
    }

    async fn credit_batch(&self, credits: &[Credit<'_>]) -> Vec<Result<(), PaymentsError>> {
        if self.lost().is_some() {
            return credits
                .iter()
                .map(|_| Err(PaymentsError::Unavailable("test: ledger down".into())))
                .collect();
        }
        let outcomes = self.inner.credit_batch(credits).await;
        match self.mode.load(Ordering::SeqCst) {
            ANSWERS_LOST => outcomes
                .into_iter()
                .map(|_| Err(PaymentsError::Unavailable("test: answer lost".into())))
                .collect(),
            _ => outcomes,
        }
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        self.inner.resolve_debit(key).await
    }
}

async fn transfers(stack: &Stack) -> (i64, i64, i64) {
    let client = stack.orders.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 1), count(*) FILTER (WHERE status = 2), \
             COALESCE(min(attempts) FILTER (WHERE status = 1), 0)::bigint FROM transfers",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Claim credits in the ledger.
async fn claim_credits(stack: &Stack) -> i64 {
    stack
        .ledger
        .totals_by_prefix(redcell_payments::KeyKind::Claim.prefix())
        .await
        .unwrap()
        .credits
}

async fn open_as(stack: &Stack, user: &str, envelope: &str) {
    let response = open_retrying(&mut stack.client(0, user), envelope).await;
    assert_eq!(response.status(), pb::ShareStatus::Available);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_batches_survive_a_ledger_that_is_down_then_loses_answers() {
    let mode = Arc::new(AtomicU8::new(DOWN));
    let mut stack = StackBuilder::default()
        .start_with({
            let mode = mode.clone();
            move |inner| FlakyLedger { inner, mode }
        })
        .await;
    let ids = send_many(&mut stack, "sender", 3, 6).await;
    let mut opened = 0;
    for id in &ids {
        for user in 0..3 {
            open_as(&stack, &format!("user-{user}"), id).await;
            opened += 1;
        }
    }
    // Down: every transfer is tried and stays pending; nothing is credited.
    for attempt in 0.. {
        let (pending, done, least_attempts) = transfers(&stack).await;
        assert_eq!(done, 0);
        if pending == opened && least_attempts >= 1 {
            break;
        }
        assert!(attempt < 1500, "settlement never tried every transfer");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(claim_credits(&stack).await, 0);

    // Answers lost: new transfers' batched credits and the old ones' single
    // retries land in the ledger, yet every transfer stays pending.
    mode.store(ANSWERS_LOST, Ordering::SeqCst);
    for id in &ids {
        for user in 3..6 {
            open_as(&stack, &format!("user-{user}"), id).await;
            opened += 1;
        }
    }
    for attempt in 0.. {
        if claim_credits(&stack).await == opened {
            break;
        }
        assert!(
            attempt < 1500,
            "credits whose answers were lost never reached the ledger"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(transfers(&stack).await.1, 0, "no transfer is done yet");

    // Healthy: the retries replay their keys, every transfer is done, each
    // credited exactly once (the money check counts one entry per key).
    mode.store(HEALTHY, Ordering::SeqCst);
    stack.drain_settlement().await;
    assert_eq!(claim_credits(&stack).await, opened);
    let report = stack.check_money().await;
    assert_eq!(report.claims, opened);
}

// ---------------------------------------------------------------------------
// The outcome mapping of a merged commit (pure).

fn write(index: u64, version: i64) -> OpenWrite {
    OpenWrite {
        // YYMMDD, region 1, epoch 00, a 10-digit sequence, suffix 007.
        id: format!("260101100{index:010}007").parse().unwrap(),
        version,
        claims: Vec::new(),
        remaining_cents: 1,
        remaining_count: 1,
    }
}

proptest! {
    /// Every write gets exactly one outcome, in order: committed (with the
    /// new version) iff the update returned its envelope, else what its row
    /// says, by the same rule as the per-lane commit.
    #[test]
    fn every_write_gets_its_own_outcome(
        rows in proptest::collection::vec(
            (0_i64..4, any::<bool>(), proptest::option::of((0_i64..4, 1_i16..6, any::<bool>()))),
            1..40,
        )
    ) {
        let writes: Vec<OpenWrite> = rows
            .iter()
            .enumerate()
            .map(|(index, (version, _, _))| write(index as u64, *version))
            .collect();
        let mut updated = HashMap::new();
        let mut found = HashMap::new();
        for (write, (version, moved, row)) in writes.iter().zip(&rows) {
            if *moved {
                updated.insert(write.id.to_string(), version + 1);
            } else if let Some((version, status, expired)) = row {
                found.insert(write.id.to_string(), Found { version: *version, status: *status, expired: *expired });
            }
        }
        let outcomes = merged_outcomes(&writes, &updated, &found);
        prop_assert_eq!(outcomes.len(), writes.len());
        for ((write, (version, moved, row)), outcome) in writes.iter().zip(&rows).zip(&outcomes) {
            if *moved {
                prop_assert_eq!(*outcome, CommitOutcome::Committed(version + 1));
                continue;
            }
            let expected = match row {
                None => CommitOutcome::Stale,
                Some((now, _, _)) if *now != write.version => CommitOutcome::Stale,
                Some((_, status, _)) if *status != 2 => CommitOutcome::NotActive,
                Some((_, _, true)) => CommitOutcome::Expired,
                Some(_) => CommitOutcome::Stale,
            };
            prop_assert_eq!(*outcome, expected);
            prop_assert_eq!(
                why_not_updated(write.version, found.get(&write.id.to_string()).copied()),
                expected
            );
        }
    }
}

//! The ledger against a real PostgreSQL: each test gets its own database
//! cloned from a template migrated with the real ledger migrations, moves
//! money through the `Payments` trait like a cell would, and checks the
//! money invariants on the ledger itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redcell_harness::TestDb;
use redcell_payments::{
    Debit, DebitOutcome, DebitResolution, EntryKind, EntryTotals, LedgerEntry, Payments,
    PaymentsError, PgLedger,
};
use tokio::sync::Barrier;

// ---------------------------------------------------------------- helpers

const TEMPLATE: &str = "ledger";

/// A ledger over a fresh database of its own. Field order matters: the pool
/// goes before the database is dropped.
struct Stack {
    ledger: PgLedger,
    db: TestDb,
}

async fn stack() -> Stack {
    let server = redcell_harness::shared().await.unwrap();
    let schema = redcell_migrations::script(redcell_migrations::LEDGER);
    server.ensure_template(TEMPLATE, &[&schema]).await.unwrap();
    let db = server.clone_database(TEMPLATE).await.unwrap();
    let ledger = PgLedger::connect(&db.dsn, 8).unwrap();
    Stack { ledger, db }
}

/// The ledger's own consistency: no account differs from its entries.
async fn assert_consistent(ledger: &PgLedger) {
    assert_eq!(ledger.discrepancies().await.unwrap(), vec![]);
}

/// A Send's debit as a cell asks for it, for a Send whose order (its
/// idempotency key) is named like the debit's key: one order per key.
fn send_debit<'a>(key: &'a str, account: &'a str, cents: i64) -> Debit<'a> {
    Debit {
        key,
        order: key,
        account,
        cents,
    }
}

fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, PaymentsError>) -> bool {
    matches!(result, Err(PaymentsError::Unavailable(_)))
}

/// splitmix64: deterministic pseudo-random numbers without extra crates.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `low..=high`.
    fn between(&mut self, low: i64, high: i64) -> i64 {
        let span = u64::try_from(high - low + 1).unwrap();
        low + i64::try_from(self.next() % span).unwrap()
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrations_runner_applies_the_ledger_schema() {
    let server = redcell_harness::shared().await.unwrap();
    server.create_database("ledger_by_runner").await.unwrap();
    let mut client = server.connect("ledger_by_runner").await.unwrap();
    let applied = redcell_migrations::apply(&mut client, redcell_migrations::LEDGER)
        .await
        .unwrap();
    assert_eq!(applied, vec![1, 2]);
    let again = redcell_migrations::apply(&mut client, redcell_migrations::LEDGER)
        .await
        .unwrap();
    assert!(again.is_empty());
    // The schema's own guards, independent of the code: no negative
    // balance, no money-moving entry without money, no void with money.
    for bad in [
        "INSERT INTO accounts VALUES ('a', -1)",
        "INSERT INTO entries (key, account, kind, amount_cents) VALUES ('k', 'a', 1, 0)",
        "INSERT INTO entries (key, account, kind, amount_cents) VALUES ('k', '', 3, 5)",
        "INSERT INTO entries (key, account, kind, amount_cents) VALUES ('k', 'a', 4, 5)",
        "INSERT INTO entries (key, account, kind, amount_cents, merchant_order) \
         VALUES ('k', 'a', 2, 5, 'o')",
    ] {
        assert!(
            client.batch_execute(bad).await.is_err(),
            "{bad} was accepted"
        );
    }
    drop(client);
    let admin = server.connect("postgres").await.unwrap();
    admin
        .batch_execute("DROP DATABASE ledger_by_runner WITH (FORCE)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_takes_exactly_its_amount_once_per_key() {
    let Stack { ledger, db: _db } = stack().await;
    ledger
        .deposit("deposit:alice:1", "alice", 10_000)
        .await
        .unwrap();
    assert_eq!(ledger.balance("alice").await.unwrap(), 10_000);

    let outcome = ledger
        .debit(send_debit("send:e1", "alice", 2_500))
        .await
        .unwrap();
    assert_eq!(outcome, DebitOutcome::Debited);
    assert_eq!(ledger.balance("alice").await.unwrap(), 7_500);

    // The caller's retry after a lost answer: same answer, no second debit.
    for _ in 0..3 {
        let replay = ledger
            .debit(send_debit("send:e1", "alice", 2_500))
            .await
            .unwrap();
        assert_eq!(replay, DebitOutcome::Debited);
    }
    assert_eq!(ledger.balance("alice").await.unwrap(), 7_500);

    // The same key for anything else is a caller bug, and moves nothing.
    for (account, cents) in [("alice", 2_000), ("bob", 2_500)] {
        let conflict = ledger.debit(send_debit("send:e1", account, cents)).await;
        assert!(
            matches!(&conflict, Err(PaymentsError::KeyConflict { key }) if key == "send:e1"),
            "{conflict:?}"
        );
        assert!(!conflict.unwrap_err().is_retryable());
    }
    let as_credit = ledger.credit("send:e1", "alice", 2_500).await;
    assert!(matches!(as_credit, Err(PaymentsError::KeyConflict { .. })));
    // A deposit replayed is a credit replayed: no second deposit.
    ledger
        .deposit("deposit:alice:1", "alice", 10_000)
        .await
        .unwrap();

    assert_eq!(ledger.balance("alice").await.unwrap(), 7_500);
    assert_eq!(ledger.balance("bob").await.unwrap(), 0);
    assert_eq!(
        ledger.entry("send:e1").await.unwrap(),
        Some(LedgerEntry {
            key: "send:e1".to_owned(),
            account: "alice".to_owned(),
            kind: EntryKind::Debit,
            amount_cents: 2_500,
            order: Some("send:e1".to_owned()),
        })
    );
    assert_eq!(ledger.entries_count_by_prefix("").await.unwrap(), 2);
    assert_eq!(ledger.entries_count_by_prefix("send:").await.unwrap(), 1);
    // Prefixes are literal: `_` and `%` are not wildcards.
    assert_eq!(ledger.entries_count_by_prefix("send_").await.unwrap(), 0);
    assert_eq!(ledger.entries_count_by_prefix("%").await.unwrap(), 0);
    assert_eq!(ledger.total_balance().await.unwrap(), 7_500);
    assert_consistent(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_funds_writes_nothing_and_leaves_the_key_free() {
    let Stack { ledger, db: _db } = stack().await;
    ledger
        .deposit("deposit:carol", "carol", 1_000)
        .await
        .unwrap();

    let refused = ledger
        .debit(send_debit("send:e2", "carol", 1_001))
        .await
        .unwrap();
    assert_eq!(
        refused,
        DebitOutcome::InsufficientFunds {
            balance_cents: 1_000
        }
    );
    assert_eq!(ledger.entry("send:e2").await.unwrap(), None);
    assert_eq!(ledger.balance("carol").await.unwrap(), 1_000);

    // An account the ledger has never seen has nothing, and stays unseen.
    let stranger = ledger
        .debit(send_debit("send:e3", "nobody", 1))
        .await
        .unwrap();
    assert_eq!(
        stranger,
        DebitOutcome::InsufficientFunds { balance_cents: 0 }
    );
    assert_eq!(ledger.entry("send:e3").await.unwrap(), None);
    assert_eq!(ledger.entries_count_by_prefix("send:").await.unwrap(), 0);
    assert_eq!(ledger.total_balance().await.unwrap(), 1_000);

    // The refused key was not burned: once funded, the same debit goes through.
    ledger.deposit("deposit:carol:2", "carol", 1).await.unwrap();
    let now = ledger
        .debit(send_debit("send:e2", "carol", 1_001))
        .await
        .unwrap();
    assert_eq!(now, DebitOutcome::Debited);
    assert_eq!(ledger.balance("carol").await.unwrap(), 0);
    assert_consistent(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_debits_never_overdraw() {
    const DEBITS: usize = 50;
    const DEPOSIT: i64 = 1_000;
    const AMOUNT: i64 = 70;
    let Stack { ledger, db: _db } = stack().await;
    ledger
        .deposit("deposit:dave", "dave", DEPOSIT)
        .await
        .unwrap();

    let start = Arc::new(Barrier::new(DEBITS));
    let tasks: Vec<_> = (0..DEBITS)
        .map(|i| {
            let ledger = ledger.clone();
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                ledger
                    .debit(send_debit(&format!("send:d{i:02}"), "dave", AMOUNT))
                    .await
            })
        })
        .collect();
    let mut debited = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            DebitOutcome::Debited => debited += 1,
            DebitOutcome::InsufficientFunds { balance_cents } => {
                assert!(
                    (0..AMOUNT).contains(&balance_cents),
                    "refused at {balance_cents}"
                );
            }
            other @ (DebitOutcome::Voided | DebitOutcome::OrderPaid { .. }) => {
                panic!("every debit has its own order and nothing was voided: {other:?}")
            }
        }
    }

    let expected = DEPOSIT / AMOUNT; // 14
    assert_eq!(debited, expected);
    let balance = ledger.balance("dave").await.unwrap();
    assert_eq!(balance, DEPOSIT - expected * AMOUNT); // 20
    let sends = ledger.totals_by_prefix("send:").await.unwrap();
    assert_eq!(
        sends,
        EntryTotals {
            debits: expected,
            debited_cents: DEPOSIT - balance,
            ..EntryTotals::default()
        }
    );
    assert_consistent(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_of_a_credit_credit_once() {
    const REPLAYS: usize = 20;
    let Stack { ledger, db: _db } = stack().await;
    let ledger = Arc::new(ledger);

    let start = Arc::new(Barrier::new(REPLAYS));
    let tasks: Vec<_> = (0..REPLAYS)
        .map(|_| {
            let ledger = Arc::clone(&ledger);
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                // Through the trait, as the settlement worker holds it.
                Payments::credit(&ledger, "claim:e4:1", "erin", 300).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    assert_eq!(ledger.balance("erin").await.unwrap(), 300);
    assert_eq!(
        ledger.entries_count_by_prefix("claim:e4:1").await.unwrap(),
        1
    );
    assert_eq!(ledger.total_balance().await.unwrap(), 300);
    assert_consistent(&ledger).await;
}

/// The one-statement debit (entry and balance together) under a crowd:
/// concurrent replays of one debit that fits exactly once all answer
/// `Debited` and take it once; concurrent debits under other keys that no
/// longer fit are refused by the balance's CHECK, each leaving no entry, and
/// a key refused that way is still free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_of_a_debit_take_it_once_and_refusals_leave_nothing() {
    const REPLAYS: usize = 16;
    const OTHERS: usize = 16;
    let Stack { ledger, db: _db } = stack().await;
    ledger.deposit("deposit:fay", "fay", 1_000).await.unwrap();

    let start = Arc::new(Barrier::new(REPLAYS + OTHERS));
    let tasks: Vec<_> = (0..REPLAYS + OTHERS)
        .map(|i| {
            let ledger = ledger.clone();
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                let key = if i < REPLAYS {
                    "send:r0".to_owned()
                } else {
                    format!("send:o{i:02}")
                };
                (i, ledger.debit(send_debit(&key, "fay", 1_000)).await)
            })
        })
        .collect();
    let mut others_debited = 0;
    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        match (i < REPLAYS, outcome.unwrap()) {
            (_, DebitOutcome::Debited) if i >= REPLAYS => others_debited += 1,
            (true, DebitOutcome::Debited) | (false, DebitOutcome::InsufficientFunds { .. }) => {}
            (true, refused @ DebitOutcome::InsufficientFunds { .. }) => {
                // The replayed key lost the race to another key: allowed,
                // but then no replay of it may have been debited either.
                assert_eq!(ledger.entry("send:r0").await.unwrap(), None, "{refused:?}");
            }
            (_, other) => panic!("debit {i}: {other:?}"),
        }
    }
    // Exactly one debit of 1000 landed, under one key.
    assert_eq!(ledger.balance("fay").await.unwrap(), 0);
    let sends = ledger.totals_by_prefix("send:").await.unwrap();
    assert_eq!(
        sends,
        EntryTotals {
            debits: 1,
            debited_cents: 1_000,
            ..EntryTotals::default()
        }
    );
    let replay_took_it = ledger.entry("send:r0").await.unwrap().is_some();
    assert_eq!(usize::from(!replay_took_it), others_debited);
    assert_consistent(&ledger).await;

    // A key refused for balance is free: funded again, it goes through.
    let refused_key = if replay_took_it {
        "send:o16"
    } else {
        "send:r0"
    };
    assert_eq!(ledger.entry(refused_key).await.unwrap(), None);
    ledger.deposit("deposit:fay:2", "fay", 1_000).await.unwrap();
    assert_eq!(
        ledger
            .debit(send_debit(refused_key, "fay", 1_000))
            .await
            .unwrap(),
        DebitOutcome::Debited
    );
    assert_eq!(ledger.balance("fay").await.unwrap(), 0);
    assert_consistent(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_debit_voids_an_unknown_key_for_good() {
    let Stack { ledger, db: _db } = stack().await;
    ledger
        .deposit("deposit:frank", "frank", 5_000)
        .await
        .unwrap();

    // The caller gave up on "send:e5" before its debit arrived.
    let resolution = ledger.resolve_debit("send:e5").await.unwrap();
    assert_eq!(resolution, DebitResolution::Voided);
    let void = ledger.entry("send:e5").await.unwrap().unwrap();
    assert_eq!((void.kind, void.amount_cents), (EntryKind::Void, 0));

    // The late debit is refused and takes nothing; asking again is stable.
    let late = ledger
        .debit(send_debit("send:e5", "frank", 1_000))
        .await
        .unwrap();
    assert_eq!(late, DebitOutcome::Voided);
    assert_eq!(ledger.balance("frank").await.unwrap(), 5_000);
    assert_eq!(
        ledger.resolve_debit("send:e5").await.unwrap(),
        DebitResolution::Voided
    );
    // A credit cannot reuse the voided key either.
    let credit = ledger.credit("send:e5", "frank", 1_000).await;
    assert!(matches!(credit, Err(PaymentsError::KeyConflict { .. })));

    // A debit that did happen is reported as such, and stays in place.
    let debited = ledger
        .debit(send_debit("send:e6", "frank", 1_000))
        .await
        .unwrap();
    assert_eq!(debited, DebitOutcome::Debited);
    for _ in 0..2 {
        assert_eq!(
            ledger.resolve_debit("send:e6").await.unwrap(),
            DebitResolution::Debited
        );
    }
    assert_eq!(
        ledger.entry("send:e6").await.unwrap().unwrap().kind,
        EntryKind::Debit
    );
    assert_eq!(ledger.balance("frank").await.unwrap(), 4_000);

    // A credit's key is not a debit's: a caller bug.
    let wrong = ledger.resolve_debit("deposit:frank").await;
    assert!(matches!(wrong, Err(PaymentsError::KeyConflict { .. })));

    let totals = ledger.totals_by_prefix("send:").await.unwrap();
    assert_eq!(
        (totals.debits, totals.debited_cents, totals.voids),
        (1, 1_000, 1)
    );
    assert_consistent(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_mix_of_operations_conserves_money() {
    const ACCOUNTS: [&str; 5] = ["u1", "u2", "u3", "u4", "u5"];
    const OPERATIONS: usize = 400;
    let Stack { ledger, db: _db } = stack().await;
    let mut random = SplitMix(0x0072_6564_6365_6c6c);

    // The model: what every balance must be, and every key's request.
    let mut balances: BTreeMap<&str, i64> = ACCOUNTS.iter().map(|a| (*a, 0)).collect();
    let mut requests: Vec<(String, EntryKind, &str, i64)> = Vec::new();
    let (mut deposited, mut debited, mut credited) = (0_i64, 0_i64, 0_i64);

    for n in 0..OPERATIONS {
        let account = ACCOUNTS[usize::try_from(random.between(0, 4)).unwrap()];
        let cents = random.between(1, 3_000);
        match random.between(0, 9) {
            0..=2 => {
                let key = format!("deposit:{n}");
                ledger.deposit(&key, account, cents).await.unwrap();
                deposited += cents;
                *balances.get_mut(account).unwrap() += cents;
                requests.push((key, EntryKind::Credit, account, cents));
            }
            3..=6 => {
                let key = format!("send:{n}");
                match ledger
                    .debit(send_debit(&key, account, cents))
                    .await
                    .unwrap()
                {
                    DebitOutcome::Debited => {
                        debited += cents;
                        let balance = balances.get_mut(account).unwrap();
                        *balance -= cents;
                        assert!(*balance >= 0, "the model overdrew {account}");
                        requests.push((key, EntryKind::Debit, account, cents));
                    }
                    DebitOutcome::InsufficientFunds { balance_cents } => {
                        assert!(balance_cents < cents);
                        assert_eq!(balance_cents, balances[account]);
                    }
                    other @ (DebitOutcome::Voided | DebitOutcome::OrderPaid { .. }) => {
                        panic!("every debit has its own order and nothing was voided: {other:?}")
                    }
                }
            }
            7..=8 => {
                let key = format!("claim:{n}:1");
                ledger.credit(&key, account, cents).await.unwrap();
                credited += cents;
                *balances.get_mut(account).unwrap() += cents;
                requests.push((key, EntryKind::Credit, account, cents));
            }
            _ if !requests.is_empty() => {
                // A retry of an earlier request: must move nothing.
                let pick = usize::try_from(random.between(0, requests.len() as i64 - 1)).unwrap();
                let (key, kind, account, cents) = &requests[pick];
                match kind {
                    EntryKind::Debit => {
                        let replay = ledger
                            .debit(send_debit(key, account, *cents))
                            .await
                            .unwrap();
                        assert_eq!(replay, DebitOutcome::Debited);
                    }
                    _ => ledger.credit(key, account, *cents).await.unwrap(),
                }
            }
            _ => {}
        }
    }

    let total = ledger.total_balance().await.unwrap();
    assert_eq!(total, deposited - debited + credited);
    assert!(
        debited > 0 && credited > 0,
        "the mix should exercise every path"
    );
    for (account, balance) in &balances {
        assert_eq!(
            ledger.balance(account).await.unwrap(),
            *balance,
            "{account}"
        );
    }
    let all = ledger.totals_by_prefix("").await.unwrap();
    assert_eq!(all.debited_cents, debited);
    assert_eq!(all.credited_cents, deposited + credited);
    assert_eq!(
        all.debits + all.credits,
        i64::try_from(requests.len()).unwrap()
    );
    assert_consistent(&ledger).await;

    // The reconciler's view: every recorded key has exactly its entry.
    let keys: Vec<&str> = requests.iter().map(|(key, ..)| key.as_str()).collect();
    let entries = ledger.entries(&keys).await.unwrap();
    assert_eq!(entries.len(), keys.len());
    for (key, kind, account, cents) in &requests {
        let entry = entries.iter().find(|entry| &entry.key == key).unwrap();
        assert_eq!(
            (entry.kind, entry.account.as_str(), entry.amount_cents),
            (*kind, *account, *cents)
        );
    }
}

/// DESIGN §4 "never a second debit", across cells: a Send retried into a
/// second cell debits under a second key for the same order, and must be
/// refused, naming the key that paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_paid_once_whatever_the_key() {
    let Stack { ledger, db: _db } = stack().await;
    ledger.deposit("deposit:kim", "kim", 10_000).await.unwrap();
    ledger.deposit("deposit:lee", "lee", 1_000).await.unwrap();
    let debit = |key, order, account, cents| {
        let ledger = ledger.clone();
        async move {
            ledger
                .debit(Debit {
                    key,
                    order,
                    account,
                    cents,
                })
                .await
        }
    };
    let paid_by = |key: &str| DebitOutcome::OrderPaid {
        key: key.to_owned(),
    };

    let first = debit("send:a", "order-1", "kim", 1_000);
    assert_eq!(first.await.unwrap(), DebitOutcome::Debited);
    // Another envelope paying the same order: refused, nothing written, and
    // the answer names the debit that paid. Whatever its amount: the order
    // is the Send, not the money.
    for cents in [1_000, 7] {
        let second = debit("send:b", "order-1", "kim", cents).await.unwrap();
        assert_eq!(second, paid_by("send:a"), "{cents}");
    }
    assert_eq!(ledger.entry("send:b").await.unwrap(), None);
    assert_eq!(ledger.balance("kim").await.unwrap(), 9_000);
    // The refused key stays free for an order of its own.
    let own = debit("send:b", "order-2", "kim", 500).await.unwrap();
    assert_eq!(own, DebitOutcome::Debited);
    // The first debit's replay is still a replay; with another order it is
    // a different operation under the same key: a caller bug.
    let replay = debit("send:a", "order-1", "kim", 1_000).await.unwrap();
    assert_eq!(replay, DebitOutcome::Debited);
    let reordered = debit("send:a", "order-9", "kim", 1_000).await;
    assert!(
        matches!(&reordered, Err(PaymentsError::KeyConflict { key }) if key == "send:a"),
        "{reordered:?}"
    );
    // Orders are the account's: another sender's order-1 is another order.
    let other_account = debit("send:c", "order-1", "lee", 1_000).await.unwrap();
    assert_eq!(other_account, DebitOutcome::Debited);

    // A refusal for balance leaves the order free, like the key.
    let poor = debit("send:d", "order-3", "lee", 1).await.unwrap();
    assert_eq!(poor, DebitOutcome::InsufficientFunds { balance_cents: 0 });
    ledger.deposit("deposit:lee:2", "lee", 1).await.unwrap();
    let funded = debit("send:e", "order-3", "lee", 1).await.unwrap();
    assert_eq!(funded, DebitOutcome::Debited);

    // A voided key: refused for good, and if its order was paid under
    // another key, the answer names that one (where the money went).
    for key in ["send:v1", "send:v2"] {
        assert_eq!(
            ledger.resolve_debit(key).await.unwrap(),
            DebitResolution::Voided
        );
    }
    let void_paid = debit("send:v1", "order-1", "kim", 1_000).await.unwrap();
    assert_eq!(void_paid, paid_by("send:a"));
    let void_unpaid = debit("send:v2", "order-4", "kim", 1_000).await.unwrap();
    assert_eq!(void_unpaid, DebitOutcome::Voided);
    // ... and a void does not take the order.
    let after_void = debit("send:f", "order-4", "kim", 1_000).await.unwrap();
    assert_eq!(after_void, DebitOutcome::Debited);

    assert_eq!(ledger.balance("kim").await.unwrap(), 7_500);
    assert_eq!(ledger.balance("lee").await.unwrap(), 0);
    let sends = ledger.totals_by_prefix("send:").await.unwrap();
    assert_eq!(
        (sends.debits, sends.debited_cents, sends.voids),
        (5, 3_501, 2)
    );
    assert_eq!(ledger.total_balance().await.unwrap(), 7_500);
    assert_consistent(&ledger).await;
}

/// Two cells racing to pay one Send: every key but one is refused, and the
/// refusals name the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_debits_of_one_order_under_many_keys_take_it_once() {
    const RACERS: usize = 20;
    let Stack { ledger, db: _db } = stack().await;
    ledger.deposit("deposit:max", "max", 100_000).await.unwrap();
    let start = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let ledger = ledger.clone();
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                let key = format!("send:r{i:02}");
                start.wait().await;
                let outcome = ledger
                    .debit(Debit {
                        key: &key,
                        order: "new-year",
                        account: "max",
                        cents: 888,
                    })
                    .await;
                (key, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut payers = Vec::new();
    for task in tasks {
        let (key, outcome) = task.await.unwrap();
        match outcome.unwrap() {
            DebitOutcome::Debited => winners.push(key),
            DebitOutcome::OrderPaid { key } => payers.push(key),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(payers.len(), RACERS - 1);
    assert!(
        payers.iter().all(|payer| *payer == winners[0]),
        "{payers:?}"
    );
    assert_eq!(ledger.balance("max").await.unwrap(), 100_000 - 888);
    let sends = ledger.totals_by_prefix("send:").await.unwrap();
    assert_eq!((sends.debits, sends.debited_cents), (1, 888));
    assert_consistent(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_amounts_are_refused_before_anything_is_written() {
    let Stack { ledger, db: _db } = stack().await;
    ledger.deposit("deposit:gina", "gina", 100).await.unwrap();

    for cents in [0, -5, i64::MIN] {
        let debit = ledger
            .debit(send_debit(&format!("send:{cents}"), "gina", cents))
            .await;
        assert!(
            matches!(debit, Err(PaymentsError::InvalidAmount(c)) if c == cents),
            "{debit:?}"
        );
        let credit = ledger
            .credit(&format!("claim:{cents}"), "gina", cents)
            .await;
        assert!(
            matches!(credit, Err(PaymentsError::InvalidAmount(c)) if c == cents),
            "{credit:?}"
        );
        let deposit = ledger
            .deposit(&format!("deposit:{cents}"), "hal", cents)
            .await;
        assert!(
            matches!(deposit, Err(PaymentsError::InvalidAmount(_))),
            "{deposit:?}"
        );
    }

    assert_eq!(ledger.entries_count_by_prefix("").await.unwrap(), 1);
    assert_eq!(ledger.balance("gina").await.unwrap(), 100);
    assert_eq!(ledger.total_balance().await.unwrap(), 100);
    assert_consistent(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ledger_is_unavailable_not_a_panic() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    // Lazy: building the ledger does not connect.
    let ledger =
        PgLedger::connect(&format!("postgres://postgres@127.0.0.1:{port}/ledger"), 2).unwrap();

    let debit = ledger.debit(send_debit("send:x", "alice", 100)).await;
    assert!(is_unavailable(&debit), "{debit:?}");
    assert!(debit.unwrap_err().is_retryable());
    let credit = ledger.credit("claim:x:1", "alice", 100).await;
    assert!(is_unavailable(&credit), "{credit:?}");
    let resolution = ledger.resolve_debit("send:x").await;
    assert!(is_unavailable(&resolution), "{resolution:?}");
    assert!(is_unavailable(&ledger.balance("alice").await));
    assert!(is_unavailable(&ledger.total_balance().await));
    assert!(is_unavailable(&ledger.entry("send:x").await));

    // Bad input is still bad input, told before any connection is tried.
    let invalid = ledger.debit(send_debit("send:y", "alice", 0)).await;
    assert!(
        matches!(invalid, Err(PaymentsError::InvalidAmount(0))),
        "{invalid:?}"
    );

    let garbage = PgLedger::connect("postgres://[not a dsn", 2);
    assert!(
        matches!(garbage, Err(PaymentsError::Unavailable(_))),
        "{garbage:?}"
    );
}

/// Runs a debit that blocks on `account`'s row lock (held by another
/// session) after it has written its entry (in its one statement), and
/// kills its database session right there: the caller sees a failure in the
/// middle of the transaction.
async fn debit_killed_mid_transaction(
    stack: &Stack,
    key: &'static str,
    account: &'static str,
    cents: i64,
) -> Result<DebitOutcome, PaymentsError> {
    let locker = stack.db.connect().await.unwrap();
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM accounts WHERE account = '{account}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let debit = tokio::spawn({
        let ledger = stack.ledger.clone();
        async move { ledger.debit(send_debit(key, account, cents)).await }
    });

    let admin = stack.db.connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let blocked: i32 = loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE '%UPDATE accounts SET balance_cents = balance_cents -%'",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "the debit never blocked on the row lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&blocked])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let outcome = debit.await.unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_killed_mid_transaction_leaves_nothing_and_is_retried_or_resolved() {
    let stack = stack().await;
    let ledger = &stack.ledger;
    ledger.deposit("deposit:ivy", "ivy", 1_000).await.unwrap();

    // Killed after its entry was written, before the balance moved: the
    // caller sees Unavailable and the ledger shows no trace of it.
    let killed = debit_killed_mid_transaction(&stack, "send:e8", "ivy", 250).await;
    assert!(is_unavailable(&killed), "{killed:?}");
    assert_eq!(ledger.entry("send:e8").await.unwrap(), None);
    assert_eq!(ledger.balance("ivy").await.unwrap(), 1_000);

    // The caller's loop: retry Unavailable with the same key; the pool
    // replaces the dead connection. Exactly one debit results.
    let mut retries = 0;
    let outcome = loop {
        match ledger.debit(send_debit("send:e8", "ivy", 250)).await {
            Err(PaymentsError::Unavailable(_)) if retries < 20 => retries += 1,
            other => break other.unwrap(),
        }
    };
    assert_eq!(outcome, DebitOutcome::Debited);
    assert_eq!(
        ledger
            .debit(send_debit("send:e8", "ivy", 250))
            .await
            .unwrap(),
        DebitOutcome::Debited
    );
    assert_eq!(ledger.balance("ivy").await.unwrap(), 750);

    // Or the caller gives up and resolves: the key is voided, and the late
    // retry it could not stop is refused.
    let killed = debit_killed_mid_transaction(&stack, "send:e9", "ivy", 300).await;
    assert!(is_unavailable(&killed), "{killed:?}");
    assert_eq!(
        ledger.resolve_debit("send:e9").await.unwrap(),
        DebitResolution::Voided
    );
    assert_eq!(
        ledger
            .debit(send_debit("send:e9", "ivy", 300))
            .await
            .unwrap(),
        DebitOutcome::Voided
    );
    assert_eq!(ledger.balance("ivy").await.unwrap(), 750);

    let sends = ledger.totals_by_prefix("send:").await.unwrap();
    assert_eq!(
        (sends.debits, sends.debited_cents, sends.voids),
        (1, 250, 1)
    );
    assert_consistent(ledger).await;
}

/// The reconciler's full pass (`audit_books`): every entry exactly once, in
/// key (byte) order, across page boundaries (more entries than one page of
/// the portal), with the total balance and the books of the same snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_of_the_books_visits_every_entry_once_in_key_order() {
    const BULK: i64 = 4_500;
    let Stack { ledger, db } = stack().await;
    ledger.deposit("deposit:ann", "ann", 1_000).await.unwrap();
    ledger
        .debit(send_debit("send:e1", "ann", 300))
        .await
        .unwrap();
    Payments::credit(&ledger, "claim:e1:1", "bob", 120)
        .await
        .unwrap();
    assert_eq!(
        ledger.resolve_debit("send:gone").await.unwrap(),
        DebitResolution::Voided
    );
    // Many more entries than a page, written directly (balanced books).
    let client = db.connect().await.unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO entries (key, account, kind, amount_cents) \
               SELECT 'bulk:' || lpad(g::text, 5, '0'), 'bulk', 2, 1 FROM generate_series(1, {BULK}) g; \
             INSERT INTO accounts VALUES ('bulk', {BULK});"
        ))
        .await
        .unwrap();

    let mut visited: Vec<LedgerEntry> = Vec::new();
    let books = ledger
        .audit_books(|entry| visited.push(entry))
        .await
        .unwrap();
    assert_eq!(books.entries, BULK + 4);
    assert_eq!(visited.len(), usize::try_from(BULK + 4).unwrap());
    assert!(
        visited.windows(2).all(|pair| pair[0].key < pair[1].key),
        "entries come once each, in byte order of their keys"
    );
    assert_eq!(books.total_balance_cents, 1_000 - 300 + 120 + BULK);
    assert_eq!(
        books.total_balance_cents,
        ledger.total_balance().await.unwrap()
    );
    assert!(books.discrepancies.is_empty());
    let kinds = |prefix: &str| -> Vec<EntryKind> {
        visited
            .iter()
            .filter(|entry| entry.key.starts_with(prefix))
            .map(|entry| entry.kind)
            .collect()
    };
    assert_eq!(kinds("send:"), [EntryKind::Debit, EntryKind::Void]);
    assert_eq!(kinds("claim:"), [EntryKind::Credit]);
    assert_eq!(kinds("bulk:").len(), usize::try_from(BULK).unwrap());

    // A broken account shows in the same pass.
    client
        .batch_execute(
            "UPDATE accounts SET balance_cents = balance_cents + 1 WHERE account = 'bob'",
        )
        .await
        .unwrap();
    let books = ledger.audit_books(|_| {}).await.unwrap();
    assert_eq!(books.discrepancies.len(), 1);
    assert_eq!(books.discrepancies[0].account, "bob");
}

// ------------------------------------------------- the shared storage contracts

/// The SQL fragments of `keys::sql` compute, in PostgreSQL, exactly the text
/// `LedgerKey` displays in Rust: statements that pick keys from rows (the
/// expiry worker, the reconciler's joins) and code that builds them (the
/// batch commit, Send, recovery) agree on every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_computed_in_sql_are_the_keys_built_in_rust() {
    use redcell_payments::{LedgerKey, keys::sql};
    use redcell_topology::EnvelopeId;

    let server = redcell_harness::shared().await.unwrap();
    let client = server.connect("postgres").await.unwrap();
    let query = format!(
        "SELECT {}, {}, {}",
        sql::send_key("$1::text"),
        sql::claim_key("$1::text", "$2::int"),
        sql::refund_key("$1::text"),
    );
    let ids: Vec<EnvelopeId> = [
        "2612021000000000000123",
        "0001011990000000000000",
        "9912319999999999999999",
    ]
    .iter()
    .map(|text| text.parse().unwrap())
    .collect();
    for envelope in ids {
        for sequence in [0_u32, 1, 7, 10, 4_096, i32::MAX.unsigned_abs()] {
            let row = client
                .query_one(
                    &query,
                    &[&envelope.to_string(), &i32::try_from(sequence).unwrap()],
                )
                .await
                .unwrap();
            let in_sql: (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let in_rust = (
                LedgerKey::Send(envelope).to_string(),
                LedgerKey::Claim { envelope, sequence }.to_string(),
                LedgerKey::Refund(envelope).to_string(),
            );
            assert_eq!(in_sql, in_rust);
            for key in [&in_sql.0, &in_sql.1, &in_sql.2] {
                assert_eq!(key.parse::<LedgerKey>().unwrap().envelope(), envelope);
            }
        }
    }
}

/// The shared SQLSTATE table against the real server: the errors that a
/// statement timeout, a lock timeout, a unique index and a bad query really
/// raise are classified as the module doc says (a statement timeout is a
/// transient `TimedOut`, for the cell as for the ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_postgres_errors_are_classified_by_the_shared_table() {
    use redcell_payments::sqlstate::SqlFailure;

    let stack = stack().await;
    let server = redcell_harness::shared().await.unwrap();
    let client = server.connect(&stack.db.name).await.unwrap();
    let failure = |error: tokio_postgres::Error| SqlFailure::of(&error);

    // pg_sleep(60) always outlives a 1 ms statement timeout.
    client
        .batch_execute("SET statement_timeout = '1ms'")
        .await
        .unwrap();
    let timeout = client.query("SELECT pg_sleep(60)", &[]).await.unwrap_err();
    assert_eq!(failure(timeout), SqlFailure::TimedOut);
    client
        .batch_execute("RESET statement_timeout")
        .await
        .unwrap();

    // A lock held by another session, asked for with NOWAIT.
    let holder = server.connect(&stack.db.name).await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked = client
        .batch_execute("BEGIN; LOCK TABLE accounts NOWAIT")
        .await
        .unwrap_err();
    assert_eq!(failure(locked), SqlFailure::TimedOut);
    client.batch_execute("ROLLBACK").await.unwrap();
    holder.batch_execute("ROLLBACK").await.unwrap();

    client
        .batch_execute("INSERT INTO accounts VALUES ('kay', 1)")
        .await
        .unwrap();
    let duplicate = client
        .batch_execute("INSERT INTO accounts VALUES ('kay', 1)")
        .await
        .unwrap_err();
    assert_eq!(failure(duplicate), SqlFailure::UniqueViolation);
    let typo = client
        .batch_execute("SELECT no_such_column FROM accounts")
        .await
        .unwrap_err();
    assert_eq!(failure(typo), SqlFailure::Unexpected);
    assert!(SqlFailure::TimedOut.is_transient());
}

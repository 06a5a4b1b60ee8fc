//! [`PgLedger`]: the built-in payment system, a PostgreSQL ledger in its own
//! database (schema: `migrations/sql/ledger/0001_ledger.sql`,
//! `redcell_migrations::LEDGER`).
//!
//! Two tables: `accounts` (one balance per account) and `entries` (one row
//! per idempotency key: a debit, a credit or a void; append-only).
//!
//! # Invariants, and why they hold
//!
//! - **A balance never goes negative.** A debit moves money with
//!   `UPDATE .. SET balance = balance - x`, and the `CHECK (balance_cents >=
//!   0)` on the column refuses a result below zero: the debit's single
//!   statement ([`sql::DEBIT`]) then fails as a whole, its entry included,
//!   and the refusal is read from that constraint's violation. At READ
//!   COMMITTED a concurrent debit of the same account waits for the row lock
//!   and computes from the committed balance, so two debits can never both
//!   spend the same cents. (The CHECK used to be only a backstop behind a
//!   `WHERE balance >= x`; making it the path lets a debit be one autocommit
//!   statement — one round trip and one commit instead of four round trips.)
//! - **One entry per key, and money moves for a key at most once.** The key
//!   is the primary key of `entries`. Each operation inserts its entry
//!   (`ON CONFLICT DO NOTHING`) and moves the balance in the **same
//!   transaction** (for a debit, the same statement), so a crash, a lost connection or a refused debit at any
//!   point either keeps both or neither. A concurrent call with the same key
//!   waits on the first one's uncommitted entry, then sees it and answers
//!   from it (a replay) instead of moving money again.
//! - **One debit per (account, merchant order).** A debit's entry names its
//!   order, and a unique index on `(account, merchant_order)` admits one. The
//!   insert is `ON CONFLICT DO NOTHING` over *every* unique index, so a second
//!   key for a paid order is a no-op like a replay; reading back which entry
//!   holds the key (a replay) or the order (another key paid it) tells the
//!   two apart. A concurrent debit of the same order under another key waits
//!   on the first one's uncommitted entry, like a same-key replay does; if
//!   that one rolls back (insufficient funds), the order is free again.
//! - **A voided key can never be debited.** [`Payments::resolve_debit`]
//!   inserts a void entry under the key when it has none; from then on the
//!   key's entry is the void, so a debit arriving late (a retry the caller
//!   gave up on) conflicts with it and is answered [`DebitOutcome::Voided`].
//!   Entries are never updated or deleted, so the answer is final.
//! - **Conservation.** Because of the above, every account's balance equals
//!   its credits minus its debits; [`PgLedger::discrepancies`] checks it and
//!   [`PgLedger::total_balance`] is what a run may compare across faults.
//!
//! Nothing else takes a lock: a call is one autocommit statement (debit),
//! one short transaction (credit) or two autocommit statements
//! (`resolve_debit`), with no
//! application-level retry loops inside; retrying `Unavailable` is the
//! caller's job, with the same key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{NoTls, Row};

use crate::error::PaymentsError;
use crate::sql;
use crate::{Credit, Debit, DebitOutcome, DebitResolution, Payments};

/// How long a call waits for a free pooled connection before it is
/// `Unavailable` (the pool is full of slow calls: the ledger is overloaded).
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening one connection may take (connect + authenticate).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long checking a pooled connection before reuse may take.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The kind of a ledger entry; stored as `smallint` (`code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Money taken from the account.
    Debit,
    /// Money given to the account.
    Credit,
    /// The key was voided by `resolve_debit`; no account, no money.
    Void,
}

impl EntryKind {
    /// The value stored in `entries.kind`.
    pub fn code(self) -> i16 {
        match self {
            EntryKind::Debit => 1,
            EntryKind::Credit => 2,
            EntryKind::Void => 3,
        }
    }

    /// The kind stored as `code`, if it is one.
    pub fn from_code(code: i16) -> Option<EntryKind> {
        match code {
            1 => Some(EntryKind::Debit),
            2 => Some(EntryKind::Credit),
            3 => Some(EntryKind::Void),
            _ => None,
        }
    }
}

/// One row of `entries`: what happened under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The idempotency key the caller chose.
    pub key: String,
    /// The account the money moved on (`""` for a void).
    pub account: String,
    /// Debit, credit or void.
    pub kind: EntryKind,
    /// Positive for debits and credits, 0 for a void.
    pub amount_cents: i64,
    /// The merchant order a debit paid for; `None` for credits, voids and
    /// debits written before orders existed (ledger migration 2).
    pub order: Option<String>,
}

impl LedgerEntry {
    fn from_row(row: &Row) -> Result<LedgerEntry, PaymentsError> {
        let code: i16 = row.try_get(2)?;
        let kind = EntryKind::from_code(code).ok_or_else(|| {
            PaymentsError::Unavailable(format!("ledger entry has unknown kind {code}"))
        })?;
        Ok(LedgerEntry {
            key: row.try_get(0)?,
            account: row.try_get(1)?,
            kind,
            amount_cents: row.try_get(3)?,
            order: row.try_get(4)?,
        })
    }

    /// Whether this entry is exactly the operation now requested again. A
    /// debit from before orders existed has none, and matches any order: its
    /// retry is still the same money movement.
    fn is_replay_of(
        &self,
        kind: EntryKind,
        account: &str,
        cents: i64,
        order: Option<&str>,
    ) -> bool {
        self.kind == kind
            && self.account == account
            && self.amount_cents == cents
            && (self.order.is_none() || self.order.as_deref() == order)
    }
}

/// Counts and sums of the entries whose keys share a prefix, read in one
/// snapshot (for invariant checks such as "every done transfer has exactly
/// one ledger entry with its key").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryTotals {
    /// Number of debit entries.
    pub debits: i64,
    /// Sum of the debit entries' amounts.
    pub debited_cents: i64,
    /// Number of credit entries.
    pub credits: i64,
    /// Sum of the credit entries' amounts.
    pub credited_cents: i64,
    /// Number of void entries.
    pub voids: i64,
}

/// An account whose balance is not its credits minus its debits: a broken
/// ledger. Reported by [`PgLedger::discrepancies`], which should find none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDiscrepancy {
    /// The account (present in `accounts`, in `entries`, or both).
    pub account: String,
    /// Its balance (0 if it has no `accounts` row).
    pub balance_cents: i64,
    /// Its credits minus its debits, from `entries`.
    pub entries_net_cents: i64,
}

impl AccountDiscrepancy {
    fn from_row(row: &Row) -> Result<AccountDiscrepancy, PaymentsError> {
        Ok(AccountDiscrepancy {
            account: row.try_get(0)?,
            balance_cents: row.try_get(1)?,
            entries_net_cents: row.try_get(2)?,
        })
    }
}

/// A read-only `REPEATABLE READ` transaction: the one snapshot an audit
/// reads everything in.
async fn snapshot(
    client: &mut Object,
) -> Result<deadpool_postgres::Transaction<'_>, PaymentsError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The total balance and the accounts' discrepancies, read in the snapshot
/// of `transaction` (an auditor's, with whatever else it read).
async fn books_on(
    transaction: &deadpool_postgres::Transaction<'_>,
) -> Result<(i64, Vec<AccountDiscrepancy>), PaymentsError> {
    let total_balance_cents = transaction
        .query_one(sql::TOTAL_BALANCE, &[])
        .await?
        .try_get(0)?;
    let discrepancies = transaction
        .query(sql::DISCREPANCIES, &[])
        .await?
        .iter()
        .map(AccountDiscrepancy::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total_balance_cents, discrepancies))
}

/// The built-in [`Payments`]: a PostgreSQL ledger behind a connection pool.
///
/// Cheap to clone (the pool is shared); clones are the same ledger.
#[derive(Debug, Clone)]
pub struct PgLedger {
    pool: Pool,
}

impl PgLedger {
    /// A ledger over an existing pool (whose database has the ledger schema).
    pub fn new(pool: Pool) -> PgLedger {
        PgLedger { pool }
    }

    /// A ledger over a new pool of up to `max_connections` (at least 1)
    /// connections to `dsn` (`postgres://user@host:port/db` or
    /// `host=.. dbname=..`). Lazy: nothing is connected until the first call,
    /// so a ledger that is down at startup is `Unavailable` per call, not a
    /// startup failure. Waiting for a connection and opening one are bounded
    /// (5 s each); a statement timeout, if wanted, goes in the DSN
    /// (`options=-c statement_timeout=2s`).
    ///
    /// An unparsable DSN is reported as `Unavailable` with the parse error.
    pub fn connect(dsn: &str, max_connections: usize) -> Result<PgLedger, PaymentsError> {
        let mut config: tokio_postgres::Config = dsn
            .parse()
            .map_err(|err| PaymentsError::Unavailable(format!("invalid ledger DSN: {err}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .map_err(|err| {
                PaymentsError::Unavailable(format!("building the ledger pool: {err}"))
            })?;
        Ok(PgLedger { pool })
    }

    /// The pool, e.g. for health checks and pool metrics.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Funds `account` (an operator or test action): a credit under `key`,
    /// with the same idempotency.
    pub async fn deposit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        self.credit(key, account, cents).await
    }

    /// The balance of `account`; 0 for an account the ledger has never seen.
    pub async fn balance(&self, account: &str) -> Result<i64, PaymentsError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql::SELECT_BALANCE).await?;
        match client.query_opt(&statement, &[&account]).await? {
            Some(row) => Ok(row.try_get(0)?),
            None => Ok(0),
        }
    }

    /// The sum of all balances.
    pub async fn total_balance(&self) -> Result<i64, PaymentsError> {
        let client = self.pool.get().await?;
        let row = client.query_one(sql::TOTAL_BALANCE, &[]).await?;
        Ok(row.try_get(0)?)
    }

    /// The entry under `key`, if any.
    pub async fn entry(&self, key: &str) -> Result<Option<LedgerEntry>, PaymentsError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql::SELECT_ENTRY).await?;
        client
            .query_opt(&statement, &[&key])
            .await?
            .as_ref()
            .map(LedgerEntry::from_row)
            .transpose()
    }

    /// The entries under `keys` that exist, ordered by key (a reconciler
    /// compares them with its own list: one entry per key is guaranteed, so
    /// a missing key is a missing entry).
    pub async fn entries(&self, keys: &[&str]) -> Result<Vec<LedgerEntry>, PaymentsError> {
        let client = self.pool.get().await?;
        let rows = client.query(sql::SELECT_ENTRIES, &[&keys]).await?;
        rows.iter().map(LedgerEntry::from_row).collect()
    }

    /// How many entries have a key starting with `prefix` (`""`: all).
    pub async fn entries_count_by_prefix(&self, prefix: &str) -> Result<i64, PaymentsError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(sql::COUNT_ENTRIES_LIKE, &[&like_prefix(prefix)])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Counts and sums per kind of the entries whose key starts with
    /// `prefix` (`""`: all), in one snapshot.
    pub async fn totals_by_prefix(&self, prefix: &str) -> Result<EntryTotals, PaymentsError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(sql::TOTALS_LIKE, &[&like_prefix(prefix)])
            .await?;
        Ok(EntryTotals {
            debits: row.try_get(0)?,
            debited_cents: row.try_get(1)?,
            credits: row.try_get(2)?,
            credited_cents: row.try_get(3)?,
            voids: row.try_get(4)?,
        })
    }

    /// Every account whose balance is not its credits minus its debits, in
    /// one snapshot. Empty on a healthy ledger, whatever crashed meanwhile.
    pub async fn discrepancies(&self) -> Result<Vec<AccountDiscrepancy>, PaymentsError> {
        let client = self.pool.get().await?;
        let rows = client.query(sql::DISCREPANCIES, &[]).await?;
        rows.iter().map(AccountDiscrepancy::from_row).collect()
    }
}

/// The ledger as one consistent snapshot, for auditors (reconciliation):
/// entries, total balance and the accounts' own discrepancies, all read in one
/// `REPEATABLE READ` transaction, so a credit landing mid-audit is either in all
/// of them or in none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerAudit {
    /// The entries under the keys asked for that exist.
    pub entries: Vec<LedgerEntry>,
    pub total_balance_cents: i64,
    pub discrepancies: Vec<AccountDiscrepancy>,
}

impl PgLedger {
    /// Reads [`LedgerAudit`] for `keys` in one snapshot.
    pub async fn audit(&self, keys: &[&str]) -> Result<LedgerAudit, PaymentsError> {
        let mut client = self.pool.get().await?;
        let transaction = snapshot(&mut client).await?;
        let entries = transaction
            .query(sql::SELECT_ENTRIES, &[&keys])
            .await?
            .iter()
            .map(LedgerEntry::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let (total_balance_cents, discrepancies) = books_on(&transaction).await?;
        transaction.commit().await?;
        Ok(LedgerAudit {
            entries,
            total_balance_cents,
            discrepancies,
        })
    }
}

/// The whole ledger's books in one snapshot, for a reconciler that must see
/// every entry (to find entries no order DB knows about), read by
/// [`PgLedger::audit_books`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerBooks {
    /// How many entries were visited (every entry of the snapshot).
    pub entries: i64,
    pub total_balance_cents: i64,
    pub discrepancies: Vec<AccountDiscrepancy>,
}

/// Entries per page of [`PgLedger::audit_books`]: bounds the memory of a
/// pass over a ledger of any size.
const AUDIT_PAGE_ROWS: i32 = 2_000;

impl PgLedger {
    /// Every entry, in key order, handed to `visit` one by one, then the total
    /// balance and the accounts' own discrepancies, all in **one**
    /// `REPEATABLE READ` snapshot: an entry is visited iff its money is in the
    /// balances read. The entries are read through a portal
    /// `AUDIT_PAGE_ROWS` at a time, so memory does not grow with the ledger.
    pub async fn audit_books<F>(&self, mut visit: F) -> Result<LedgerBooks, PaymentsError>
    where
        F: FnMut(LedgerEntry),
    {
        let mut client = self.pool.get().await?;
        let transaction = snapshot(&mut client).await?;
        let statement = transaction.prepare(sql::ALL_ENTRIES).await?;
        let portal = transaction.bind(&statement, &[]).await?;
        let mut entries = 0_i64;
        loop {
            let page = transaction.query_portal(&portal, AUDIT_PAGE_ROWS).await?;
            let last = page.len() < usize::try_from(AUDIT_PAGE_ROWS).unwrap_or(usize::MAX);
            for row in &page {
                visit(LedgerEntry::from_row(row)?);
                entries += 1;
            }
            if last {
                break;
            }
        }
        let (total_balance_cents, discrepancies) = books_on(&transaction).await?;
        transaction.commit().await?;
        Ok(LedgerBooks {
            entries,
            total_balance_cents,
            discrepancies,
        })
    }
}

impl Payments for PgLedger {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        positive(debit.cents)?;
        let client = self.pool.get().await?;
        let outcome = debit_on(&client, debit).await;
        discard_if_failed(client, &outcome);
        outcome
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        positive(cents)?;
        let mut client = self.pool.get().await?;
        let outcome = credit_on(&mut client, key, account, cents).await;
        discard_if_failed(client, &outcome);
        outcome
    }

    /// All valid credits in one transaction (one WAL flush for the batch).
    async fn credit_batch(&self, credits: &[Credit<'_>]) -> Vec<Result<(), PaymentsError>> {
        let mut outcomes: Vec<Option<Result<(), PaymentsError>>> = credits
            .iter()
            .map(|credit| positive(credit.cents).err().map(Err))
            .collect();
        let valid: Vec<usize> = (0..credits.len())
            .filter(|&index| outcomes[index].is_none())
            .collect();
        if !valid.is_empty() {
            let written = match self.pool.get().await {
                Ok(mut client) => {
                    let written = credit_batch_on(&mut client, credits, &valid).await;
                    discard_if_failed(client, &written);
                    written
                }
                Err(error) => Err(PaymentsError::from(error)),
            };
            match written {
                Ok(answers) => {
                    for (index, answer) in valid.iter().zip(answers) {
                        outcomes[*index] = Some(answer);
                    }
                }
                Err(error) => {
                    // Nothing of the batch committed: every credit may retry.
                    let message = error.to_string();
                    for index in &valid {
                        outcomes[*index] = Some(Err(PaymentsError::Unavailable(message.clone())));
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Ok(())))
            .collect()
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        let client = self.pool.get().await?;
        let outcome = resolve_debit_on(&client, key).await;
        discard_if_failed(client, &outcome);
        outcome
    }
}

/// A connection on which a call failed is closed instead of going back to
/// the pool: the server may have hung up (the pool's cheap `is_closed`
/// check can miss a hang-up it has not processed yet), so the next call
/// would fail on it too. Failures are rare; a fresh connection is cheap.
fn discard_if_failed<T>(client: Object, outcome: &Result<T, PaymentsError>) {
    if let Err(PaymentsError::Unavailable(_)) = outcome {
        drop(Object::take(client));
    }
}

/// One statement ([`sql::DEBIT`]) does the whole debit in the common case;
/// only a debit that did not move money reads back why (a replay, a void, a
/// paid order, no account, or a refusal for balance).
async fn debit_on(client: &Object, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
    let Debit {
        key,
        order,
        account,
        cents,
    } = debit;
    let kind = EntryKind::Debit;
    let statement = client.prepare_cached(sql::DEBIT).await?;
    let taken = match client
        .query_one(&statement, &[&key, &account, &cents, &order, &kind.code()])
        .await
    {
        Ok(row) => row.try_get::<_, bool>(0)?,
        Err(error) if is_overdraft(&error) => {
            // The statement failed as a whole: no entry, the key stays free.
            let balance_cents = balance_on(client, account).await?;
            tracing::debug!(
                key,
                account,
                cents,
                balance_cents,
                "debit refused: insufficient funds"
            );
            return Ok(DebitOutcome::InsufficientFunds { balance_cents });
        }
        Err(error) => return Err(error.into()),
    };
    if taken {
        tracing::debug!(key, account, cents, "debited");
        return Ok(DebitOutcome::Debited);
    }
    // The key has an entry (a replay, a void, a conflict), or another key
    // paid this order, or the account does not exist. A voided key whose
    // order another key paid is answered with the payer: the caller learns
    // where its money went.
    let by_key = entry_on(client, sql::SELECT_ENTRY, &[&key]).await?;
    let outcome = match by_key {
        Some(existing) if existing.kind != EntryKind::Void => {
            if !existing.is_replay_of(kind, account, cents, Some(order)) {
                return Err(conflict(key, &existing, kind, account, cents));
            }
            DebitOutcome::Debited
        }
        voided => match entry_on(client, sql::SELECT_ORDER, &[&account, &order]).await? {
            Some(paid) => DebitOutcome::OrderPaid { key: paid.key },
            None if voided.is_some() => DebitOutcome::Voided,
            // Nothing holds the key or the order: the statement inserted
            // nothing because the account does not exist.
            None => DebitOutcome::InsufficientFunds {
                balance_cents: balance_on(client, account).await?,
            },
        },
    };
    tracing::debug!(
        key,
        order,
        account,
        cents,
        ?outcome,
        "debit not taken again"
    );
    Ok(outcome)
}

/// Whether `error` is the balance's CHECK refusing a debit that does not fit.
fn is_overdraft(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::CHECK_VIOLATION
            && db.constraint() == Some(sql::BALANCE_CHECK)
    })
}

/// The balance of `account`; 0 for an account the ledger has never seen.
async fn balance_on(client: &Object, account: &str) -> Result<i64, PaymentsError> {
    let read = client.prepare_cached(sql::SELECT_BALANCE).await?;
    match client.query_opt(&read, &[&account]).await? {
        Some(row) => Ok(row.try_get(0)?),
        None => Ok(0),
    }
}

async fn credit_on(
    client: &mut Object,
    key: &str,
    account: &str,
    cents: i64,
) -> Result<(), PaymentsError> {
    let transaction = client.transaction().await?;
    let insert = transaction.prepare_cached(sql::INSERT_ENTRY).await?;
    let kind = EntryKind::Credit;
    let inserted = transaction
        .query_opt(
            &insert,
            &[&key, &account, &kind.code(), &cents, &None::<&str>],
        )
        .await?;
    if inserted.is_none() {
        // Credits name no order, so only the key can have conflicted.
        let existing = entry_on(&transaction, sql::SELECT_ENTRY, &[&key])
            .await?
            .ok_or_else(|| vanished(key))?;
        transaction.commit().await?;
        if !existing.is_replay_of(kind, account, cents, None) {
            return Err(conflict(key, &existing, kind, account, cents));
        }
        tracing::debug!(key, account, cents, "credit replayed");
        return Ok(());
    }
    let give = transaction.prepare_cached(sql::CREDIT_ACCOUNT).await?;
    transaction.execute(&give, &[&account, &cents]).await?;
    transaction.commit().await?;
    tracing::debug!(key, account, cents, "credited");
    Ok(())
}

/// The credits `credits[valid]` (positive amounts) in one transaction: the
/// entries first (keys in sorted order), then one balance update per
/// account for the keys this call inserted, then the replayed keys read
/// back and checked as [`credit_on`] checks one. Returns one answer per
/// index of `valid`, in that order; an error means nothing committed.
async fn credit_batch_on(
    client: &mut Object,
    credits: &[Credit<'_>],
    valid: &[usize],
) -> Result<Vec<Result<(), PaymentsError>>, PaymentsError> {
    let mut sorted = valid.to_vec();
    sorted.sort_by_key(|&index| credits[index].key);
    let keys: Vec<&str> = sorted.iter().map(|&index| credits[index].key).collect();
    let accounts: Vec<&str> = sorted.iter().map(|&index| credits[index].account).collect();
    let cents: Vec<i64> = sorted.iter().map(|&index| credits[index].cents).collect();
    let transaction = client.transaction().await?;
    let insert = transaction
        .prepare_cached(sql::INSERT_CREDIT_ENTRIES)
        .await?;
    let inserted: HashSet<String> = transaction
        .query(&insert, &[&keys, &accounts, &cents])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    // The first credit of each inserted key moves money; any other credit of
    // the batch under a key is answered from the key's entry, like a replay.
    let mut moved: HashSet<&str> = HashSet::with_capacity(inserted.len());
    let mut per_account: BTreeMap<&str, i64> = BTreeMap::new();
    let mut replays = Vec::new();
    for &index in &sorted {
        let credit = credits[index];
        if inserted.contains(credit.key) && moved.insert(credit.key) {
            let sum = per_account.entry(credit.account).or_insert(0);
            *sum = sum.checked_add(credit.cents).ok_or_else(|| {
                PaymentsError::Unavailable(format!(
                    "credits to {:?} overflow a balance",
                    credit.account
                ))
            })?;
        } else {
            replays.push(index);
        }
    }
    if !per_account.is_empty() {
        let (payees, sums): (Vec<&str>, Vec<i64>) = per_account.into_iter().unzip();
        let give = transaction.prepare_cached(sql::CREDIT_ACCOUNTS).await?;
        transaction.execute(&give, &[&payees, &sums]).await?;
    }
    let mut entries: HashMap<String, LedgerEntry> = HashMap::new();
    if !replays.is_empty() {
        let replayed: Vec<&str> = replays.iter().map(|&index| credits[index].key).collect();
        let read = transaction.prepare_cached(sql::SELECT_ENTRIES).await?;
        for row in transaction.query(&read, &[&replayed]).await? {
            let entry = LedgerEntry::from_row(&row)?;
            entries.insert(entry.key.clone(), entry);
        }
    }
    transaction.commit().await?;
    let replays: HashSet<usize> = replays.into_iter().collect();
    Ok(valid
        .iter()
        .map(|&index| {
            let credit = credits[index];
            if !replays.contains(&index) {
                tracing::debug!(
                    key = credit.key,
                    account = credit.account,
                    cents = credit.cents,
                    "credited"
                );
                return Ok(());
            }
            let existing = entries
                .get(credit.key)
                .ok_or_else(|| vanished(credit.key))?;
            if !existing.is_replay_of(EntryKind::Credit, credit.account, credit.cents, None) {
                return Err(conflict(
                    credit.key,
                    existing,
                    EntryKind::Credit,
                    credit.account,
                    credit.cents,
                ));
            }
            tracing::debug!(
                key = credit.key,
                account = credit.account,
                cents = credit.cents,
                "credit replayed"
            );
            Ok(())
        })
        .collect())
}

async fn resolve_debit_on(client: &Object, key: &str) -> Result<DebitResolution, PaymentsError> {
    // Two autocommit statements: the void (if the key is free) commits
    // first, so whatever the key's entry is afterwards is final.
    let void = client.prepare_cached(sql::VOID_KEY).await?;
    let voided_now = client.execute(&void, &[&key]).await? == 1;
    let read = client.prepare_cached(sql::SELECT_ENTRY).await?;
    let entry = match client.query_opt(&read, &[&key]).await? {
        Some(row) => LedgerEntry::from_row(&row)?,
        None => return Err(vanished(key)),
    };
    let resolution = match entry.kind {
        EntryKind::Debit => DebitResolution::Debited,
        EntryKind::Void => DebitResolution::Voided,
        EntryKind::Credit => {
            tracing::error!(key, "resolve_debit on a credit's key");
            return Err(PaymentsError::KeyConflict {
                key: key.to_owned(),
            });
        }
    };
    tracing::debug!(key, ?resolution, voided_now, "debit resolved");
    Ok(resolution)
}

/// Amounts are positive cents; checked before any I/O.
fn positive(cents: i64) -> Result<(), PaymentsError> {
    if cents > 0 {
        Ok(())
    } else {
        Err(PaymentsError::InvalidAmount(cents))
    }
}

/// The entry (by `query`: its key, or its account and order) that made our
/// insert a no-op. It was committed before the insert returned (the insert
/// waits for an uncommitted one) and entries are never deleted, so it is
/// visible to this statement's snapshot (READ COMMITTED: a new one per
/// statement).
async fn entry_on(
    client: &impl deadpool_postgres::GenericClient,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<LedgerEntry>, PaymentsError> {
    let read = client.prepare_cached(query).await?;
    client
        .query_opt(&read, params)
        .await?
        .as_ref()
        .map(LedgerEntry::from_row)
        .transpose()
}

/// An entry that conflicted on insert but cannot be read: impossible unless
/// someone deletes entries by hand. Reported, never panicked on.
fn vanished(key: &str) -> PaymentsError {
    tracing::error!(key, "ledger entry conflicted on insert but cannot be read");
    PaymentsError::Unavailable(format!(
        "ledger entry {key:?} conflicted but cannot be read"
    ))
}

fn conflict(
    key: &str,
    existing: &LedgerEntry,
    kind: EntryKind,
    account: &str,
    cents: i64,
) -> PaymentsError {
    tracing::error!(
        key,
        existing_kind = ?existing.kind,
        existing_account = %existing.account,
        existing_cents = existing.amount_cents,
        requested_kind = ?kind,
        requested_account = account,
        requested_cents = cents,
        "idempotency key reused for a different operation"
    );
    PaymentsError::KeyConflict {
        key: key.to_owned(),
    }
}

/// `prefix%` with LIKE's wildcards in `prefix` escaped (backslash is LIKE's
/// default escape character).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

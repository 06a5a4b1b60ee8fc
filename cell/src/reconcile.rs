//! Reconciliation: the money invariants of DESIGN.md §5 checked against live
//! order DBs and the ledger, exact while the cells serve. Tests call it after
//! (and during) every run that moves money, and `cellctl reconcile` runs it
//! against production; zero discrepancies is the only passing result. Every
//! [`Discrepancy`] carries a [`DiscrepancyKind`], so tests and operators can
//! tell an orphan debit from a wrong refund without reading prose.
//!
//! # What is checked
//!
//! 1. **Per envelope, in the order DB**: claims + remaining + refund = total;
//!    claims + remaining shares = count (an expired envelope has none left);
//!    at most one claim per user; unpaid and cancelled envelopes have no
//!    claims; an expired envelope's refund is exactly total − claims, to its
//!    sender, once.
//! 2. **Per key, order DB against ledger**: every claim has its transfer (key
//!    `claim:<id>:<seq>`, same user and amount) and every claim transfer its
//!    claim; every done transfer has its ledger credit (same key, account and
//!    amount); every paid envelope has its debit `send:<id>` of its sender
//!    and total, paying its own Send's order; no cancelled one has.
//! 3. **Per entry, ledger against every order DB**: every debit and credit
//!    whose key is in the cells' key space (`send:`, `claim:`, `refund:`)
//!    names a row of the cell its envelope ID routes to
//!    ([`redcell_topology::Topology::route`]); one that does not is an
//!    *orphan* — money that left an account for nothing any cell knows of.
//!    Keys outside that space (deposits, top-ups: `deposit:…`) are the
//!    money's way in ([`Report::deposited_cents`]), not orphans. Voids carry
//!    no money: a void with no row is a refused Send's key, made final before
//!    its envelope was deleted.
//! 4. **Conservation**: balances + held = deposited, see below.
//!
//! # Exact while traffic flows: the snapshot argument
//!
//! The order DBs and the ledger are different databases; no snapshot spans
//! both. Comparing their *totals* is therefore wrong while cells serve: an
//! Open committed after the order-DB snapshot and credited before the ledger
//! snapshot is counted twice (in the envelope's remaining cents *and* in the
//! receiver's balance), a Send debited in the same gap not at all. Instead
//! every cent is accounted **per ledger key**, and the reads are ordered so
//! that every fact is either seen consistently or checked again:
//!
//! - The write protocol (ops, workers) always commits the order-DB row first
//!   and calls the ledger after: an envelope exists (`PENDING_PAYMENT`)
//!   before its debit, a claim's or refund's transfer before its credit. A
//!   transfer is marked done only after its credit, an envelope made
//!   `ACTIVE` only after its debit, `CANCELLED` only once its key is void.
//!   Rows are never deleted except a refused Send's, whose key is voided
//!   first (so it never carries money).
//! - **O1**: each cell's order DB in one `REPEATABLE READ` snapshot.
//! - **L**: then the whole ledger in one snapshot ([`PgLedger::audit_books`]),
//!   streamed in key order: entries, total balance, the accounts' books.
//! - **O2**: then, for the few entries whose key names no row of O1 (and the
//!   O1 `PENDING_PAYMENT` envelopes L shows debited), a fresh read of the
//!   rows by key.
//!
//! Because O1 precedes L: a row done/paid in O1 had its entry committed
//! before O1, so L holds it — "done but no credit", "active but no debit"
//! are real, never races. Because O2 follows L: an entry in L was committed
//! after its row, so the row is visible to O2 — an entry with no row in O2 is
//! a real orphan, never a row that O1 was too early to see (such entries are
//! counted as [`Report::late_entries`] and matched against their O2 rows).
//!
//! **What is conserved.** Money lives in an account balance or inside a
//! cell. Both are read from **the same ledger snapshot L**: a cell holds, per
//! envelope, what L debited under its key minus what L credited under its
//! claims' and refund's keys, summed over keys that name a row
//! ([`Report::held_cents`]). L's own books (every balance = its credits −
//! its debits, checked) then give balances + held + orphaned = deposited
//! exactly over the fleet ([`check_fleet`]; [`check_cell`] counts its own
//! cell's keys only), in one snapshot, whatever moves meanwhile; a caller who knows
//! what it deposited checks balances + held = deposits, which fails by the
//! amount of any orphan or unknown entry. What ties that ledger-frame "held"
//! to the order DBs is check 2, per key: each debit is its envelope's total,
//! each credit its transfer's amount, each transfer its claim's or the
//! remainder; with the per-envelope sums of check 1 that makes, per
//! envelope, debit − credits = remaining + transfers not yet credited — the
//! money the order DB says the cell holds — without ever comparing two
//! snapshots' totals. At rest (outboxes drained) `held_cents` is the
//! remaining cents of active envelopes plus paid-but-unresolved Sends.
//!
//! # Cost
//!
//! One pass over each order DB (envelopes, claims, transfers, kept in memory
//! as compact per-row facts: about 150 bytes per envelope and per transfer),
//! one streamed pass over the ledger in key order through a portal
//! (constant memory), and point reads by key for the late entries. The
//! order-DB side is what grows with the data; bounding it too is a merge
//! join per key prefix (the ledger's `claim:`/`refund:`/`send:` ranges are
//! each in ID order, as order-DB portals by key or ID can be), with every
//! snapshot taken before the ledger's and held for the pass. Each read-only snapshot is held only for its own pass.
//!
//! # Archived envelopes
//!
//! `cellctl archive` ([`crate::archive`]) deletes the rows of settled
//! envelopes and keeps per envelope its carried totals
//! (`archived_envelopes`, in the same transaction as the delete). The ledger
//! keeps their entries; each is matched to the carried totals of the
//! archived envelope its key names, read in O1 with the rows: the debit must
//! be the sender's of the total (paying the Send's order), the `claim:`
//! credits as many and as much as the claims were, the `refund:` credit the
//! refunded cents to the sender ([`DiscrepancyKind::ArchivedTotals`]
//! otherwise). A settled envelope's entries all precede its archive (every
//! transfer was done), so O1 sees either its rows or its totals, never
//! neither. Archived envelopes hold no money (debit − credits = 0) and are
//! counted in [`Report::archived_envelopes`], apart from
//! [`Report::envelopes`].

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use redcell_payments::{EntryKind, KeyKind, LedgerEntry, LedgerKey, PgLedger, keys};
use redcell_topology::{EnvelopeId, Topology};
use tokio_postgres::{Client, Row, types::FromSql};

use crate::envelope::Status;

/// What kind of invariant an entry or row breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiscrepancyKind {
    /// A ledger debit under `send:<id>` whose envelope no cell holds: an
    /// account paid for nothing.
    OrphanDebit,
    /// A ledger credit under `claim:…`/`refund:…` whose transfer (and claim)
    /// no cell holds: money paid out of nothing.
    OrphanCredit,
    /// A ledger entry whose envelope routes to a cell the check was not
    /// given (fleet check): nobody reconciled it.
    UnreconciledCell,
    /// The order DB says money moved but the ledger has no entry under the
    /// row's key: a done transfer without its credit, a paid envelope without
    /// its debit.
    MissingTransfer,
    /// A user paid twice from one envelope: a claim transfer besides the
    /// user's claim's own, or more than one refund.
    DoubleCredit,
    /// An amount that differs from what it pays: a debit vs the envelope's
    /// total, a credit vs its transfer, a transfer vs its claim.
    WrongAmount,
    /// A ledger entry under a row's key of the wrong kind, account or
    /// merchant order; a claim transfer to another user than the claim's.
    WrongEntry,
    /// A claim without its transfer: the share will never be paid.
    ClaimWithoutTransfer,
    /// A claim transfer whose key names no claim, for a user with no claim
    /// on the envelope.
    TransferWithoutClaim,
    /// A refund that is not exactly the remainder (total − claims) of an
    /// expired envelope to its sender, a missing one, or one of an envelope
    /// that is not expired.
    WrongRefund,
    /// An envelope's own sums or counts are broken.
    EnvelopeSums,
    /// A user with more than one claim on an envelope.
    DoubleClaim,
    /// A pending or cancelled envelope that moved money: claims, refunds, or
    /// (cancelled) a debit of its sender.
    UnpaidButMoved,
    /// An envelope that no Send (idempotency row) names.
    MissingSendRequest,
    /// An envelope status code this binary does not know.
    UnknownStatus,
    /// The ledger's own books: an account whose balance is not its credits
    /// minus its debits.
    LedgerBooks,
    /// An archived envelope whose carried totals (`archived_envelopes`) are
    /// not what the ledger holds under its keys, or that also has live rows.
    ArchivedTotals,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub kind: DiscrepancyKind,
    /// The cell concerned, if known (an unroutable key has none).
    pub cell: Option<String>,
    /// The envelope concerned, if one.
    pub envelope: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(cell) = &self.cell {
            write!(f, " cell {cell}")?;
        }
        if let Some(envelope) = &self.envelope {
            write!(f, " envelope {envelope}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What reconciling one cell found. Money fields are in the frame of the one
/// ledger snapshot the check read (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub cell: String,
    pub discrepancies: Vec<Discrepancy>,
    pub envelopes: i64,
    pub claims: i64,
    /// Envelopes archived (`cellctl archive`): their ledger entries were
    /// matched against carried totals, not rows.
    pub archived_envelopes: i64,
    /// Sends still `PENDING_PAYMENT` (the recovery worker resolves them).
    pub pending_payments: i64,
    pub pending_transfers: i64,
    /// Pending transfers the ledger has already credited (marking them done is
    /// all that is left).
    pub in_flight_transfers: i64,
    /// Ledger entries of this cell written for rows created after the
    /// order-DB snapshot (traffic during the check), matched on a later read.
    pub late_entries: i64,
    /// Money inside the cell: debited under its envelopes' keys and not yet
    /// credited under their claims' and refunds' keys, in the ledger snapshot
    /// the balances come from. Not in any balance, not lost.
    pub held_cents: i64,
    /// Sum of this cell's credits in that ledger snapshot.
    pub settled_cents: i64,
    /// Sum of all ledger balances, from the same ledger snapshot.
    pub ledger_balance_cents: i64,
    /// Net money that came in from outside the cells' key space (deposits,
    /// top-ups): credits minus debits under other keys, same snapshot.
    pub deposited_cents: i64,
    /// Net money under orphan entries (debits minus credits): taken from
    /// accounts for nothing any cell holds. 0 on a healthy deployment.
    pub orphaned_cents: i64,
}

/// What reconciling a fleet (every cell of a topology, one ledger) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetReport {
    /// One report per cell, in the order given; each holds its own
    /// discrepancies.
    pub cells: Vec<Report>,
    /// Every discrepancy: the cells' and those of no cell (unroutable keys,
    /// entries of cells not given, the ledger's books).
    pub discrepancies: Vec<Discrepancy>,
    /// Sum of the cells' held cents.
    pub held_cents: i64,
    pub ledger_balance_cents: i64,
    pub deposited_cents: i64,
    pub orphaned_cents: i64,
}

/// One cell's order DB, for [`check_fleet`].
#[derive(Debug)]
pub struct CellOrders<'a> {
    /// The cell's name in the topology.
    pub cell: &'a str,
    pub orders: &'a mut Client,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("order DB: {0}")]
    Orders(#[from] tokio_postgres::Error),
    #[error("order DB column {column}: {source}")]
    Column {
        column: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("ledger: {0}")]
    Ledger(#[from] redcell_payments::PaymentsError),
    #[error("cell {0} is not in the topology")]
    UnknownCell(String),
}

/// Checks one cell's order DB against the ledger. Ledger entries of other
/// cells' envelopes (by `topology`) are left to their own cells' checks; the
/// money fields count this cell's keys only.
pub async fn check_cell(
    orders: &mut Client,
    ledger: &PgLedger,
    topology: &Topology,
    cell: &str,
) -> Result<Report, ReconcileError> {
    let cells = [CellOrders { cell, orders }];
    let mut fleet = check(cells, ledger, topology, Scope::GivenCells).await?;
    let mut report = fleet.cells.pop().unwrap_or_default();
    report.discrepancies = fleet.discrepancies;
    Ok(report)
}

/// Checks every cell given against one ledger snapshot. Every money entry of
/// the cells' key space must name a row of the cell its envelope routes to;
/// an entry routing to a cell not given is reported
/// ([`DiscrepancyKind::UnreconciledCell`]), so pass every cell that ever held
/// envelopes.
pub async fn check_fleet<'a, I>(
    cells: I,
    ledger: &PgLedger,
    topology: &Topology,
) -> Result<FleetReport, ReconcileError>
where
    I: IntoIterator<Item = CellOrders<'a>>,
{
    check(cells, ledger, topology, Scope::Fleet).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Entries of cells not given are someone else's (a per-cell check).
    GivenCells,
    /// Entries of cells not given are discrepancies.
    Fleet,
}

// ---------------------------------------------------------------------------
// O1: the order DB's facts, in one snapshot.

const ENVELOPE_SUMS: &str = "SELECT e.id, e.sender, e.status, e.total_cents, e.count, e.remaining_cents, e.remaining_count, \
       COALESCE(c.n, 0), COALESCE(c.cents, 0), COALESCE(r.n, 0), COALESCE(r.cents, 0), \
       s.idempotency_key \
     FROM envelopes e \
     LEFT JOIN send_requests s ON s.envelope_id = e.id \
     LEFT JOIN (SELECT day, envelope_id, count(*) AS n, sum(amount_cents)::bigint AS cents FROM claims GROUP BY 1, 2) c \
       ON c.day = e.day AND c.envelope_id = e.id \
     LEFT JOIN (SELECT envelope_id, count(*) AS n, sum(amount_cents)::bigint AS cents FROM transfers WHERE kind = 2 GROUP BY 1) r \
       ON r.envelope_id = e.id";
const DOUBLE_CLAIMS: &str =
    "SELECT envelope_id, user_id, count(*) FROM claims GROUP BY 1, 2 HAVING count(*) > 1";
// Statements that join a claim to its transfer by the claim's key compute
// the key with its SQL spelling (`keys::sql::claim_key`, the same prefixes as
// `LedgerKey::Claim`'s text; checked against PostgreSQL in the ledger tests).

/// Claims whose transfer (by key) is missing or differs from the claim, with
/// the key the claim's transfer has.
static CLAIMS_WITHOUT_THEIR_TRANSFER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT c.envelope_id, c.seq, c.user_id, c.amount_cents, \
           t.kind, t.user_id, t.amount_cents, {claim_key} \
         FROM claims c \
         LEFT JOIN transfers t ON t.key = {claim_key} \
         WHERE t.id IS NULL OR t.kind <> 1 OR t.user_id <> c.user_id OR t.amount_cents <> c.amount_cents",
        claim_key = keys::sql::claim_key("c.envelope_id", "c.seq"),
    )
});
/// Claim transfers whose key names no claim; whether the user has a claim on
/// the envelope anyway (then it pays the user twice).
static TRANSFERS_WITHOUT_CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT t.envelope_id, t.key, t.user_id, \
           EXISTS (SELECT 1 FROM claims c WHERE c.envelope_id = t.envelope_id AND c.user_id = t.user_id) \
         FROM transfers t WHERE t.kind = 1 AND NOT EXISTS \
         (SELECT 1 FROM claims c WHERE {claim_key} = t.key)",
        claim_key = keys::sql::claim_key("c.envelope_id", "c.seq"),
    )
});
/// Refunds to anyone but the envelope's sender.
const MISDIRECTED_REFUNDS: &str = "SELECT t.envelope_id, t.key, t.user_id, e.sender \
     FROM transfers t JOIN envelopes e ON e.id = t.envelope_id \
     WHERE t.kind = 2 AND t.user_id <> e.sender";
const TRANSFERS: &str = "SELECT envelope_id, key, user_id, amount_cents, status = 2 FROM transfers";
/// The carried totals of archived envelopes (orders migration 3).
const ARCHIVED: &str = "SELECT envelope_id, sender, status, total_cents, claim_count, \
       claimed_cents, refunded_cents, send_key FROM archived_envelopes";

// O2: rows by key, read after the ledger.
const ENVELOPES_BY_ID: &str = "SELECT id, sender, total_cents FROM envelopes WHERE id = ANY($1)";
const TRANSFERS_BY_KEY: &str =
    "SELECT key, user_id, amount_cents FROM transfers WHERE key = ANY($1)";
static CLAIMS_BY_KEY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {claim_key}, user_id, amount_cents \
         FROM claims WHERE envelope_id = ANY($1) AND {claim_key} = ANY($2)",
        claim_key = keys::sql::claim_key("envelope_id", "seq"),
    )
});

/// An envelope of O1 and what the ledger holds under its debit key.
struct EnvelopeFacts {
    sender: String,
    total: i64,
    status: Status,
    /// The Send's idempotency key: the merchant order the debit pays.
    order: Option<String>,
    debit: Option<LedgerEntry>,
}

/// A row of O1 that a credit key names: a transfer, or a claim that lost its
/// transfer (the claim still names the key's share).
struct CreditFacts {
    envelope: String,
    user: String,
    amount: i64,
    /// `None` for a claim without a transfer (reported on its own).
    done: Option<bool>,
    credit: Option<LedgerEntry>,
}

/// An archived envelope of O1 (its carried totals) and what the ledger holds
/// under its keys.
struct ArchivedFacts {
    sender: String,
    status: Option<Status>,
    total: i64,
    claim_count: i64,
    claimed: i64,
    refunded: i64,
    /// The Send's idempotency key: the merchant order the debit pays.
    order: Option<String>,
    debit: Option<LedgerEntry>,
    claim_credits: i64,
    claim_credited: i64,
    refund_credits: i64,
    refund_credited: i64,
    /// Entries under its keys that are not what such a key may be.
    wrong: Vec<String>,
}

impl ArchivedFacts {
    /// Accounts for a money entry under one of this envelope's keys.
    fn record(&mut self, entry: &LedgerEntry) {
        match (LedgerKey::split(&entry.key), entry.kind) {
            (Some((KeyKind::Send, _)), _) => self.debit = Some(entry.clone()),
            (Some((KeyKind::Claim, _)), EntryKind::Credit) => {
                self.claim_credits += 1;
                self.claim_credited += entry.amount_cents;
            }
            (Some((KeyKind::Refund, _)), EntryKind::Credit) if entry.account == self.sender => {
                self.refund_credits += 1;
                self.refund_credited += entry.amount_cents;
            }
            _ => self.wrong.push(format!("{entry:?}")),
        }
    }
}

/// One cell while it is being checked.
struct CellCheck {
    report: Report,
    envelopes: HashMap<String, EnvelopeFacts>,
    credits: HashMap<String, CreditFacts>,
    /// Archived envelopes by ID: their entries match carried totals.
    archived: HashMap<String, ArchivedFacts>,
    /// Money entries whose key named no O1 row: looked up again in O2.
    unmatched: Vec<LedgerEntry>,
    /// Debits minus credits of this cell's orphan entries.
    orphaned_cents: i64,
}

impl CellCheck {
    fn note(&mut self, kind: DiscrepancyKind, envelope: Option<&str>, message: String) {
        self.report.discrepancies.push(Discrepancy {
            kind,
            cell: Some(self.report.cell.clone()),
            envelope: envelope.map(str::to_owned),
            message,
        });
    }
}

impl Report {
    /// Counts a money entry that names a row of this cell into its holdings.
    fn hold(&mut self, entry: &LedgerEntry) {
        match entry.kind {
            EntryKind::Debit => self.held_cents += entry.amount_cents,
            EntryKind::Credit => {
                self.held_cents -= entry.amount_cents;
                self.settled_cents += entry.amount_cents;
            }
            EntryKind::Void => {}
        }
    }
}

fn column<'a, T: FromSql<'a>>(
    row: &'a Row,
    index: usize,
    column: &'static str,
) -> Result<T, ReconcileError> {
    row.try_get(index)
        .map_err(|source| ReconcileError::Column { column, source })
}

/// Reads O1 of one cell: per-envelope checks (1), claims against transfers,
/// and the facts the ledger's entries are matched against.
async fn read_orders(cell: &str, orders: &mut Client) -> Result<CellCheck, ReconcileError> {
    let orders = orders
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut check = CellCheck {
        report: Report {
            cell: cell.to_owned(),
            ..Report::default()
        },
        envelopes: HashMap::new(),
        credits: HashMap::new(),
        archived: HashMap::new(),
        unmatched: Vec::new(),
        orphaned_cents: 0,
    };
    use DiscrepancyKind as K;

    for row in orders.query(ENVELOPE_SUMS, &[]).await? {
        let id: String = column(&row, 0, "envelopes.id")?;
        let sender: String = column(&row, 1, "envelopes.sender")?;
        let code: i16 = column(&row, 2, "envelopes.status")?;
        let total: i64 = column(&row, 3, "envelopes.total_cents")?;
        let count = i64::from(column::<i32>(&row, 4, "envelopes.count")?);
        let remaining: i64 = column(&row, 5, "envelopes.remaining_cents")?;
        let remaining_count = i64::from(column::<i32>(&row, 6, "envelopes.remaining_count")?);
        let claims: i64 = column(&row, 7, "claims count")?;
        let claimed: i64 = column(&row, 8, "claims sum")?;
        let refunds: i64 = column(&row, 9, "refunds count")?;
        let refunded: i64 = column(&row, 10, "refunds sum")?;
        let order: Option<String> = column(&row, 11, "send_requests.idempotency_key")?;
        check.report.envelopes += 1;
        check.report.claims += claims;
        let Some(status) = Status::from_code(code) else {
            check.note(K::UnknownStatus, Some(&id), format!("status code {code}"));
            continue;
        };
        match status {
            Status::PendingPayment | Status::Cancelled => {
                if claims > 0 || refunds > 0 {
                    check.note(
                        K::UnpaidButMoved,
                        Some(&id),
                        format!("{status:?} envelope has {claims} claims and {refunds} refunds"),
                    );
                }
                if status == Status::PendingPayment {
                    check.report.pending_payments += 1;
                }
            }
            Status::Active | Status::Exhausted | Status::Expired => {
                if claims > count {
                    check.note(
                        K::EnvelopeSums,
                        Some(&id),
                        format!("{claims} claims for {count} shares"),
                    );
                }
                if refunds > 1 {
                    check.note(K::DoubleCredit, Some(&id), format!("{refunds} refunds"));
                }
                if status == Status::Expired {
                    if remaining != 0 || remaining_count != 0 {
                        check.note(
                            K::EnvelopeSums,
                            Some(&id),
                            format!(
                                "expired with {remaining} cents / {remaining_count} shares left"
                            ),
                        );
                    } else if claimed + refunded != total {
                        check.note(
                            K::WrongRefund,
                            Some(&id),
                            format!(
                                "refund {refunded} is not the remainder {} of total {total} \
                                 - claims {claimed}",
                                total - claimed
                            ),
                        );
                    }
                } else {
                    if claimed + remaining + refunded != total {
                        check.note(
                            K::EnvelopeSums,
                            Some(&id),
                            format!(
                                "claims {claimed} + remaining {remaining} + refund {refunded} \
                                 != total {total}"
                            ),
                        );
                    }
                    if claims + remaining_count != count {
                        check.note(
                            K::EnvelopeSums,
                            Some(&id),
                            format!(
                                "{claims} claims + {remaining_count} shares left != count {count}"
                            ),
                        );
                    }
                    if status == Status::Exhausted && remaining != 0 {
                        check.note(
                            K::EnvelopeSums,
                            Some(&id),
                            format!("exhausted with {remaining} cents left"),
                        );
                    }
                    if refunds > 0 {
                        check.note(
                            K::WrongRefund,
                            Some(&id),
                            format!("{status:?} envelope has a refund of {refunded}"),
                        );
                    }
                }
            }
        }
        // Idempotency rows live as long as their envelope (DECISIONS.md).
        if order.is_none() {
            check.note(
                K::MissingSendRequest,
                Some(&id),
                "no Send (idempotency row) names this envelope".into(),
            );
        }
        check.envelopes.insert(
            id,
            EnvelopeFacts {
                sender,
                total,
                status,
                order,
                debit: None,
            },
        );
    }

    for row in orders.query(DOUBLE_CLAIMS, &[]).await? {
        let id: String = column(&row, 0, "claims.envelope_id")?;
        let user: String = column(&row, 1, "claims.user_id")?;
        let n: i64 = column(&row, 2, "claims count")?;
        check.note(
            K::DoubleClaim,
            Some(&id),
            format!("user {user} has {n} claims"),
        );
    }
    for row in orders
        .query(CLAIMS_WITHOUT_THEIR_TRANSFER.as_str(), &[])
        .await?
    {
        let id: String = column(&row, 0, "claims.envelope_id")?;
        let seq: i32 = column(&row, 1, "claims.seq")?;
        let user: String = column(&row, 2, "claims.user_id")?;
        let amount: i64 = column(&row, 3, "claims.amount_cents")?;
        let transfer_kind: Option<i16> = column(&row, 4, "transfers.kind")?;
        let transfer_user: Option<String> = column(&row, 5, "transfers.user_id")?;
        let transfer_amount: Option<i64> = column(&row, 6, "transfers.amount_cents")?;
        let key: String = column(&row, 7, "claim key")?;
        match (transfer_kind, transfer_user, transfer_amount) {
            (Some(1), Some(to), Some(cents)) if to == user => check.note(
                K::WrongAmount,
                Some(&id),
                format!("transfer {key} pays {cents}, the claim is {amount}"),
            ),
            (Some(kind), Some(to), Some(cents)) => check.note(
                K::WrongEntry,
                Some(&id),
                format!(
                    "transfer {key} (kind {kind}) pays {cents} to {to}; the claim is {amount} \
                     to {user}"
                ),
            ),
            _ => {
                check.note(
                    K::ClaimWithoutTransfer,
                    Some(&id),
                    format!("claim {seq} of {user} ({amount}) has no transfer {key}"),
                );
                check.credits.insert(
                    key,
                    CreditFacts {
                        envelope: id,
                        user,
                        amount,
                        done: None,
                        credit: None,
                    },
                );
            }
        }
    }
    for row in orders.query(TRANSFERS_WITHOUT_CLAIM.as_str(), &[]).await? {
        let id: String = column(&row, 0, "transfers.envelope_id")?;
        let key: String = column(&row, 1, "transfers.key")?;
        let user: String = column(&row, 2, "transfers.user_id")?;
        let has_claim: bool = column(&row, 3, "claim of the user")?;
        if has_claim {
            check.note(
                K::DoubleCredit,
                Some(&id),
                format!("transfer {key} pays {user} besides the transfer of their claim"),
            );
        } else {
            check.note(
                K::TransferWithoutClaim,
                Some(&id),
                format!("transfer {key} to {user} has no claim"),
            );
        }
    }
    for row in orders.query(MISDIRECTED_REFUNDS, &[]).await? {
        let id: String = column(&row, 0, "transfers.envelope_id")?;
        let key: String = column(&row, 1, "transfers.key")?;
        let user: String = column(&row, 2, "transfers.user_id")?;
        let sender: String = column(&row, 3, "envelopes.sender")?;
        check.note(
            K::WrongRefund,
            Some(&id),
            format!("refund {key} goes to {user}, not to the sender {sender}"),
        );
    }
    for row in orders.query(TRANSFERS, &[]).await? {
        let envelope: String = column(&row, 0, "transfers.envelope_id")?;
        let key: String = column(&row, 1, "transfers.key")?;
        let user: String = column(&row, 2, "transfers.user_id")?;
        let amount: i64 = column(&row, 3, "transfers.amount_cents")?;
        let done: bool = column(&row, 4, "transfers.status")?;
        if !done {
            check.report.pending_transfers += 1;
        }
        check.credits.insert(
            key,
            CreditFacts {
                envelope,
                user,
                amount,
                done: Some(done),
                credit: None,
            },
        );
    }
    for row in orders.query(ARCHIVED, &[]).await? {
        let id: String = column(&row, 0, "archived_envelopes.envelope_id")?;
        let code: i16 = column(&row, 2, "archived_envelopes.status")?;
        check.report.archived_envelopes += 1;
        if check.envelopes.contains_key(&id) {
            check.note(
                K::ArchivedTotals,
                Some(&id),
                "archived but its envelope row is still live".into(),
            );
        }
        check.archived.insert(
            id,
            ArchivedFacts {
                sender: column(&row, 1, "archived_envelopes.sender")?,
                status: Status::from_code(code),
                total: column(&row, 3, "archived_envelopes.total_cents")?,
                claim_count: i64::from(column::<i32>(&row, 4, "archived_envelopes.claim_count")?),
                claimed: column(&row, 5, "archived_envelopes.claimed_cents")?,
                refunded: column(&row, 6, "archived_envelopes.refunded_cents")?,
                order: column(&row, 7, "archived_envelopes.send_key")?,
                debit: None,
                claim_credits: 0,
                claim_credited: 0,
                refund_credits: 0,
                refund_credited: 0,
                wrong: Vec::new(),
            },
        );
    }
    orders.commit().await?;
    Ok(check)
}

/// The envelope a key of the cells' key space names, as text (even a
/// malformed one: it names no row, so its money is an orphan); `None` for a
/// key outside it (a deposit).
fn envelope_of_key(key: &str) -> Option<&str> {
    LedgerKey::split(key).map(|(_, envelope)| envelope)
}

/// The debit key of an envelope ID read from an order DB, for a message;
/// one that is no envelope ID has no key.
fn debit_key_text(envelope: &str) -> String {
    match envelope.parse() {
        Ok(id) => LedgerKey::Send(id).to_string(),
        Err(_) => format!("the debit key of envelope {envelope}"),
    }
}

/// Whether `key` is a debit key of the cells (`send:`).
fn is_debit_key(key: &str) -> bool {
    matches!(LedgerKey::split(key), Some((KeyKind::Send, _)))
}

// ---------------------------------------------------------------------------
// The whole check.

async fn check<'a, I>(
    cells: I,
    ledger: &PgLedger,
    topology: &Topology,
    scope: Scope,
) -> Result<FleetReport, ReconcileError>
where
    I: IntoIterator<Item = CellOrders<'a>>,
{
    use DiscrepancyKind as K;
    // O1: every cell's snapshot, all before the ledger's.
    let mut clients = Vec::new();
    let mut checks = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    for CellOrders { cell, orders } in cells {
        if topology.cell(cell).is_none() {
            return Err(ReconcileError::UnknownCell(cell.to_owned()));
        }
        index_of.insert(cell.to_owned(), checks.len());
        checks.push(read_orders(cell, orders).await?);
        clients.push(orders);
    }

    // L: the ledger, streamed; each entry matched to the row its key names.
    let mut fleet = FleetReport::default();
    let mut fleet_notes: Vec<Discrepancy> = Vec::new();
    let books = ledger
        .audit_books(|entry| {
            let Some(id) = envelope_of_key(&entry.key) else {
                fleet.deposited_cents += signed(&entry);
                return;
            };
            if entry.kind == EntryKind::Void {
                // A void moves nothing; a void with no row is a refused Send.
                if let Some(&index) = route(topology, id).and_then(|cell| index_of.get(cell)) {
                    let check = &mut checks[index];
                    if let Some(facts) = check.envelopes.get_mut(id) {
                        facts.debit = Some(entry);
                    } else if let Some(facts) = check.archived.get_mut(id) {
                        facts.record(&entry);
                    }
                }
                return;
            }
            let Some(cell) = route(topology, id) else {
                fleet.orphaned_cents += -signed(&entry);
                fleet_notes.push(orphan(None, &entry, "its envelope ID routes to no cell"));
                return;
            };
            let Some(&index) = index_of.get(cell) else {
                if scope == Scope::Fleet {
                    fleet_notes.push(Discrepancy {
                        kind: K::UnreconciledCell,
                        cell: Some(cell.to_owned()),
                        envelope: Some(id.to_owned()),
                        message: format!("{entry:?} belongs to a cell this check was not given"),
                    });
                }
                return;
            };
            let check = &mut checks[index];
            if is_debit_key(&entry.key) {
                if let Some(facts) = check.envelopes.get_mut(id) {
                    check.report.hold(&entry);
                    facts.debit = Some(entry);
                } else if let Some(facts) = check.archived.get_mut(id) {
                    check.report.hold(&entry);
                    facts.record(&entry);
                } else {
                    check.unmatched.push(entry);
                }
            } else if let Some(facts) = check.credits.get_mut(&entry.key) {
                facts.credit = Some(entry.clone());
                check.report.hold(&entry);
            } else if let Some(facts) = check.archived.get_mut(id) {
                check.report.hold(&entry);
                facts.record(&entry);
            } else {
                check.unmatched.push(entry);
            }
        })
        .await?;
    fleet.ledger_balance_cents = books.total_balance_cents;
    for account in &books.discrepancies {
        fleet_notes.push(Discrepancy {
            kind: K::LedgerBooks,
            cell: None,
            envelope: None,
            message: format!("ledger account {account:?} does not match its entries"),
        });
    }

    // O2: rows O1 did not see, read after the ledger; then the per-key checks.
    for (check, orders) in checks.iter_mut().zip(clients) {
        match_late_entries(check, orders).await?;
        check_envelopes(check, orders).await?;
        check_credits(check);
        check_archived(check);
    }

    for mut check in checks {
        fleet.orphaned_cents += check.orphaned_cents;
        check.report.ledger_balance_cents = fleet.ledger_balance_cents;
        check.report.deposited_cents = fleet.deposited_cents;
        fleet.held_cents += check.report.held_cents;
        fleet
            .discrepancies
            .extend(check.report.discrepancies.iter().cloned());
        fleet.cells.push(check.report);
    }
    fleet.discrepancies.extend(fleet_notes);
    for report in &mut fleet.cells {
        report.orphaned_cents = fleet.orphaned_cents;
    }
    Ok(fleet)
}

/// The cell an envelope ID (text) routes to; `None` if it is no ID or routes
/// nowhere in `topology`.
fn route<'t>(topology: &'t Topology, id: &str) -> Option<&'t str> {
    let id: EnvelopeId = id.parse().ok()?;
    topology.route(&id).ok().map(|cell| cell.name.as_str())
}

/// What an entry did to balances: + for a credit, − for a debit.
fn signed(entry: &LedgerEntry) -> i64 {
    match entry.kind {
        EntryKind::Credit => entry.amount_cents,
        EntryKind::Debit => -entry.amount_cents,
        EntryKind::Void => 0,
    }
}

/// What an entry did to the money inside the cells: − [`signed`].
fn signed_into_cell(entry: &LedgerEntry) -> i64 {
    -signed(entry)
}

fn orphan(cell: Option<&str>, entry: &LedgerEntry, why: &str) -> Discrepancy {
    let kind = match entry.kind {
        EntryKind::Debit => DiscrepancyKind::OrphanDebit,
        EntryKind::Credit | EntryKind::Void => DiscrepancyKind::OrphanCredit,
    };
    Discrepancy {
        kind,
        cell: cell.map(str::to_owned),
        envelope: envelope_of_key(&entry.key).map(str::to_owned),
        message: format!("{entry:?}: {why}"),
    }
}

/// O2 for the entries whose key named no O1 row: a row that exists now was
/// created during the check (late: matched and counted); none is an orphan.
async fn match_late_entries(check: &mut CellCheck, orders: &Client) -> Result<(), ReconcileError> {
    if check.unmatched.is_empty() {
        return Ok(());
    }
    let unmatched = std::mem::take(&mut check.unmatched);
    let debit_ids: Vec<&str> = unmatched
        .iter()
        .filter(|entry| is_debit_key(&entry.key))
        .filter_map(|entry| envelope_of_key(&entry.key))
        .collect();
    let credit_keys: Vec<&str> = unmatched
        .iter()
        .filter(|entry| !is_debit_key(&entry.key))
        .map(|entry| entry.key.as_str())
        .collect();
    // envelope ID -> (sender, total): what a debit must be.
    let mut envelopes: HashMap<String, (String, i64)> = HashMap::new();
    if !debit_ids.is_empty() {
        for row in orders.query(ENVELOPES_BY_ID, &[&debit_ids]).await? {
            let id: String = column(&row, 0, "envelopes.id")?;
            let sender: String = column(&row, 1, "envelopes.sender")?;
            let total: i64 = column(&row, 2, "envelopes.total_cents")?;
            envelopes.insert(id, (sender, total));
        }
    }
    // credit key -> (receiver, amount): what a credit must be.
    let mut rows: HashMap<String, (String, i64)> = HashMap::new();
    if !credit_keys.is_empty() {
        for row in orders.query(TRANSFERS_BY_KEY, &[&credit_keys]).await? {
            let key: String = column(&row, 0, "transfers.key")?;
            let user: String = column(&row, 1, "transfers.user_id")?;
            let amount: i64 = column(&row, 2, "transfers.amount_cents")?;
            rows.insert(key, (user, amount));
        }
        let claims_left: Vec<&str> = credit_keys
            .iter()
            .copied()
            .filter(|key| {
                !rows.contains_key(*key)
                    && matches!(LedgerKey::split(key), Some((KeyKind::Claim, _)))
            })
            .collect();
        if !claims_left.is_empty() {
            let ids: Vec<&str> = claims_left
                .iter()
                .filter_map(|key| envelope_of_key(key))
                .collect();
            for row in orders
                .query(CLAIMS_BY_KEY.as_str(), &[&ids, &claims_left])
                .await?
            {
                let key: String = column(&row, 0, "claim key")?;
                let user: String = column(&row, 1, "claims.user_id")?;
                let amount: i64 = column(&row, 2, "claims.amount_cents")?;
                rows.insert(key, (user, amount));
            }
        }
    }
    for entry in unmatched {
        let envelope = envelope_of_key(&entry.key).map(str::to_owned);
        let (row, expected) = match (is_debit_key(&entry.key), envelope.as_deref()) {
            (true, Some(id)) => (envelopes.get(id), EntryKind::Debit),
            _ => (rows.get(&entry.key), EntryKind::Credit),
        };
        match row {
            Some((account, amount)) => {
                check.report.late_entries += 1;
                check.report.hold(&entry);
                if let Some((kind, message)) = entry_mismatch(&entry, expected, account, *amount) {
                    check.note(kind, envelope.as_deref(), message);
                }
            }
            None => {
                let cell = check.report.cell.clone();
                check.orphaned_cents += signed_into_cell(&entry);
                check.report.discrepancies.push(orphan(
                    Some(&cell),
                    &entry,
                    "no row of its cell has this key",
                ));
            }
        }
    }
    Ok(())
}

/// Why `entry` is not what its row says it must be, if it is not.
fn entry_mismatch(
    entry: &LedgerEntry,
    kind: EntryKind,
    account: &str,
    amount: i64,
) -> Option<(DiscrepancyKind, String)> {
    if entry.kind != kind || entry.account != account {
        Some((
            DiscrepancyKind::WrongEntry,
            format!("{entry:?} should be a {kind:?} of {amount} on {account}"),
        ))
    } else if entry.amount_cents != amount {
        Some((
            DiscrepancyKind::WrongAmount,
            format!("{entry:?} should be of {amount}"),
        ))
    } else {
        None
    }
}

/// Envelopes of O1 against their debit keys; a pending envelope the ledger
/// debited must still exist after the ledger snapshot (O2), or its debit is
/// an orphan (a refused Send deleted after its key was debited).
async fn check_envelopes(check: &mut CellCheck, orders: &Client) -> Result<(), ReconcileError> {
    use DiscrepancyKind as K;
    let mut notes = Vec::new();
    let mut pending_debited: HashMap<String, LedgerEntry> = HashMap::new();
    for (id, facts) in &check.envelopes {
        let debit = facts
            .debit
            .as_ref()
            .filter(|entry| entry.kind != EntryKind::Void);
        if let Some(entry) = debit {
            if let Some(found) = entry_mismatch(entry, EntryKind::Debit, &facts.sender, facts.total)
            {
                notes.push((id.clone(), found));
            } else if let (Some(paid), Some(order)) = (&entry.order, &facts.order)
                && paid != order
            {
                notes.push((
                    id.clone(),
                    (
                        K::WrongEntry,
                        format!("{entry:?} pays order {paid}, the Send's key is {order}"),
                    ),
                ));
            }
        }
        let debited = debit.is_some_and(|entry| entry.kind == EntryKind::Debit);
        match facts.status {
            Status::PendingPayment => {
                if let Some(entry) = debit.filter(|_| debited) {
                    pending_debited.insert(id.clone(), entry.clone());
                }
            }
            Status::Cancelled if debited => notes.push((
                id.clone(),
                (
                    K::UnpaidButMoved,
                    "cancelled but its sender was debited".into(),
                ),
            )),
            Status::Cancelled => {}
            Status::Active | Status::Exhausted | Status::Expired if !debited => notes.push((
                id.clone(),
                (
                    K::MissingTransfer,
                    format!(
                        "{:?} but the ledger has no debit of its sender under {}",
                        facts.status,
                        debit_key_text(id)
                    ),
                ),
            )),
            Status::Active | Status::Exhausted | Status::Expired => {}
        }
    }
    for (id, (kind, message)) in notes {
        check.note(kind, Some(&id), message);
    }
    if !pending_debited.is_empty() {
        let ids: Vec<&str> = pending_debited.keys().map(String::as_str).collect();
        let mut still: HashSet<String> = HashSet::new();
        for row in orders.query(ENVELOPES_BY_ID, &[&ids]).await? {
            still.insert(column(&row, 0, "envelopes.id")?);
        }
        for (id, entry) in pending_debited {
            if !still.contains(&id) {
                // Counted as held when matched in O1; it is not.
                check.report.held_cents -= signed_into_cell(&entry);
                check.orphaned_cents += signed_into_cell(&entry);
                let cell = check.report.cell.clone();
                check.report.discrepancies.push(orphan(
                    Some(&cell),
                    &entry,
                    "its envelope was deleted after the order-DB snapshot",
                ));
            }
        }
    }
    Ok(())
}

/// Transfers (and claims without one) of O1 against their credit keys.
fn check_credits(check: &mut CellCheck) {
    use DiscrepancyKind as K;
    let mut notes = Vec::new();
    for (key, facts) in &check.credits {
        match (&facts.credit, facts.done) {
            (Some(entry), done) => {
                if let Some(found) =
                    entry_mismatch(entry, EntryKind::Credit, &facts.user, facts.amount)
                {
                    notes.push((facts.envelope.clone(), found));
                }
                if done == Some(false) {
                    check.report.in_flight_transfers += 1;
                }
            }
            (None, Some(true)) => notes.push((
                facts.envelope.clone(),
                (
                    K::MissingTransfer,
                    format!("transfer {key} is done but the ledger has no credit under its key"),
                ),
            )),
            (None, _) => {}
        }
    }
    for (envelope, (kind, message)) in notes {
        check.note(kind, Some(&envelope), message);
    }
}

/// Archived envelopes of O1: their carried totals against the entries under
/// their keys.
fn check_archived(check: &mut CellCheck) {
    use DiscrepancyKind as K;
    let mut notes = Vec::new();
    for (id, facts) in &check.archived {
        let mut note = |kind, message: String| notes.push((id.clone(), kind, message));
        for wrong in &facts.wrong {
            note(
                K::ArchivedTotals,
                format!("{wrong} is not an entry its key may have"),
            );
        }
        let debit = facts
            .debit
            .as_ref()
            .filter(|entry| entry.kind != EntryKind::Void);
        match (facts.status, debit) {
            (None, _) => note(K::UnknownStatus, "archived with an unknown status".into()),
            (Some(Status::Cancelled), Some(entry)) => note(
                K::UnpaidButMoved,
                format!("archived cancelled but its sender was debited: {entry:?}"),
            ),
            (Some(Status::Cancelled), None) => {}
            (Some(status), None) => note(
                K::MissingTransfer,
                format!(
                    "archived {status:?} but the ledger has no debit under {}",
                    debit_key_text(id)
                ),
            ),
            (Some(_), Some(entry)) => {
                if let Some((kind, message)) =
                    entry_mismatch(entry, EntryKind::Debit, &facts.sender, facts.total)
                {
                    note(kind, message);
                } else if let (Some(paid), Some(order)) = (&entry.order, &facts.order)
                    && paid != order
                {
                    note(
                        K::WrongEntry,
                        format!("{entry:?} pays order {paid}, the Send's key was {order}"),
                    );
                }
            }
        }
        if (facts.claim_credits, facts.claim_credited) != (facts.claim_count, facts.claimed) {
            note(
                K::ArchivedTotals,
                format!(
                    "carried {} claims of {} but the ledger credited {} claims of {}",
                    facts.claim_count, facts.claimed, facts.claim_credits, facts.claim_credited
                ),
            );
        }
        let refunds = i64::from(facts.refunded > 0);
        if (facts.refund_credits, facts.refund_credited) != (refunds, facts.refunded) {
            note(
                K::ArchivedTotals,
                format!(
                    "carried a refund of {} but the ledger credited {} refunds of {} to the sender",
                    facts.refunded, facts.refund_credits, facts.refund_credited
                ),
            );
        }
    }
    for (id, kind, message) in notes {
        check.note(kind, Some(&id), message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "2612021000000000000123";

    #[test]
    fn the_reconciler_reads_the_cells_key_space_through_ledger_key() {
        // The grammar is tested with `redcell_payments::keys`; here, that a
        // malformed key of the space still names its envelope text (an
        // orphan: no row has that ID) and that a deposit is outside.
        assert_eq!(envelope_of_key(&format!("claim:{ID}:7")), Some(ID));
        assert_eq!(envelope_of_key("claim:e1"), Some("e1"));
        assert!(is_debit_key("send:") && !is_debit_key(&format!("refund:{ID}")));
        assert_eq!(envelope_of_key("deposit:ann:1"), None);
        assert_eq!(debit_key_text(ID), format!("send:{ID}"));
        assert_eq!(debit_key_text("e1"), "the debit key of envelope e1");
    }

    fn entry(kind: EntryKind, account: &str, cents: i64) -> LedgerEntry {
        LedgerEntry {
            key: format!("send:{ID}"),
            account: account.to_owned(),
            kind,
            amount_cents: cents,
            order: None,
        }
    }

    #[test]
    fn an_entry_unlike_its_row_is_a_wrong_amount_or_a_wrong_entry() {
        let debit = entry(EntryKind::Debit, "ann", 500);
        assert_eq!(entry_mismatch(&debit, EntryKind::Debit, "ann", 500), None);
        let kind = |found: Option<(DiscrepancyKind, String)>| found.map(|(kind, _)| kind);
        assert_eq!(
            kind(entry_mismatch(&debit, EntryKind::Debit, "ann", 499)),
            Some(DiscrepancyKind::WrongAmount)
        );
        assert_eq!(
            kind(entry_mismatch(&debit, EntryKind::Debit, "bob", 500)),
            Some(DiscrepancyKind::WrongEntry)
        );
        assert_eq!(
            kind(entry_mismatch(&debit, EntryKind::Credit, "ann", 500)),
            Some(DiscrepancyKind::WrongEntry)
        );
        // Money in and out of the cells, in the ledger's frame.
        assert_eq!(signed_into_cell(&debit), 500);
        assert_eq!(signed_into_cell(&entry(EntryKind::Credit, "ann", 70)), -70);
        assert_eq!(signed_into_cell(&entry(EntryKind::Void, "", 0)), 0);
    }
}

//! Reconciliation: the money invariants of DESIGN.md §5 checked against a live
//! order DB and the ledger. Tests call it after every run that moves money, and
//! `cellctl reconcile` runs it against production; zero discrepancies is the
//! only passing result.
//!
//! Checked per cell:
//! 1. every envelope: claims + remaining + refund = total; claims + remaining
//!    shares = count (an expired envelope has no shares left); at most one claim
//!    per user; unpaid and cancelled envelopes have no claims;
//! 2. every claim has exactly one claim transfer and every transfer its claim;
//!    an expired envelope with a remainder has exactly one refund of it; every
//!    done transfer has exactly one ledger credit with its key, account and
//!    amount; every paid envelope has its ledger debit, no cancelled one has,
//!    and the debit pays the envelope's own Send (its merchant order is the
//!    Send's idempotency key; the ledger pays one order once, so no Send is
//!    paid for two envelopes, in this cell or another);
//! 3. the money this cell holds ([`Report::held_cents`]): remaining cents of
//!    active envelopes + pending transfers the ledger has not credited yet +
//!    paid-but-unresolved Sends. With the ledger's balances
//!    ([`Report::ledger_balance_cents`]) it is conserved across any run, crash
//!    or fault; the caller who knows what was deposited checks that sum.
//!
//! Consistency while the system runs: the order DB is read in one
//! `REPEATABLE READ` snapshot, then the ledger in one snapshot taken after it
//! ([`PgLedger::audit`]). A transfer credited between the two is pending in the
//! first and credited in the second: it is counted as settled ("in flight"),
//! never twice. A transfer is marked done only after its credit, so the later
//! ledger snapshot always holds the credits of the done transfers.

use std::collections::HashMap;

use redcell_payments::{EntryKind, LedgerEntry, PgLedger};
use tokio_postgres::Client;

use crate::envelope::Status;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    /// The envelope concerned, if one.
    pub envelope: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.envelope {
            Some(envelope) => write!(f, "envelope {envelope}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What reconciling one cell found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub discrepancies: Vec<Discrepancy>,
    pub envelopes: i64,
    pub claims: i64,
    /// Sends still `PENDING_PAYMENT` (the recovery worker resolves them).
    pub pending_payments: i64,
    pub pending_transfers: i64,
    /// Pending transfers the ledger has already credited (marking them done is
    /// all that is left).
    pub in_flight_transfers: i64,
    /// Money inside the cell: not in any ledger balance, not lost.
    pub held_cents: i64,
    /// Sum of the transfers already credited by the ledger.
    pub settled_cents: i64,
    /// Sum of all ledger balances, from the same ledger snapshot.
    pub ledger_balance_cents: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("order DB: {0}")]
    Orders(#[from] tokio_postgres::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] redcell_payments::PaymentsError),
}

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
const CLAIMS_WITHOUT_ONE_TRANSFER: &str = "SELECT c.envelope_id, c.seq, count(t.id) FROM claims c \
     LEFT JOIN transfers t ON t.key = 'claim:' || c.envelope_id || ':' || c.seq \
       AND t.kind = 1 AND t.user_id = c.user_id AND t.amount_cents = c.amount_cents \
     GROUP BY 1, 2 HAVING count(t.id) <> 1";
const TRANSFERS_WITHOUT_CLAIM: &str = "SELECT t.envelope_id, t.key FROM transfers t WHERE t.kind = 1 AND NOT EXISTS \
     (SELECT 1 FROM claims c WHERE 'claim:' || c.envelope_id || ':' || c.seq = t.key)";
const TRANSFERS: &str = "SELECT envelope_id, key, user_id, amount_cents, status = 2 FROM transfers";

/// What the ledger's debit of an envelope must be.
struct ExpectedDebit {
    sender: String,
    total: i64,
    status: Status,
    /// The Send's idempotency key: the merchant order the debit pays.
    order: Option<String>,
}

/// Checks one cell's order DB against the ledger.
pub async fn check_cell(orders: &mut Client, ledger: &PgLedger) -> Result<Report, ReconcileError> {
    let orders = orders
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut report = Report::default();
    let mut discrepancies = Vec::new();
    let mut note = |envelope: Option<&str>, message: String| {
        discrepancies.push(Discrepancy {
            envelope: envelope.map(str::to_owned),
            message,
        });
    };

    // 1. Per-envelope sums; collect the ledger debits to look up.
    let mut debits_expected: HashMap<String, ExpectedDebit> = HashMap::new();
    for row in orders.query(ENVELOPE_SUMS, &[]).await? {
        let id: String = row.get(0);
        let sender: String = row.get(1);
        let status = Status::from_code(row.get(2));
        let total: i64 = row.get(3);
        let count = i64::from(row.get::<_, i32>(4));
        let remaining: i64 = row.get(5);
        let remaining_count = i64::from(row.get::<_, i32>(6));
        let (claims, claimed): (i64, i64) = (row.get(7), row.get(8));
        let (refunds, refunded): (i64, i64) = (row.get(9), row.get(10));
        let order: Option<String> = row.get(11);
        report.envelopes += 1;
        report.claims += claims;
        let Some(status) = status else {
            note(Some(&id), "unknown status code".into());
            continue;
        };
        match status {
            Status::PendingPayment | Status::Cancelled => {
                if claims > 0 || refunds > 0 {
                    note(
                        Some(&id),
                        format!("{status:?} envelope has {claims} claims and {refunds} refunds"),
                    );
                }
                if status == Status::PendingPayment {
                    report.pending_payments += 1;
                }
            }
            Status::Active | Status::Exhausted | Status::Expired => {
                if claimed + remaining + refunded != total {
                    note(
                        Some(&id),
                        format!(
                            "claims {claimed} + remaining {remaining} + refund {refunded} != total {total}"
                        ),
                    );
                }
                if claims > count {
                    note(Some(&id), format!("{claims} claims for {count} shares"));
                }
                if refunds > 1 {
                    note(Some(&id), format!("{refunds} refunds"));
                }
                match status {
                    Status::Expired if remaining != 0 || remaining_count != 0 => {
                        note(
                            Some(&id),
                            format!(
                                "expired with {remaining} cents / {remaining_count} shares left"
                            ),
                        );
                    }
                    Status::Expired => {}
                    _ if claims + remaining_count != count => {
                        note(
                            Some(&id),
                            format!(
                                "{claims} claims + {remaining_count} shares left != count {count}"
                            ),
                        );
                    }
                    Status::Exhausted if remaining != 0 => {
                        note(Some(&id), format!("exhausted with {remaining} cents left"));
                    }
                    _ if refunds > 0 => {
                        note(Some(&id), format!("{status:?} envelope has a refund"))
                    }
                    _ => {}
                }
                if status == Status::Active {
                    report.held_cents += remaining;
                }
            }
        }
        if order.is_none() {
            note(
                Some(&id),
                "no Send (idempotency row) names this envelope".into(),
            );
        }
        debits_expected.insert(
            id,
            ExpectedDebit {
                sender,
                total,
                status,
                order,
            },
        );
    }

    // 2. Claims <-> transfers.
    for row in orders.query(DOUBLE_CLAIMS, &[]).await? {
        let (id, user, n): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        note(Some(&id), format!("user {user} has {n} claims"));
    }
    for row in orders.query(CLAIMS_WITHOUT_ONE_TRANSFER, &[]).await? {
        let (id, seq, n): (String, i32, i64) = (row.get(0), row.get(1), row.get(2));
        note(
            Some(&id),
            format!("claim {seq} has {n} matching transfers (expected 1)"),
        );
    }
    for row in orders.query(TRANSFERS_WITHOUT_CLAIM, &[]).await? {
        let (id, key): (String, String) = (row.get(0), row.get(1));
        note(Some(&id), format!("transfer {key} has no claim"));
    }
    let transfers = orders.query(TRANSFERS, &[]).await?;
    orders.commit().await?;

    // The ledger, in one snapshot taken after the order DB's.
    let send_keys: Vec<String> = debits_expected
        .keys()
        .map(|id| format!("send:{id}"))
        .collect();
    let mut keys: Vec<&str> = transfers.iter().map(|row| row.get(1)).collect();
    keys.extend(send_keys.iter().map(String::as_str));
    let audit = ledger.audit(&keys).await?;
    report.ledger_balance_cents = audit.total_balance_cents;
    let entries: HashMap<&str, &LedgerEntry> = audit
        .entries
        .iter()
        .map(|entry| (entry.key.as_str(), entry))
        .collect();

    // Transfers <-> ledger credits.
    for row in &transfers {
        let (id, key, user, amount, done): (String, &str, &str, i64, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        match entries.get(key) {
            Some(entry)
                if entry.kind == EntryKind::Credit
                    && entry.account == user
                    && entry.amount_cents == amount =>
            {
                report.settled_cents += amount;
                if !done {
                    report.pending_transfers += 1;
                    report.in_flight_transfers += 1;
                }
            }
            Some(entry) => note(
                Some(&id),
                format!("transfer {key} does not match the ledger's {entry:?}"),
            ),
            None if done => note(
                Some(&id),
                format!("transfer {key} is done but the ledger has no entry"),
            ),
            None => {
                report.pending_transfers += 1;
                report.held_cents += amount;
            }
        }
    }

    // Envelopes <-> ledger debits.
    for (id, expected) in &debits_expected {
        let ExpectedDebit {
            sender,
            total,
            status,
            order,
        } = expected;
        let entry = entries.get(format!("send:{id}").as_str()).copied();
        let debited = entry.is_some_and(|entry| entry.kind == EntryKind::Debit);
        if let Some(entry) = entry.filter(|entry| entry.kind == EntryKind::Debit)
            && (entry.account != *sender
                || entry.amount_cents != *total
                || entry.order.is_some() && entry.order != *order)
        {
            note(
                Some(id),
                format!(
                    "ledger debit {entry:?} does not match sender {sender} / total {total} / \
                     order {order:?}"
                ),
            );
        }
        match status {
            Status::PendingPayment if debited => report.held_cents += total,
            Status::PendingPayment => {}
            Status::Cancelled if debited => {
                note(Some(id), "cancelled but the sender was debited".into())
            }
            Status::Cancelled => {}
            _ if !debited => note(
                Some(id),
                format!("{status:?} but the ledger has no debit of the sender"),
            ),
            _ => {}
        }
    }

    // The ledger's own books.
    for account in &audit.discrepancies {
        note(
            None,
            format!("ledger account {account:?} does not match its entries"),
        );
    }
    report.discrepancies = discrepancies;
    Ok(report)
}

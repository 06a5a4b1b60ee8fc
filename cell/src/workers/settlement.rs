//! The settlement worker: drains the `transfers` outbox into the payment system.
//!
//! A batch takes a *lease* on up to [`BATCH`] due pending transfers in one
//! short transaction (`FOR UPDATE SKIP LOCKED`, then `next_attempt_at` moved
//! [`LEASE`] ahead and committed), so every server of the cell can run it and
//! none waits on another. The credits are then made with no order-DB
//! transaction open — the payment system may be slow or down, and must never
//! hold a lock or a pooled connection of the cell while it is — each with the
//! transfer's key as the idempotency key (a credit replayed after a crash or
//! an expired lease is not paid twice). A transfer's first attempt goes out
//! with the batch's other first attempts in one [`Payments::credit_batch`]
//! (the ledger writes them in one transaction: one flush for the batch, not
//! one per transfer); a transfer that failed before is credited alone with
//! [`Payments::credit`], so one the ledger keeps refusing never holds back a
//! batch. The outcomes are written back in ONE statement: credited transfers
//! done, failed ones retried with exponential backoff, the error kept for
//! operators. A server that dies holding a lease only delays its transfers by
//! [`LEASE`].

use std::time::Duration;

use deadpool_postgres::Pool;
use redcell_payments::{Credit, Payments, PaymentsError};

use crate::{db::DbError, store::column};

const LEASE_DUE: &str = "UPDATE transfers SET next_attempt_at = now() + make_interval(secs => $2) \
     WHERE id IN (SELECT id FROM transfers WHERE status = 1 AND next_attempt_at <= now() \
       ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
     RETURNING id, key, user_id, amount_cents, attempts";
/// Writes a batch's outcomes: `done` transfers are marked done, the others
/// get their error and the next attempt after `delay` seconds; both count an
/// attempt. Guarded by `status = 1` (a transfer another server already
/// marked done after a lease ran out stays done).
const MARK_OUTCOMES: &str = "UPDATE transfers t SET \
       status = CASE WHEN u.done THEN 2 ELSE 1 END, \
       done_at = CASE WHEN u.done THEN now() ELSE t.done_at END, \
       attempts = t.attempts + 1, \
       last_error = u.error, \
       next_attempt_at = CASE WHEN u.done THEN t.next_attempt_at \
                              ELSE now() + make_interval(secs => u.delay) END \
     FROM unnest($1::bigint[], $2::bool[], $3::text[], $4::float8[]) AS u(id, done, error, delay) \
     WHERE t.id = u.id AND t.status = 1";

/// Transfers handled per batch.
pub const BATCH: i64 = 200;

/// How long a batch's transfers stay invisible to other servers while this
/// one credits them. Short, because a lease that runs out early costs only
/// duplicate work (the credits are idempotent by key, and marking is guarded
/// by `status = 1`), while one held by a dead server delays its transfers.
pub const LEASE: Duration = Duration::from_secs(5);

/// Delay before retry number `attempts + 1`: 0.2 s doubling, capped at 60 s.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    Duration::from_millis(200u64.saturating_mul(1 << exponent)).min(Duration::from_secs(60))
}

/// One leased transfer.
struct Due {
    id: i64,
    key: String,
    user: String,
    amount_cents: i64,
    attempts: i32,
}

/// One batch; returns how many transfers were credited.
pub async fn settle_batch<P: Payments>(pool: &Pool, payments: &P) -> Result<usize, DbError> {
    let due = lease(pool).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let (first, retried): (Vec<&Due>, Vec<&Due>) =
        due.iter().partition(|transfer| transfer.attempts == 0);
    let credits: Vec<Credit<'_>> = first
        .iter()
        .map(|transfer| Credit {
            key: &transfer.key,
            account: &transfer.user,
            cents: transfer.amount_cents,
        })
        .collect();
    let mut outcomes: Vec<(&Due, Result<(), PaymentsError>)> = Vec::with_capacity(due.len());
    if !credits.is_empty() {
        outcomes.extend(first.into_iter().zip(payments.credit_batch(&credits).await));
    }
    for transfer in retried {
        let outcome = payments
            .credit(&transfer.key, &transfer.user, transfer.amount_cents)
            .await;
        outcomes.push((transfer, outcome));
    }
    // Tests crash the server here: credited in the ledger, not marked done.
    fail::fail_point!("settlement::after_credit");
    mark(pool, &outcomes).await
}

/// Writes every outcome of a batch in one statement; returns how many were
/// credited.
async fn mark(
    pool: &Pool,
    outcomes: &[(&Due, Result<(), PaymentsError>)],
) -> Result<usize, DbError> {
    let ids: Vec<i64> = outcomes.iter().map(|(transfer, _)| transfer.id).collect();
    let done: Vec<bool> = outcomes
        .iter()
        .map(|(_, outcome)| outcome.is_ok())
        .collect();
    let errors: Vec<Option<String>> = outcomes
        .iter()
        .map(|(_, outcome)| outcome.as_ref().err().map(ToString::to_string))
        .collect();
    let delays: Vec<f64> = outcomes
        .iter()
        .map(|(transfer, _)| backoff(transfer.attempts).as_secs_f64())
        .collect();
    let client = pool.get().await?;
    client
        .execute(MARK_OUTCOMES, &[&ids, &done, &errors, &delays])
        .await?;
    Ok(done.iter().filter(|done| **done).count())
}

/// Takes the lease on the next due transfers (one short, committed statement).
async fn lease(pool: &Pool) -> Result<Vec<Due>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(LEASE_DUE, &[&BATCH, &LEASE.as_secs_f64()])
        .await?;
    let mut due = rows
        .iter()
        .map(|row| {
            Ok(Due {
                id: column(row, "id")?,
                key: column(row, "key")?,
                user: column(row, "user_id")?,
                amount_cents: column(row, "amount_cents")?,
                attempts: column(row, "attempts")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    // RETURNING has no order; credit in outbox order.
    due.sort_by_key(|transfer| transfer.id);
    Ok(due)
}

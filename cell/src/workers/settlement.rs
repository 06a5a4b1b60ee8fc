//! The settlement worker: drains the `transfers` outbox into the payment system.
//!
//! A batch takes a *lease* on up to [`BATCH`] due pending transfers in one
//! short transaction (`FOR UPDATE SKIP LOCKED`, then `next_attempt_at` moved
//! [`LEASE`] ahead and committed), so every server of the cell can run it and
//! none waits on another. The credits are then made with no order-DB
//! transaction open — the payment system may be slow or down, and must never
//! hold a lock or a pooled connection of the cell while it is — each with the
//! transfer's key as the idempotency key (a credit replayed after a crash or
//! an expired lease is not paid twice). The outcomes are written back in one
//! statement for the credited transfers (done) and one for the failed ones
//! (retry with exponential backoff, the error kept for operators). A server
//! that dies holding a lease only delays its transfers by [`LEASE`].

use std::time::Duration;

use deadpool_postgres::Pool;
use redcell_payments::Payments;

use crate::{db::DbError, store::column};

const LEASE_DUE: &str = "UPDATE transfers SET next_attempt_at = now() + make_interval(secs => $2) \
     WHERE id IN (SELECT id FROM transfers WHERE status = 1 AND next_attempt_at <= now() \
       ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
     RETURNING id, key, user_id, amount_cents, attempts";
const MARK_DONE: &str = "UPDATE transfers SET status = 2, done_at = now(), attempts = attempts + 1, last_error = NULL \
     WHERE id = ANY($1) AND status = 1";
const MARK_RETRY: &str = "UPDATE transfers t SET attempts = t.attempts + 1, last_error = u.error, \
     next_attempt_at = now() + make_interval(secs => u.delay) \
     FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS u(id, error, delay) \
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
    let mut done = Vec::with_capacity(due.len());
    let (mut retry_ids, mut retry_errors, mut retry_delays) = (Vec::new(), Vec::new(), Vec::new());
    for transfer in &due {
        match payments
            .credit(&transfer.key, &transfer.user, transfer.amount_cents)
            .await
        {
            Ok(()) => done.push(transfer.id),
            Err(error) => {
                retry_ids.push(transfer.id);
                retry_errors.push(error.to_string());
                retry_delays.push(backoff(transfer.attempts).as_secs_f64());
            }
        }
    }
    let client = pool.get().await?;
    if !done.is_empty() {
        client.execute(MARK_DONE, &[&done]).await?;
    }
    if !retry_ids.is_empty() {
        client
            .execute(MARK_RETRY, &[&retry_ids, &retry_errors, &retry_delays])
            .await?;
    }
    Ok(done.len())
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

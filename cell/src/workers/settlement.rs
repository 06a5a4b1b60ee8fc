//! The settlement worker: drains the `transfers` outbox into the payment system.
//!
//! Each batch locks due pending transfers with `FOR UPDATE SKIP LOCKED` (so every
//! server of the cell can run it), credits each through [`Payments`] with the
//! transfer's key as the idempotency key (a credit replayed after a crash is
//! not paid twice), and marks it done — or schedules a retry with exponential
//! backoff, keeping the error for operators.

use std::time::Duration;

use deadpool_postgres::Pool;
use redcell_payments::Payments;

use crate::db::DbError;

const DUE_TRANSFERS: &str = "SELECT id, key, user_id, amount_cents, attempts FROM transfers \
     WHERE status = 1 AND next_attempt_at <= now() ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";
const MARK_DONE: &str = "UPDATE transfers SET status = 2, done_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = $1";
const MARK_RETRY: &str = "UPDATE transfers SET attempts = attempts + 1, last_error = $2, \
     next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1";

/// Transfers handled per transaction.
pub const BATCH: i64 = 200;

/// Delay before retry number `attempts + 1`: 0.2 s doubling, capped at 60 s.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    Duration::from_millis(200u64.saturating_mul(1 << exponent)).min(Duration::from_secs(60))
}

/// One batch; returns how many transfers were credited.
pub async fn settle_batch<P: Payments>(pool: &Pool, payments: &P) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let due = transaction.query(DUE_TRANSFERS, &[&BATCH]).await?;
    let mut credited = 0;
    for row in &due {
        let id: i64 = row.get(0);
        let key: String = row.get(1);
        let user: String = row.get(2);
        let amount: i64 = row.get(3);
        let attempts: i32 = row.get(4);
        match payments.credit(&key, &user, amount).await {
            Ok(()) => {
                transaction.execute(MARK_DONE, &[&id]).await?;
                credited += 1;
            }
            Err(error) => {
                let delay = backoff(attempts).as_secs_f64();
                transaction
                    .execute(MARK_RETRY, &[&id, &error.to_string(), &delay])
                    .await?;
            }
        }
    }
    transaction.commit().await?;
    Ok(credited)
}

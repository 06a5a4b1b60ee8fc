//! The expiry worker: `ACTIVE` envelopes past `expires_at` become `EXPIRED`, and
//! exactly their remaining cents go back to the sender as one refund transfer,
//! in one statement (so one transaction).
//!
//! Opens race with expiry only through the DB: the statement locks the due rows
//! and re-checks `status = ACTIVE` on the latest row version, and a lane's commit
//! is guarded by its version and `expires_at > now()`. Whichever commits first
//! wins; the other sees the change and changes nothing. The refund reads the
//! remaining cents of the row it locked, so it is exact.

use deadpool_postgres::Pool;

use crate::db::DbError;

const EXPIRE_DUE: &str = "WITH due AS ( \
       SELECT day, id FROM envelopes WHERE status = 2 AND expires_at <= now() \
       ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
     before AS ( \
       SELECT e.day, e.id, e.sender, e.remaining_cents FROM envelopes e JOIN due USING (day, id)), \
     expired AS ( \
       UPDATE envelopes e SET status = 4, remaining_cents = 0, remaining_count = 0, version = e.version + 1 \
       FROM before WHERE e.day = before.day AND e.id = before.id \
       RETURNING before.id, before.sender, before.remaining_cents), \
     refunds AS ( \
       INSERT INTO transfers (key, kind, envelope_id, user_id, amount_cents) \
       SELECT 'refund:' || id, 2, id, sender, remaining_cents FROM expired WHERE remaining_cents > 0) \
     SELECT count(*) FROM expired";

/// Envelopes expired per statement.
pub const BATCH: i64 = 500;

/// One batch; returns how many envelopes expired.
pub async fn expire_batch(pool: &Pool) -> Result<usize, DbError> {
    let client = pool.get().await?;
    let row = client.query_one(EXPIRE_DUE, &[&BATCH]).await?;
    let count: i64 = row.get(0);
    Ok(usize::try_from(count).unwrap_or(0))
}

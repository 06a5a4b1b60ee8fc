//! The expiry worker: `ACTIVE` envelopes past `expires_at` become `EXPIRED`, and
//! exactly their remaining cents go back to the sender as one refund transfer,
//! in one statement (so one transaction).
//!
//! Opens race with expiry only through the DB: the statement locks the due rows
//! and re-checks `status = ACTIVE` on the latest row version, and a lane's commit
//! is guarded by its version and `expires_at > now()`. Whichever commits first
//! wins; the other sees the change and changes nothing. The refund takes the
//! remaining cents from the `FOR UPDATE` row itself — under READ COMMITTED that is
//! the newest committed version, re-checked after the lock — never from a plain
//! join, which would read the statement's older snapshot and could refund cents
//! a lane committed a moment before (found in review: money created).

use std::sync::LazyLock;

use deadpool_postgres::Pool;
use redcell_payments::keys;

use crate::db::DbError;

/// The refund's key is computed by the statement from the expired row's ID,
/// with the SQL spelling of [`LedgerKey::Refund`](redcell_payments::LedgerKey)
/// (`keys::sql`), so it is made once, at first use.
static EXPIRE_DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH due AS ( \
           SELECT day, id, sender, remaining_cents FROM envelopes WHERE status = 2 AND expires_at <= now() \
           ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
         expired AS ( \
           UPDATE envelopes e SET status = 4, remaining_cents = 0, remaining_count = 0, version = e.version + 1 \
           FROM due WHERE e.day = due.day AND e.id = due.id \
           RETURNING due.id, due.sender, due.remaining_cents), \
         refunds AS ( \
           INSERT INTO transfers (key, kind, envelope_id, user_id, amount_cents) \
           SELECT {refund_key}, 2, id, sender, remaining_cents FROM expired WHERE remaining_cents > 0) \
         SELECT count(*) FROM expired",
        refund_key = keys::sql::refund_key("id"),
    )
});

/// Envelopes expired per statement.
pub const BATCH: i64 = 500;

/// One batch; returns how many envelopes expired. The statement runs in an
/// explicit transaction so that tests can crash the server after it and
/// before the commit (`expiry::inside`): the envelopes marked `EXPIRED` and
/// their refunds written, neither committed, so both or neither survive.
pub async fn expire_batch(pool: &Pool) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let row = transaction
        .query_one(EXPIRE_DUE.as_str(), &[&BATCH])
        .await?;
    let count: i64 = crate::store::column(&row, 0)?;
    if count > 0 {
        fail::fail_point!("expiry::inside");
    }
    transaction.commit().await?;
    Ok(usize::try_from(count).unwrap_or(0))
}

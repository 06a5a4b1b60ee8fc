//! The recovery worker: resolves envelopes stuck in `PENDING_PAYMENT` (the Send
//! crashed or the payment system timed out between the envelope write and the
//! debit's answer) by asking the payment system whether the debit happened.
//!
//! [`Payments::resolve_debit`] voids the key when no debit exists, so a debit
//! still in flight can no longer land afterwards: the answer is final. Debited ->
//! `ACTIVE` (the sender paid, the envelope opens); voided -> `CANCELLED` (no money
//! moved). A grace period leaves fresh Sends to finish on their own.

use std::time::Duration;

use deadpool_postgres::Pool;
use redcell_payments::{DebitResolution, Payments};

use crate::{
    db::DbError,
    envelope::{Status, debit_key},
    store,
};

const STUCK: &str = "SELECT id FROM envelopes WHERE status = 1 AND created_at < now() - make_interval(secs => $1) \
     ORDER BY created_at LIMIT 100";

/// One batch; returns how many envelopes were resolved.
pub async fn recover_batch<P: Payments>(
    pool: &Pool,
    payments: &P,
    grace: Duration,
) -> Result<usize, String> {
    let client = pool
        .get()
        .await
        .map_err(|error| DbError::from(error).to_string())?;
    let rows = client
        .query(STUCK, &[&grace.as_secs_f64()])
        .await
        .map_err(|error| DbError::from(error).to_string())?;
    let mut resolved = 0;
    for row in rows {
        let text: String = row.get(0);
        let Ok(id) = text.parse() else {
            tracing::error!(envelope = %text, "malformed envelope id in order DB");
            continue;
        };
        let to = match payments
            .resolve_debit(&debit_key(&id))
            .await
            .map_err(|error| error.to_string())?
        {
            DebitResolution::Debited => Status::Active,
            DebitResolution::Voided => Status::Cancelled,
        };
        if store::resolve_pending(&**client, &id, to)
            .await
            .map_err(|error| error.to_string())?
            .is_some()
        {
            tracing::info!(envelope = %id, to = ?to, "resolved pending payment");
            resolved += 1;
        }
    }
    Ok(resolved)
}

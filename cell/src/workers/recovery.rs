//! The recovery worker: resolves envelopes stuck in `PENDING_PAYMENT` (the Send
//! crashed or the payment system timed out between the envelope write and the
//! debit's answer) by asking the payment system whether the debit happened.
//!
//! [`Payments::resolve_debit`] voids the key when no debit exists, so a debit
//! still in flight can no longer land afterwards: the answer is final. Debited ->
//! `ACTIVE` (the sender paid, the envelope opens); voided -> `CANCELLED` (no money
//! moved). A grace period leaves fresh Sends to finish on their own; it is
//! measured by the database's clock, which also stamped `created_at`, so a
//! logic server whose clock is off can neither void a fresh Send early nor
//! leave a stuck one waiting.
//!
//! Each envelope is handled on its own: one whose payment shard does not
//! answer backs off (0.2 s doubling to 60 s, as settlement does, kept in the
//! row so every server of the cell honours it) and the batch goes on with the
//! others, so one unreachable shard never holds up every other sender's money.

use std::time::Duration;

use deadpool_postgres::Pool;
use redcell_payments::{DebitResolution, LedgerKey, Payments};
use tokio_postgres::GenericClient;

use crate::{
    db::DbError,
    envelope::Status,
    store::{self, column},
    workers::settlement::backoff,
};

const STUCK: &str = "SELECT id, payment_checks FROM envelopes WHERE status = 1 \
     AND created_at < now() - make_interval(secs => $1) \
     AND (next_payment_check IS NULL OR next_payment_check <= now()) \
     ORDER BY created_at LIMIT $2";
const BACK_OFF: &str = "UPDATE envelopes SET payment_checks = payment_checks + 1, last_payment_error = $3, \
     next_payment_check = now() + make_interval(secs => $4) WHERE day = $1 AND id = $2 AND status = 1";

/// Envelopes looked at per batch.
pub const BATCH: i64 = 100;

/// One batch; returns how many envelopes were resolved. An envelope the
/// payment system cannot answer for is scheduled again later; only a failure
/// of the order DB itself fails the batch.
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
        .query(STUCK, &[&grace.as_secs_f64(), &BATCH])
        .await
        .map_err(|error| DbError::from(error).to_string())?;
    let mut resolved = 0;
    for row in rows {
        let (text, checks): (String, i32) = (
            column(&row, "id").map_err(|error| error.to_string())?,
            column(&row, "payment_checks").map_err(|error| error.to_string())?,
        );
        let Ok(id) = text.parse() else {
            tracing::error!(envelope = %text, "malformed envelope id in order DB");
            continue;
        };
        let to = match payments
            .resolve_debit(&LedgerKey::Send(id).to_string())
            .await
        {
            Ok(DebitResolution::Debited) => Status::Active,
            Ok(DebitResolution::Voided) => Status::Cancelled,
            Err(error) => {
                let delay = backoff(checks);
                tracing::warn!(envelope = %id, %error, retry_in = ?delay, "payment system did not resolve a pending Send");
                back_off(&**client, &id, &error.to_string(), delay)
                    .await
                    .map_err(|error| error.to_string())?;
                continue;
            }
        };
        if store::resolve_pending(&client, &id, to)
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

async fn back_off(
    client: &impl GenericClient,
    id: &redcell_topology::EnvelopeId,
    error: &str,
    delay: Duration,
) -> Result<(), DbError> {
    client
        .execute(
            BACK_OFF,
            &[
                &crate::envelope::partition_day(id),
                &id.to_string(),
                &error,
                &delay.as_secs_f64(),
            ],
        )
        .await?;
    Ok(())
}

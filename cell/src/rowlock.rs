//! The comparison strategy (`--open-strategy rowlock`), kept for benchmarks only:
//! one transaction per Open that locks the envelope row with `SELECT ... FOR
//! UPDATE`. Correct (the same invariants, the same idempotency) but every Open
//! of a hot envelope waits for the row lock and pays its own commit: the
//! contention the lanes exist to avoid.

use std::time::SystemTime;

use deadpool_postgres::Pool;
use redcell_payments::LedgerKey;
use redcell_topology::EnvelopeId;

use crate::{
    db::DbError,
    envelope::{Status, partition_day},
    error::CellError,
    share::{OpenResult, ShareStatus},
    store,
};

const LOCK_ENVELOPE: &str = concat!(
    "SELECT ",
    store::envelope_columns!(),
    " FROM envelopes WHERE day = $1 AND id = $2 FOR UPDATE"
);
const SELECT_OWN_CLAIM: &str =
    "SELECT amount_cents, seq FROM claims WHERE day = $1 AND envelope_id = $2 AND user_id = $3";
const DB_EXPIRED: &str = "SELECT $1::timestamptz <= now() AS expired";
const INSERT_CLAIM: &str =
    "INSERT INTO claims (day, envelope_id, user_id, seq, amount_cents) VALUES ($1, $2, $3, $4, $5)";
const UPDATE_ENVELOPE: &str = "UPDATE envelopes SET remaining_cents = $3, remaining_count = $4, status = $5, \
     version = version + 1 WHERE day = $1 AND id = $2";
const INSERT_TRANSFER: &str = "INSERT INTO transfers (key, kind, envelope_id, user_id, amount_cents) VALUES ($1, 1, $2, $3, $4)";

pub async fn open(pool: &Pool, id: &EnvelopeId, user: &str) -> Result<OpenResult, CellError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let transaction = client.transaction().await.map_err(DbError::from)?;
    let day = partition_day(id);
    let text = id.to_string();
    let row = transaction
        .query_opt(LOCK_ENVELOPE, &[&day, &text])
        .await
        .map_err(DbError::from)?
        .ok_or_else(|| CellError::NotFound(format!("envelope {id} not found")))?;
    let envelope = store::envelope_from_row(&row)?;
    if let Some(own) = transaction
        .query_opt(SELECT_OWN_CLAIM, &[&day, &text, &user])
        .await
        .map_err(DbError::from)?
    {
        return Ok(OpenResult::taken(
            store::column(&own, "amount_cents")?,
            claim_sequence(&own)?,
        ));
    }
    let expired: bool = store::column(
        &transaction
            .query_one(DB_EXPIRED, &[&envelope.expires_at])
            .await
            .map_err(DbError::from)?,
        "expired",
    )?;
    let refusal = match envelope.status {
        Status::PendingPayment | Status::Cancelled => {
            return Err(CellError::FailedPrecondition(format!(
                "envelope {id} is not open for shares"
            )));
        }
        _ if !envelope.is_eligible(user) => Some(ShareStatus::NotEligible),
        Status::Expired => Some(ShareStatus::Expired),
        Status::Exhausted => Some(ShareStatus::Exhausted),
        Status::Active if envelope.remaining_count == 0 => Some(ShareStatus::Exhausted),
        Status::Active if expired => Some(ShareStatus::Expired),
        Status::Active => None,
    };
    if let Some(status) = refusal {
        return Ok(OpenResult::refused(status));
    }
    let sequence = envelope.count - envelope.remaining_count + 1;
    let amount = envelope.share(sequence, envelope.remaining_cents, envelope.remaining_count);
    let remaining_count = envelope.remaining_count - 1;
    let status = if remaining_count == 0 {
        Status::Exhausted
    } else {
        Status::Active
    };
    // Both are at most the envelope's count, itself read from an i32 column.
    let column_i32 = |value: u32, what: &str| {
        i32::try_from(value)
            .map_err(|_| CellError::Internal(format!("{what} {value} does not fit its column")))
    };
    let sequence_i32 = column_i32(sequence, "claims.seq")?;
    let remaining_i32 = column_i32(remaining_count, "envelopes.remaining_count")?;
    transaction
        .execute(INSERT_CLAIM, &[&day, &text, &user, &sequence_i32, &amount])
        .await
        .map_err(DbError::from)?;
    transaction
        .execute(
            UPDATE_ENVELOPE,
            &[
                &day,
                &text,
                &(envelope.remaining_cents - amount),
                &remaining_i32,
                &status.code(),
            ],
        )
        .await
        .map_err(DbError::from)?;
    transaction
        .execute(
            INSERT_TRANSFER,
            &[
                &LedgerKey::Claim {
                    envelope: *id,
                    sequence,
                }
                .to_string(),
                &text,
                &user,
                &amount,
            ],
        )
        .await
        .map_err(DbError::from)?;
    transaction.commit().await.map_err(DbError::from)?;
    Ok(OpenResult::taken(amount, sequence))
}

/// `claims.seq` of a row: an `integer` column holding a positive sequence.
fn claim_sequence(row: &tokio_postgres::Row) -> Result<u32, DbError> {
    let sequence: i32 = store::column(row, "seq")?;
    u32::try_from(sequence)
        .map_err(|_| DbError::Other(format!("claims.seq is {sequence}, not a sequence")))
}

/// Grab without a lane: a plain read.
pub async fn grab(pool: &Pool, id: &EnvelopeId, user: &str) -> Result<ShareStatus, CellError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let envelope = store::load_envelope(&**client, id)
        .await?
        .ok_or_else(|| CellError::NotFound(format!("envelope {id} not found")))?;
    let own = client
        .query_opt(
            SELECT_OWN_CLAIM,
            &[&partition_day(id), &id.to_string(), &user],
        )
        .await
        .map_err(DbError::from)?;
    Ok(match envelope.status {
        Status::PendingPayment | Status::Cancelled => {
            return Err(CellError::FailedPrecondition(format!(
                "envelope {id} is not open for shares"
            )));
        }
        _ if own.is_some() => ShareStatus::AlreadyOpened,
        _ if !envelope.is_eligible(user) => ShareStatus::NotEligible,
        Status::Expired => ShareStatus::Expired,
        _ if envelope.status == Status::Exhausted || envelope.remaining_count == 0 => {
            ShareStatus::Exhausted
        }
        _ if SystemTime::now() >= envelope.expires_at => ShareStatus::Expired,
        _ => ShareStatus::Available,
    })
}

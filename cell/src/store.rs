//! The order store: every SQL statement of the request path, each a named
//! constant, executed through the pool. Worker queries live with their workers.
//!
//! The batch commit ([`commit_opens`]) is the heart of the cell: one transaction
//! inserts a batch of claims and their settlement transfers and moves the
//! envelope's remaining cents and count, guarded by the version the lane read.
//! A stale writer (another server, an expiry) changes nothing and learns why.

use std::{
    ops::Range,
    time::{Duration, SystemTime},
};

use deadpool_postgres::Pool;
use redcell_payments::LedgerKey;
use redcell_topology::{EnvelopeId, MintDate};
use tokio_postgres::{
    GenericClient, Row,
    row::RowIndex,
    types::{FromSql, ToSql},
};

use crate::{
    allocation::SplitVersion,
    db::DbError,
    envelope::{Claim, Envelope, Status, partition_day},
    kind::Kind,
};

/// The envelope columns [`envelope_from_row`] decodes (by name, so a query may
/// add its own columns in any order). Every read of an envelope selects them
/// through this macro: one list, not one per query. `envelope_columns!("e")`
/// qualifies each with a table alias, for joins.
macro_rules! envelope_columns {
    ($($table:literal)?) => {
        concat!(
            $($table, ".",)? "id, ",
            $($table, ".",)? "sender, ",
            $($table, ".",)? "kind, ",
            $($table, ".",)? "status, ",
            $($table, ".",)? "total_cents, ",
            $($table, ".",)? "count, ",
            $($table, ".",)? "remaining_cents, ",
            $($table, ".",)? "remaining_count, ",
            $($table, ".",)? "greeting, ",
            $($table, ".",)? "recipients, ",
            $($table, ".",)? "seed, ",
            $($table, ".",)? "split_rule, ",
            $($table, ".",)? "version, ",
            $($table, ".",)? "created_at, ",
            $($table, ".",)? "expires_at"
        )
    };
}
pub(crate) use envelope_columns;

/// The claim columns [`claim_from_row`] decodes, by name; `claim_columns!("c")`
/// qualifies them with a table alias.
macro_rules! claim_columns {
    ($($table:literal)?) => {
        concat!(
            $($table, ".",)? "user_id, ",
            $($table, ".",)? "amount_cents, ",
            $($table, ".",)? "seq, ",
            $($table, ".",)? "opened_at"
        )
    };
}

mod history;
pub use history::{HistoryEntry, HistoryKind, history};

mod merged;
pub use merged::{
    Found, OpenWrite, commit_alone, commit_merged, outcomes as merged_outcomes, why_not_updated,
};

/// A Send's pending envelope and its idempotency row, in one autocommit
/// statement (atomic as one; one round trip and one commit): the envelope is
/// inserted only if the idempotency row was. The database's clock stamps the
/// envelope: every later comparison that touches its money (expiry,
/// recovery's grace) is made by the same clock. The casts fix the
/// parameters' types, which `INSERT .. SELECT` would not infer.
const INSERT_PENDING: &str = "WITH request AS ( \
       INSERT INTO send_requests (sender, idempotency_key, envelope_id) VALUES ($3, $12, $2) \
       ON CONFLICT (sender, idempotency_key) DO NOTHING RETURNING envelope_id) \
     INSERT INTO envelopes (day, id, sender, kind, status, total_cents, count, remaining_cents, \
       remaining_count, greeting, recipients, seed, split_rule, version, created_at, expires_at) \
     SELECT $1::smallint, envelope_id, $3::text, $4::smallint, 1, $5::bigint, $6::integer, $5::bigint, \
       $6::integer, $7::text, $8::text[], $9::bytea, $10::smallint, 0, now(), \
       now() + make_interval(secs => $11::float8) \
     FROM request RETURNING created_at, expires_at";
const FIND_SEND_REQUEST: &str =
    "SELECT envelope_id FROM send_requests WHERE sender = $1 AND idempotency_key = $2";
const SELECT_ENVELOPE: &str = concat!(
    "SELECT ",
    envelope_columns!(),
    " FROM envelopes WHERE day = $1 AND id = $2"
);
const SELECT_CLAIMS: &str = concat!(
    "SELECT ",
    claim_columns!(),
    " FROM claims WHERE day = $1 AND envelope_id = $2 ORDER BY seq"
);
const SELECT_CLAIMS_PAGE: &str = concat!(
    "SELECT ",
    claim_columns!(),
    " FROM claims WHERE day = $1 AND envelope_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
);
const SET_STATUS_FROM_PENDING: &str = "UPDATE envelopes SET status = $3, version = version + 1 \
     WHERE day = $1 AND id = $2 AND status = 1 RETURNING version";
/// A Send's envelope that will never be paid, with the states it may be in:
/// pending; or, for a refusal for balance, also cancelled by a retry that
/// raced the refusal into the voided key.
const DELETE_UNPAID_ENVELOPE: &str =
    "DELETE FROM envelopes WHERE day = $1 AND id = $2 AND status = ANY($3)";
const DELETE_SEND_REQUEST: &str = "DELETE FROM send_requests WHERE envelope_id = $1";
const ALLOCATE_SEQUENCES: &str = "INSERT INTO id_blocks (mint_date, next_seq) VALUES ($1, $2) \
     ON CONFLICT (mint_date) DO UPDATE SET next_seq = id_blocks.next_seq + EXCLUDED.next_seq RETURNING next_seq";
const UPDATE_FOR_OPENS: &str = "UPDATE envelopes SET remaining_cents = $3, remaining_count = $4, status = $5, \
     version = version + 1 WHERE day = $1 AND id = $2 AND version = $6 AND status = 2 AND expires_at > now() \
     RETURNING version";
const WHY_NOT_UPDATED: &str =
    "SELECT version, status, expires_at <= now() FROM envelopes WHERE day = $1 AND id = $2";
const INSERT_CLAIMS: &str = "INSERT INTO claims (day, envelope_id, user_id, seq, amount_cents, opened_at) \
     SELECT $1, $2, u, s, a, now() FROM unnest($3::text[], $4::int[], $5::bigint[]) AS t(u, s, a)";
/// The claims' settlement transfers, under keys built in Rust
/// ([`LedgerKey::Claim`]) and bound as a `text[]`.
const INSERT_CLAIM_TRANSFERS: &str = "INSERT INTO transfers (key, kind, envelope_id, user_id, amount_cents) \
     SELECT k, 1, $1, u, a FROM unnest($2::text[], $3::text[], $4::bigint[]) AS t(k, u, a)";

/// Outcome of inserting a new envelope.
#[derive(Debug)]
pub enum Inserted {
    /// Written, stamped by the database's clock.
    New {
        created_at: SystemTime,
        expires_at: SystemTime,
    },
    /// The sender's idempotency key already names this envelope.
    Existing(String),
}

/// Inserts a `PENDING_PAYMENT` envelope and its idempotency row, atomically;
/// it expires `ttl` after the database's `now()`.
pub async fn insert_pending(
    pool: &Pool,
    envelope: &Envelope,
    ttl: Duration,
    idempotency_key: &str,
) -> Result<Inserted, DbError> {
    let client = pool.get().await?;
    let id = envelope.id.to_string();
    let count = count_i32(envelope.count);
    let statement = client.prepare_cached(INSERT_PENDING).await?;
    let stamped = client
        .query_opt(
            &statement,
            &[
                &envelope.day(),
                &id,
                &envelope.sender,
                &envelope.kind.code(),
                &envelope.total_cents,
                &count,
                &envelope.greeting,
                &envelope.recipients,
                &envelope.seed.as_slice(),
                &envelope.split_version.code(),
                &ttl.as_secs_f64(),
                &idempotency_key,
            ],
        )
        .await?;
    match stamped {
        Some(stamped) => Ok(Inserted::New {
            created_at: column(&stamped, 0)?,
            expires_at: column(&stamped, 1)?,
        }),
        // The key was taken: by a committed row, which a new statement (READ
        // COMMITTED: a new snapshot) sees.
        None => {
            let existing = client
                .query_one(FIND_SEND_REQUEST, &[&envelope.sender, &idempotency_key])
                .await?;
            Ok(Inserted::Existing(column(&existing, 0)?))
        }
    }
}

pub async fn find_send_request(
    pool: &Pool,
    sender: &str,
    key: &str,
) -> Result<Option<String>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(FIND_SEND_REQUEST, &[&sender, &key])
        .await?;
    row.map(|row| column(&row, 0)).transpose()
}

/// Moves a `PENDING_PAYMENT` envelope to `ACTIVE` or `CANCELLED`; returns the new
/// version, or `None` if it was no longer pending. A pooled connection's
/// cached statement: one round trip, every Send's activation takes it.
pub async fn resolve_pending(
    client: &impl deadpool_postgres::GenericClient,
    id: &EnvelopeId,
    to: Status,
) -> Result<Option<i64>, DbError> {
    let statement = client.prepare_cached(SET_STATUS_FROM_PENDING).await?;
    let row = client
        .query_opt(
            &statement,
            &[&partition_day(id), &id.to_string(), &to.code()],
        )
        .await?;
    row.map(|row| column(&row, 0)).transpose()
}

/// Why a Send's envelope is forgotten (see [`delete_unpaid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpaid {
    /// Refused for balance, its debit key voided: pending, or cancelled by a
    /// racing retry whose debit met the void. Deleting it frees the Send's
    /// idempotency key for a retry after a top-up.
    RefusedForBalance,
    /// Its order was paid for another envelope: only while still pending (a
    /// cancelled one stays, as recovery left it).
    OrderPaidElsewhere,
}

/// Removes the envelope of a Send that will never be paid, and its
/// idempotency row (nothing stays written).
pub async fn delete_unpaid(pool: &Pool, id: &EnvelopeId, why: Unpaid) -> Result<(), DbError> {
    let statuses: &[i16] = match why {
        Unpaid::RefusedForBalance => &[Status::PendingPayment.code(), Status::Cancelled.code()],
        Unpaid::OrderPaidElsewhere => &[Status::PendingPayment.code()],
    };
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let text = id.to_string();
    let deleted = transaction
        .execute(
            DELETE_UNPAID_ENVELOPE,
            &[&partition_day(id), &text, &statuses],
        )
        .await?;
    if deleted == 1 {
        transaction.execute(DELETE_SEND_REQUEST, &[&text]).await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// The envelope, without its claims.
pub async fn load_envelope(
    client: &impl GenericClient,
    id: &EnvelopeId,
) -> Result<Option<Envelope>, DbError> {
    let row = client
        .query_opt(SELECT_ENVELOPE, &[&partition_day(id), &id.to_string()])
        .await?;
    row.map(|row| envelope_from_row(&row)).transpose()
}

/// The envelope and all its claims (a lane's starting state).
pub async fn load_with_claims(
    pool: &Pool,
    id: &EnvelopeId,
) -> Result<Option<(Envelope, Vec<Claim>)>, DbError> {
    let client = pool.get().await?;
    let Some(envelope) = load_envelope(&**client, id).await? else {
        return Ok(None);
    };
    let rows = client
        .query(SELECT_CLAIMS, &[&partition_day(id), &id.to_string()])
        .await?;
    let claims = rows.iter().map(claim_from_row).collect::<Result<_, _>>()?;
    Ok(Some((envelope, claims)))
}

/// Claims with sequence greater than `after`, in sequence order.
pub async fn claims_page(
    pool: &Pool,
    id: &EnvelopeId,
    after: u32,
    limit: u32,
) -> Result<Vec<Claim>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            SELECT_CLAIMS_PAGE,
            &[
                &partition_day(id),
                &id.to_string(),
                &i32::try_from(after).unwrap_or(i32::MAX),
                &i64::from(limit),
            ],
        )
        .await?;
    rows.iter().map(claim_from_row).collect()
}

/// Reserves `count` sequence numbers of `date` for this cell (unique across all
/// servers of the cell: they share the DB).
pub async fn allocate_sequences(
    pool: &Pool,
    date: MintDate,
    count: u32,
) -> Result<Range<u64>, DbError> {
    let client = pool.get().await?;
    let key =
        i32::from(date.year()) * 10_000 + i32::from(date.month()) * 100 + i32::from(date.day());
    let row = client
        .query_one(ALLOCATE_SEQUENCES, &[&key, &i64::from(count)])
        .await?;
    let end: i64 = column(&row, 0)?;
    let end = u64::try_from(end).map_err(|_| DbError::Other(format!("negative sequence {end}")))?;
    Ok(end.saturating_sub(u64::from(count))..end)
}

/// One share to insert.
#[derive(Debug, Clone)]
pub struct NewClaim {
    pub user: String,
    pub sequence: u32,
    pub amount_cents: i64,
}

impl NewClaim {
    /// The key of the share's settlement transfer and ledger credit.
    pub fn transfer_key(&self, envelope: EnvelopeId) -> String {
        LedgerKey::Claim {
            envelope,
            sequence: self.sequence,
        }
        .to_string()
    }
}

/// What the version-checked batch commit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Committed; the envelope's new version.
    Committed(i64),
    /// Someone else wrote first (another server): reload and retry.
    Stale,
    /// The database's clock says the envelope expired: nothing was written.
    Expired,
    /// The envelope is no longer ACTIVE (exhausted, expired by the worker...).
    NotActive,
}

/// Commits a lane's batch: claims + transfers + the envelope's decrement, in one
/// transaction, guarded by `version`. `remaining_*` are the values after the batch.
/// (Many lanes' batches in one transaction: [`commit_merged`].)
pub async fn commit_opens(
    pool: &Pool,
    envelope: &Envelope,
    claims: &[NewClaim],
    remaining_cents: i64,
    remaining_count: u32,
) -> Result<CommitOutcome, DbError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let day = envelope.day();
    let id = envelope.id.to_string();
    let status = if remaining_count == 0 {
        Status::Exhausted
    } else {
        Status::Active
    };
    let update = transaction.prepare_cached(UPDATE_FOR_OPENS).await?;
    let updated = transaction
        .query_opt(
            &update,
            &[
                &day,
                &id,
                &remaining_cents,
                &count_i32(remaining_count),
                &status.code(),
                &envelope.version,
            ],
        )
        .await?;
    let Some(updated) = updated else {
        let why = transaction.query_opt(WHY_NOT_UPDATED, &[&day, &id]).await?;
        transaction.rollback().await?;
        let found = match why {
            Some(why) => Some(merged::Found {
                version: column(&why, 0)?,
                status: column(&why, 1)?,
                expired: column(&why, 2)?,
            }),
            None => None,
        };
        return Ok(why_not_updated(envelope.version, found));
    };
    let users: Vec<&str> = claims.iter().map(|claim| claim.user.as_str()).collect();
    let sequences: Vec<i32> = claims
        .iter()
        .map(|claim| count_i32(claim.sequence))
        .collect();
    let amounts: Vec<i64> = claims.iter().map(|claim| claim.amount_cents).collect();
    let keys: Vec<String> = claims
        .iter()
        .map(|claim| claim.transfer_key(envelope.id))
        .collect();
    let insert_claims = transaction.prepare_cached(INSERT_CLAIMS).await?;
    let insert_transfers = transaction.prepare_cached(INSERT_CLAIM_TRANSFERS).await?;
    let claim_rows: [&(dyn ToSql + Sync); 5] = [&day, &id, &users, &sequences, &amounts];
    let transfer_rows: [&(dyn ToSql + Sync); 4] = [&id, &keys, &users, &amounts];
    tokio::try_join!(
        transaction.execute(&insert_claims, &claim_rows),
        transaction.execute(&insert_transfers, &transfer_rows),
    )?;
    transaction.commit().await?;
    Ok(CommitOutcome::Committed(column(&updated, 0)?))
}

fn count_i32(count: u32) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// `row.try_get(index)` with an error that names the column: a schema that
/// drifted from the code is an error of the request or worker, never a panic,
/// and never mistaken for an unavailable database.
pub(crate) fn column<'a, I, T>(row: &'a Row, index: I) -> Result<T, DbError>
where
    I: RowIndex + std::fmt::Display + Copy,
    T: FromSql<'a>,
{
    row.try_get(index)
        .map_err(|error| DbError::Other(format!("column {index} of the order DB: {error}")))
}

fn corrupt(what: &str, value: impl std::fmt::Debug) -> DbError {
    DbError::Other(format!("corrupt {what} in order DB: {value:?}"))
}

/// Decodes the [`envelope_columns!`] of a row, by name.
pub fn envelope_from_row(row: &Row) -> Result<Envelope, DbError> {
    let id: String = column(row, "id")?;
    let kind: i16 = column(row, "kind")?;
    let status: i16 = column(row, "status")?;
    let count: i32 = column(row, "count")?;
    let remaining_count: i32 = column(row, "remaining_count")?;
    let seed: Vec<u8> = column(row, "seed")?;
    let split: i16 = column(row, "split_rule")?;
    Ok(Envelope {
        id: id.parse().map_err(|_| corrupt("envelope id", &id))?,
        sender: column(row, "sender")?,
        kind: Kind::from_code(kind).ok_or_else(|| corrupt("kind", kind))?,
        status: Status::from_code(status).ok_or_else(|| corrupt("status", status))?,
        total_cents: column(row, "total_cents")?,
        count: u32::try_from(count).map_err(|_| corrupt("count", count))?,
        remaining_cents: column(row, "remaining_cents")?,
        remaining_count: u32::try_from(remaining_count)
            .map_err(|_| corrupt("remaining_count", remaining_count))?,
        greeting: column(row, "greeting")?,
        recipients: column(row, "recipients")?,
        seed: seed
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("seed length", seed.len()))?,
        split_version: SplitVersion::from_code(split)
            .ok_or_else(|| corrupt("split_rule", split))?,
        version: column(row, "version")?,
        created_at: column(row, "created_at")?,
        expires_at: column(row, "expires_at")?,
    })
}

/// Decodes the [`claim_columns!`] of a row, by name.
fn claim_from_row(row: &Row) -> Result<Claim, DbError> {
    let sequence: i32 = column(row, "seq")?;
    Ok(Claim {
        user: column(row, "user_id")?,
        amount_cents: column(row, "amount_cents")?,
        sequence: u32::try_from(sequence).map_err(|_| corrupt("claim seq", sequence))?,
        opened_at: column(row, "opened_at")?,
    })
}

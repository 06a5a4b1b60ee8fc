//! The merged commit: many lanes' planned batches written in ONE transaction
//! (DESIGN §5, the cell-level committer), so one WAL flush serves them all.
//!
//! Invariants, and why they hold:
//! * **Each envelope keeps its own version check.** One `UPDATE .. FROM
//!   unnest(..)` moves every envelope whose row still has the version its
//!   lane read (and is `ACTIVE`, not past `expires_at` by the database's
//!   clock); `RETURNING` names exactly those. Claims and transfers are then
//!   inserted for those envelopes only, so an envelope that lost its check
//!   writes nothing and gets its own [`CommitOutcome`] (`Stale`, `NotActive`,
//!   `Expired`, decided by [`why_not_updated`] exactly as the per-lane commit
//!   decides it) while the others commit: one stale envelope never fails the
//!   others' batch.
//! * **All or nothing per transaction.** Every committed outcome is reported
//!   only after `COMMIT` returned; an error before that reaches every lane of
//!   the transaction, whose callers retry (Open is idempotent).
//! * **One envelope once per transaction.** The caller never puts two writes
//!   of one envelope in one call ([`commit_merged`] refuses it): `UPDATE ..
//!   FROM` would apply only one of them and return the row once.
//! * **Rows are locked in (day, id) order**, so two merged transactions (of
//!   two servers during a failover) lock common envelopes in the same order.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Pool;
use redcell_topology::EnvelopeId;
use tokio_postgres::{GenericClient, types::ToSql};

use super::{CommitOutcome, NewClaim, column, count_i32};
use crate::{
    db::DbError,
    envelope::{Status, partition_day},
};

const UPDATE_MERGED: &str = "UPDATE envelopes e SET remaining_cents = t.cents, remaining_count = t.count, \
     status = t.status, version = e.version + 1 \
     FROM unnest($1::smallint[], $2::text[], $3::bigint[], $4::integer[], $5::smallint[], $6::bigint[]) \
       AS t(day, id, cents, count, status, version) \
     WHERE e.day = t.day AND e.id = t.id AND e.version = t.version AND e.status = 2 \
       AND e.expires_at > now() \
     RETURNING e.id, e.version";
const WHY_NOT_MERGED: &str = "SELECT e.id, e.version, e.status, e.expires_at <= now() AS expired \
     FROM envelopes e JOIN unnest($1::smallint[], $2::text[]) AS t(day, id) \
       ON e.day = t.day AND e.id = t.id";
const INSERT_MERGED_CLAIMS: &str = "INSERT INTO claims (day, envelope_id, user_id, seq, amount_cents, opened_at) \
     SELECT d, e, u, s, a, now() \
     FROM unnest($1::smallint[], $2::text[], $3::text[], $4::integer[], $5::bigint[]) AS t(d, e, u, s, a)";
/// The claims' settlement transfers, under keys built in Rust
/// ([`NewClaim::transfer_key`]).
const INSERT_MERGED_TRANSFERS: &str = "INSERT INTO transfers (key, kind, envelope_id, user_id, amount_cents) \
     SELECT k, 1, e, u, a FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t(k, e, u, a)";

/// One lane's batch, owned (it travels to the committer task).
#[derive(Debug, Clone)]
pub struct OpenWrite {
    pub id: EnvelopeId,
    /// The version the lane read: the write's guard.
    pub version: i64,
    pub claims: Vec<NewClaim>,
    /// The envelope's remainder after the claims.
    pub remaining_cents: i64,
    pub remaining_count: u32,
}

impl OpenWrite {
    /// `EXHAUSTED` once the last share is taken, else still `ACTIVE`.
    fn status_after(&self) -> Status {
        if self.remaining_count == 0 {
            Status::Exhausted
        } else {
            Status::Active
        }
    }
}

/// What the database holds for an envelope whose version-checked update
/// matched no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub version: i64,
    pub status: i16,
    /// `expires_at <= now()` by the database's clock.
    pub expired: bool,
}

/// Why a version-checked update of an envelope read at `version` matched no
/// row, from what the row holds now (`None`: no row). The one rule for the
/// per-lane and the merged commit.
pub fn why_not_updated(version: i64, found: Option<Found>) -> CommitOutcome {
    match found {
        None => CommitOutcome::Stale,
        Some(found) if found.version != version => CommitOutcome::Stale,
        Some(found) if found.status != Status::Active.code() => CommitOutcome::NotActive,
        Some(found) if found.expired => CommitOutcome::Expired,
        // Same version, active, not expired: it changed and changed back
        // between the statements (impossible while we hold no lock); reload.
        Some(_) => CommitOutcome::Stale,
    }
}

/// Each write's outcome, in `writes` order: `Committed(new version)` for the
/// envelopes the update returned, else [`why_not_updated`] from `found`.
pub fn outcomes(
    writes: &[OpenWrite],
    updated: &HashMap<String, i64>,
    found: &HashMap<String, Found>,
) -> Vec<CommitOutcome> {
    writes
        .iter()
        .map(|write| {
            let id = write.id.to_string();
            match updated.get(&id) {
                Some(version) => CommitOutcome::Committed(*version),
                None => why_not_updated(write.version, found.get(&id).copied()),
            }
        })
        .collect()
}

/// Commits `writes` (each a different envelope) in one transaction; returns
/// each write's outcome in `writes` order. Claims and transfers are written
/// only for the envelopes that passed their own check.
pub async fn commit_merged(
    pool: &Pool,
    writes: &[OpenWrite],
) -> Result<Vec<CommitOutcome>, DbError> {
    let mut seen = HashSet::with_capacity(writes.len());
    if let Some(twice) = writes.iter().find(|write| !seen.insert(write.id)) {
        return Err(DbError::Other(format!(
            "merged commit given envelope {} twice",
            twice.id
        )));
    }
    // Lock order: (day, id), whatever order the lanes arrived in.
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by_key(|&index| {
        (
            partition_day(&writes[index].id),
            writes[index].id.to_string(),
        )
    });
    let sorted: Vec<&OpenWrite> = order.iter().map(|&index| &writes[index]).collect();
    let days: Vec<i16> = sorted
        .iter()
        .map(|write| partition_day(&write.id))
        .collect();
    let ids: Vec<String> = sorted.iter().map(|write| write.id.to_string()).collect();
    let cents: Vec<i64> = sorted.iter().map(|write| write.remaining_cents).collect();
    let counts: Vec<i32> = sorted
        .iter()
        .map(|write| count_i32(write.remaining_count))
        .collect();
    let statuses: Vec<i16> = sorted
        .iter()
        .map(|write| write.status_after().code())
        .collect();
    let versions: Vec<i64> = sorted.iter().map(|write| write.version).collect();

    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let update = transaction.prepare_cached(UPDATE_MERGED).await?;
    let rows = transaction
        .query(
            &update,
            &[&days, &ids, &cents, &counts, &statuses, &versions],
        )
        .await?;
    let mut updated = HashMap::with_capacity(rows.len());
    for row in &rows {
        updated.insert(column::<_, String>(row, 0)?, column::<_, i64>(row, 1)?);
    }
    let found = if updated.len() < writes.len() {
        let (missing_days, missing_ids): (Vec<i16>, Vec<&str>) = days
            .iter()
            .zip(&ids)
            .filter(|(_, id)| !updated.contains_key(id.as_str()))
            .map(|(day, id)| (*day, id.as_str()))
            .unzip();
        found_rows(&*transaction, &missing_days, &missing_ids).await?
    } else {
        HashMap::new()
    };
    let outcomes = outcomes(writes, &updated, &found);
    if updated.is_empty() {
        transaction.rollback().await?;
        return Ok(outcomes);
    }
    let committed: Vec<&OpenWrite> = sorted
        .iter()
        .copied()
        .filter(|write| updated.contains_key(&write.id.to_string()))
        .collect();
    let mut claim_days = Vec::new();
    let mut claim_envelopes = Vec::new();
    let mut users = Vec::new();
    let mut sequences = Vec::new();
    let mut amounts = Vec::new();
    let mut keys = Vec::new();
    for write in &committed {
        let id = write.id.to_string();
        for claim in &write.claims {
            claim_days.push(partition_day(&write.id));
            claim_envelopes.push(id.clone());
            users.push(claim.user.as_str());
            sequences.push(count_i32(claim.sequence));
            amounts.push(claim.amount_cents);
            keys.push(claim.transfer_key(write.id));
        }
    }
    let insert_claims = transaction.prepare_cached(INSERT_MERGED_CLAIMS).await?;
    let insert_transfers = transaction.prepare_cached(INSERT_MERGED_TRANSFERS).await?;
    // Both inserts go out pipelined on the one connection.
    let claim_rows: [&(dyn ToSql + Sync); 5] =
        [&claim_days, &claim_envelopes, &users, &sequences, &amounts];
    let transfer_rows: [&(dyn ToSql + Sync); 4] = [&keys, &claim_envelopes, &users, &amounts];
    tokio::try_join!(
        transaction.execute(&insert_claims, &claim_rows),
        transaction.execute(&insert_transfers, &transfer_rows),
    )?;
    transaction.commit().await?;
    Ok(outcomes)
}

/// One write in a transaction of its own (what the per-lane committer does),
/// through the same statements.
pub async fn commit_alone(pool: &Pool, write: &OpenWrite) -> Result<CommitOutcome, DbError> {
    let outcomes = commit_merged(pool, std::slice::from_ref(write)).await?;
    outcomes
        .into_iter()
        .next()
        .ok_or_else(|| DbError::Other("merged commit of one write gave no outcome".into()))
}

/// The rows of the envelopes the update did not move, by id.
async fn found_rows(
    client: &impl GenericClient,
    days: &[i16],
    ids: &[&str],
) -> Result<HashMap<String, Found>, DbError> {
    let rows = client.query(WHY_NOT_MERGED, &[&days, &ids]).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(
            column::<_, String>(row, "id")?,
            Found {
                version: column(row, "version")?,
                status: column(row, "status")?,
                expired: column(row, "expired")?,
            },
        );
    }
    Ok(found)
}

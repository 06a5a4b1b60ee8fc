//! Archive of cold days: the order-DB side of `cellctl archive` (issue 12).
//!
//! A day partition holds every month's day D, so a cold day is never dropped
//! as a partition: its **rows** go, envelope by envelope. An envelope is
//! archived when its ID's mint date (YYMMDD, DESIGN §2: the date routing and
//! the partition are derived from, not `created_at`) is before the operator's
//! date and it is **settled**: final (EXHAUSTED, EXPIRED, CANCELLED) with
//! every transfer done. Settled is final: no operation writes such an
//! envelope, its claims or its transfers again, so what is exported is what
//! is deleted.
//!
//! # Invariants
//!
//! - **Nothing unsettled goes.** [`begin`] refuses the whole run when any
//!   envelope older than the date is not settled ([`ArchiveError::Unsettled`]).
//! - **Nothing inconsistent goes.** Every envelope's claims, transfers and
//!   Send row are checked before anything is written
//!   ([`ArchiveError::Inconsistent`]): the totals carried forward must be the
//!   ones the ledger holds, or reconcile could never balance again.
//! - **Files before deletes.** One transaction per cell: the settled rows are
//!   locked, exported through [`Archiving::export`] (the caller writes and
//!   fsyncs the files), and only then does [`Archiving::finish`] insert the
//!   carried totals (`archived_envelopes`) and the run's `archives` row and
//!   delete the rows, checking that it deleted exactly what was exported.
//!   A crash before the commit leaves every row in place (and files with an
//!   archive id no `archives` row names).
//! - **Reconcile still balances.** The ledger keeps every entry of an
//!   archived envelope; [`crate::reconcile`] matches them against its carried
//!   totals (debit = total of the sender, claim credits = claimed in count
//!   and sum, refund = refunded to the sender).
//! - **A re-run is a no-op**: archived rows are gone, so nothing is selected.
//!
//! **Owns**: the statements that read, export, carry and delete archived
//! rows, and the lookup Get makes for a missing ID. **Never**: writes files
//! (the caller does, between export and finish).

use redcell_topology::{EnvelopeId, MintDate};
use tokio_postgres::{Client, GenericClient, Row, Transaction, types::FromSql};

use crate::envelope::Status;

/// The tables an archived envelope has rows in, in export order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Envelopes,
    Claims,
    Transfers,
    SendRequests,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Envelopes,
        Table::Claims,
        Table::Transfers,
        Table::SendRequests,
    ];

    /// The table's name (also its archive file's).
    pub fn name(self) -> &'static str {
        match self {
            Table::Envelopes => "envelopes",
            Table::Claims => "claims",
            Table::Transfers => "transfers",
            Table::SendRequests => "send_requests",
        }
    }

    /// Every row of the envelopes being archived, as one JSON object each
    /// (`row_to_json`: every column, whatever later migrations add), in a
    /// stable order.
    fn export(self) -> &'static str {
        match self {
            Table::Envelopes => {
                "SELECT row_to_json(x)::text FROM envelopes x \
                 JOIN archiving a ON x.day = a.day AND x.id = a.id ORDER BY x.id"
            }
            Table::Claims => {
                "SELECT row_to_json(x)::text FROM claims x \
                 JOIN archiving a ON x.day = a.day AND x.envelope_id = a.id \
                 ORDER BY x.envelope_id, x.seq"
            }
            Table::Transfers => {
                "SELECT row_to_json(x)::text FROM transfers x \
                 JOIN archiving a ON x.envelope_id = a.id ORDER BY x.envelope_id, x.id"
            }
            Table::SendRequests => {
                "SELECT row_to_json(x)::text FROM send_requests x \
                 JOIN archiving a ON x.envelope_id = a.id ORDER BY x.envelope_id, x.sender"
            }
        }
    }

    fn delete(self) -> &'static str {
        match self {
            Table::Envelopes => {
                "DELETE FROM envelopes x USING archiving a WHERE x.day = a.day AND x.id = a.id"
            }
            Table::Claims => {
                "DELETE FROM claims x USING archiving a \
                 WHERE x.day = a.day AND x.envelope_id = a.id"
            }
            Table::Transfers => {
                "DELETE FROM transfers x USING archiving a WHERE x.envelope_id = a.id"
            }
            Table::SendRequests => {
                "DELETE FROM send_requests x USING archiving a WHERE x.envelope_id = a.id"
            }
        }
    }
}

/// Rows per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub envelopes: i64,
    pub claims: i64,
    pub transfers: i64,
    pub send_requests: i64,
}

impl Counts {
    pub fn get(&self, table: Table) -> i64 {
        match table {
            Table::Envelopes => self.envelopes,
            Table::Claims => self.claims,
            Table::Transfers => self.transfers,
            Table::SendRequests => self.send_requests,
        }
    }

    pub fn set(&mut self, table: Table, rows: i64) {
        match table {
            Table::Envelopes => self.envelopes = rows,
            Table::Claims => self.claims = rows,
            Table::Transfers => self.transfers = rows,
            Table::SendRequests => self.send_requests = rows,
        }
    }
}

/// Envelopes older than the date that are not settled: how many, and the
/// first few IDs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsettled {
    pub count: i64,
    pub sample: Vec<String>,
}

/// What an archive before a date would do now (the dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Rows of the settled envelopes older than the date.
    pub settled: Counts,
    pub unsettled: Unsettled,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("order DB: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("order DB column {column}: {source}")]
    Column {
        column: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "{} unsettled envelope(s) minted before the date (e.g. {}): nothing archived",
        .0.count, .0.sample.join(", ")
    )]
    Unsettled(Unsettled),
    #[error("envelopes whose rows do not add up (run cellctl reconcile): {}; nothing archived", .0.join("; "))]
    Inconsistent(Vec<String>),
    #[error("writing the archive: {0}; nothing deleted")]
    Write(std::io::Error),
    #[error("{table}: exported {exported} rows but would delete {deleted}; nothing deleted")]
    CountMismatch {
        table: &'static str,
        exported: i64,
        deleted: i64,
    },
}

/// IDs sampled in an [`Unsettled`] or an [`ArchiveError::Inconsistent`].
const SAMPLE: i64 = 5;

/// Rows fetched per round trip of an export.
const EXPORT_BATCH: i32 = 1000;

/// `YYMMDD` of `date`: IDs minted before it compare below it as text (the
/// ID starts with its mint date, two-digit year, all in 2000-2099).
pub fn id_prefix(date: MintDate) -> String {
    format!(
        "{:02}{:02}{:02}",
        date.year() % 100,
        date.month(),
        date.day()
    )
}

/// `YYYY-MM-DD` of `date`.
pub fn iso(date: MintDate) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
}

/// An envelope is settled: a final status, and no transfer of it pending.
/// `$1` is [`id_prefix`] of the date.
const SETTLED: &str = "left(e.id, 6) < $1 AND e.status IN (3, 4, 5) \
     AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.envelope_id = e.id AND t.status <> 2)";

/// `$2`: how many IDs to sample ([`SAMPLE`]).
const UNSETTLED: &str = "SELECT count(*) OVER (), e.id FROM envelopes e \
     WHERE left(e.id, 6) < $1 AND (e.status NOT IN (3, 4, 5) \
       OR EXISTS (SELECT 1 FROM transfers t WHERE t.envelope_id = e.id AND t.status <> 2)) \
     ORDER BY e.id LIMIT $2";

fn column<'a, T: FromSql<'a>>(
    row: &'a Row,
    index: usize,
    column: &'static str,
) -> Result<T, ArchiveError> {
    row.try_get(index)
        .map_err(|source| ArchiveError::Column { column, source })
}

async fn unsettled(client: &impl GenericClient, prefix: &str) -> Result<Unsettled, ArchiveError> {
    let rows = client.query(UNSETTLED, &[&prefix, &SAMPLE]).await?;
    let mut found = Unsettled::default();
    for row in &rows {
        found.count = column(row, 0, "unsettled count")?;
        found.sample.push(column(row, 1, "envelopes.id")?);
    }
    Ok(found)
}

/// The dry run: what [`begin`] would select before `before`, read-only.
pub async fn survey(client: &Client, before: MintDate) -> Result<Survey, ArchiveError> {
    let prefix = id_prefix(before);
    let unsettled = unsettled(client, &prefix).await?;
    let query = format!(
        "WITH s AS (SELECT e.day, e.id FROM envelopes e WHERE {SETTLED}) \
         SELECT (SELECT count(*) FROM s), \
           (SELECT count(*) FROM claims c JOIN s ON c.day = s.day AND c.envelope_id = s.id), \
           (SELECT count(*) FROM transfers t JOIN s ON t.envelope_id = s.id), \
           (SELECT count(*) FROM send_requests r JOIN s ON r.envelope_id = s.id)"
    );
    let row = client.query_one(&query, &[&prefix]).await?;
    Ok(Survey {
        settled: Counts {
            envelopes: column(&row, 0, "envelopes")?,
            claims: column(&row, 1, "claims")?,
            transfers: column(&row, 2, "transfers")?,
            send_requests: column(&row, 3, "send_requests")?,
        },
        unsettled,
    })
}

/// What is carried forward of one archived envelope.
#[derive(Debug, Clone)]
struct Carried {
    id: String,
    sender: String,
    status: i16,
    total: i64,
    claim_count: i32,
    claimed: i64,
    refunded: i64,
    send_key: Option<String>,
}

/// Per envelope being archived: its own columns and what its rows add up to.
const TOTALS: &str = "SELECT e.id, e.sender, e.status, e.total_cents, \
       c.n, c.cents, t.claim_n, t.claim_cents, t.refund_n, t.refund_cents, t.refund_to_others, \
       s.n, s.key \
     FROM archiving a JOIN envelopes e ON e.day = a.day AND e.id = a.id \
     CROSS JOIN LATERAL (SELECT count(*) AS n, COALESCE(sum(amount_cents), 0)::bigint AS cents \
       FROM claims c WHERE c.day = a.day AND c.envelope_id = a.id) c \
     CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE kind = 1) AS claim_n, \
         COALESCE(sum(amount_cents) FILTER (WHERE kind = 1), 0)::bigint AS claim_cents, \
         count(*) FILTER (WHERE kind = 2) AS refund_n, \
         COALESCE(sum(amount_cents) FILTER (WHERE kind = 2), 0)::bigint AS refund_cents, \
         count(*) FILTER (WHERE kind = 2 AND user_id <> e.sender) AS refund_to_others \
       FROM transfers t WHERE t.envelope_id = a.id) t \
     CROSS JOIN LATERAL (SELECT count(*) AS n, min(idempotency_key) AS key \
       FROM send_requests s WHERE s.envelope_id = a.id) s \
     ORDER BY e.id";

/// Reads and checks the carried totals of every envelope in `archiving`.
async fn carried(transaction: &Transaction<'_>) -> Result<Vec<Carried>, ArchiveError> {
    let mut carried = Vec::new();
    let mut broken = Vec::new();
    for row in transaction.query(TOTALS, &[]).await? {
        let id: String = column(&row, 0, "envelopes.id")?;
        let sender: String = column(&row, 1, "envelopes.sender")?;
        let status: i16 = column(&row, 2, "envelopes.status")?;
        let total: i64 = column(&row, 3, "envelopes.total_cents")?;
        let claims: i64 = column(&row, 4, "claims count")?;
        let claimed: i64 = column(&row, 5, "claims sum")?;
        let claim_transfers: i64 = column(&row, 6, "claim transfers count")?;
        let claim_transferred: i64 = column(&row, 7, "claim transfers sum")?;
        let refunds: i64 = column(&row, 8, "refunds count")?;
        let refunded: i64 = column(&row, 9, "refunds sum")?;
        let refunds_to_others: i64 = column(&row, 10, "refunds to others")?;
        let sends: i64 = column(&row, 11, "send_requests count")?;
        let send_key: Option<String> = column(&row, 12, "send_requests.idempotency_key")?;
        let why = inconsistency(
            Status::from_code(status),
            total,
            (claims, claimed),
            (claim_transfers, claim_transferred),
            (refunds, refunded),
            refunds_to_others,
            sends,
        );
        if let Some(why) = why {
            broken.push(format!("{id}: {why}"));
            continue;
        }
        let Ok(claim_count) = i32::try_from(claims) else {
            broken.push(format!("{id}: {claims} claims"));
            continue;
        };
        carried.push(Carried {
            id,
            sender,
            status,
            total,
            claim_count,
            claimed,
            refunded,
            send_key,
        });
    }
    if broken.is_empty() {
        Ok(carried)
    } else {
        broken.truncate(usize::try_from(SAMPLE).unwrap_or(usize::MAX));
        Err(ArchiveError::Inconsistent(broken))
    }
}

/// Why a settled envelope's rows do not add up, if they do not: the totals
/// carried forward must be exactly what the ledger paid.
fn inconsistency(
    status: Option<Status>,
    total: i64,
    (claims, claimed): (i64, i64),
    (claim_transfers, claim_transferred): (i64, i64),
    (refunds, refunded): (i64, i64),
    refunds_to_others: i64,
    sends: i64,
) -> Option<String> {
    if sends != 1 {
        return Some(format!("{sends} Send (idempotency) rows"));
    }
    if (claims, claimed) != (claim_transfers, claim_transferred) {
        return Some(format!(
            "{claims} claims of {claimed} but {claim_transfers} claim transfers of {claim_transferred}"
        ));
    }
    if refunds > 1 || refunds_to_others > 0 || (refunds == 1) != (refunded > 0) {
        return Some(format!(
            "{refunds} refunds of {refunded}, {refunds_to_others} not to the sender"
        ));
    }
    match status {
        Some(Status::Cancelled) if claims > 0 || refunds > 0 => Some(format!(
            "cancelled with {claims} claims and {refunds} refunds"
        )),
        Some(Status::Cancelled) => None,
        Some(Status::Exhausted) if claimed != total || refunds > 0 => Some(format!(
            "exhausted with claims {claimed} and refund {refunded} of total {total}"
        )),
        Some(Status::Expired) if claimed + refunded != total => Some(format!(
            "expired with claims {claimed} + refund {refunded} != total {total}"
        )),
        Some(Status::Exhausted | Status::Expired) => None,
        other => Some(format!("status {other:?} is not final")),
    }
}

/// One cell's archive run in progress: its transaction holds the selected
/// envelopes locked (`FOR UPDATE`) in the temporary table `archiving`.
pub struct Archiving<'a> {
    transaction: Transaction<'a>,
    archive_id: i64,
    before: MintDate,
    carried: Vec<Carried>,
}

/// Starts archiving the settled envelopes minted before `before`: refuses
/// when any older envelope is unsettled or any selected one does not add up;
/// `None` when there is nothing to archive (a re-run).
pub async fn begin(
    client: &mut Client,
    before: MintDate,
) -> Result<Option<Archiving<'_>>, ArchiveError> {
    let prefix = id_prefix(before);
    let transaction = client.transaction().await?;
    let unsettled = unsettled(&transaction, &prefix).await?;
    if unsettled.count > 0 {
        return Err(ArchiveError::Unsettled(unsettled));
    }
    let locked = transaction
        .query(
            &format!("SELECT e.day, e.id FROM envelopes e WHERE {SETTLED} FOR UPDATE OF e"),
            &[&prefix],
        )
        .await?;
    if locked.is_empty() {
        return Ok(None);
    }
    let mut days: Vec<i16> = Vec::with_capacity(locked.len());
    let mut ids: Vec<String> = Vec::with_capacity(locked.len());
    for row in &locked {
        days.push(column(row, 0, "envelopes.day")?);
        ids.push(column(row, 1, "envelopes.id")?);
    }
    transaction
        .batch_execute(
            "CREATE TEMPORARY TABLE archiving (day smallint NOT NULL, id text NOT NULL, \
             PRIMARY KEY (day, id)) ON COMMIT DROP",
        )
        .await?;
    transaction
        .execute(
            "INSERT INTO archiving SELECT * FROM unnest($1::smallint[], $2::text[])",
            &[&days, &ids],
        )
        .await?;
    let carried = carried(&transaction).await?;
    let archive_id: i64 = column(
        &transaction
            .query_one(
                "SELECT nextval(pg_get_serial_sequence('archives', 'id'))",
                &[],
            )
            .await?,
        0,
        "archives.id",
    )?;
    Ok(Some(Archiving {
        transaction,
        archive_id,
        before,
        carried,
    }))
}

impl std::fmt::Debug for Archiving<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archiving")
            .field("archive_id", &self.archive_id)
            .field("before", &self.before)
            .field("envelopes", &self.carried.len())
            .finish_non_exhaustive()
    }
}

/// Where the caller put the files of a run, recorded in its `archives` row.
#[derive(Debug, Clone)]
pub struct Record {
    /// The directory the files are in.
    pub directory: String,
    /// The manifest's file name in it.
    pub manifest: String,
    /// SHA-256 of the manifest, lowercase hex.
    pub manifest_sha256: String,
}

impl Archiving<'_> {
    /// The id the run's `archives` row will have (for naming its files).
    pub fn archive_id(&self) -> i64 {
        self.archive_id
    }

    /// How many envelopes this run archives.
    pub fn envelopes(&self) -> usize {
        self.carried.len()
    }

    /// Streams every row of `table` being archived to `line`, one JSON
    /// object each, in batches through a portal; returns how many.
    pub async fn export(
        &self,
        table: Table,
        mut line: impl FnMut(&str) -> std::io::Result<()>,
    ) -> Result<i64, ArchiveError> {
        let portal = self.transaction.bind(table.export(), &[]).await?;
        let mut rows = 0_i64;
        loop {
            let batch = self.transaction.query_portal(&portal, EXPORT_BATCH).await?;
            for row in &batch {
                let json: String = column(row, 0, "row_to_json")?;
                line(&json).map_err(ArchiveError::Write)?;
                rows += 1;
            }
            if batch.len() < EXPORT_BATCH as usize {
                return Ok(rows);
            }
        }
    }

    /// After the caller made the files durable: records the run and the
    /// carried totals, deletes the rows (checking each table's count against
    /// `exported`), commits. Returns what was deleted.
    pub async fn finish(self, record: &Record, exported: Counts) -> Result<Counts, ArchiveError> {
        // Tests crash the archive run here: files written, nothing deleted.
        fail::fail_point!("archive::after_export");
        let transaction = self.transaction;
        transaction
            .execute(
                "INSERT INTO archives (id, before_date, directory, manifest, manifest_sha256, \
                   envelopes, claims, transfers, send_requests) \
                 VALUES ($1, CAST($2::text AS date), $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &self.archive_id,
                    &iso(self.before),
                    &record.directory,
                    &record.manifest,
                    &record.manifest_sha256,
                    &exported.envelopes,
                    &exported.claims,
                    &exported.transfers,
                    &exported.send_requests,
                ],
            )
            .await?;
        let column_of =
            |f: fn(&Carried) -> String| -> Vec<String> { self.carried.iter().map(f).collect() };
        let ids = column_of(|c| c.id.clone());
        let senders = column_of(|c| c.sender.clone());
        let statuses: Vec<i16> = self.carried.iter().map(|c| c.status).collect();
        let totals: Vec<i64> = self.carried.iter().map(|c| c.total).collect();
        let claim_counts: Vec<i32> = self.carried.iter().map(|c| c.claim_count).collect();
        let claimed: Vec<i64> = self.carried.iter().map(|c| c.claimed).collect();
        let refunded: Vec<i64> = self.carried.iter().map(|c| c.refunded).collect();
        let send_keys: Vec<Option<String>> =
            self.carried.iter().map(|c| c.send_key.clone()).collect();
        transaction
            .execute(
                "INSERT INTO archived_envelopes (envelope_id, archive_id, sender, status, \
                   total_cents, claim_count, claimed_cents, refunded_cents, send_key) \
                 SELECT id, $1, sender, status, total, claim_count, claimed, refunded, send_key \
                 FROM unnest($2::text[], $3::text[], $4::smallint[], $5::bigint[], $6::integer[], \
                   $7::bigint[], $8::bigint[], $9::text[]) \
                   AS x(id, sender, status, total, claim_count, claimed, refunded, send_key)",
                &[
                    &self.archive_id,
                    &ids,
                    &senders,
                    &statuses,
                    &totals,
                    &claim_counts,
                    &claimed,
                    &refunded,
                    &send_keys,
                ],
            )
            .await?;
        let mut deleted = Counts::default();
        // Children first; envelopes last.
        for table in [
            Table::Claims,
            Table::Transfers,
            Table::SendRequests,
            Table::Envelopes,
        ] {
            let rows =
                i64::try_from(transaction.execute(table.delete(), &[]).await?).unwrap_or(i64::MAX);
            if rows != exported.get(table) {
                return Err(ArchiveError::CountMismatch {
                    table: table.name(),
                    exported: exported.get(table),
                    deleted: rows,
                });
            }
            deleted.set(table, rows);
        }
        transaction.commit().await?;
        Ok(deleted)
    }
}

/// Where an archived envelope went, for Get's NOT_FOUND: `archived on
/// YYYY-MM-DD to MANIFEST` (the manifest's file name, which names the cell,
/// the date and the archive id; the directory is the operator's and stays in
/// the `archives` row), or `None` if the ID was never archived.
pub async fn whereabouts(
    client: &impl GenericClient,
    id: &EnvelopeId,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), a.manifest \
             FROM archived_envelopes x JOIN archives a ON a.id = x.archive_id \
             WHERE x.envelope_id = $1",
            &[&id.to_string()],
        )
        .await?;
    row.map(|row| {
        let on: String = row.try_get(0)?;
        let manifest: String = row.try_get(1)?;
        Ok(format!("archived on {on} to {manifest}"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_id_prefix_orders_like_the_mint_date() {
        let date = MintDate::new(2026, 1, 22).unwrap();
        assert_eq!(id_prefix(date), "260122");
        assert_eq!(iso(date), "2026-01-22");
        assert!("2601211000000000000123" < id_prefix(date).as_str());
        assert!("2601221000000000000123" > id_prefix(date).as_str());
    }

    #[test]
    fn settled_envelopes_must_add_up() {
        let ok = |status, claims, refunds| {
            inconsistency(Some(status), 100, claims, claims, refunds, 0, 1)
        };
        assert_eq!(ok(Status::Exhausted, (3, 100), (0, 0)), None);
        assert_eq!(ok(Status::Expired, (1, 40), (1, 60)), None);
        assert_eq!(ok(Status::Expired, (2, 100), (0, 0)), None);
        assert_eq!(ok(Status::Cancelled, (0, 0), (0, 0)), None);
        assert!(ok(Status::Exhausted, (3, 99), (0, 0)).is_some());
        assert!(ok(Status::Expired, (1, 40), (1, 59)).is_some());
        assert!(ok(Status::Expired, (1, 40), (2, 60)).is_some());
        assert!(ok(Status::Cancelled, (1, 10), (0, 0)).is_some());
        assert!(ok(Status::Active, (0, 0), (0, 0)).is_some());
        // A claim without its transfer, a refund to someone else, a missing Send row.
        assert!(
            inconsistency(
                Some(Status::Exhausted),
                100,
                (2, 100),
                (1, 60),
                (0, 0),
                0,
                1
            )
            .is_some()
        );
        assert!(
            inconsistency(Some(Status::Expired), 100, (1, 40), (1, 40), (1, 60), 1, 1).is_some()
        );
        assert!(
            inconsistency(
                Some(Status::Exhausted),
                100,
                (1, 100),
                (1, 100),
                (0, 0),
                0,
                0
            )
            .is_some()
        );
    }
}

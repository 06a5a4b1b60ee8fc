//! CellHistory: one cell's slice of a user's history, newest first, for the
//! router to merge across cells (DESIGN.md §4 History). Keyset pagination on
//! (time, envelope id): stable under concurrent inserts, no OFFSET scans.

use std::time::SystemTime;

use redcell_proto::v1 as pb;

use crate::{
    context::CellContext,
    db::DbError,
    error::CellError,
    request::{HistoryCursor, UserId},
    store,
};

/// Entries per slice when the router asks for 0, and the most it may ask for.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

const SENT: &str = concat!(
    "SELECT ",
    store::envelope_columns!(),
    " FROM envelopes \
     WHERE sender = $1 AND status IN (2, 3, 4) AND (created_at, id) < ($2, $3) \
     ORDER BY created_at DESC, id DESC LIMIT $4"
);
const RECEIVED: &str = "SELECT e.id, e.sender, e.kind, e.status, e.total_cents, e.count, e.remaining_cents, \
     e.remaining_count, e.greeting, e.recipients, e.seed, e.split_rule, e.version, e.created_at, \
     e.expires_at, c.user_id, c.amount_cents, c.seq, c.opened_at FROM claims c \
     JOIN envelopes e ON e.day = c.day AND e.id = c.envelope_id \
     WHERE c.user_id = $1 AND (c.opened_at, c.envelope_id) < ($2, $3) \
     ORDER BY c.opened_at DESC, c.envelope_id DESC LIMIT $4";

pub async fn cell_history<P>(
    cell: &CellContext<P>,
    request: pb::CellHistoryRequest,
) -> Result<pb::HistoryResponse, CellError> {
    let user = UserId::parse("user", &request.user)?;
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        limit if limit <= MAX_LIMIT => limit,
        limit => {
            return Err(CellError::invalid(
                "limit",
                format!("must be at most {MAX_LIMIT}, got {limit}"),
            ));
        }
    };
    // No cursor: everything. Bounded here, at the edge: an out-of-range
    // time would overflow the driver's encoding, a NUL would reach SQL.
    let HistoryCursor { before, before_id } =
        HistoryCursor::parse(request.before, &request.before_id)?;
    let direction = pb::HistoryDirection::try_from(request.direction)
        .map_err(|_| CellError::invalid("direction", "must be SENT or RECEIVED"))?;
    let query = match direction {
        pb::HistoryDirection::Sent => SENT,
        pb::HistoryDirection::Received => RECEIVED,
        pb::HistoryDirection::Unspecified => {
            return Err(CellError::invalid("direction", "must be SENT or RECEIVED"));
        }
    };
    let client = cell.pool.get().await.map_err(DbError::from)?;
    let rows = client
        .query(
            query,
            &[&user.as_str(), &before, &before_id, &i64::from(limit)],
        )
        .await
        .map_err(DbError::from)?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let envelope = store::envelope_from_row(row)?;
        let (claim, at) = if direction == pb::HistoryDirection::Received {
            let sequence: i32 = store::column(row, "seq")?;
            let opened_at: SystemTime = store::column(row, "opened_at")?;
            let claim = pb::Claim {
                user: store::column(row, "user_id")?,
                amount_cents: store::column(row, "amount_cents")?,
                sequence: u32::try_from(sequence).unwrap_or(0),
                opened_at: Some(opened_at.into()),
            };
            (Some(claim), opened_at)
        } else {
            (None, envelope.created_at)
        };
        entries.push(pb::HistoryEntry {
            envelope: Some(envelope.to_proto()),
            claim,
            at: Some(at.into()),
        });
    }
    Ok(pb::HistoryResponse {
        entries,
        next_page_token: String::new(),
        degraded: false,
    })
}

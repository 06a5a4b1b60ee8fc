//! CellHistory: one cell's slice of a user's history, newest first, for the
//! router to merge across cells (DESIGN.md §4 History). The op checks the
//! request and encodes the answer; the read itself is the store's
//! ([`store::history`]).

use redcell_proto::{page::PageSize, v1 as pb};

use crate::{
    context::CellContext,
    error::CellError,
    request::{HistoryCursor, UserId},
    store::{self, HistoryKind},
};

/// Entries per slice when the router asks for 0, and the most it may ask for.
const SLICE: PageSize = PageSize::new(50, 500);

pub async fn cell_history<P>(
    cell: &CellContext<P>,
    request: pb::CellHistoryRequest,
) -> Result<pb::HistoryResponse, CellError> {
    let user = UserId::parse("user", &request.user)?;
    let limit = SLICE
        .resolve(request.limit)
        .map_err(|error| CellError::invalid("limit", error.to_string()))?;
    // No cursor: everything. Bounded here, at the edge: an out-of-range
    // time would overflow the driver's encoding, a NUL would reach SQL.
    let cursor = HistoryCursor::parse(request.before, &request.before_id)?;
    let kind = match pb::HistoryDirection::try_from(request.direction) {
        Ok(pb::HistoryDirection::Sent) => HistoryKind::Sent,
        Ok(pb::HistoryDirection::Received) => HistoryKind::Received,
        Ok(pb::HistoryDirection::Unspecified) | Err(_) => {
            return Err(CellError::invalid("direction", "must be SENT or RECEIVED"));
        }
    };
    let entries = store::history(&cell.pool, user.as_str(), kind, &cursor, limit).await?;
    Ok(pb::HistoryResponse {
        entries: entries
            .into_iter()
            .map(|entry| pb::HistoryEntry {
                envelope: Some(entry.envelope.to_proto()),
                claim: entry.claim.map(|claim| claim.to_proto()),
                at: Some(entry.at.into()),
            })
            .collect(),
        next_page_token: String::new(),
        degraded: false,
    })
}

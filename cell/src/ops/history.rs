//! CellHistory: one cell's slice of a user's history, newest first, for the
//! router to merge across cells (DESIGN.md §4 History). It takes a checked
//! [`HistoryQuery`] (made at the service edge) and returns domain entries the
//! service encodes; the read itself is the store's ([`store::history`]).

use redcell_proto::page::PageSize;

use crate::{
    context::CellContext,
    error::CellError,
    request::HistoryQuery,
    store::{self, HistoryEntry},
};

/// Entries per slice when the router asks for 0, and the most it may ask for.
const SLICE: PageSize = PageSize::new(50, 500);

pub async fn cell_history<P>(
    cell: &CellContext<P>,
    query: HistoryQuery,
) -> Result<Vec<HistoryEntry>, CellError> {
    let limit = SLICE
        .resolve(query.limit)
        .map_err(|error| CellError::invalid("limit", error.to_string()))?;
    Ok(store::history(
        &cell.pool,
        query.user.as_str(),
        query.kind,
        &query.cursor,
        limit,
    )
    .await?)
}

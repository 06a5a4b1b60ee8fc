//! Open: take a share. Idempotent per (envelope, user): a replay returns the
//! first result.

use redcell_topology::EnvelopeId;

use crate::{
    context::{CellContext, OpenStrategy},
    error::CellError,
    request::UserId,
    rowlock,
    share::OpenResult,
};

pub async fn open<P>(
    cell: &CellContext<P>,
    user: UserId,
    envelope_id: EnvelopeId,
) -> Result<OpenResult, CellError> {
    let id = super::owned_envelope(cell, envelope_id)?;
    match cell.open_strategy {
        OpenStrategy::Lane => cell.lanes.open(id, user.to_string()).await,
        OpenStrategy::Rowlock => rowlock::open(&cell.pool, &id, user.as_str()).await,
    }
}

//! Grab: is a share left for me? Answered from the lane's memory; writes nothing.

use redcell_topology::EnvelopeId;

use crate::{
    context::{CellContext, OpenStrategy},
    error::CellError,
    request::UserId,
    rowlock,
    share::ShareStatus,
};

pub async fn grab<P>(
    cell: &CellContext<P>,
    user: UserId,
    envelope_id: EnvelopeId,
) -> Result<ShareStatus, CellError> {
    let id = super::owned_envelope(cell, envelope_id)?;
    match cell.open_strategy {
        OpenStrategy::Lane => cell.lanes.grab(id, user.to_string()).await,
        OpenStrategy::Rowlock => rowlock::grab(&cell.pool, &id, user.as_str()).await,
    }
}

//! One module per operation, each the same shape: parse (already done by
//! [`crate::request`]), apply against the cell, return a domain value that the
//! service converts back to the wire.

pub mod get;
pub mod grab;
pub mod history;
pub mod open;
pub mod send;

use redcell_topology::EnvelopeId;

use crate::{context::CellContext, error::CellError};

/// Checks that this cell owns `id` (parsed at the service edge).
pub fn owned_envelope<P>(cell: &CellContext<P>, id: EnvelopeId) -> Result<EnvelopeId, CellError> {
    let topology = cell.topology.load();
    let owner = topology
        .route(&id)
        .map_err(|error| CellError::invalid("envelope_id", error.to_string()))?;
    if owner.name != cell.cell {
        return Err(CellError::invalid(
            "envelope_id",
            format!(
                "envelope {id} belongs to cell {}, not {}",
                owner.name, cell.cell
            ),
        ));
    }
    Ok(id)
}

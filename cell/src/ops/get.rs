//! Get: an envelope and its claims in sequence order, paginated. Read from the
//! order DB (not the lane), so it shows only committed claims.
//!
//! `degrade.claims: off` (read from this request's topology snapshot) sheds
//! the claims query: the envelope alone, marked degraded. The router strips
//! the list too, from its own snapshot, so a client sees the switch as soon
//! as either side has reloaded.

use redcell_proto::page::PageSize;
use redcell_topology::ClaimsMode;

use crate::{
    context::CellContext,
    db::DbError,
    envelope::{Claim, Envelope},
    error::CellError,
    request::GetQuery,
    store,
};

/// Claims per page when the caller asks for 0, and the most it may ask for.
const PAGE: PageSize = PageSize::new(100, 500);

/// One page of an envelope's claims; the service converts it to the wire.
#[derive(Debug)]
pub struct EnvelopePage {
    pub envelope: Envelope,
    pub claims: Vec<Claim>,
    /// Empty on the last page.
    pub next_page_token: String,
    /// The claims were left out by `degrade.claims: off`.
    pub degraded: bool,
}

pub async fn get<P>(cell: &CellContext<P>, query: GetQuery) -> Result<EnvelopePage, CellError> {
    let id = super::owned_envelope(cell, query.envelope_id)?;
    let after = query.after;
    let limit = PAGE
        .resolve(query.page_size)
        .map_err(|error| CellError::invalid("page_size", error.to_string()))?;
    let client = cell.pool.get().await.map_err(DbError::from)?;
    let Some(envelope) = store::load_envelope(&**client, &id).await? else {
        // An archived ID is not found either, but the answer says where it went.
        let why = match crate::archive::whereabouts(&**client, &id)
            .await
            .map_err(DbError::from)?
        {
            Some(whereabouts) => format!("envelope {id} was {whereabouts}"),
            None => format!("envelope {id} not found"),
        };
        return Err(CellError::NotFound(why));
    };
    drop(client);
    if cell.topology.load().claims_mode() == ClaimsMode::Off {
        return Ok(EnvelopePage {
            envelope,
            claims: Vec::new(),
            next_page_token: String::new(),
            degraded: true,
        });
    }
    let claims = store::claims_page(&cell.pool, &id, after, limit).await?;
    let next_page_token = match claims.last() {
        Some(last) if claims.len() == limit as usize => last.sequence.to_string(),
        _ => String::new(),
    };
    Ok(EnvelopePage {
        envelope,
        claims,
        next_page_token,
        degraded: false,
    })
}

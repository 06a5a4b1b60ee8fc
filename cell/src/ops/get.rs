//! Get: an envelope and its claims in sequence order, paginated. Read from the
//! order DB (not the lane), so it shows only committed claims.

use redcell_proto::{page::PageSize, v1 as pb};

use crate::{context::CellContext, db::DbError, error::CellError, request, store};

/// Claims per page when the caller asks for 0, and the most it may ask for.
const PAGE: PageSize = PageSize::new(100, 500);

pub async fn get<P>(
    cell: &CellContext<P>,
    request: pb::GetRequest,
) -> Result<pb::GetResponse, CellError> {
    let id = super::owned_envelope(cell, request::parse_envelope_id(&request.envelope_id)?)?;
    let after = request::parse_page_token(&request.page_token)?;
    let limit = PAGE
        .resolve(request.page_size)
        .map_err(|error| CellError::invalid("page_size", error.to_string()))?;
    let client = cell.pool.get().await.map_err(DbError::from)?;
    let envelope = store::load_envelope(&**client, &id)
        .await?
        .ok_or_else(|| CellError::NotFound(format!("envelope {id} not found")))?;
    drop(client);
    let claims = store::claims_page(&cell.pool, &id, after, limit).await?;
    let next_page_token = match claims.last() {
        Some(last) if claims.len() == limit as usize => last.sequence.to_string(),
        _ => String::new(),
    };
    Ok(pb::GetResponse {
        envelope: Some(envelope.to_proto()),
        claims: claims.iter().map(|claim| claim.to_proto()).collect(),
        next_page_token,
    })
}

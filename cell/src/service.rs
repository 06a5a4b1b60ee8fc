//! The gRPC face of a logic server: `redcell.v1.RedEnvelope` as routers call it.
//! Handlers are three lines: take the caller from metadata, call the operation,
//! convert back. The caller's identity is the `x-redcell-user` metadata entry,
//! set by the router from the verified bearer token, never a request field.
//! The metadata names and the credential check are the router↔cell contract
//! in [`redcell_proto::internal`].

use std::sync::Arc;

use redcell_payments::Payments;
pub(crate) use redcell_proto::internal::RequireInternal;
use redcell_proto::{
    internal::{SUFFIX_METADATA, USER_METADATA},
    v1::{self as pb, cell_internal_server::CellInternal, red_envelope_server::RedEnvelope},
};
use redcell_topology::Suffix;
use tonic::{Request, Response, Status};

use crate::{
    context::CellContext,
    error::CellError,
    ops,
    request::{self, SendCommand, UserId},
};

#[derive(Debug)]
pub struct CellService<P> {
    context: Arc<CellContext<P>>,
}

impl<P> CellService<P> {
    pub fn new(context: Arc<CellContext<P>>) -> CellService<P> {
        CellService { context }
    }
}

fn caller<T>(request: &Request<T>) -> Result<UserId, CellError> {
    let value = request
        .metadata()
        .get(USER_METADATA)
        .ok_or(CellError::Unauthenticated("no x-redcell-user"))?;
    let text = value
        .to_str()
        .map_err(|_| CellError::invalid("user", "must be ASCII"))?;
    UserId::parse("user", text)
}

fn suffix<T>(request: &Request<T>) -> Result<Option<Suffix>, CellError> {
    let Some(value) = request.metadata().get(SUFFIX_METADATA) else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .ok()
        .filter(|text| text.len() == 3 && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse::<u16>().ok())
        .and_then(Suffix::new);
    parsed
        .map(Some)
        .ok_or_else(|| CellError::invalid("x-redcell-suffix", "must be three digits 000-999"))
}

#[tonic::async_trait]
impl<P: Payments> CellInternal for CellService<P> {
    async fn cell_history(
        &self,
        request: Request<pb::CellHistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let query = request::HistoryQuery::try_from(request.into_inner())?;
        let entries = ops::history::cell_history(&self.context, query).await?;
        Ok(Response::new(pb::HistoryResponse {
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
        }))
    }
}

#[tonic::async_trait]
impl<P: Payments> RedEnvelope for CellService<P> {
    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        self.context.metrics.count_send();
        let (user, suffix) = (caller(&request)?, suffix(&request)?);
        let command = SendCommand::parse(user, request.into_inner(), &self.context.limits)?;
        let envelope = ops::send::send(&self.context, command, suffix).await?;
        Ok(Response::new(pb::SendResponse {
            envelope: Some(envelope.to_proto()),
        }))
    }

    async fn grab(
        &self,
        request: Request<pb::GrabRequest>,
    ) -> Result<Response<pb::GrabResponse>, Status> {
        self.context.metrics.count_envelope_request();
        let user = caller(&request)?;
        let id = request::parse_envelope_id(&request.get_ref().envelope_id)?;
        let status = ops::grab::grab(&self.context, user, id).await?;
        Ok(Response::new(pb::GrabResponse {
            status: status.to_proto().into(),
        }))
    }

    async fn open(
        &self,
        request: Request<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenResponse>, Status> {
        self.context.metrics.count_envelope_request();
        let user = caller(&request)?;
        let id = request::parse_envelope_id(&request.get_ref().envelope_id)?;
        let result = ops::open::open(&self.context, user, id).await?;
        Ok(Response::new(result.to_proto()))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.context.metrics.count_envelope_request();
        caller(&request)?;
        let query = request::GetQuery::try_from(request.into_inner())?;
        let page = ops::get::get(&self.context, query).await?;
        Ok(Response::new(pb::GetResponse {
            envelope: Some(page.envelope.to_proto()),
            claims: page.claims.iter().map(|claim| claim.to_proto()).collect(),
            next_page_token: page.next_page_token,
            degraded: page.degraded,
        }))
    }

    async fn history(
        &self,
        _request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        Err(Status::unimplemented(
            "History is served by routers, which merge every cell's CellHistory",
        ))
    }
}

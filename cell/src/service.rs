//! The gRPC face of a logic server: `redcell.v1.RedEnvelope` as routers call it.
//! Handlers are three lines: take the caller from metadata, call the operation,
//! convert back. The caller's identity is the `x-redcell-user` metadata entry,
//! set by the router from the verified bearer token, never a request field.

use std::sync::Arc;

use redcell_payments::Payments;
use redcell_proto::v1::{
    self as pb, cell_internal_server::CellInternal, red_envelope_server::RedEnvelope,
};
use redcell_topology::Suffix;
use tonic::{Request, Response, Status};

use crate::{context::CellContext, error::CellError, ops, request::UserId};

/// Metadata entry naming the authenticated caller.
pub const USER_METADATA: &str = "x-redcell-user";
/// Metadata entry with the suffix the router drew from the mint pool (Send).
pub const SUFFIX_METADATA: &str = "x-redcell-suffix";
/// Metadata entry carrying the internal credential: cells serve routers only.
pub const INTERNAL_METADATA: &str = "x-redcell-internal";

/// Server-side check of the internal credential, in constant time. With no
/// token configured every call passes (local development only; `cell` requires
/// one).
#[derive(Debug, Clone)]
pub struct RequireInternal(Option<std::sync::Arc<str>>);

impl RequireInternal {
    pub fn new(token: Option<&str>) -> RequireInternal {
        RequireInternal(token.map(std::sync::Arc::from))
    }
}

impl tonic::service::Interceptor for RequireInternal {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get(INTERNAL_METADATA)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(presented, expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "cells serve routers only: missing or wrong internal credential",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A client-side interceptor that names the caller the way routers do
/// (`x-redcell-user`, plus the internal credential when one is set), for
/// routers, load generators and tests.
#[derive(Debug, Clone)]
pub struct AsUser {
    user: tonic::metadata::AsciiMetadataValue,
    internal: Option<tonic::metadata::AsciiMetadataValue>,
}

impl AsUser {
    /// `None` when `user` is not valid metadata (not visible ASCII).
    pub fn new(user: &str) -> Option<AsUser> {
        Some(AsUser {
            user: user.parse().ok()?,
            internal: None,
        })
    }

    /// Also present the internal credential; `None` if it is not visible ASCII.
    pub fn with_internal(self, token: &str) -> Option<AsUser> {
        Some(AsUser {
            internal: Some(token.parse().ok()?),
            ..self
        })
    }
}

impl tonic::service::Interceptor for AsUser {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(USER_METADATA, self.user.clone());
        if let Some(token) = &self.internal {
            request
                .metadata_mut()
                .insert(INTERNAL_METADATA, token.clone());
        }
        Ok(request)
    }
}

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
        Ok(Response::new(
            ops::history::cell_history(&self.context, request.into_inner()).await?,
        ))
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
        let envelope = ops::send::send(&self.context, user, suffix, request.into_inner()).await?;
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
        let status = ops::grab::grab(&self.context, user, &request.get_ref().envelope_id).await?;
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
        let result = ops::open::open(&self.context, user, &request.get_ref().envelope_id).await?;
        Ok(Response::new(result.to_proto()))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.context.metrics.count_envelope_request();
        caller(&request)?;
        Ok(Response::new(
            ops::get::get(&self.context, request.into_inner()).await?,
        ))
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

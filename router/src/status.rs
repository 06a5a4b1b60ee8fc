//! `RouterOps.RouterStatus`: which topology this router serves right now,
//! for `cellctl status`. Served on the router's own port next to
//! `RedEnvelope`, but only to callers presenting the internal credential
//! (the one the router presents to cells): clients holding a user token get
//! `UNAUTHENTICATED`, so nothing about the deployment leaks to them.

use std::sync::Arc;

use crate::topology::TopologyHandle;
use redcell_proto::{
    internal::RequireInternal,
    v1::{
        RouterStatusRequest, RouterStatusResponse, TopologyServed,
        router_ops_server::{RouterOps, RouterOpsServer},
    },
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

/// Serves `RouterOps` over the router's live topology.
#[derive(Debug)]
pub struct RouterOpsService {
    topology: Arc<TopologyHandle>,
}

impl RouterOpsService {
    /// The service, gated by `internal_token`.
    pub fn server(
        topology: Arc<TopologyHandle>,
        internal_token: &str,
    ) -> InterceptedService<RouterOpsServer<RouterOpsService>, RequireInternal> {
        RouterOpsServer::with_interceptor(
            RouterOpsService { topology },
            RequireInternal::new(Some(internal_token)),
        )
    }
}

#[tonic::async_trait]
impl RouterOps for RouterOpsService {
    async fn router_status(
        &self,
        _request: Request<RouterStatusRequest>,
    ) -> Result<Response<RouterStatusResponse>, Status> {
        let topology = self.topology.load();
        Ok(Response::new(RouterStatusResponse {
            topology: Some(TopologyServed {
                fingerprint: topology.fingerprint(),
                minting_epoch: u32::from(topology.minting_epoch().get()),
                reloads: self.topology.reloads(),
                refused_reloads: self.topology.refused(),
            }),
        }))
    }
}

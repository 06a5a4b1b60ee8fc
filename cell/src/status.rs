//! `CellOps.CellStatus`: the live numbers of this process that `cellctl
//! status` shows and no database holds (lanes open, the topology it serves).
//! Read-only, answered from memory; behind the internal credential like
//! `CellInternal`.

use std::sync::Arc;

use redcell_payments::Payments;
use redcell_proto::v1::{
    CellStatusRequest, CellStatusResponse, TopologyServed, cell_ops_server::CellOps,
};
use tonic::{Request, Response, Status};

use crate::context::CellContext;

/// Serves `CellOps` over the cell's shared context.
pub(crate) struct CellOpsService<P> {
    context: Arc<CellContext<P>>,
}

impl<P> CellOpsService<P> {
    pub(crate) fn new(context: Arc<CellContext<P>>) -> CellOpsService<P> {
        CellOpsService { context }
    }
}

#[tonic::async_trait]
impl<P: Payments> CellOps for CellOpsService<P> {
    async fn cell_status(
        &self,
        _request: Request<CellStatusRequest>,
    ) -> Result<Response<CellStatusResponse>, Status> {
        let handle = &self.context.topology;
        // The topology the order DB has caught up with, not the handle's
        // latest: failover trusts a reported fingerprint to mean "no new
        // transaction on the old DB" (`crate::db::follow`).
        let topology = self.context.order_db.served();
        Ok(Response::new(CellStatusResponse {
            cell: self.context.cell.clone(),
            lanes_open: u64::try_from(self.context.lanes.len()).unwrap_or(u64::MAX),
            topology: Some(TopologyServed {
                fingerprint: topology.fingerprint(),
                minting_epoch: u32::from(topology.minting_epoch().get()),
                reloads: handle.reloads(),
                refused_reloads: handle.refused(),
            }),
        }))
    }
}

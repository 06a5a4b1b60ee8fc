//! What one router measures (DESIGN §9), on its own registry (tests run
//! several routers in one process). Every series carries the constant label
//! `region` (the router's home region); `main` serves the registry on
//! `--admin-listen`.
//!
//! Labels are bounded by the topology or by code: a cell's name, a server's
//! address, a region, a gRPC method and code, an attempt's outcome. Never a
//! user or an envelope.

use std::{sync::Arc, time::Duration};

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};
use redcell_lifecycle::{
    metrics::{LATENCY_BUCKETS, Metrics, TopologyMetrics},
    rpc::RpcMetrics,
};
use redcell_topology::{CellStatus, RegionDigit, Topology};

use crate::{directory::Directory, topology::TopologyHandle};

#[derive(Debug)]
pub struct RouterMetrics {
    registry: Arc<Metrics>,
    /// Requests by method and code, latency (the gRPC layer records them).
    pub rpc: Arc<RpcMetrics>,
    /// Calls refused by the per-user rate limit.
    pub(crate) rate_limited: IntCounter,
    cell_call: HistogramVec,
    cell_attempts: IntCounterVec,
    cell_servers_serving: IntGaugeVec,
    cell_servers: IntGaugeVec,
    cell_in_mint_pool: IntGaugeVec,
    mint_pool_cells: IntGaugeVec,
    mint_pool_suffixes: IntGaugeVec,
    topology: TopologyMetrics,
}

impl Default for RouterMetrics {
    fn default() -> RouterMetrics {
        RouterMetrics::new("")
    }
}

impl RouterMetrics {
    /// The metrics of a router of home `region` (its constant label).
    pub fn new(region: &str) -> RouterMetrics {
        let registry = Arc::new(Metrics::new(&[("region", region)]));
        let m = &registry;
        let shed = m.counter(
            "redcell_router_shed_total",
            "Calls refused at once because the router had --max-in-flight calls in flight (RESOURCE_EXHAUSTED)",
        );
        RouterMetrics {
            // Only the shedder fails a call below the handlers.
            rpc: Arc::new(RpcMetrics::new(m, "router", Some(shed))),
            rate_limited: m.counter(
                "redcell_router_rate_limited_total",
                "Calls refused by the per-user rate limit (RESOURCE_EXHAUSTED)",
            ),
            cell_call: m.histogram_vec(
                "redcell_router_cell_call_duration_seconds",
                "One attempt of a call to a cell's server, by cell",
                &["cell"],
                LATENCY_BUCKETS,
            ),
            cell_attempts: m.counter_vec(
                "redcell_router_cell_attempts_total",
                "Attempts of calls to cells, by cell and outcome (ok, answered: the handler refused, transport, timeout)",
                &["cell", "outcome"],
            ),
            cell_servers_serving: m.gauge_vec(
                "redcell_router_cell_servers_serving",
                "A cell's servers this router considers SERVING (health checks, ejections)",
                &["cell"],
            ),
            cell_servers: m.gauge_vec(
                "redcell_router_cell_servers",
                "A cell's servers in the topology",
                &["cell"],
            ),
            cell_in_mint_pool: m.gauge_vec(
                "redcell_router_cell_in_mint_pool",
                "For each active cell: 1 when new envelopes may go to it from this router, 0 when its health keeps it out",
                &["cell"],
            ),
            mint_pool_cells: m.gauge_vec(
                "redcell_router_mint_pool_cells",
                "Cells new envelopes of a sender region are minted in, as this router sees their health",
                &["pool_region"],
            ),
            mint_pool_suffixes: m.gauge_vec(
                "redcell_router_mint_pool_suffixes",
                "Suffixes new envelopes of a sender region may get, as this router sees the cells' health",
                &["pool_region"],
            ),
            topology: TopologyMetrics::new(m, "router"),
            registry,
        }
    }

    /// The registry the admin endpoint serves.
    pub fn registry(&self) -> &Arc<Metrics> {
        &self.registry
    }

    /// One attempt on one of `cell`'s servers.
    pub(crate) fn observe_attempt(&self, cell: &str, outcome: &str, took: Duration) {
        self.cell_call
            .with_label_values(&[cell])
            .observe(took.as_secs_f64());
        self.cell_attempts.with_label_values(&[cell, outcome]).inc();
    }

    /// Per-cell health, the mint pools and the topology, as this router sees
    /// them now (after a health round). Series of cells that left the
    /// topology are dropped.
    pub(crate) fn sample(
        &self,
        topology: &Topology,
        handle: &TopologyHandle,
        directory: &Directory,
    ) {
        self.cell_servers_serving.reset();
        self.cell_servers.reset();
        self.cell_in_mint_pool.reset();
        for cell in topology.cells() {
            let serving = cell
                .servers
                .iter()
                .filter(|server| directory.is_serving(server))
                .count();
            self.cell_servers_serving
                .with_label_values(&[cell.name.as_str()])
                .set(gauge(serving));
            self.cell_servers
                .with_label_values(&[cell.name.as_str()])
                .set(gauge(cell.servers.len()));
            if cell.status == CellStatus::Active {
                self.cell_in_mint_pool
                    .with_label_values(&[cell.name.as_str()])
                    .set(i64::from(directory.usable_for_new(topology, &cell.name)));
            }
        }
        self.mint_pool_cells.reset();
        self.mint_pool_suffixes.reset();
        for (index, region) in topology.regions().iter().enumerate() {
            let Some(digit) = u8::try_from(index + 1).ok().and_then(RegionDigit::new) else {
                continue;
            };
            let pool = topology
                .mint_pool_where(digit, |cell| directory.usable_for_new(topology, &cell.name));
            let (cells, suffixes) = pool.map_or((0, 0), |pool| (pool.cells.len(), pool.total));
            self.mint_pool_cells
                .with_label_values(&[region.as_str()])
                .set(gauge(cells));
            self.mint_pool_suffixes
                .with_label_values(&[region.as_str()])
                .set(i64::from(suffixes));
        }
        self.topology.observe(handle);
    }
}

fn gauge(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

//! What every operation of a cell needs, built once at startup.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use redcell_lifecycle::TopologyHandle;

use crate::{db::OrderDb, ids::IdMinter, lane::Lanes, metrics::CellMetrics, request::Limits};

/// How Opens are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OpenStrategy {
    /// Per-envelope lanes with batched commits (the product).
    Lane,
    /// One transaction per Open with `SELECT ... FOR UPDATE` (benchmarks only).
    Rowlock,
}

/// Shared state of one logic server.
#[derive(Debug)]
pub struct CellContext<P> {
    pub cell: String,
    /// The live topology; a request reads one snapshot (`topology.load()`) and
    /// asks it every topology question it has.
    pub topology: Arc<TopologyHandle>,
    pub pool: Pool,
    /// Where `pool` connects, and the topology it has caught up with (what
    /// `CellStatus` reports).
    pub order_db: Arc<OrderDb>,
    pub payments: P,
    pub lanes: Lanes,
    pub minter: IdMinter,
    pub limits: Limits,
    pub envelope_ttl: Duration,
    pub open_strategy: OpenStrategy,
    pub metrics: Arc<CellMetrics>,
}

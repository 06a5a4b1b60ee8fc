//! The logic server's configuration: flags (with environment fallbacks) parsed
//! by clap, then validated against the topology into a [`CellConfig`] before any
//! port is bound. A bad value exits with a message naming its flag.
//!
//! The topology is live: [`CellConfig::topology`] is a handle that the server
//! reloads from `--topology` (file watch every `--topology-reload-ms`, and
//! SIGHUP), so an expansion or a failed cell reaches a running cell without a
//! restart (DESIGN.md §3 hot reload).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use redcell_lifecycle::TopologyHandle;
use redcell_topology::Topology;

use crate::{
    context::OpenStrategy,
    lane::{CommitterKind, LaneConfig, MergeConfig},
    metrics::CellMetrics,
    request::Limits,
};

/// A redcell logic server: one cell's envelopes, lanes and workers.
#[derive(Debug, Clone, Parser)]
#[command(name = "cell", version, about)]
pub struct CellArgs {
    /// The topology file; reread when its contents change and on SIGHUP.
    #[arg(long, env = "REDCELL_TOPOLOGY", default_value = "cells.yaml")]
    pub topology: PathBuf,
    /// Milliseconds between checks of the topology file for changes.
    #[arg(long, env = "REDCELL_TOPOLOGY_RELOAD_MS", default_value_t = 1_000)]
    pub topology_reload_ms: u64,
    /// This server's cell (a name in the topology).
    #[arg(long, env = "REDCELL_CELL")]
    pub cell: String,
    /// Address to listen on for gRPC.
    #[arg(long, env = "REDCELL_LISTEN")]
    pub listen: SocketAddr,
    /// The order DB; defaults to the cell's `db` in the topology, followed
    /// when the file changes. Given here (to keep credentials out of
    /// cells.yaml), it pins the server to this DB: a rewrite of the cell's
    /// `db` is then refused until a restart (`cell::db::follow`).
    #[arg(long, env = "REDCELL_DB_DSN")]
    pub db_dsn: Option<String>,
    /// The ledger (the payment system's stand-in).
    #[arg(long, env = "REDCELL_LEDGER_DSN")]
    pub ledger_dsn: String,
    /// Order DB connections of this server.
    #[arg(long, env = "REDCELL_DB_POOL", default_value_t = 16)]
    pub db_pool: usize,
    /// Ledger connections of this server.
    #[arg(long, env = "REDCELL_LEDGER_POOL", default_value_t = 8)]
    pub ledger_pool: usize,
    /// Seconds until an envelope expires and its remainder is refunded.
    #[arg(long, env = "REDCELL_ENVELOPE_TTL_SECS", default_value_t = 86_400)]
    pub envelope_ttl_secs: u64,
    /// How Opens are executed; `rowlock` exists for benchmarks only.
    #[arg(
        long,
        env = "REDCELL_OPEN_STRATEGY",
        value_enum,
        default_value = "lane"
    )]
    pub open_strategy: OpenStrategy,
    /// Requests queued per envelope before RESOURCE_EXHAUSTED.
    #[arg(long, env = "REDCELL_LANE_QUEUE_CAP", default_value_t = 4096)]
    pub lane_queue_cap: usize,
    /// Most Opens per batch commit.
    #[arg(long, env = "REDCELL_LANE_BATCH_MAX", default_value_t = 512)]
    pub lane_batch_max: usize,
    /// Seconds after which an idle lane is dropped.
    #[arg(long, env = "REDCELL_LANE_IDLE_SECS", default_value_t = 30)]
    pub lane_idle_secs: u64,
    /// How lanes' batches reach the order DB: `per-lane` (a transaction per
    /// lane batch) or `merged` (many lanes' batches in one transaction, one
    /// WAL flush for all; DESIGN §5 cell-level committer).
    #[arg(long, env = "REDCELL_COMMITTER", value_enum, default_value = "merged")]
    pub committer: CommitterKind,
    /// `merged`: most lane batches (envelopes) in one transaction.
    #[arg(long, env = "REDCELL_MERGE_MAX_ENVELOPES", default_value_t = 256)]
    pub merge_max_envelopes: usize,
    /// `merged`: merged transactions in flight at once (each holds one of
    /// the `--db-pool` connections).
    #[arg(long, env = "REDCELL_MERGE_IN_FLIGHT", default_value_t = 4)]
    pub merge_in_flight: usize,
    /// `merged`: microseconds a group waits for more batches (0: none, only
    /// natural group commit).
    #[arg(long, env = "REDCELL_MERGE_LINGER_US", default_value_t = 0)]
    pub merge_linger_us: u64,
    /// Most shares per envelope; at most 2147483647 ([`MAX_COUNT_LIMIT`]).
    #[arg(long, env = "REDCELL_MAX_COUNT", default_value_t = 500)]
    pub max_count: u32,
    /// Largest envelope, in cents; at most 4611686018427387903
    /// ([`MAX_TOTAL_CENTS_LIMIT`]).
    #[arg(long, env = "REDCELL_MAX_TOTAL_CENTS", default_value_t = 2_000_000)]
    pub max_total_cents: i64,
    /// Milliseconds between worker passes when idle.
    #[arg(long, env = "REDCELL_WORKER_INTERVAL_MS", default_value_t = 500)]
    pub worker_interval_ms: u64,
    /// Seconds a Send may stay PENDING_PAYMENT before recovery resolves it.
    #[arg(long, env = "REDCELL_RECOVERY_GRACE_SECS", default_value_t = 10)]
    pub recovery_grace_secs: u64,
    /// Largest request message (bytes) this server decodes; a bigger one is
    /// refused `OUT_OF_RANGE` before any handler runs. Keep it at least the
    /// routers' `--max-message-bytes`: a router forwards its client's message.
    #[arg(long, env = "REDCELL_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,
    /// Credential routers present in `x-redcell-internal`; calls without it are
    /// refused (DESIGN §6: cells serve routers only).
    #[arg(long, env = "REDCELL_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: String,
    /// Logs, traces and the admin (`/metrics`) port.
    #[command(flatten)]
    pub telemetry: redcell_lifecycle::telemetry::TelemetryArgs,
}

/// The largest `--max-count`: a share count, a remaining count and a share's
/// sequence are stored in `integer` (i32) columns, so a count above `i32::MAX`
/// could not be written as asked (it was clamped on the way in).
pub const MAX_COUNT_LIMIT: u32 = i32::MAX as u32;

/// The largest `--max-total-cents`: the lucky split computes twice the
/// remaining cents (`2 * m / n`, DESIGN §5), and every remaining amount is at
/// most the total, so a total of at most `i64::MAX / 2` keeps `2 * m` inside
/// i64 wherever it is computed (an overflow panics a lane in a debug build and
/// wraps to a negative bound in a release one). Every other sum of one
/// envelope's cents (shares, refund, remainder) is at most its total.
pub const MAX_TOTAL_CENTS_LIMIT: i64 = i64::MAX / 2;

/// Worker cadence.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub interval: Duration,
    pub recovery_grace: Duration,
    pub health_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            interval: Duration::from_millis(500),
            recovery_grace: Duration::from_secs(10),
            health_interval: Duration::from_millis(500),
        }
    }
}

/// A validated configuration of one logic server.
#[derive(Debug, Clone)]
pub struct CellConfig {
    pub cell: String,
    /// The serving topology. [`CellConfig::new`] makes it fixed; a handle with
    /// a file ([`TopologyHandle::new`], as [`CellConfig::from_args`] makes it)
    /// is watched by the server, which reads one snapshot per request. Servers
    /// given clones of one config share the handle.
    pub topology: Arc<TopologyHandle>,
    /// How often the server checks the topology file for changes.
    pub topology_reload: Duration,
    /// `--db-dsn`: pins the order DB. `None`: the server connects to the
    /// cell's `db` in the serving topology and follows it when the file
    /// changes ([`crate::db::follow`]).
    pub db_dsn: Option<String>,
    pub db_pool: usize,
    pub limits: Limits,
    pub envelope_ttl: Duration,
    pub lanes: LaneConfig,
    /// Which committer the lanes use, and how `merged` groups batches.
    pub committer: CommitterKind,
    pub merge: MergeConfig,
    pub open_strategy: OpenStrategy,
    pub workers: WorkerConfig,
    /// Largest request message decoded (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// The credential routers must present; `None` serves anyone (development).
    pub internal_token: Option<String>,
    /// This server's counters (give each server its own).
    pub metrics: Arc<CellMetrics>,
}

impl CellConfig {
    /// Defaults for `cell` of a fixed `topology` (tests and embedders adjust
    /// fields, e.g. put a [`TopologyHandle`] with a file in `topology`).
    pub fn new(cell: &str, topology: Arc<Topology>) -> Result<CellConfig, String> {
        if topology.cell(cell).is_none() {
            return Err(unknown_cell(cell, &topology));
        }
        Ok(CellConfig {
            cell: cell.to_owned(),
            topology: Arc::new(TopologyHandle::fixed(topology)),
            topology_reload: Duration::from_secs(1),
            db_dsn: None,
            db_pool: 16,
            limits: Limits::default(),
            envelope_ttl: Duration::from_secs(86_400),
            lanes: LaneConfig::default(),
            committer: CommitterKind::Merged,
            merge: MergeConfig::default(),
            open_strategy: OpenStrategy::Lane,
            workers: WorkerConfig::default(),
            max_message_bytes: 64 * 1024,
            internal_token: None,
            metrics: Arc::new(CellMetrics::new(cell)),
        })
    }

    /// Validates flags against the topology read from `args.topology`; every
    /// problem, each naming its flag. The topology is then reloaded from that
    /// file.
    pub fn from_args(args: &CellArgs, topology: Topology) -> Result<CellConfig, Vec<String>> {
        let mut errors = Vec::new();
        let topology = Arc::new(topology);
        let mut config = match CellConfig::new(&args.cell, topology.clone()) {
            Ok(config) => Some(config),
            Err(error) => {
                errors.push(error);
                None
            }
        };
        let positive = [
            ("--db-pool", args.db_pool as u64),
            ("--ledger-pool", args.ledger_pool as u64),
            ("--envelope-ttl-secs", args.envelope_ttl_secs),
            ("--lane-queue-cap", args.lane_queue_cap as u64),
            ("--lane-batch-max", args.lane_batch_max as u64),
            ("--lane-idle-secs", args.lane_idle_secs),
            ("--merge-max-envelopes", args.merge_max_envelopes as u64),
            ("--merge-in-flight", args.merge_in_flight as u64),
            ("--max-count", u64::from(args.max_count)),
            ("--worker-interval-ms", args.worker_interval_ms),
            ("--topology-reload-ms", args.topology_reload_ms),
            ("--max-message-bytes", args.max_message_bytes as u64),
        ];
        for (flag, value) in positive {
            if value == 0 {
                errors.push(format!("{flag}: must be at least 1"));
            }
        }
        if args.max_count > MAX_COUNT_LIMIT {
            errors.push(format!(
                "--max-count: must be at most {MAX_COUNT_LIMIT} (shares are counted in 32-bit columns), got {}",
                args.max_count
            ));
        }
        if args.max_total_cents < 1 {
            errors.push(format!(
                "--max-total-cents: must be at least 1, got {}",
                args.max_total_cents
            ));
        }
        if args.max_total_cents > MAX_TOTAL_CENTS_LIMIT {
            errors.push(format!(
                "--max-total-cents: must be at most {MAX_TOTAL_CENTS_LIMIT} (twice a total must fit in 64 bits), got {}",
                args.max_total_cents
            ));
        }
        if args.merge_in_flight >= args.db_pool && args.committer == CommitterKind::Merged {
            errors.push(format!(
                "--merge-in-flight: must be below --db-pool ({}) so lanes can still load envelopes, got {}",
                args.db_pool, args.merge_in_flight
            ));
        }
        if let Some(dsn) = &args.db_dsn
            && dsn.parse::<tokio_postgres::Config>().is_err()
        {
            errors.push("--db-dsn: malformed PostgreSQL DSN".to_owned());
        }
        let token = &args.internal_token;
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            errors
                .push("--internal-token: must be at least 16 visible ASCII characters".to_owned());
        }
        if args.ledger_dsn.parse::<tokio_postgres::Config>().is_err() {
            errors.push("--ledger-dsn: malformed PostgreSQL DSN".to_owned());
        }
        let Some(config) = config.as_mut().filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        config.topology = Arc::new(TopologyHandle::new(args.topology.clone(), topology));
        config.topology_reload = Duration::from_millis(args.topology_reload_ms);
        config.db_dsn.clone_from(&args.db_dsn);
        config.db_pool = args.db_pool;
        config.limits = Limits {
            max_count: args.max_count,
            max_total_cents: args.max_total_cents,
            ..Limits::default()
        };
        config.envelope_ttl = Duration::from_secs(args.envelope_ttl_secs);
        config.lanes = LaneConfig {
            queue_cap: args.lane_queue_cap,
            batch_max: args.lane_batch_max,
            idle: Duration::from_secs(args.lane_idle_secs),
        };
        config.committer = args.committer;
        config.merge = MergeConfig {
            max_envelopes: args.merge_max_envelopes,
            in_flight: args.merge_in_flight,
            linger: Duration::from_micros(args.merge_linger_us),
        };
        config.open_strategy = args.open_strategy;
        config.internal_token = Some(args.internal_token.clone());
        config.max_message_bytes = args.max_message_bytes;
        config.workers = WorkerConfig {
            interval: Duration::from_millis(args.worker_interval_ms),
            recovery_grace: Duration::from_secs(args.recovery_grace_secs),
            ..WorkerConfig::default()
        };
        Ok(config.clone())
    }
}

impl CellConfig {
    /// The order DB to connect to under `topology`: `--db-dsn`, else the
    /// cell's `db` in it (`None`: the cell is not in it).
    pub fn order_db_dsn(&self, topology: &Topology) -> Option<String> {
        match &self.db_dsn {
            Some(dsn) => Some(dsn.clone()),
            None => topology.cell(&self.cell).map(|found| found.db.clone()),
        }
    }
}

fn unknown_cell(cell: &str, topology: &Topology) -> String {
    let names: Vec<&str> = topology
        .cells()
        .iter()
        .map(|cell| cell.name.as_str())
        .collect();
    format!(
        "--cell: unknown cell {cell:?} (cells: {})",
        names.join(", ")
    )
}

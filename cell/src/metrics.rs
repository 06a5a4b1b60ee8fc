//! What one logic server measures (DESIGN §9), on its own registry: tests run
//! several servers in one process and each counts only its own work. Every
//! series carries the constant label `cell`; `server.rs` serves the registry
//! on `--admin-listen`.
//!
//! Labels are bounded by construction: a DB transaction's kind, a worker's
//! name, a ledger operation, a gRPC method and code. Never a user, an envelope
//! or a key.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus::{HistogramVec, IntCounterVec, IntGauge};
use redcell_lifecycle::{
    metrics::{LATENCY_BUCKETS, Metrics, TopologyMetrics},
    rpc::RpcMetrics,
};

/// Opens per lane batch: 1 up to the largest `--lane-batch-max` worth seeing.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Debug)]
pub struct CellMetrics {
    registry: Arc<Metrics>,
    /// Requests by method and code, latency (the gRPC layer records them).
    pub rpc: Arc<RpcMetrics>,
    /// Grab, Open and Get calls that reached this server's operations.
    envelope_requests: AtomicU64,
    /// Send calls.
    sends: AtomicU64,
    pub(crate) lanes_open: IntGauge,
    pub(crate) lane_queue_depth: IntGauge,
    pub(crate) lane_batch_size: HistogramVec,
    pub(crate) lane_batch_wait: HistogramVec,
    pub(crate) db_transaction: HistogramVec,
    pub(crate) db_pool_connections: IntGauge,
    pub(crate) db_pool_idle: IntGauge,
    pub(crate) db_pool_waiting: IntGauge,
    pub(crate) db_up: IntGauge,
    pub(crate) outbox_backlog: IntGauge,
    pub(crate) settlement_lag: prometheus::Gauge,
    pub(crate) pending_sends: IntGauge,
    pub(crate) pending_send_age: prometheus::Gauge,
    pub(crate) recovery_grace: prometheus::Gauge,
    pub(crate) worker_passes: IntCounterVec,
    pub(crate) worker_pass_duration: HistogramVec,
    pub(crate) ledger_call: HistogramVec,
    pub(crate) ledger_errors: IntCounterVec,
    /// The topology in force and its rereads.
    pub(crate) topology: TopologyMetrics,
}

impl Default for CellMetrics {
    fn default() -> CellMetrics {
        CellMetrics::new("")
    }
}

impl CellMetrics {
    /// The metrics of one server of `cell` (its constant `cell` label).
    pub fn new(cell: &str) -> CellMetrics {
        let registry = Arc::new(Metrics::new(&[("cell", cell)]));
        let m = &registry;
        CellMetrics {
            rpc: Arc::new(RpcMetrics::new(m, "cell", None)),
            envelope_requests: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            lanes_open: m.gauge(
                "redcell_cell_lanes_open",
                "Per-envelope lanes alive on this server",
            ),
            lane_queue_depth: m.gauge(
                "redcell_cell_lane_queue_depth",
                "Opens queued in this server's lanes, not yet taken into a batch",
            ),
            lane_batch_size: m.histogram_vec(
                "redcell_cell_lane_batch_size",
                "Opens committed per lane batch",
                &[],
                BATCH_SIZE_BUCKETS,
            ),
            lane_batch_wait: m.histogram_vec(
                "redcell_cell_lane_batch_wait_seconds",
                "How long the oldest Open of a batch waited in its lane before the batch began",
                &[],
                LATENCY_BUCKETS,
            ),
            db_transaction: m.histogram_vec(
                "redcell_cell_db_transaction_duration_seconds",
                "Order-DB transactions, from the pooled connection to commit, by kind",
                &["kind"],
                LATENCY_BUCKETS,
            ),
            db_pool_connections: m.gauge(
                "redcell_cell_db_pool_connections",
                "Order-DB connections the pool holds",
            ),
            db_pool_idle: m.gauge(
                "redcell_cell_db_pool_idle_connections",
                "Order-DB connections in the pool not lent out",
            ),
            db_pool_waiting: m.gauge(
                "redcell_cell_db_pool_waiting",
                "Tasks waiting for a pooled order-DB connection (pool exhausted when above 0)",
            ),
            db_up: m.gauge(
                "redcell_cell_db_up",
                "1 when the last health check reached the order DB with the expected schema",
            ),
            outbox_backlog: m.gauge(
                "redcell_cell_outbox_backlog",
                "Transfers in the settlement outbox not yet credited",
            ),
            settlement_lag: float_gauge(
                m,
                "redcell_cell_settlement_lag_seconds",
                "Age of the oldest transfer not yet credited (0 when none)",
            ),
            pending_sends: m.gauge(
                "redcell_cell_pending_sends",
                "Envelopes in PENDING_PAYMENT (the Send's debit not yet known)",
            ),
            pending_send_age: float_gauge(
                m,
                "redcell_cell_pending_send_oldest_age_seconds",
                "Age of the oldest envelope in PENDING_PAYMENT (0 when none)",
            ),
            recovery_grace: float_gauge(
                m,
                "redcell_cell_recovery_grace_seconds",
                "--recovery-grace-secs: how long a Send may stay PENDING_PAYMENT before recovery resolves it",
            ),
            worker_passes: m.counter_vec(
                "redcell_cell_worker_passes_total",
                "Worker batches run, by worker and result (ok, idle, error)",
                &["worker", "result"],
            ),
            worker_pass_duration: m.histogram_vec(
                "redcell_cell_worker_pass_duration_seconds",
                "Time one worker batch took, by worker",
                &["worker"],
                LATENCY_BUCKETS,
            ),
            ledger_call: m.histogram_vec(
                "redcell_cell_ledger_call_duration_seconds",
                "Calls to the payment system, by operation",
                &["op"],
                LATENCY_BUCKETS,
            ),
            ledger_errors: m.counter_vec(
                "redcell_cell_ledger_errors_total",
                "Calls to the payment system that failed, by operation",
                &["op"],
            ),
            topology: TopologyMetrics::new(m, "cell"),
            registry,
        }
    }

    /// The registry the admin endpoint serves.
    pub fn registry(&self) -> &Arc<Metrics> {
        &self.registry
    }

    pub fn envelope_requests(&self) -> u64 {
        self.envelope_requests.load(Ordering::Relaxed)
    }

    pub fn sends(&self) -> u64 {
        self.sends.load(Ordering::Relaxed)
    }

    pub(crate) fn count_envelope_request(&self) {
        self.envelope_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_send(&self) {
        self.sends.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn observe_transaction(&self, kind: &str, took: Duration) {
        self.db_transaction
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn observe_ledger<T, E>(&self, op: &str, took: Duration, result: &Result<T, E>) {
        self.ledger_call
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
        if result.is_err() {
            self.ledger_errors.with_label_values(&[op]).inc();
        }
    }
}

fn float_gauge(metrics: &Metrics, name: &str, help: &str) -> prometheus::Gauge {
    metrics.float_gauge(name, help)
}

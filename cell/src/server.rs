//! Running one logic server: `run(listener, config, payments, shutdown)`, the
//! same function for `main` and for tests (which bind port 0).
//!
//! The topology is live: when `config.topology` has a file, a tracked task
//! rereads it when it changes and on SIGHUP (the handler is installed before
//! the port serves), and every request reads its own snapshot. After each
//! reread the order DB pool follows the cell's `db` ([`db::follow`]).
//!
//! Shutdown order: stop accepting and drain in-flight gRPC calls (each waits for
//! its lane's batch to commit), then cancel the lanes and workers and wait for
//! every tracked task, with a deadline.

use std::{future::Future, sync::Arc, time::Duration};

use redcell_payments::Payments;
use redcell_proto::v1::{
    cell_internal_server::CellInternalServer, cell_ops_server::CellOpsServer,
    red_envelope_server::RedEnvelopeServer,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{service::interceptor::InterceptedService, transport::server::TcpIncoming};

use crate::{
    clock::DbClock,
    config::CellConfig,
    context::CellContext,
    db, health,
    ids::IdMinter,
    lane::{self, Lanes},
    measured::Measured,
    service::{CellService, RequireInternal},
    workers::{self, expiry, gauges, recovery, settlement},
};
use redcell_lifecycle::rpc::RpcLayer;

/// The least time between two samples of the gauges ([`gauges`]).
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// How long tracked tasks get to finish after the server stopped.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// HTTP/2 limits sized for a router's traffic: a cell's clients are a few
/// routers, each multiplexing every call it sends this server on one
/// connection.
///
/// * Streams in flight per connection: far above what one router sends one
///   server (it is capped by the router's `--max-in-flight`); beyond it, the
///   router's calls wait for a slot rather than fail.
/// * Streams the peer reset before this server accepted them: h2's default of
///   20 is a guard against rapid-reset floods from the internet. A router
///   resets every call it stopped waiting for (its client's deadline, an
///   attempt moved to the other server), and after a stall of this server
///   (a GC-like pause, SIGSTOP, a full disk) those resets arrive together: at
///   20 the server sent GOAWAY and dropped the router's one connection, failing
///   every call on it. Twice the streams in flight bounds what a router can
///   legitimately have reset while the server was not accepting.
/// * Keepalive: a router that vanished without closing its connection is
///   found and the connection's resources freed.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 4_096;
pub const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 2 * HTTP2_MAX_CONCURRENT_STREAMS as usize;
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("order DB: {0}")]
    Database(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` completes, then drains.
pub async fn run<P: Payments>(
    listener: TcpListener,
    config: CellConfig,
    payments: P,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let topology = config.topology.load();
    let dsn = config.order_db_dsn(&topology).ok_or_else(|| {
        RunError::Database(format!("cell {} is not in the topology", config.cell))
    })?;
    let order_db = db::OrderDb::new(&config.cell, &dsn, config.db_dsn.is_some(), topology)
        .map_err(RunError::Database)?;
    let pool = order_db.pool(config.db_pool).map_err(RunError::Database)?;
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    // The DB's time as the health probe measures it (lanes judge expiry by it).
    let db_clock = Arc::new(DbClock::default());
    let committer = lane::start_committer(
        config.committer,
        config.merge,
        &pool,
        &tracker,
        cancel.child_token(),
    );
    let lanes = Lanes::with_committer(
        pool.clone(),
        committer,
        config.lanes,
        tracker.clone(),
        cancel.child_token(),
    )
    .observed_by(config.metrics.clone())
    .timed_by(db_clock.clone());
    let payments = Measured::new(payments, config.metrics.clone());
    let context = Arc::new(CellContext {
        cell: config.cell.clone(),
        topology: config.topology.clone(),
        pool: pool.clone(),
        order_db: order_db.clone(),
        payments,
        lanes,
        minter: IdMinter::new(pool.clone(), config.cell.clone()),
        limits: config.limits,
        envelope_ttl: config.envelope_ttl,
        open_strategy: config.open_strategy,
        metrics: config.metrics.clone(),
    });

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(health::SERVICE, tonic_health::ServingStatus::NotServing)
        .await;
    tracker.spawn(health::watch_database(
        pool.clone(),
        reporter,
        config.metrics.db_up.clone(),
        config.workers.health_interval,
        db_clock,
        cancel.child_token(),
    ));
    spawn_workers(&tracker, &cancel, &context, &config);
    if config.topology.path().is_some() {
        tracker.spawn(db::follow::watch(
            config.topology.clone(),
            order_db,
            pool.clone(),
            config.topology_reload,
            cancel.child_token(),
        ));
    }

    tracing::info!(cell = %config.cell, address = ?listener.local_addr().ok(), "serving");
    let internal = RequireInternal::new(config.internal_token.as_deref());
    if config.internal_token.is_none() {
        tracing::warn!("no internal token: this cell serves any caller (development only)");
    }
    // Every service decodes at most this much per request (tonic's default
    // is 4 MiB): the credential is checked before the body is read, and the
    // limit bounds what even a router can make this server buffer.
    let max_message = config.max_message_bytes;
    let served = tonic::transport::Server::builder()
        .layer(RpcLayer::new(config.metrics.rpc.clone()))
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(health_service.max_decoding_message_size(max_message))
        .add_service(InterceptedService::new(
            RedEnvelopeServer::new(CellService::new(context.clone()))
                .max_decoding_message_size(max_message),
            internal.clone(),
        ))
        .add_service(InterceptedService::new(
            CellInternalServer::new(CellService::new(context.clone()))
                .max_decoding_message_size(max_message),
            internal.clone(),
        ))
        .add_service(InterceptedService::new(
            CellOpsServer::new(crate::status::CellOpsService::new(context.clone()))
                .max_decoding_message_size(max_message),
            internal,
        ))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await;

    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks still running after the drain deadline");
    }
    tracing::info!(cell = %config.cell, "stopped");
    served.map_err(RunError::from)
}

fn spawn_workers<P: Payments>(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    context: &Arc<CellContext<Measured<P>>>,
    config: &CellConfig,
) {
    let interval = config.workers.interval;
    let metrics = &context.metrics;
    let sampled = context.clone();
    tracker.spawn(workers::run_loop(
        "gauges",
        // Scrapes come every few seconds; a faster worker cadence (tests run
        // at 50 ms) must not turn the sampler into load on the order DB.
        interval.max(GAUGE_INTERVAL),
        cancel.child_token(),
        metrics.clone(),
        move || {
            let context = sampled.clone();
            async move { gauges::sample(&context).await }
        },
    ));
    let settle = context.clone();
    tracker.spawn(workers::run_loop(
        "settlement",
        interval,
        cancel.child_token(),
        metrics.clone(),
        move || {
            let context = settle.clone();
            async move {
                settlement::settle_batch(&context.pool, &context.payments)
                    .await
                    .map_err(|error| error.to_string())
            }
        },
    ));
    let expire = context.clone();
    tracker.spawn(workers::run_loop(
        "expiry",
        interval,
        cancel.child_token(),
        metrics.clone(),
        move || {
            let context = expire.clone();
            async move {
                expiry::expire_batch(&context.pool)
                    .await
                    .map_err(|error| error.to_string())
            }
        },
    ));
    let recover = context.clone();
    let grace = config.workers.recovery_grace;
    metrics.recovery_grace.set(grace.as_secs_f64());
    tracker.spawn(workers::run_loop(
        "recovery",
        interval,
        cancel.child_token(),
        metrics.clone(),
        move || {
            let context = recover.clone();
            async move { recovery::recover_batch(&context.pool, &context.payments, grace).await }
        },
    ));
}

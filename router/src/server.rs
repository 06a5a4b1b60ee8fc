//! Running a router: `run(listener, config, shutdown)`, the same for `main` and
//! tests. Background tasks (topology watch, health checks, rate-limiter
//! housekeeping) are tracked and cancelled on shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use redcell_lifecycle::rpc::RpcLayer;
use redcell_proto::v1::red_envelope_server::RedEnvelopeServer;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::TcpIncoming;
use tower::{
    BoxError, ServiceBuilder,
    layer::util::{Identity, Stack},
    timeout::{TimeoutLayer, error::Elapsed},
    util::MapErrLayer,
};

use crate::{
    config::RouterConfig,
    connections::Admission,
    directory::Directory,
    history::{History, PageTokenKey},
    limits::{UserRateLimiter, global_limit_layer},
    metrics::RouterMetrics,
    service::RouterService,
    topology::TopologyHandle,
};

/// How long tracked tasks get after the server stopped.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The largest header list (all metadata of one call, HTTP/2 accounting) the
/// router accepts. hyper's default, 16 KiB, answered a 20 KB bearer token
/// with HTTP 431, which clients see as `UNKNOWN`; up to this size the
/// authenticator refuses an oversized token as `UNAUTHENTICATED`
/// ([`crate::auth::MAX_TOKEN_BYTES`]). Beyond it, HTTP/2 itself refuses the
/// call (431) before any of the router's code runs.
pub const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 128 * 1024;

/// Streams a client may reset before the router accepted them before the
/// router sends GOAWAY (h2's rapid-reset guard, default 20): a client that
/// abandons its calls on its deadline while the router is briefly busy must
/// not lose its connection, and the calls on it.
pub const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 4_096;

/// TCP keepalive probes on accepted connections: a peer whose host vanished
/// (no FIN, no RST) is found by the kernel even when HTTP/2 is quiet.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// `--request-timeout-ms` as a layer inside the global limit (a call that
/// runs out releases its slot): the handler's future, which decodes the
/// request body, is cut off after `limit`. The timeout is answered
/// `DEADLINE_EXCEEDED` like every other deadline of the router, rather than
/// tonic's own server timeout, which answers `CANCELLED` (the router never
/// answers that: README).
fn request_timeout(limit: Duration) -> RequestTimeout {
    ServiceBuilder::new()
        .map_err(timeout_as_status as fn(BoxError) -> BoxError)
        .timeout(limit)
}

/// The layer [`request_timeout`] builds: the timeout inside, the mapping of
/// its error outside.
type RequestTimeout =
    ServiceBuilder<Stack<TimeoutLayer, Stack<MapErrLayer<fn(BoxError) -> BoxError>, Identity>>>;

fn timeout_as_status(error: BoxError) -> BoxError {
    if error.is::<Elapsed>() {
        Box::new(tonic::Status::deadline_exceeded(
            "the call ran past the router's request timeout",
        ))
    } else {
        error
    }
}

/// A started router's shared parts, for tests and operators' introspection.
#[derive(Debug, Clone)]
pub struct RouterHandle {
    pub topology: Arc<TopologyHandle>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<RouterMetrics>,
}

/// Builds the router's parts (exposed so tests can watch them) and serves until
/// `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: RouterConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (handle, serve) = start(listener, config, shutdown);
    drop(handle);
    serve.await
}

/// Like [`run`], returning the handle first and the serving future second.
pub fn start(
    listener: TcpListener,
    config: RouterConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> (
    RouterHandle,
    impl Future<Output = Result<(), tonic::transport::Error>>,
) {
    let topology = Arc::new(TopologyHandle::new(
        config.topology_path.clone(),
        config.topology.clone(),
    ));
    let directory = Arc::new(
        Directory::new(config.cell_timeout, config.suspect_for).observed_by(config.metrics.clone()),
    );
    let limiter = Arc::new(UserRateLimiter::new(
        config.rate_per_user,
        config.rate_burst,
    ));
    let handle = RouterHandle {
        topology: topology.clone(),
        directory: directory.clone(),
        metrics: config.metrics.clone(),
    };
    let service = RouterService {
        topology: topology.clone(),
        directory: directory.clone(),
        auth: config.auth.clone(),
        limiter: limiter.clone(),
        internal_token: Arc::from(config.internal_token.as_str()),
        region: config.region,
        cell_timeout: config.cell_timeout,
        history: History::new(PageTokenKey::derive(&config.internal_token)),
        metrics: config.metrics.clone(),
    };
    let serve = async move {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        // One health round before serving, so the first Sends have a pool.
        directory
            .check_all(
                &topology.load(),
                config.health_interval.max(Duration::from_millis(200)),
            )
            .await;
        tracker.spawn(
            topology
                .clone()
                .watch(config.reload_interval, cancel.child_token()),
        );
        tracker.spawn(directory.clone().watch(
            topology.clone(),
            config.health_interval,
            cancel.child_token(),
        ));
        tracker.spawn({
            let cancel = cancel.child_token();
            async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(60)) => limiter.shrink(),
                    }
                }
            }
        });
        // The per-cell health and mint-pool gauges, after each health round.
        tracker.spawn({
            let (cancel, metrics) = (cancel.child_token(), config.metrics.clone());
            let (topology, directory) = (topology.clone(), directory.clone());
            async move {
                loop {
                    metrics.sample(&topology.load(), &topology, &directory);
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(config.health_interval) => {}
                    }
                }
            }
        });
        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(
                "redcell.v1.RedEnvelope",
                tonic_health::ServingStatus::Serving,
            )
            .await;
        tracing::info!(address = ?listener.local_addr().ok(), "router serving");
        let limits = config.connection_limits;
        let incoming = Admission::new(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(TCP_KEEPALIVE)),
            limits.max_connections,
            limits.handshake_timeout,
        );
        let served = tonic::transport::Server::builder()
            .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
            .http2_max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS))
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(limits.keepalive))
            .http2_keepalive_timeout(Some(limits.keepalive))
            .layer(RpcLayer::new(config.metrics.rpc.clone()))
            .layer(global_limit_layer(config.max_in_flight))
            .layer(request_timeout(limits.request_timeout))
            .add_service(health_service.max_decoding_message_size(limits.max_message_bytes))
            .add_service(
                RedEnvelopeServer::new(service).max_decoding_message_size(limits.max_message_bytes),
            )
            .add_service(crate::status::RouterOpsService::server(
                topology.clone(),
                &config.internal_token,
            ))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        cancel.cancel();
        tracker.close();
        if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("router tasks still running after the drain deadline");
        }
        served
    };
    (handle, serve)
}

//! The router's configuration: flags with environment fallbacks, validated into
//! a [`RouterConfig`] before any port is bound; every problem names its flag.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use redcell_lifecycle::TopologyFileError;
use redcell_topology::{RegionDigit, Topology};

use crate::{
    auth::{Authenticator, VerifierKey},
    metrics::RouterMetrics,
};

/// The redcell router: clients' only entry point.
#[derive(Debug, Clone, Parser)]
#[command(name = "router", version, about)]
pub struct RouterArgs {
    /// The topology file (watched; SIGHUP forces a reread).
    #[arg(long, env = "REDCELL_TOPOLOGY", default_value = "cells.yaml")]
    pub topology: PathBuf,
    /// Address to listen on for gRPC.
    #[arg(long, env = "REDCELL_ROUTER_LISTEN")]
    pub listen: SocketAddr,
    /// This router's region: where new envelopes of callers who name none go.
    #[arg(long, env = "REDCELL_REGION")]
    pub region: String,
    /// HS256 key file for bearer tokens (development).
    #[arg(
        long,
        env = "REDCELL_JWT_HS256_KEY_FILE",
        conflicts_with = "jwt_rs256_public_key_file"
    )]
    pub jwt_hs256_key_file: Option<PathBuf>,
    /// RS256 public key (PEM) for bearer tokens.
    #[arg(long, env = "REDCELL_JWT_RS256_PUBLIC_KEY_FILE")]
    pub jwt_rs256_public_key_file: Option<PathBuf>,
    /// Credential presented to cells (`x-redcell-internal`).
    #[arg(long, env = "REDCELL_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: String,
    /// Requests per second per user (token bucket refill).
    #[arg(long, env = "REDCELL_ROUTER_RATE_PER_USER", default_value_t = 50)]
    pub rate_per_user: u32,
    /// Burst per user (token bucket size).
    #[arg(long, env = "REDCELL_ROUTER_RATE_BURST", default_value_t = 100)]
    pub rate_burst: u32,
    /// Requests in flight in this router before load shedding.
    #[arg(long, env = "REDCELL_ROUTER_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Deadline of one client call (all its calls to cells, retries included),
    /// in milliseconds; a shorter `grpc-timeout` from the client wins.
    #[arg(long, env = "REDCELL_ROUTER_CELL_TIMEOUT_MS", default_value_t = 2_000)]
    pub cell_timeout_ms: u64,
    /// Milliseconds between health checks of every logic server.
    #[arg(long, env = "REDCELL_ROUTER_HEALTH_INTERVAL_MS", default_value_t = 500)]
    pub health_interval_ms: u64,
    /// Milliseconds between checks of the topology file.
    #[arg(
        long,
        env = "REDCELL_ROUTER_RELOAD_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub reload_interval_ms: u64,
    /// Largest request message (bytes, after decompression) the router
    /// decodes; a bigger one is refused `OUT_OF_RANGE` before any handler
    /// runs. The largest valid request (a Send with a 64-character greeting)
    /// is well under 1 KiB.
    #[arg(long, env = "REDCELL_ROUTER_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,
    /// TCP connections open at once; beyond it the router stops accepting
    /// until one closes (new ones wait in the kernel's backlog).
    #[arg(long, env = "REDCELL_ROUTER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Milliseconds a new connection gets to send the HTTP/2 preface before
    /// it is closed (slow-loris guard).
    #[arg(
        long,
        env = "REDCELL_ROUTER_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub handshake_timeout_ms: u64,
    /// Milliseconds one call may take end to end, receiving its request body
    /// included (a trickled body is cut off); at least `--cell-timeout-ms`.
    #[arg(
        long,
        env = "REDCELL_ROUTER_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub request_timeout_ms: u64,
    /// HTTP/2 streams (calls) in flight on one connection; further calls wait
    /// in the client for a free stream.
    #[arg(
        long,
        env = "REDCELL_ROUTER_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1_024
    )]
    pub max_streams_per_connection: u32,
    /// Milliseconds between HTTP/2 keepalive pings on an idle connection; a
    /// peer that does not answer within the same time is disconnected.
    #[arg(long, env = "REDCELL_ROUTER_KEEPALIVE_MS", default_value_t = 30_000)]
    pub keepalive_ms: u64,
    /// Logs, traces and the admin (`/metrics`) port.
    #[command(flatten)]
    pub telemetry: redcell_lifecycle::telemetry::TelemetryArgs,
}

/// A validated router configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub topology_path: PathBuf,
    pub topology: Topology,
    pub region: RegionDigit,
    pub auth: Authenticator,
    pub internal_token: String,
    pub rate_per_user: NonZeroU32,
    pub rate_burst: NonZeroU32,
    pub max_in_flight: usize,
    pub cell_timeout: Duration,
    pub health_interval: Duration,
    pub reload_interval: Duration,
    /// How long a cell that failed a Send stays out of the mint pool.
    pub suspect_for: Duration,
    /// What a hostile client can hold: message size, connections, handshake
    /// and request time, streams per connection, keepalive.
    pub connection_limits: ConnectionLimits,
    /// This router's metrics (give each router its own).
    pub metrics: Arc<RouterMetrics>,
}

impl RouterConfig {
    /// Defaults around the required parts (tests and embedders adjust fields).
    pub fn new(
        topology_path: PathBuf,
        topology: Topology,
        region: RegionDigit,
        auth: Authenticator,
        internal_token: String,
    ) -> RouterConfig {
        let metrics = Arc::new(RouterMetrics::new(
            topology.region_name(region).unwrap_or_default(),
        ));
        RouterConfig {
            metrics,
            topology_path,
            topology,
            region,
            auth,
            internal_token,
            rate_per_user: NonZeroU32::MIN.saturating_add(49),
            rate_burst: NonZeroU32::MIN.saturating_add(99),
            max_in_flight: 10_000,
            cell_timeout: Duration::from_secs(2),
            health_interval: Duration::from_millis(500),
            reload_interval: Duration::from_secs(1),
            suspect_for: Duration::from_secs(5),
            connection_limits: ConnectionLimits::default(),
        }
    }

    /// Validates flags; every problem, each naming its flag.
    pub fn from_args(args: &RouterArgs) -> Result<RouterConfig, Vec<String>> {
        let mut errors = Vec::new();
        let topology =
            redcell_lifecycle::read_topology(&args.topology).map_err(|error| match error {
                TopologyFileError::Invalid { errors, .. } => errors
                    .iter()
                    .map(|error| format!("--topology: {}: {error}", args.topology.display()))
                    .collect::<Vec<_>>()
                    .join("\n"),
                read => format!("--topology: {read}"),
            });
        let region = topology
            .as_ref()
            .ok()
            .and_then(|topology| topology.region_digit(&args.region));
        if let Ok(topology) = &topology
            && region.is_none()
        {
            errors.push(format!(
                "--region: unknown region {:?} (regions: {})",
                args.region,
                topology.regions().join(", ")
            ));
        }
        let key = match (&args.jwt_hs256_key_file, &args.jwt_rs256_public_key_file) {
            (Some(path), None) => std::fs::read(path)
                .map(VerifierKey::Hs256)
                .map_err(|error| {
                    format!(
                        "--jwt-hs256-key-file: cannot read {}: {error}",
                        path.display()
                    )
                }),
            (None, Some(path)) => std::fs::read(path)
                .map(VerifierKey::Rs256Pem)
                .map_err(|error| {
                    format!(
                        "--jwt-rs256-public-key-file: cannot read {}: {error}",
                        path.display()
                    )
                }),
            _ => Err(
                "--jwt-hs256-key-file or --jwt-rs256-public-key-file: exactly one is required"
                    .to_owned(),
            ),
        };
        let auth = key.and_then(|key| {
            Authenticator::new(key).map_err(|error| format!("bearer token key: {error}"))
        });
        if args.internal_token.len() < 16
            || !args.internal_token.bytes().all(|b| b.is_ascii_graphic())
        {
            errors
                .push("--internal-token: must be at least 16 visible ASCII characters".to_owned());
        }
        let rate = NonZeroU32::new(args.rate_per_user);
        let burst = NonZeroU32::new(args.rate_burst);
        if rate.is_none() {
            errors.push("--rate-per-user: must be at least 1".to_owned());
        }
        if burst.is_none() {
            errors.push("--rate-burst: must be at least 1".to_owned());
        }
        for (flag, value) in [
            ("--max-in-flight", args.max_in_flight as u64),
            ("--cell-timeout-ms", args.cell_timeout_ms),
            ("--health-interval-ms", args.health_interval_ms),
            ("--reload-interval-ms", args.reload_interval_ms),
            ("--max-message-bytes", args.max_message_bytes as u64),
            ("--max-connections", args.max_connections as u64),
            ("--handshake-timeout-ms", args.handshake_timeout_ms),
            ("--request-timeout-ms", args.request_timeout_ms),
            (
                "--max-streams-per-connection",
                u64::from(args.max_streams_per_connection),
            ),
            ("--keepalive-ms", args.keepalive_ms),
        ] {
            if value == 0 {
                errors.push(format!("{flag}: must be at least 1"));
            }
        }
        if args.request_timeout_ms < args.cell_timeout_ms {
            errors.push(format!(
                "--request-timeout-ms: must be at least --cell-timeout-ms ({})",
                args.cell_timeout_ms
            ));
        }
        let topology = topology.map_err(|error| errors.insert(0, error));
        let auth = auth.map_err(|error| errors.push(error));
        match (topology, region, auth, rate, burst) {
            (Ok(topology), Some(region), Ok(auth), Some(rate), Some(burst))
                if errors.is_empty() =>
            {
                let mut config = RouterConfig::new(
                    args.topology.clone(),
                    topology,
                    region,
                    auth,
                    args.internal_token.clone(),
                );
                config.rate_per_user = rate;
                config.rate_burst = burst;
                config.max_in_flight = args.max_in_flight;
                config.cell_timeout = Duration::from_millis(args.cell_timeout_ms);
                config.health_interval = Duration::from_millis(args.health_interval_ms);
                config.reload_interval = Duration::from_millis(args.reload_interval_ms);
                config.connection_limits = ConnectionLimits {
                    max_message_bytes: args.max_message_bytes,
                    max_connections: args.max_connections,
                    handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
                    request_timeout: Duration::from_millis(args.request_timeout_ms),
                    max_streams_per_connection: args.max_streams_per_connection,
                    keepalive: Duration::from_millis(args.keepalive_ms),
                };
                Ok(config)
            }
            _ => Err(errors),
        }
    }
}

/// The router's guards against hostile clients below the request level (see
/// [`crate::connections`] and README's operator guide). Every field is at
/// least 1 in a validated config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest request message decoded (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// TCP connections open at once (`--max-connections`).
    pub max_connections: usize,
    /// Time to receive the HTTP/2 preface (`--handshake-timeout-ms`).
    pub handshake_timeout: Duration,
    /// One call end to end, request body included (`--request-timeout-ms`).
    pub request_timeout: Duration,
    /// HTTP/2 streams in flight per connection (`--max-streams-per-connection`).
    pub max_streams_per_connection: u32,
    /// HTTP/2 keepalive ping interval and timeout (`--keepalive-ms`).
    pub keepalive: Duration,
}

impl Default for ConnectionLimits {
    /// The flags' defaults.
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_message_bytes: 64 * 1024,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_streams_per_connection: 1_024,
            keepalive: Duration::from_secs(30),
        }
    }
}

//! The edges every redcell server binary shares, so `main` stays thin and the
//! binaries behave alike: logs are structured (`tracing`), JSON when asked, to
//! stderr, filtered by `RUST_LOG` (default `info`); SIGINT and SIGTERM begin a
//! graceful shutdown.
//!
//! **Owns**: what every server binary does alike at its edges: logging and
//! trace export ([`telemetry`]), the metrics registry and the admin port that
//! serves it ([`metrics`], [`admin`]), per-call request metrics and spans
//! ([`rpc`]), the shutdown signal, and the live topology (the one reader of a
//! topology file, reloads validated before they swap). **Never**: handles a
//! request's content, opens a database, or serves a topology that did not
//! validate.

pub mod admin;
pub mod metrics;
pub mod rpc;
pub mod telemetry;
pub mod topology;

pub use topology::{Reload, TopologyFileError, TopologyHandle, read_topology};

/// Completes on SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}

//! The edges every redcell server binary shares, so `main` stays thin and the
//! binaries behave alike: logs are structured (`tracing`), JSON when asked, to
//! stderr, filtered by `RUST_LOG` (default `info`); SIGINT and SIGTERM begin a
//! graceful shutdown.
//!
//! **Owns**: what every server binary does alike at its edges: logging, the
//! shutdown signal, and the live topology (the one reader of a topology
//! file, reloads validated before they swap). **Never**: handles a request,
//! opens a port or a database, or serves a topology that did not validate.

pub mod topology;

pub use topology::{Reload, TopologyFileError, TopologyHandle, read_topology};

/// Installs the global `tracing` subscriber. Call once, first thing in `main`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

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

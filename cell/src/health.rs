//! Health of a logic server as the gRPC health service reports it: `SERVING`
//! while its order DB answers, `NOT_SERVING` while it does not (DESIGN.md §6:
//! routers take a cell whose DB is down out of the mint pool).

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

/// The service name routers check (the client API this server serves).
pub const SERVICE: &str = "redcell.v1.RedEnvelope";

/// Probes the order DB every `interval` and publishes the result, for the
/// overall server ("") and for [`SERVICE`], until cancelled. Ends NOT_SERVING.
pub async fn watch_database(
    pool: Pool,
    reporter: HealthReporter,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut last = None;
    loop {
        let healthy = probe(&pool, interval).await;
        if last != Some(healthy) {
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if healthy {
                tracing::info!("order database reachable: SERVING");
            } else {
                tracing::warn!("order database unreachable: NOT_SERVING");
            }
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE, status).await;
            last = Some(healthy);
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
}

async fn probe(pool: &Pool, timeout: Duration) -> bool {
    let check = async {
        let client = pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(
        tokio::time::timeout(timeout.max(Duration::from_millis(500)), check).await,
        Ok(Some(_))
    )
}

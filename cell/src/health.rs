//! Health of a logic server as the gRPC health service reports it: `SERVING`
//! while its order DB answers, `NOT_SERVING` while it does not (DESIGN.md §6:
//! routers take a cell whose DB is down out of the mint pool).
//!
//! Before the first `SERVING` the order DB must also prove it is the one this
//! binary was built for ([`db::check_schema`]: exactly the embedded
//! migrations, UTF8). A database that answers with another schema keeps the
//! server `NOT_SERVING`, logged as an error naming what to do, instead of a
//! server that reports healthy and then fails every request. Once verified,
//! the probe is a plain `SELECT 1`: a migration applied under running servers
//! (the upgrade order is migrate, then roll the servers) does not take the
//! cell out of service.
//!
//! Every healthy probe also reads the DB's clock (`clock_timestamp()`) into
//! the server's [`DbClock`]: the lanes judge expiry from memory by the DB's
//! time, not by this server's clock ([`crate::clock`]).

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    clock::{self, DbClock},
    db::{self, SchemaCheck},
};

/// The service name routers check (the client API this server serves).
pub const SERVICE: &str = "redcell.v1.RedEnvelope";

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Healthy,
    Unreachable,
    WrongSchema(String),
}

/// Probes the order DB every `interval` and publishes the result, for the
/// overall server ("") and for [`SERVICE`], until cancelled; each healthy
/// probe sets `clock`. Ends NOT_SERVING.
pub async fn watch_database(
    pool: Pool,
    reporter: HealthReporter,
    up: prometheus::IntGauge,
    interval: Duration,
    clock: Arc<DbClock>,
    cancel: CancellationToken,
) {
    let mut last = None;
    let mut verified = false;
    loop {
        let found = probe(&pool, interval, verified, &clock).await;
        verified |= found == Probe::Healthy;
        up.set(i64::from(found == Probe::Healthy));
        if last.as_ref() != Some(&found) {
            let status = match &found {
                Probe::Healthy => {
                    tracing::info!("order database reachable: SERVING");
                    ServingStatus::Serving
                }
                Probe::Unreachable => {
                    tracing::warn!("order database unreachable: NOT_SERVING");
                    ServingStatus::NotServing
                }
                Probe::WrongSchema(problem) => {
                    tracing::error!(
                        %problem,
                        "order database is not the one this binary expects: NOT_SERVING until it is \
                         (run `cellctl migrate --cell <this cell>`, or deploy the matching binary)"
                    );
                    ServingStatus::NotServing
                }
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE, status).await;
            last = Some(found);
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    up.set(0);
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
}

async fn probe(pool: &Pool, timeout: Duration, verified: bool, clock: &DbClock) -> Probe {
    let check = async {
        if !verified {
            match db::check_schema(pool).await {
                SchemaCheck::Current => {}
                SchemaCheck::Mismatch(problem) => return Probe::WrongSchema(problem),
                SchemaCheck::Unreachable(_) => return Probe::Unreachable,
            }
        }
        let Ok(client) = pool.get().await else {
            return Probe::Unreachable;
        };
        let sent = clock::wall();
        match client.query_one("SELECT clock_timestamp()", &[]).await {
            Ok(row) => {
                if let Ok(db_now) = row.try_get(0) {
                    clock.observe(db_now, sent, clock::wall());
                }
                Probe::Healthy
            }
            Err(_) => Probe::Unreachable,
        }
    };
    tokio::time::timeout(timeout.max(Duration::from_millis(500)), check)
        .await
        .unwrap_or(Probe::Unreachable)
}

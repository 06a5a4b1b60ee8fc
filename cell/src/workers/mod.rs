//! Background workers of every logic server: settlement, expiry, recovery.
//!
//! Each runs a loop of "do one bounded batch; if there was nothing to do, wait
//! for the interval or the cancellation". All servers of a cell run all of them:
//! `FOR UPDATE SKIP LOCKED` and single-statement transitions let them share the
//! work without a leader, and a crashed server's work is simply picked up.

pub mod expiry;
pub mod recovery;
pub mod settlement;

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

/// Runs `batch` until cancelled: again at once while it finds work, after
/// `interval` when it found none or failed (failures are logged by `name`).
pub async fn run_loop<F, Fut>(
    name: &'static str,
    interval: Duration,
    cancel: CancellationToken,
    mut batch: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, String>>,
{
    loop {
        let idle = match batch().await {
            Ok(0) => true,
            Ok(done) => {
                tracing::debug!(worker = name, done, "batch done");
                false
            }
            Err(error) => {
                tracing::warn!(worker = name, %error, "batch failed; retrying after the interval");
                true
            }
        };
        if idle {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        } else if cancel.is_cancelled() {
            return;
        }
    }
}

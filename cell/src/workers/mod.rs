//! Background workers of every logic server: settlement, expiry, recovery.
//!
//! Each runs a loop of "do one bounded batch; if there was nothing to do, wait
//! for the interval or the cancellation". All servers of a cell run all of them:
//! `FOR UPDATE SKIP LOCKED` and single-statement transitions let them share the
//! work without a leader, and a crashed server's work is simply picked up.

pub mod expiry;
pub mod gauges;
pub mod recovery;
pub mod settlement;

use std::{future::Future, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::CellMetrics;

/// Runs `batch` until cancelled: again at once while it finds work, after
/// `interval` when it found none or failed (failures are logged by `name`).
/// Each pass is a `worker_pass` span and counts in
/// `redcell_cell_worker_passes_total{worker, result}` (ok: did work; idle:
/// found none; error) and in `redcell_cell_worker_pass_duration_seconds`.
///
/// Which passes are exported as traces: those right after a pass that did
/// work (a busy streak, as during a peak) are info-level spans; a pass after
/// an idle one, and every pass of the gauge sampler, is a debug-level span,
/// never exported. Otherwise every idle server would export a trace per
/// worker per interval saying nothing. The work a first busy pass does still
/// shows up (its ledger calls are spans of their own).
pub async fn run_loop<F, Fut>(
    name: &'static str,
    interval: Duration,
    cancel: CancellationToken,
    metrics: Arc<CellMetrics>,
    mut batch: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, String>>,
{
    let mut busy = false;
    loop {
        let started = std::time::Instant::now();
        let span = if name == "gauges" || !busy {
            tracing::debug_span!("worker_pass", worker = name, done = tracing::field::Empty)
        } else {
            tracing::info_span!("worker_pass", worker = name, done = tracing::field::Empty)
        };
        let outcome = batch().instrument(span.clone()).await;
        let result = match &outcome {
            Ok(0) => "idle",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        metrics
            .worker_passes
            .with_label_values(&[name, result])
            .inc();
        metrics
            .worker_pass_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        busy = result == "ok";
        let idle = match outcome {
            Ok(0) => true,
            Ok(done) => {
                span.record("done", done);
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

//! The load engine: one phase of calls, closed-loop or open-loop.
//!
//! - **Closed loop** (`--concurrency N`): N workers, each issuing its next
//!   call when the previous one answers; latency from the call's start.
//!   Finds the maximum rate, but hides queueing (a slow server slows the
//!   offered load with it).
//! - **Open loop** (`--rate R`): call i is *intended* at `start + i/R`
//!   whatever the answers do, each on its own task; latency is measured
//!   from the intended time, so a stall is charged to every call that should
//!   have been sent during it (coordinated omission corrected, as wrk2 does).
//!   A schedule may have several segments of different rates (the burst).
//!
//! The workload is a generator `Slot -> Option<Op>` called in slot order; it
//! ends the phase by returning `None` (or the phase's duration runs out).

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use tonic::Status;

use crate::stats::{Outcome, PhaseSummary, Recorder};

/// One call to make.
pub struct Op {
    pub label: &'static str,
    pub call: Pin<Box<dyn Future<Output = Result<Outcome, Status>> + Send>>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op").field("label", &self.label).finish()
    }
}

/// Where in the phase a call falls.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// 0, 1, 2, ... in issue order.
    pub index: u64,
    /// The schedule segment (open loop); 0 in a closed loop.
    pub segment: usize,
}

/// How calls are paced.
#[derive(Debug, Clone)]
pub enum Pacing {
    /// N calls in flight, each next one when one answers, until the
    /// generator ends or `duration` runs out.
    Closed {
        concurrency: usize,
        duration: Option<Duration>,
    },
    /// Segments of (duration, calls per second), one after the other.
    Open { segments: Vec<(Duration, f64)> },
}

impl Pacing {
    /// Open loop at one rate for `duration`.
    pub fn open(rate: f64, duration: Duration) -> Pacing {
        Pacing::Open {
            segments: vec![(duration, rate)],
        }
    }
}

type Generator = Box<dyn FnMut(Slot) -> Option<Op> + Send>;

/// Runs one phase; `expected` sizes the progress bar (calls, if known).
pub async fn drive(
    name: &str,
    pacing: Pacing,
    expected: Option<u64>,
    generator: impl FnMut(Slot) -> Option<Op> + Send + 'static,
) -> Result<PhaseSummary, String> {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        recorder: Mutex::new(Recorder::new(started)?),
        in_flight: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        bar: progress(name, expected),
    });
    let generator: Arc<Mutex<Generator>> = Arc::new(Mutex::new(Box::new(generator)));
    match pacing {
        Pacing::Closed {
            concurrency,
            duration,
        } => closed(&shared, &generator, concurrency.max(1), duration).await?,
        Pacing::Open { segments } => open(&shared, &generator, &segments).await?,
    }
    let elapsed = started.elapsed();
    shared.bar.finish_and_clear();
    let recorder = shared
        .recorder
        .lock()
        .map_err(|_| "a call's recorder panicked")?;
    Ok(recorder.summary(name, elapsed, shared.peak.load(Ordering::Relaxed)))
}

struct Shared {
    recorder: Mutex<Recorder>,
    in_flight: AtomicU64,
    peak: AtomicU64,
    bar: ProgressBar,
}

impl Shared {
    fn begin(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn end(&self, label: &'static str, took: Duration, result: Result<Outcome, Status>) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut recorder) = self.recorder.lock() {
            recorder.record(label, took, result);
        }
        self.bar.inc(1);
    }
}

fn progress(name: &str, expected: Option<u64>) -> ProgressBar {
    let bar = match expected {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    let template = if expected.is_some() {
        "{prefix:>14} [{bar:30}] {pos}/{len} calls {per_sec} {elapsed}"
    } else {
        "{prefix:>14} {spinner} {pos} calls {per_sec} {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn next(generator: &Mutex<Generator>, slot: Slot) -> Result<Option<Op>, String> {
    let mut generator = generator.lock().map_err(|_| "the workload panicked")?;
    Ok(generator(slot))
}

async fn closed(
    shared: &Arc<Shared>,
    generator: &Arc<Mutex<Generator>>,
    concurrency: usize,
    duration: Option<Duration>,
) -> Result<(), String> {
    let deadline = duration.map(|duration| Instant::now() + duration);
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (shared, generator, counter) = (shared.clone(), generator.clone(), counter.clone());
        workers.spawn(async move {
            loop {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    return Ok::<(), String>(());
                }
                let index = counter.fetch_add(1, Ordering::Relaxed);
                let Some(op) = next(&generator, Slot { index, segment: 0 })? else {
                    return Ok(());
                };
                shared.begin();
                let begun = Instant::now();
                let result = op.call.await;
                shared.end(op.label, begun.elapsed(), result);
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|error| format!("a load worker failed: {error}"))??;
    }
    Ok(())
}

async fn open(
    shared: &Arc<Shared>,
    generator: &Arc<Mutex<Generator>>,
    segments: &[(Duration, f64)],
) -> Result<(), String> {
    let mut calls = tokio::task::JoinSet::new();
    let mut index = 0u64;
    let mut segment_start = Instant::now();
    'segments: for (segment, &(length, rate)) in segments.iter().enumerate() {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("--rate: must be a positive number, got {rate}"));
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        let end = segment_start + length;
        let mut intended = segment_start;
        while intended < end {
            tokio::time::sleep_until(intended.into()).await;
            let Some(op) = next(generator, Slot { index, segment })? else {
                break 'segments;
            };
            index += 1;
            shared.begin();
            let shared = shared.clone();
            calls.spawn(async move {
                let result = op.call.await;
                shared.end(op.label, intended.elapsed(), result);
            });
            // Reap finished tasks so the set does not grow with the run.
            while calls.try_join_next().is_some() {}
            intended += interval;
        }
        segment_start = end;
    }
    while calls.join_next().await.is_some() {}
    Ok(())
}

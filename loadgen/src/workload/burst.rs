//! `burst`: one envelope, Opens open loop at `--rate` for `--before` s, then
//! a step to 10 × `--rate` for `--step` s, then back to `--rate` for
//! `--after` s. Reported: the peak queue depth (the cells' lane-queue gauge,
//! `redcell_cell_lane_queue_depth` from each logic server's `/metrics`,
//! polled every 100 ms — the gauge itself is sampled about once a second —
//! and the peak of calls in flight at the client), the shed % of the step
//! (RESOURCE_EXHAUSTED answers), and the time to drain: from the end of the
//! step until the last call issued during it is answered.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{
    driver::{Pacing, Slot},
    workload::{Context, WorkloadReport, seconds, send_envelopes},
};

#[derive(Debug, Clone, clap::Args)]
pub struct BurstArgs {
    /// Seconds at the base rate before the step.
    #[arg(long, default_value_t = 3.0)]
    pub before: f64,
    /// Seconds of the 10x step.
    #[arg(long, default_value_t = 2.0)]
    pub step: f64,
    /// Seconds at the base rate after the step.
    #[arg(long, default_value_t = 5.0)]
    pub after: f64,
}

/// The step's multiple of the base rate.
const STEP: f64 = 10.0;

/// The envelope's shares: every Open of the run can take one.
pub fn shares(args: &BurstArgs, rate: f64) -> u64 {
    (rate * (args.before + STEP * args.step + args.after) * 1.2).ceil() as u64 + 10
}

pub async fn run(
    context: &mut Context,
    args: &BurstArgs,
    rate: f64,
) -> Result<WorkloadReport, String> {
    let shares =
        u32::try_from(shares(args, rate)).map_err(|_| "--rate: too high for one envelope")?;
    let (sends, envelopes) =
        send_envelopes(context, "burst: send", 1, shares, i64::from(shares), 1).await?;
    let envelope = envelopes
        .first()
        .cloned()
        .ok_or("the burst's Send returned no envelope")?;

    let stop = Arc::new(AtomicBool::new(false));
    let peak_queue = Arc::new(AtomicU64::new(0));
    let scraped = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn(poll_queue(
        context.cell_metrics.clone(),
        stop.clone(),
        peak_queue.clone(),
        scraped.clone(),
    ));

    let calls = context.ops.clone();
    let segments = vec![
        (seconds(args.before), rate),
        (seconds(args.step), rate * STEP),
        (seconds(args.after), rate),
    ];
    let labels = ["open-before", "open-step", "open-after"];
    let phase = context
        .measure(
            "burst",
            Pacing::Open { segments },
            None,
            move |slot: Slot| {
                Some(calls.open(
                    labels[slot.segment.min(2)],
                    slot.index as usize,
                    envelope.clone(),
                ))
            },
        )
        .await?;
    stop.store(true, Ordering::Relaxed);
    let _ = poller.await;

    let step_end = args.before + args.step;
    let mut report = WorkloadReport::new("burst", vec![sends, phase.clone()])
        .measured(&phase)
        .figure("peak_in_flight", phase.peak_in_flight as f64);
    // Only when a cell answered: a reused fleet may serve no /metrics.
    if scraped.load(Ordering::Relaxed) {
        report = report.figure(
            "peak_lane_queue_depth",
            peak_queue.load(Ordering::Relaxed) as f64,
        );
    }
    if let Some(step) = phase.op("open-step") {
        let shed = step.errors.get("ResourceExhausted").copied().unwrap_or(0);
        report = report
            .figure("step_calls", step.calls as f64)
            .figure(
                "step_shed_pct",
                100.0 * shed as f64 / step.calls.max(1) as f64,
            )
            .figure("step_p99_ms", step.p99_ms)
            .figure("drain_secs", (step.last_done_secs - step_end).max(0.0));
    }
    if let Some(after) = phase.op("open-after") {
        report = report.figure("after_p99_ms", after.p99_ms);
    }
    Ok(report)
}

/// Polls every cell's lane-queue gauge; keeps the peak of their sum, and
/// whether any cell answered at all.
async fn poll_queue(
    cells: Vec<std::net::SocketAddr>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    scraped: Arc<AtomicBool>,
) {
    while !cells.is_empty() && !stop.load(Ordering::Relaxed) {
        let mut sum = 0;
        for cell in &cells {
            if let Some(depth) = crate::scrape::gauge(*cell, "redcell_cell_lane_queue_depth").await
            {
                scraped.store(true, Ordering::Relaxed);
                sum += depth as u64;
            }
        }
        peak.fetch_max(sum, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

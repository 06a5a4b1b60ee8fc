//! `send`: Sends only. First closed loop at `--concurrency` for
//! `--duration` (the maximum Send rate this fleet sustains), then open loop
//! at half that rate for as long (the latency a Send sees with headroom,
//! the p50 target). With `--rate`, only the open-loop phase, at it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    driver::{Pacing, Slot},
    workload::{Context, WorkloadReport, seconds},
};

/// Shares and cents of each envelope sent.
const SHARES: u32 = 10;
const CENTS: i64 = 1_000;

pub async fn run(
    context: &mut Context,
    senders: usize,
    rate: Option<f64>,
    concurrency: usize,
    duration: f64,
) -> Result<WorkloadReport, String> {
    let sequence = Arc::new(AtomicU64::new(0));
    let generator = |context: &Context| {
        let (calls, run_id, sequence) = (
            context.ops.clone(),
            context.run_id.clone(),
            sequence.clone(),
        );
        move |_: Slot| {
            let n = sequence.fetch_add(1, Ordering::Relaxed);
            let sender = (n % senders.max(1) as u64) as usize;
            Some(calls.send("send", sender, format!("{run_id}-send-{n}"), CENTS, SHARES))
        }
    };
    let mut phases = Vec::new();
    let half = match rate {
        Some(rate) => rate,
        None => {
            let max = crate::driver::drive(
                "send: max",
                Pacing::Closed {
                    concurrency,
                    duration: Some(seconds(duration)),
                },
                None,
                generator(context),
            )
            .await?;
            let max_rate = max
                .op("send")
                .map_or(0.0, |send| send.ok as f64 / max.elapsed_secs);
            phases.push(max);
            (max_rate / 2.0).max(1.0)
        }
    };
    let at_half = context
        .measure(
            "send: half",
            Pacing::open(half, seconds(duration)),
            None,
            generator(context),
        )
        .await?;
    let mut report = WorkloadReport::new("send", vec![]);
    if let Some(max) = phases.first().and_then(|phase| phase.op("send")) {
        report = report
            .figure("max_sends_per_sec", max.ok as f64 / phases[0].elapsed_secs)
            .figure("max_send_p50_ms", max.p50_ms)
            .figure("max_send_p99_ms", max.p99_ms);
    }
    if let Some(send) = at_half.op("send") {
        report = report
            .figure("offered_sends_per_sec", half)
            .figure("half_send_p50_ms", send.p50_ms)
            .figure("half_send_p99_ms", send.p99_ms);
    }
    phases.push(at_half.clone());
    let mut full = WorkloadReport::new("send", phases).measured(&at_half);
    full.figures = report.figures;
    Ok(full)
}

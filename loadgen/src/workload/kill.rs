//! `kill`: issue 15's "after kill -9 of one logic server under 50% load,
//! back to 90% throughput within 5 s".
//!
//! The fleet runs two logic servers per cell (`--servers-per-cell`, 2 by
//! default here). `--envelopes` envelopes of `--shares` shares spread over
//! every cell by minting; Open n goes to envelope n mod E as user n / E, so
//! each user opens an envelope at most once and every Open takes a share
//! (no answer from memory inflates the rate). First a closed loop of
//! `--probe-secs` finds the maximum Opens/s (or `--rate` is taken as 50%),
//! then Opens run open loop at half of it for `--duration` s. At `--kill-at`
//! s (a third in by default) the first server of cell n1 gets SIGKILL, its
//! pid read from the state directory's `pids/cell-n1-<port>.pid` (checked to
//! run `cell` first, as `cellctl down` does).
//!
//! Completed-OK Opens are counted per 100 ms by completion time
//! ([`Buckets`]); [`recovery`] reads the time back to 90%. Why it came back
//! is reported too: the router's failover to the cell's other server (a
//! refused connection moves an idempotent Open to the next server at once),
//! or `cellctl up --restart-crashed` starting the killed server again (the
//! pid file then names a new live `cell`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redcell_pgsys::{
    process_tree,
    sys::{self, Signal},
};

use crate::{
    Common,
    driver::{Op, Pacing, Slot},
    fleet::Fleet,
    workload::{Calls, Context, WorkloadReport, seconds, send_envelopes},
};

#[derive(Debug, Clone, clap::Args)]
pub struct KillArgs {
    /// Envelopes the Opens go round (minting spreads them over every cell).
    #[arg(long, default_value_t = 500)]
    pub envelopes: usize,
    /// Shares of each envelope (and users: each opens each envelope at
    /// most once); envelopes × shares bounds the Opens of the run.
    #[arg(long, default_value_t = 200)]
    pub shares: u32,
    /// Seconds into the open-loop phase of the kill -9 (default: a third
    /// of --duration; at least 1, for the throughput before it).
    #[arg(long)]
    pub kill_at: Option<f64>,
    /// Seconds of the closed loop that finds the maximum Opens/s (skipped
    /// when --rate gives the open-loop rate).
    #[arg(long, default_value_t = 3.0)]
    pub probe_secs: f64,
    /// `cellctl up --restart-crashed`: the killed server is started again
    /// (besides the router failing over to the cell's other server).
    #[arg(long)]
    pub restart_crashed: bool,
}

/// Width of a throughput bucket.
pub const BUCKET_SECS: f64 = 0.1;
/// Buckets in the moving window (1 s).
pub const WINDOW: usize = 10;
/// "Back to 90% throughput".
pub const RECOVERED_SHARE: f64 = 0.9;

/// What [`recovery`] reads from the buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// OK calls/s over the second before the kill's bucket.
    pub before_per_sec: f64,
    /// Lowest 1 s moving throughput after the kill, calls/s.
    pub min_window_per_sec: f64,
    /// Whether a 1 s moving throughput after the kill fell below 90%.
    pub dipped: bool,
    /// From the kill until the end of the first 1 s window, after the dip,
    /// at ≥ 90% again (0 when it never dipped); `None`: not back by the end.
    pub recovered_secs: Option<f64>,
    /// Longest run of 100 ms buckets with no OK call after the kill.
    pub longest_silence_secs: f64,
}

/// The recovery time over OK calls per [`BUCKET_SECS`] bucket (bucket i
/// covers [i, i+1) × 100 ms from the phase start). The reference is the
/// second before the kill's bucket; the 1 s moving throughput is the sum of
/// the [`WINDOW`] buckets before each bucket boundary after the kill, up to
/// `end_secs` (the end of the offered load: later windows only drain).
/// `None` when there is no full second before the kill or it saw no call.
pub fn recovery(buckets: &[u64], kill_secs: f64, end_secs: f64) -> Option<Recovery> {
    let kill = (kill_secs / BUCKET_SECS).floor() as usize;
    if kill < WINDOW || kill >= buckets.len() {
        return None;
    }
    let before: u64 = buckets[kill - WINDOW..kill].iter().sum();
    if before == 0 {
        return None;
    }
    let window_secs = WINDOW as f64 * BUCKET_SECS;
    let threshold = RECOVERED_SHARE * before as f64;
    let last = ((end_secs / BUCKET_SECS).floor() as usize).min(buckets.len());
    let mut result = Recovery {
        before_per_sec: before as f64 / window_secs,
        min_window_per_sec: f64::INFINITY,
        dipped: false,
        recovered_secs: None,
        longest_silence_secs: 0.0,
    };
    for end in kill + 1..=last {
        let window: u64 = buckets[end - WINDOW..end].iter().sum();
        result.min_window_per_sec = result.min_window_per_sec.min(window as f64 / window_secs);
        if (window as f64) < threshold {
            result.dipped = true;
        } else if result.dipped && result.recovered_secs.is_none() {
            result.recovered_secs = Some((end as f64 * BUCKET_SECS - kill_secs).max(0.0));
        }
    }
    if !result.dipped {
        result.recovered_secs = Some(0.0);
    }
    if !result.min_window_per_sec.is_finite() {
        result.min_window_per_sec = result.before_per_sec;
    }
    let mut run = 0usize;
    let mut longest = 0usize;
    for &count in &buckets[kill..last] {
        run = if count == 0 { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    result.longest_silence_secs = longest as f64 * BUCKET_SECS;
    Some(result)
}

/// OK completions per bucket and failed ones by (bucket, code), from one
/// instant.
#[derive(Debug)]
struct Buckets {
    start: Instant,
    ok: Mutex<Vec<u64>>,
    errors: Mutex<Vec<(usize, String)>>,
}

impl Buckets {
    fn bucket(&self) -> usize {
        (self.start.elapsed().as_secs_f64() / BUCKET_SECS) as usize
    }

    fn ok(&self) {
        let bucket = self.bucket();
        if let Ok(mut ok) = self.ok.lock() {
            if ok.len() <= bucket {
                ok.resize(bucket + 1, 0);
            }
            ok[bucket] += 1;
        }
    }

    fn failed(&self, code: tonic::Code) {
        let bucket = self.bucket();
        if let Ok(mut errors) = self.errors.lock() {
            errors.push((bucket, format!("{code:?}")));
        }
    }
}

/// Open number `n` of the run: envelope n mod E, user n / E.
fn open(calls: &Calls, envelopes: &[Arc<str>], label: &'static str, n: u64) -> Op {
    let count = envelopes.len() as u64;
    let envelope = envelopes[(n % count) as usize].clone();
    calls.open(label, (n / count) as usize, envelope)
}

/// The logic server killed: cell n1's first server, its part name and pid.
fn victim(fleet: &Fleet) -> Result<(String, u32), String> {
    let cell = fleet
        .topology
        .cells()
        .first()
        .ok_or("the fleet's topology has no cell")?;
    let server = cell
        .servers
        .first()
        .ok_or_else(|| format!("cell {} has no server", cell.name))?;
    let port = server
        .parse::<std::net::SocketAddr>()
        .map_err(|error| format!("cell {}: server {server:?}: {error}", cell.name))?
        .port();
    let part = format!("cell-{}-{port}", cell.name);
    let pid = fleet
        .part_pids()
        .into_iter()
        .find(|(name, _)| *name == part)
        .map(|(_, pid)| pid)
        .ok_or_else(|| format!("no pid file for {part} in {}", fleet.state_dir.display()))?;
    Ok((part, pid))
}

/// True while `pid` is alive and runs the logic server (not a reused pid).
fn runs_cell(pid: u32) -> bool {
    process_tree::is_alive(pid)
        && process_tree::command_name(pid).is_some_and(|name| name == "cell")
}

pub async fn run(
    context: &mut Context,
    args: &KillArgs,
    fleet: &Fleet,
    common: &Common,
) -> Result<WorkloadReport, String> {
    let duration = common.duration;
    let kill_at = args.kill_at.unwrap_or(duration / 3.0);
    if !(kill_at >= 1.0 && kill_at < duration) {
        return Err(format!(
            "--kill-at: must be at least 1 s (the throughput before it) and below --duration {duration}, got {kill_at}"
        ));
    }
    if args.envelopes == 0 || args.shares == 0 {
        return Err("--envelopes and --shares: must be at least 1".into());
    }
    if !(args.probe_secs.is_finite() && args.probe_secs > 0.0) {
        return Err(format!(
            "--probe-secs: must be positive, got {}",
            args.probe_secs
        ));
    }
    let servers = fleet
        .topology
        .cells()
        .first()
        .map_or(0, |cell| cell.servers.len());
    if servers < 2 && !args.restart_crashed {
        eprintln!(
            "loadgen kill: cell n1 has {servers} logic server(s): nothing fails over (--servers-per-cell 2, or --restart-crashed)"
        );
    }
    let (part, pid) = victim(fleet)?;
    if !runs_cell(pid) {
        return Err(format!("{part} (pid {pid}) does not run `cell`"));
    }
    let (sends, envelopes) = send_envelopes(
        context,
        "kill: send",
        args.envelopes,
        args.shares,
        i64::from(args.shares) * 10,
        common.concurrency.min(args.envelopes).max(1),
    )
    .await?;
    let envelopes: Arc<Vec<Arc<str>>> = Arc::new(envelopes);
    let capacity = args.envelopes as u64 * u64::from(args.shares);
    let issued = Arc::new(AtomicU64::new(0));
    let mut phases = vec![sends];

    // The maximum, closed loop (or 2 × --rate).
    let (rate, max) = match common.rate {
        Some(rate) => (rate, None),
        None => {
            let (calls, envelopes, issued) =
                (context.ops.clone(), envelopes.clone(), issued.clone());
            let probe = crate::driver::drive(
                "kill: probe",
                Pacing::Closed {
                    concurrency: common.concurrency,
                    duration: Some(seconds(args.probe_secs)),
                },
                None,
                move |_: Slot| {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    (n < capacity).then(|| open(&calls, &envelopes, "open-probe", n))
                },
            )
            .await?;
            let ok = probe.op("open-probe").map_or(0, |op| op.ok);
            let max = ok as f64 / probe.elapsed_secs.max(1e-9);
            phases.push(probe);
            ((max / 2.0).max(1.0), Some(max))
        }
    };
    let needed = issued.load(Ordering::Relaxed) + (rate * duration).ceil() as u64;
    if needed > capacity {
        return Err(format!(
            "--envelopes × --shares ({capacity}) is below the {needed} Opens of the run \
             ({rate:.0}/s for {duration} s after the probe): raise --shares or --envelopes"
        ));
    }

    // Half of it, open loop, with the kill part-way.
    let buckets = Arc::new(Buckets {
        start: Instant::now(),
        ok: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
    });
    let killer = {
        let at = buckets.start + Duration::from_secs_f64(kill_at);
        let (part, start) = (part.clone(), buckets.start);
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            // Checked again right before: a pid is signalled only while it
            // still runs the logic server.
            if !runs_cell(pid) {
                return Err(format!("{part} (pid {pid}) was gone before the kill"));
            }
            sys::send_signal(pid, Signal::Kill)
                .map_err(|error| format!("kill -9 {part} (pid {pid}): {error}"))?;
            Ok::<f64, String>(start.elapsed().as_secs_f64())
        })
    };
    let phase = {
        let (calls, envelopes, issued, buckets) = (
            context.ops.clone(),
            envelopes.clone(),
            issued.clone(),
            buckets.clone(),
        );
        context
            .measure(
                "kill: open at half",
                Pacing::open(rate, seconds(duration)),
                Some((rate * duration) as u64),
                move |slot: Slot| {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if n >= capacity {
                        return None;
                    }
                    let label = if slot.index as f64 / rate < kill_at {
                        "open-before"
                    } else {
                        "open-after"
                    };
                    let op = open(&calls, &envelopes, label, n);
                    let buckets = buckets.clone();
                    Some(Op {
                        label: op.label,
                        call: Box::pin(async move {
                            let result = op.call.await;
                            match &result {
                                Ok(_) => buckets.ok(),
                                Err(status) => buckets.failed(status.code()),
                            }
                            result
                        }),
                    })
                },
            )
            .await?
    };
    let killed_at = killer
        .await
        .map_err(|error| format!("the kill task failed: {error}"))??;
    let restarted = victim(fleet)
        .ok()
        .is_some_and(|(_, now)| now != pid && runs_cell(now));

    let ok = buckets
        .ok
        .lock()
        .map_err(|_| "a call's bucket panicked")?
        .clone();
    let recovered = recovery(&ok, killed_at, duration);
    let window_end = killed_at
        + recovered
            .as_ref()
            .and_then(|recovered| recovered.recovered_secs)
            .unwrap_or(duration);
    let mut window_errors: BTreeMap<String, u64> = BTreeMap::new();
    for (bucket, code) in buckets
        .errors
        .lock()
        .map_err(|_| "a call's bucket panicked")?
        .iter()
    {
        let at = *bucket as f64 * BUCKET_SECS;
        if at + BUCKET_SECS > killed_at && at <= window_end {
            *window_errors.entry(code.clone()).or_default() += 1;
        }
    }

    phases.push(phase.clone());
    let mut report = WorkloadReport::new("kill", phases)
        .measured(&phase)
        .figure("offered_per_sec", rate)
        .figure("killed_at_secs", killed_at)
        .figure("restarted_by_up", if restarted { 1.0 } else { 0.0 })
        .figure("servers_in_killed_cell", servers as f64);
    if let Some(max) = max {
        report = report.figure("max_opens_per_sec", max);
    }
    if let Some(before) = phase.op("open-before") {
        report = report.figure("p99_before_ms", before.p99_ms);
    }
    if let Some(after) = phase.op("open-after") {
        report = report.figure("p99_after_ms", after.p99_ms);
    }
    for (code, count) in &window_errors {
        report = report.figure(&format!("window_errors_{code}"), *count as f64);
    }
    let mechanism = if restarted {
        "cellctl up --restart-crashed started it again (and the router failed over meanwhile)"
    } else if servers >= 2 {
        "the router failed over to the cell's other server (the killed one stayed down)"
    } else {
        "nothing: the killed server stayed down and its cell had no other"
    };
    match &recovered {
        Some(recovered) => {
            report = report
                .figure("before_ok_per_sec", recovered.before_per_sec)
                .figure("min_1s_ok_per_sec", recovered.min_window_per_sec)
                .figure("longest_silence_secs", recovered.longest_silence_secs);
            match recovered.recovered_secs {
                Some(secs) => {
                    report = report.figure("recovery_secs", secs);
                    eprintln!(
                        "loadgen kill: kill -9 {part} at {killed_at:.2} s; back to 90% of {:.0} OK/s {secs:.1} s later{}; {mechanism}",
                        recovered.before_per_sec,
                        if recovered.dipped {
                            ""
                        } else {
                            " (never below)"
                        }
                    );
                }
                None => eprintln!(
                    "loadgen kill: kill -9 {part} at {killed_at:.2} s; NOT back to 90% of {:.0} OK/s by the end; {mechanism}",
                    recovered.before_per_sec
                ),
            }
        }
        None => eprintln!("loadgen kill: no throughput in the second before the kill"),
    }
    report.series.insert("ok_per_100ms".into(), ok);
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// 100 per bucket, then `gap` empty buckets from the kill's bucket 20,
    /// then 100 again; `end` buckets in all.
    fn outage(gap: usize, end: usize) -> Vec<u64> {
        (0..end)
            .map(|bucket| {
                if (20..20 + gap).contains(&bucket) {
                    0
                } else {
                    100
                }
            })
            .collect()
    }

    #[test]
    fn a_gap_is_recovered_when_the_moving_second_is_back_to_90_percent() {
        // Killed at 2.0 s, 1 s silent: windows ending at 2.2 .. 3.8 s are
        // below 900; the one ending at 3.9 s (2.9-3.9) holds 900 again.
        let recovered = recovery(&outage(10, 60), 2.0, 6.0).unwrap();
        assert_eq!(recovered.before_per_sec, 1000.0);
        assert!(recovered.dipped);
        assert!((recovered.recovered_secs.unwrap() - 1.9).abs() < 1e-9);
        assert!((recovered.longest_silence_secs - 1.0).abs() < 1e-9);
        assert_eq!(recovered.min_window_per_sec, 0.0);
    }

    #[test]
    fn a_dip_too_short_to_cost_10_percent_of_a_second_is_no_dip() {
        // One empty bucket: every window keeps 900 of 1000.
        let recovered = recovery(&outage(1, 60), 2.0, 6.0).unwrap();
        assert!(!recovered.dipped);
        assert_eq!(recovered.recovered_secs, Some(0.0));
        assert_eq!(recovered.min_window_per_sec, 900.0);
        // Two cost 20%: back once the window has at most one of them.
        let recovered = recovery(&outage(2, 60), 2.0, 6.0).unwrap();
        assert!(recovered.dipped);
        assert!((recovered.recovered_secs.unwrap() - 1.1).abs() < 1e-9);
    }

    #[test]
    fn a_catch_up_burst_counts_and_a_never_recovered_run_says_so() {
        // Open loop: the calls queued during the gap complete right after.
        let mut buckets = outage(5, 60);
        buckets[25] = 600;
        let recovered = recovery(&buckets, 2.0, 6.0).unwrap();
        assert!((recovered.recovered_secs.unwrap() - 0.6).abs() < 1e-9);
        // Half the throughput for good: never back.
        let halved: Vec<u64> = (0..60).map(|b| if b < 20 { 100 } else { 50 }).collect();
        let recovered = recovery(&halved, 2.0, 6.0).unwrap();
        assert_eq!(recovered.recovered_secs, None);
        assert_eq!(recovered.min_window_per_sec, 500.0);
    }

    #[test]
    fn windows_stop_at_the_end_of_the_offered_load_and_need_a_second_before() {
        // The drain after 6.0 s is not a dip.
        let mut buckets = vec![100; 60];
        buckets.extend([0; 10]);
        assert!(!recovery(&buckets, 2.0, 6.0).unwrap().dipped);
        assert_eq!(recovery(&buckets, 0.5, 6.0), None);
        assert_eq!(recovery(&[0; 60], 2.0, 6.0), None);
    }
}

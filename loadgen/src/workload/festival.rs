//! `festival`: New Year's eve in miniature. Envelopes ranked by a Zipf law
//! (the first `--hot` are the group chats everyone is in, the rest are
//! cold), Opens and Grabs drawn over them by that law, and Sends at a fixed
//! `--send-rate` on top, all open loop at `--rate` calls/s.
//!
//! Two phases: the cold envelopes alone at the rate they get inside the
//! mix, then the whole mix. The cold envelopes' p99 in the mix over their
//! p99 alone is the isolation figure (target ≤ 2: a hot envelope's lane
//! must not slow everyone else's). Warm-up bias, measured: run once, the
//! cold-alone phase comes first and its p99 came out above the mix's even
//! after the warm-up Grabs (durable, release, 1000 calls/s: 73 ms alone vs
//! 32 ms in the mix). So the pair runs `--rounds` times (2 by default),
//! alternating, and the figures are the last round's: both of its phases
//! run on a fleet the first round warmed, and each follows the other kind
//! of phase. The first round's ratio is reported beside
//! (`round1_cold_p99_ratio`).
//! Each envelope's k-th Open is by user k,
//! so a user opens an envelope at most once and AVAILABLE answers are
//! distinct shares.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use crate::{
    driver::{Pacing, Slot},
    rng::{SplitMix, Zipf},
    workload::{Context, WorkloadReport, seconds, send_envelopes},
};

#[derive(Debug, Clone, clap::Args)]
pub struct FestivalArgs {
    /// Hot envelopes (the top ranks of the Zipf law).
    #[arg(long, default_value_t = 4)]
    pub hot: usize,
    /// Cold envelopes.
    #[arg(long, default_value_t = 200)]
    pub cold: usize,
    /// Shares of a hot envelope.
    #[arg(long, default_value_t = 500)]
    pub hot_shares: u32,
    /// Shares of a cold envelope.
    #[arg(long, default_value_t = 50)]
    pub cold_shares: u32,
    /// Zipf exponent over the envelopes' ranks.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Sends per second on top of the Opens and Grabs.
    #[arg(long, default_value_t = 20.0)]
    pub send_rate: f64,
    /// Fraction of the non-Send calls that are Grabs.
    #[arg(long, default_value_t = 0.3)]
    pub grab_fraction: f64,
    /// Rounds of (cold alone, mix); the figures are the last round's (the
    /// first one warms the fleet for both of its phases).
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
}

pub async fn run(
    context: &mut Context,
    args: &FestivalArgs,
    rate: f64,
    duration: f64,
) -> Result<WorkloadReport, String> {
    if args.rounds == 0 || args.rounds > 10 {
        return Err(format!("--rounds: must be 1 to 10, got {}", args.rounds));
    }
    if args.hot == 0 || args.cold == 0 {
        return Err("--hot and --cold: must be at least 1".into());
    }
    if !(0.0..1.0).contains(&args.grab_fraction) {
        return Err(format!(
            "--grab-fraction: must be in [0, 1), got {}",
            args.grab_fraction
        ));
    }
    let (hot_sends, mut envelopes) = send_envelopes(
        context,
        "festival: hot",
        args.hot,
        args.hot_shares,
        i64::from(args.hot_shares) * 100,
        8,
    )
    .await?;
    let (cold_sends, cold) = send_envelopes(
        context,
        "festival: cold",
        args.cold,
        args.cold_shares,
        i64::from(args.cold_shares) * 100,
        16,
    )
    .await?;
    envelopes.truncate(args.hot);
    envelopes.extend(cold);
    let envelopes: Arc<Vec<Arc<str>>> = Arc::new(envelopes);
    let opened: Arc<Vec<AtomicUsize>> =
        Arc::new((0..envelopes.len()).map(|_| AtomicUsize::new(0)).collect());
    let zipf = Zipf::new(envelopes.len(), args.zipf);
    let cold_mass = zipf.mass_from(args.hot);
    let send_share = (args.send_rate / rate).clamp(0.0, 1.0);
    let cold_rate = (rate * (1.0 - send_share) * cold_mass).max(1.0);

    // Warm-up: one Grab of every envelope, so neither phase pays for
    // loading an envelope into its lane (the first phase would otherwise,
    // and its p99 is the denominator of the isolation figure).
    let warm_up = {
        let (calls, envelopes) = (context.ops.clone(), envelopes.clone());
        let count = envelopes.len() as u64;
        let pacing = Pacing::Closed {
            concurrency: 16,
            duration: None,
        };
        crate::driver::drive(
            "festival: warm-up",
            pacing,
            Some(count),
            move |slot: Slot| {
                (slot.index < count).then(|| {
                    let index = slot.index as usize;
                    calls.grab("grab-warm-up", 0, envelopes[index].clone())
                })
            },
        )
        .await?
    };

    // Rounds of (cold alone, mix): the figures are the last round's, so
    // both of its phases run on a fleet the first round warmed (and the
    // alone phase follows a mix, as the mix follows an alone phase).
    let mut phases = vec![hot_sends, cold_sends, warm_up];
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let seed = 2 * u64::from(round) - 1;
        let alone = {
            let (calls, envelopes, opened) =
                (context.ops.clone(), envelopes.clone(), opened.clone());
            let (hot, grab_fraction) = (args.hot, args.grab_fraction);
            let cold_zipf = Zipf::new(envelopes.len() - hot, args.zipf);
            let mut rng = SplitMix::new(seed);
            crate::driver::drive(
                &format!("festival: cold alone {round}"),
                Pacing::open(cold_rate, seconds(duration / 2.0)),
                None,
                move |_: Slot| {
                    let index = hot + cold_zipf.sample(rng.unit());
                    Some(open_or_grab(
                        &calls,
                        &envelopes,
                        &opened,
                        index,
                        rng.unit() < grab_fraction,
                        "open-cold",
                        "grab-cold",
                    ))
                },
            )
            .await?
        };
        let mix = {
            let (calls, envelopes, opened) =
                (context.ops.clone(), envelopes.clone(), opened.clone());
            let (hot, grab_fraction) = (args.hot, args.grab_fraction);
            // Per round: a Send key of round 1 is never replayed in round 2.
            let prefix = format!("{}-festival-r{round}", context.run_id);
            let zipf = zipf.clone();
            let mut rng = SplitMix::new(seed + 1);
            let mut sends = 0u64;
            context
                .measure(
                    &format!("festival: mix {round}"),
                    Pacing::open(rate, seconds(duration)),
                    None,
                    move |_: Slot| {
                        if rng.unit() < send_share {
                            sends += 1;
                            return Some(calls.send(
                                "send",
                                sends as usize,
                                format!("{prefix}-{sends}"),
                                1_000,
                                10,
                            ));
                        }
                        let index = zipf.sample(rng.unit());
                        let grab = rng.unit() < grab_fraction;
                        Some(if index < hot {
                            open_or_grab(
                                &calls, &envelopes, &opened, index, grab, "open-hot", "grab-hot",
                            )
                        } else {
                            open_or_grab(
                                &calls,
                                &envelopes,
                                &opened,
                                index,
                                grab,
                                "open-cold",
                                "grab-cold",
                            )
                        })
                    },
                )
                .await?
        };
        phases.extend([alone.clone(), mix.clone()]);
        rounds.push((alone, mix));
    }
    let (alone, mix) = rounds
        .last()
        .cloned()
        .ok_or("--rounds: must be at least 1")?;
    let mut report = WorkloadReport::new("festival", phases)
        .measured(&mix)
        .figure("cold_rate_per_sec", cold_rate)
        .figure("rounds", f64::from(args.rounds));
    // The first round's ratio too, so the warm-up bias stays visible.
    if let Some((alone, mix)) = rounds.first().filter(|_| rounds.len() > 1)
        && let (Some(before), Some(during)) = (alone.op("open-cold"), mix.op("open-cold"))
    {
        report = report.figure(
            "round1_cold_p99_ratio",
            during.p99_ms / before.p99_ms.max(0.001),
        );
    }
    if let (Some(before), Some(during)) = (alone.op("open-cold"), mix.op("open-cold")) {
        report = report
            .figure("cold_alone_p99_ms", before.p99_ms)
            .figure("cold_in_mix_p99_ms", during.p99_ms)
            .figure("cold_p99_ratio", during.p99_ms / before.p99_ms.max(0.001));
    }
    if let Some(hot) = mix.op("open-hot") {
        report = report.figure("hot_open_p99_ms", hot.p99_ms);
    }
    if let Some(send) = mix.op("send") {
        report = report
            .figure("send_p50_ms", send.p50_ms)
            .figure("send_p99_ms", send.p99_ms);
    }
    Ok(report)
}

/// A Grab by the next user of `index` (who has not opened it), or an Open by
/// that user (who then has).
fn open_or_grab(
    calls: &crate::workload::Calls,
    envelopes: &[Arc<str>],
    opened: &[AtomicUsize],
    index: usize,
    grab: bool,
    open_label: &'static str,
    grab_label: &'static str,
) -> crate::driver::Op {
    let envelope = envelopes[index].clone();
    if grab {
        calls.grab(grab_label, opened[index].load(Ordering::Relaxed), envelope)
    } else {
        calls.open(
            open_label,
            opened[index].fetch_add(1, Ordering::Relaxed),
            envelope,
        )
    }
}

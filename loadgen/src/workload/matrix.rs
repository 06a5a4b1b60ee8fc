//! `hot` and `uniform`: every one of `users` users opens every one of
//! `envelopes` envelopes, interleaved so that consecutive Opens go to
//! consecutive envelopes. The two differ only in shape: `hot` is a few big
//! envelopes and a crowd (a group chat at midnight: the lane of one
//! envelope is the contention), `uniform` many small envelopes spread over
//! every cell by the router's minting (Opens spread, no hot row).
//!
//! The shares taken must be exactly `envelopes × min(shares, users)`.

use std::sync::Arc;

use crate::{
    driver::Pacing,
    stats::PhaseSummary,
    workload::{Context, WorkloadReport, seconds, send_envelopes},
};

/// Sizes of a matrix run.
#[derive(Debug, Clone, clap::Args)]
pub struct MatrixArgs {
    /// Envelopes sent (one sender each).
    #[arg(long)]
    pub envelopes: Option<usize>,
    /// Shares per envelope.
    #[arg(long)]
    pub shares: Option<u32>,
    /// Users opening every envelope (more than shares: the late ones get
    /// EXHAUSTED, answered from memory).
    #[arg(long)]
    pub users: Option<usize>,
    /// After the closed loop, the same matrix on fresh envelopes offered
    /// open loop at half the Opens/s it reached (latency with headroom; the
    /// issue's "p99 at 50% of the maximum").
    #[arg(long)]
    pub at_half: bool,
}

/// Defaults per shape: (envelopes, shares, users).
pub const HOT: (usize, u32, usize) = (8, 500, 1000);
pub const UNIFORM: (usize, u32, usize) = (1000, 10, 10);

/// Resolved sizes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub envelopes: usize,
    pub shares: u32,
    pub users: usize,
}

impl MatrixArgs {
    pub fn sizes(&self, defaults: (usize, u32, usize)) -> Result<Sizes, String> {
        let sizes = Sizes {
            envelopes: self.envelopes.unwrap_or(defaults.0),
            shares: self.shares.unwrap_or(defaults.1),
            users: self.users.unwrap_or(defaults.2),
        };
        if sizes.envelopes == 0 || sizes.shares == 0 || sizes.users == 0 {
            return Err("--envelopes, --shares and --users: must be at least 1".into());
        }
        Ok(sizes)
    }
}

/// Cents per envelope: 100 per share.
pub fn envelope_cents(sizes: Sizes) -> i64 {
    i64::from(sizes.shares) * 100
}

pub async fn run(
    context: &mut Context,
    name: &str,
    sizes: Sizes,
    at_half: bool,
    rate: Option<f64>,
    concurrency: usize,
) -> Result<WorkloadReport, String> {
    // Open loop: the whole matrix at the rate, however long it takes.
    let total = (sizes.envelopes * sizes.users) as u64;
    let pacing = match rate {
        Some(rate) => Pacing::open(rate, seconds(total as f64 / rate + 1.0)),
        None => Pacing::Closed {
            concurrency,
            duration: None,
        },
    };
    let (sends, opens) = round(context, name, sizes, pacing, concurrency, true).await?;
    let expected = sizes.envelopes as u64 * u64::from(sizes.shares).min(sizes.users as u64);
    let mut phases = vec![sends, opens.clone()];
    let mut figures = vec![("shares_per_sec", opens.shares_per_sec)];
    if let Some(open) = opens.op("open") {
        figures.extend([
            ("opens_per_sec", open.per_sec),
            ("open_p50_ms", open.p50_ms),
            ("open_p99_ms", open.p99_ms),
        ]);
    }
    let mut rounds = 1;
    if at_half && rate.is_none() {
        // The same matrix on fresh envelopes, offered at half the rate the
        // closed loop reached: the latency with headroom.
        let half = (opens.op("open").map_or(0.0, |open| open.per_sec) / 2.0).max(1.0);
        let pacing = Pacing::open(half, seconds(total as f64 / half + 1.0));
        let (sends, opens) = round(
            context,
            &format!("{name} at half"),
            sizes,
            pacing,
            concurrency,
            false,
        )
        .await?;
        figures.push(("half_offered_per_sec", half));
        if let Some(open) = opens.op("open") {
            figures.extend([
                ("half_open_p50_ms", open.p50_ms),
                ("half_open_p99_ms", open.p99_ms),
            ]);
        }
        phases.extend([sends, opens]);
        rounds = 2;
    }
    let mut report = WorkloadReport::new(name, phases).measured(&opens);
    for (figure, value) in figures {
        report = report.figure(figure, value);
    }
    report.expected_shares = Some(expected * rounds);
    Ok(report)
}

/// Sends the envelopes, then every user opens every one; `measured`: the
/// Opens are the phase the cost model measures.
async fn round(
    context: &mut Context,
    name: &str,
    sizes: Sizes,
    pacing: Pacing,
    concurrency: usize,
    measured: bool,
) -> Result<(PhaseSummary, PhaseSummary), String> {
    let (sends, envelopes) = send_envelopes(
        context,
        &format!("{name}: send"),
        sizes.envelopes,
        sizes.shares,
        envelope_cents(sizes),
        concurrency.min(sizes.envelopes).max(1),
    )
    .await?;
    let envelopes: Arc<Vec<Arc<str>>> = Arc::new(envelopes);
    let total = (sizes.envelopes * sizes.users) as u64;
    let ops = {
        let envelopes = envelopes.clone();
        let calls = context.ops.clone();
        move |slot: crate::driver::Slot| {
            if slot.index >= total {
                return None;
            }
            let index = slot.index as usize;
            let envelope = envelopes[index % envelopes.len()].clone();
            let user = index / envelopes.len();
            Some(calls.open("open", user, envelope))
        }
    };
    let name = format!("{name}: open");
    let opens = if measured {
        context.measure(&name, pacing, Some(total), ops).await?
    } else {
        crate::driver::drive(&name, pacing, Some(total), ops).await?
    };
    Ok((sends, opens))
}

//! `loadgen`: redcell's load generator and benchmark driver (DESIGN.md §10),
//! a pure gRPC client of a fleet started the way an operator starts one.
//!
//! Per variant (`--variants lane,rowlock`: each a fresh fleet, same
//! invocation, so comparisons share the machine's state): `cellctl up
//! --detach` of N cells (durable PostgreSQL unless `--fast`), PostgreSQL's
//! own limits on the same server (`bench/`'s pgbench scripts, unless
//! `--no-baseline`), senders funded with `cellctl fund`, the workload
//! through the router(s) with HS256 tokens of the fleet's key, CPU per
//! component over the measured phase, then `cellctl reconcile` (0
//! discrepancies, and the claims it counts equal to the shares the run was
//! told it took, or the run fails) and `cellctl down`.
//!
//! **Owns**: workloads, pacing, latency histograms, baselines, the report.
//! **Never**: links a server crate, reaches past the router, or reports a
//! run whose money does not reconcile as a success.

mod baseline;
mod client;
mod cost;
mod driver;
mod fleet;
mod report;
mod rng;
mod run;
mod scrape;
mod stats;
mod workload;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub workload: Workload,
    #[command(flatten)]
    pub common: Common,
}

/// Flags every workload takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Cells of the fleet loadgen starts (region north, one logic server and
    /// one PostgreSQL server each).
    #[arg(long, global = true, default_value_t = 2)]
    pub cells: u32,
    /// Logic servers per cell of the fleet loadgen starts (`kill` needs 2:
    /// the router fails over to a cell's other server).
    #[arg(long, global = true)]
    pub servers_per_cell: Option<u16>,
    /// Routers of the fleet loadgen starts (calls spread over them).
    #[arg(long, global = true, default_value_t = 1)]
    pub routers: u16,
    /// PostgreSQL without fsync (`cellctl up --fast`); durable by default.
    #[arg(long, global = true)]
    pub fast: bool,
    /// Reuse the fleet `cellctl up` runs on this state directory (left
    /// running) instead of starting one per variant.
    #[arg(long, global = true, value_name = "STATE_DIR")]
    pub fleet: Option<PathBuf>,
    /// Comma-separated variants, a fresh fleet each: `lane`/`rowlock` set
    /// REDCELL_OPEN_STRATEGY, `merged`/`per-lane` REDCELL_COMMITTER, joined
    /// with `+` (`lane+merged`); `default` sets nothing.
    #[arg(long, global = true, default_value = "default", value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Closed loop: calls in flight at once.
    #[arg(long, global = true, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: calls offered per second, latency from each call's
    /// intended start (festival and burst are always open loop).
    #[arg(long, global = true)]
    pub rate: Option<f64>,
    /// Seconds of a timed phase (send, festival).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,
    /// Senders funded (each with 1,000,000.00 by `cellctl fund`).
    #[arg(long, global = true, default_value_t = 16)]
    pub senders: usize,
    /// Skip the pgbench baselines.
    #[arg(long, global = true)]
    pub no_baseline: bool,
    /// Seconds each baseline runs.
    #[arg(long, global = true, default_value_t = 5)]
    pub baseline_secs: u64,
    /// Every logic server and router serves /metrics at its port + N
    /// (`cellctl up --admin-port-offset`; the burst reads the queue gauge).
    /// Default 1000 for a fleet loadgen starts; with --fleet, the offset
    /// that fleet was started with (none: no gauge).
    #[arg(long, global = true)]
    pub admin_port_offset: Option<u16>,
    /// Write every figure as JSON to FILE (`-`: stdout).
    #[arg(long, global = true, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the state directories of the fleets loadgen starts (logs).
    #[arg(long, global = true)]
    pub keep_state: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Workload {
    /// Few envelopes, many openers: every user opens every envelope.
    Hot(workload::matrix::MatrixArgs),
    /// Many small envelopes across every cell, Opens spread over them.
    Uniform(workload::matrix::MatrixArgs),
    /// Zipf mix of hot and cold envelopes, Sends at a fixed rate, Grabs and
    /// Opens; the cold envelopes' latency alone and in the mix.
    Festival(workload::festival::FestivalArgs),
    /// A 10x step of Opens on one envelope: queue depth, shed %, drain time.
    Burst(workload::burst::BurstArgs),
    /// Opens open loop at half the maximum over many envelopes; kill -9 of
    /// one logic server part-way: the time back to 90% throughput.
    Kill(workload::kill::KillArgs),
    /// Sends only: the maximum rate, then latency at half of it.
    Send,
    /// PostgreSQL's own limits on the fleet's server (bench/), alone.
    Baseline,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("loadgen: a check failed (see FAILED above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

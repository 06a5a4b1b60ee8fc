//! `loadgen`: load generator and benchmark driver (DESIGN.md §10).
//!
//! `loadgen cell-hot` measures one cell on this machine: it starts a throwaway
//! PostgreSQL (the test harness), a logic server per strategy in-process on a
//! real socket, and drives hot envelopes over gRPC — every user of a crowd opens
//! every envelope, as a group chat does on New Year's eve. The lane strategy and
//! the naive row-lock strategy run the same workload in the same run, and the
//! money invariants are reconciled after each (a fast run that loses a cent is
//! a failed run). Latencies go into HDR histograms.
//!
//! `loadgen router` is the client's view: Sends and Opens through a router in
//! front of several cells (HS256 bearer tokens, mint-pool routing, sticky
//! lanes), again per strategy of the cells in the same run, reconciled over
//! every cell afterwards. `cell-hot` isolates the cell, where the contention
//! is; `router` adds what the front door costs.
//!
//! **Owns**: workloads, latency histograms and the benchmark report.
//! **Never**: part of a deployment, reaches into a cell's internals past
//! its public API, or reports a run whose money does not reconcile.

mod bench;
mod cell_hot;
mod latency;
mod pg_limit;
mod phase;
mod through_router;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hot envelopes against one in-process cell: lane vs rowlock, same run.
    CellHot(cell_hot::Args),
    /// Sends and Opens through a router in front of several cells: lane vs
    /// rowlock cells, same run.
    Router(through_router::Args),
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
    let outcome = match cli.command {
        Command::CellHot(args) => runtime.block_on(cell_hot::run(args)),
        Command::Router(args) => runtime.block_on(through_router::run(args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

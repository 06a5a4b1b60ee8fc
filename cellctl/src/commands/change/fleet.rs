//! After cells.yaml is written: tell the running fleet and wait until it
//! serves the new topology (issue 11 item 1).
//!
//! "The fleet" is the one a `cellctl up` on `--state-dir` runs, and only if
//! that `up` runs *this* file; any other process watching the file reloads
//! it on its own poll. Every router and logic server `up` started gets a
//! SIGHUP (each rereads the file at once instead of at its next poll), then
//! each one listed in the new topology (logic servers) or in the state
//! directory (routers) is asked which topology it serves
//! (`CellOps.CellStatus`, `RouterOps.RouterStatus`) until it reports the new
//! fingerprint.
//!
//! A part that does not answer at all (its process is down) is reported, not
//! waited for: it reads the new file when it starts, so it can never serve
//! the old one. The exception is a logic server of a cell the change adds
//! (`must_start`, `cellctl expand`): the `up` fleet starts it (initdb,
//! migrations, then the server), so it is waited for while down, for at
//! least [`STARTING_WAIT`], and one that never answers is an error. A part that answers but still serves an older topology when
//! `--wait-secs` runs out is an error (exit 1): the file *is* written, and the
//! message says which part lags and what it serves.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use redcell_pgsys::sys::{Signal, send_signal};
use redcell_topology::Topology;
use tonic::metadata::AsciiMetadataValue;

use crate::{
    CommandError,
    commands::{
        state_dir::{self, StateDir},
        status::{Part, PartStatus, part_status},
    },
};

/// How often lagging parts are asked again.
const POLL: Duration = Duration::from_millis(20);
/// Deadline of one probe (connect, health, status).
const PROBE: Duration = Duration::from_millis(1000);
/// The least wait when a new cell must start: its PostgreSQL is initialized
/// and migrated first, which takes seconds.
pub const STARTING_WAIT: Duration = Duration::from_secs(60);

/// One router or logic server to hear from.
#[derive(Debug, Clone)]
struct Target {
    /// `router 127.0.0.1:7000`, `cell n1 server 127.0.0.1:7101`.
    label: String,
    part: Part,
    address: String,
    /// A new cell's server: waited for while down.
    must_start: bool,
}

/// Where a part stands at the end of the wait.
#[derive(Debug)]
enum Outcome {
    /// Reported the new fingerprint this long after the write.
    Serves(Duration),
    /// Did not answer (process down or not listening).
    Down(String),
    /// Answered, but with another topology or an error.
    Lagging(String),
}

/// Signals the fleet on `state_dir` (if it runs `path`) and waits until each
/// part serves `after`, printing one line per finding. `must_start` lists
/// server addresses the fleet is starting (new cells): those are waited for
/// even while down, for at least [`STARTING_WAIT`].
pub fn converge(
    path: &Path,
    after: &Topology,
    state_dir: &Path,
    wait: Duration,
    must_start: &[String],
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let written = Instant::now();
    let state = StateDir::at(state_dir)?;
    if let Some(reason) = not_ours(&state, path) {
        writeln!(out, "fleet: {reason}; not signalled")?;
        return Ok(());
    }
    let Some(token) = std::fs::read_to_string(state.internal_token_file())
        .ok()
        .and_then(|text| text.trim().parse::<AsciiMetadataValue>().ok())
    else {
        writeln!(
            out,
            "fleet: no internal token in {}; cannot ask which topology each part serves",
            state.root().display()
        )?;
        return Ok(());
    };
    let signalled = signal(&state);
    let targets = targets(after, &state, must_start);
    let wait = if targets.iter().any(|target| target.must_start) {
        wait.max(STARTING_WAIT)
    } else {
        wait
    };
    let runtime = super::super::reconcile::runtime()?;
    let outcomes = runtime.block_on(wait_for(
        &targets,
        &token,
        &after.fingerprint(),
        written,
        wait,
    ));
    report(
        &targets,
        &outcomes,
        signalled,
        &after.fingerprint(),
        wait,
        out,
    )
}

/// Why the fleet on `state` is not the one to signal, if it is not.
fn not_ours(state: &StateDir, path: &Path) -> Option<String> {
    let shown = state.root().display();
    let up = state_dir::read_pid(&state.up_pid_file());
    if !up.is_some_and(|pid| state_dir::runs(pid, "cellctl")) {
        return Some(format!(
            "no `cellctl up` runs on {shown}; servers watching the file reload it on their own"
        ));
    }
    let runs = state.read_record(&state.topology_file()).ok()?;
    let runs = PathBuf::from(runs.trim());
    let ours = std::path::absolute(path).ok()?;
    let same = match (runs.canonicalize(), ours.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => runs == ours,
    };
    (!same).then(|| {
        format!(
            "the `cellctl up` on {shown} runs {}, not {}",
            runs.display(),
            ours.display()
        )
    })
}

/// SIGHUP to every live router and logic server `up` started; how many.
fn signal(state: &StateDir) -> usize {
    state
        .pid_records()
        .into_iter()
        .filter(|record| record.part.starts_with("cell-") || record.part.starts_with("router-"))
        .filter(|record| state_dir::runs(record.pid, state_dir::program_of(&record.part)))
        .filter(|record| send_signal(record.pid, Signal::Hangup).is_ok())
        .count()
}

/// Every logic server of the new topology and every router of the fleet.
fn targets(after: &Topology, state: &StateDir, must_start: &[String]) -> Vec<Target> {
    let mut targets: Vec<Target> = after
        .cells()
        .iter()
        .flat_map(|cell| {
            cell.servers.iter().map(|address| Target {
                label: format!("cell {} server {address}", cell.name),
                part: Part::Server,
                address: address.clone(),
                must_start: must_start.contains(address),
            })
        })
        .collect();
    targets.extend(
        state
            .routers()
            .unwrap_or_default()
            .into_iter()
            .map(|address| Target {
                label: format!("router {address}"),
                part: Part::Router,
                address,
                must_start: false,
            }),
    );
    targets
}

/// Asks every part not yet done, every [`POLL`], until each serves
/// `fingerprint` or is down, or `wait` has passed since `written`.
async fn wait_for(
    targets: &[Target],
    token: &AsciiMetadataValue,
    fingerprint: &str,
    written: Instant,
    wait: Duration,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = targets.iter().map(|_| None).collect();
    loop {
        let pending: Vec<usize> = (0..targets.len())
            .filter(|&index| !matches!(outcomes[index], Some(Outcome::Serves(_))))
            .collect();
        let probes = pending.iter().map(|&index| {
            let target = targets[index].clone();
            let token = token.clone();
            let fingerprint = fingerprint.to_owned();
            tokio::spawn(async move {
                part_status(target.part, target.address, Some(token), fingerprint, PROBE).await
            })
        });
        let probes: Vec<_> = probes.collect();
        for (index, probe) in pending.iter().zip(probes) {
            let outcome = match probe.await {
                Ok(status) if targets[*index].must_start && status.health != "SERVING" => {
                    not_serving_yet(&status)
                }
                Ok(status) => outcome_of(&status, written),
                Err(error) => Outcome::Lagging(format!("probe failed: {error}")),
            };
            outcomes[*index] = Some(outcome);
        }
        let settled = outcomes.iter().zip(targets).all(|(outcome, target)| {
            matches!(outcome, Some(Outcome::Serves(_)))
                || (matches!(outcome, Some(Outcome::Down(_))) && !target.must_start)
        });
        if settled || written.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    outcomes
        .into_iter()
        .zip(targets)
        .map(|(outcome, target)| match outcome {
            Some(Outcome::Down(why)) if target.must_start => {
                Outcome::Lagging(format!("a new cell's server that did not start ({why})"))
            }
            Some(outcome) => outcome,
            None => Outcome::Lagging("never asked".into()),
        })
        .collect()
}

/// A new cell's server is done only once it answers SERVING (its order DB
/// checked): a `switch` right after the wait must find it ready.
fn not_serving_yet(status: &PartStatus) -> Outcome {
    match status.health.as_str() {
        "DOWN" => Outcome::Down(status.error.clone().unwrap_or_else(|| "DOWN".into())),
        health => Outcome::Lagging(format!("{health} (a new cell's server: SERVING awaited)")),
    }
}

fn outcome_of(status: &PartStatus, written: Instant) -> Outcome {
    if status.health == "DOWN" {
        return Outcome::Down(status.error.clone().unwrap_or_else(|| "DOWN".into()));
    }
    match (&status.topology, &status.error) {
        (Some(served), _) if served.current => Outcome::Serves(written.elapsed()),
        (Some(served), _) => Outcome::Lagging(format!(
            "{} serves topology {}",
            status.health, served.fingerprint
        )),
        (None, Some(error)) => Outcome::Lagging(format!("{}: {error}", status.health)),
        (None, None) => Outcome::Lagging(format!("{}: no topology reported", status.health)),
    }
}

fn report(
    targets: &[Target],
    outcomes: &[Outcome],
    signalled: usize,
    fingerprint: &str,
    wait: Duration,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let serving: Vec<Duration> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Serves(after) => Some(*after),
            _ => None,
        })
        .collect();
    let last = serving.iter().max().copied().unwrap_or_default();
    writeln!(
        out,
        "fleet: signalled {signalled} processes; {} of {} parts serve topology {fingerprint} \
         ({} ms after the write to the last of them)",
        serving.len(),
        targets.len(),
        last.as_millis()
    )?;
    let mut lagging = Vec::new();
    for (target, outcome) in targets.iter().zip(outcomes) {
        match outcome {
            Outcome::Serves(_) => {}
            Outcome::Down(why) => writeln!(
                out,
                "fleet: {} is down ({why}); it reads the new file when it starts",
                target.label
            )?,
            Outcome::Lagging(why) => {
                writeln!(out, "fleet: {} did not switch: {why}", target.label)?;
                lagging.push(target.label.clone());
            }
        }
    }
    if lagging.is_empty() {
        return Ok(());
    }
    Err(CommandError::Input(format!(
        "cells.yaml is written, but {} part(s) did not serve it within {} s: {} \
         (see `cellctl status`)",
        lagging.len(),
        wait.as_secs(),
        lagging.join(", ")
    )))
}

//! Every topology change goes through this module (issue 11 item 1): `fail`,
//! `restore`, `drain-region`, `undrain`, `degrade`, `failover`, and the
//! expansion commands.
//!
//! The flow is the same for each: read cells.yaml once (its bytes and their
//! SHA-256), make the plan with `redcell_topology::plan` (plans edit the
//! validated document and validate again), show it as a unified diff of the
//! file ([`diff`]) plus the resulting mint pool per region (the `mint-pool`
//! command's own rendering), and change nothing unless `--apply` (or a "y" at
//! the prompt, when both ends are a terminal and `--dry-run` is not given).
//! To apply, the new text is validated once more and written by
//! [`write::write_atomically`]: under an exclusive lock, only if the file's
//! hash is still the one read at plan time, the previous version kept in
//! `cells.yaml.prev`. Then, where a fleet from `cellctl up` runs on this file,
//! [`fleet`] signals its routers and logic servers (SIGHUP) and waits until
//! each reports the new topology fingerprint, or says which did not and why.
//!
//! The file is written in canonical form ([`Topology::to_yaml`]): comments and
//! layout of a hand-edited file are not kept in the new file (the old one is
//! in `cells.yaml.prev`), and the diff shown is between the canonical forms,
//! so it lists only what the plan changes.

mod diff;
pub mod fleet;
mod write;

use std::{
    fs,
    io::{BufRead, IsTerminal, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use redcell_topology::{CellStatus, ConfigError, ConfigErrors, Topology, plan::PlanError};

pub use self::{
    diff::unified_diff,
    write::{ContentHash, WriteError, write_atomically},
};
use crate::{CommandError, LoadError, commands::mint_pool};

/// The flags every topology change takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangeArgs {
    /// Write cells.yaml (default: show the plan only).
    #[arg(long, conflicts_with = "dry_run")]
    pub apply: bool,
    /// Show the plan only, without asking even on a terminal.
    #[arg(long)]
    pub dry_run: bool,
    /// The state directory of the `cellctl up` fleet to signal and wait for.
    #[arg(long, env = "REDCELL_STATE_DIR", default_value = super::state_dir::DEFAULT)]
    pub state_dir: PathBuf,
    /// How long to wait for every router and logic server to report the new
    /// topology after the write.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub wait_secs: u64,
}

impl ChangeArgs {
    /// Plan only, on the default state directory (tests and library callers).
    pub fn dry_run() -> ChangeArgs {
        ChangeArgs {
            apply: false,
            dry_run: true,
            state_dir: PathBuf::from(super::state_dir::DEFAULT),
            wait_secs: 10,
        }
    }

    /// Apply, signalling the fleet on `state_dir`.
    pub fn apply(state_dir: &Path) -> ChangeArgs {
        ChangeArgs {
            apply: true,
            dry_run: false,
            state_dir: state_dir.to_owned(),
            wait_secs: 10,
        }
    }
}

/// A planned change: the file as read, and the topology after the plan.
#[derive(Debug)]
pub struct Planned {
    pub path: PathBuf,
    pub read_hash: ContentHash,
    /// Whether the file was already in canonical form (no comments to lose).
    pub canonical: bool,
    pub before: Topology,
    pub after: Topology,
    /// Canonical text of `before` and `after`.
    pub old_text: String,
    pub new_text: String,
}

/// Reads the file once and makes the plan over what was read.
pub fn plan(
    path: &Path,
    make: impl FnOnce(&Topology) -> Result<Topology, PlanError>,
) -> Result<Planned, CommandError> {
    let shown = path.display().to_string();
    let bytes = fs::read(path).map_err(|error| LoadError::Read {
        path: shown.clone(),
        error,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| LoadError::Read {
        path: shown.clone(),
        error: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ),
    })?;
    let canonical_file = text;
    let before = Topology::parse(text).map_err(|errors| LoadError::Invalid {
        path: shown.clone(),
        errors,
    })?;
    let after = make(&before).map_err(|error| CommandError::Input(error.to_string()))?;
    let render = |topology: &Topology| {
        topology
            .to_yaml()
            .map_err(|errors| CommandError::Input(format!("cannot render the topology: {errors}")))
    };
    let old_text = render(&before)?;
    Ok(Planned {
        path: path.to_owned(),
        canonical: canonical_file == old_text,
        read_hash: ContentHash::of(&bytes),
        old_text,
        new_text: render(&after)?,
        before,
        after,
    })
}

/// Shows a plan, and when applied writes it and waits for the fleet. `what`
/// names the change (`fail n1`).
pub fn run(
    path: &Path,
    what: &str,
    args: &ChangeArgs,
    make: impl FnOnce(&Topology) -> Result<Topology, PlanError>,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let planned = plan(path, make).map_err(|error| match error {
        CommandError::Input(message) => CommandError::Input(format!("cannot {what}: {message}")),
        other => other,
    })?;
    let name = path.file_name().map_or_else(
        || planned.path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    writeln!(out, "plan: {what}")?;
    out.write_all(unified_diff(&planned.old_text, &planned.new_text, &name).as_bytes())?;
    writeln!(out, "mint pool after the change:")?;
    mint_pool::run(&planned.after, None, out)?;
    if !planned.canonical {
        writeln!(
            out,
            "note: {name} is written in canonical form: its comments and layout are not kept \
             (the current file is kept as {name}.prev)"
        )?;
    }
    if !args.apply && !confirmed(args, out)? {
        writeln!(
            out,
            "dry run: nothing written; run again with --apply to write {}",
            path.display()
        )?;
        return Ok(());
    }
    // Validate the very text to be written, not just the plan's document.
    let check = Topology::parse(&planned.new_text)
        .map_err(|errors| CommandError::Input(format!("the planned text is invalid: {errors}")))?;
    if check.fingerprint() != planned.after.fingerprint() {
        return Err(CommandError::Input(
            "the planned text does not parse back to the planned topology; nothing written".into(),
        ));
    }
    let prev = write_atomically(path, &planned.new_text, planned.read_hash)
        .map_err(|error| CommandError::Input(error.to_string()))?;
    writeln!(
        out,
        "applied: wrote {} (topology {} -> {}); previous version kept in {}",
        path.display(),
        planned.before.fingerprint(),
        planned.after.fingerprint(),
        prev.display()
    )?;
    out.flush()?;
    fleet::converge(
        path,
        &planned.after,
        &args.state_dir,
        Duration::from_secs(args.wait_secs),
        &new_servers(&planned.before, &planned.after),
        out,
    )
}

/// The logic servers of cells `after` has and `before` has not (an
/// expansion's new cells): the `up` fleet starts them, so the wait covers
/// them while they are still down.
fn new_servers(before: &Topology, after: &Topology) -> Vec<String> {
    after
        .cells()
        .iter()
        .filter(|cell| before.cell(&cell.name).is_none())
        .flat_map(|cell| cell.servers.iter().cloned())
        .collect()
}

/// Asks "apply?" when stdin and stdout are both a terminal (an operator at a
/// shell) and `--dry-run` was not given; false everywhere else, so scripts
/// and tests never block on a prompt.
fn confirmed(args: &ChangeArgs, out: &mut impl Write) -> Result<bool, CommandError> {
    if args.dry_run || !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Ok(false);
    }
    write!(out, "apply this change? [y/N] ")?;
    out.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `cellctl fail CELL [--apply]`. Failing the last active cell of a region is
/// refused by the plan's validation (a region must be able to mint); the
/// refusal names the cell and says to drain the region first.
pub fn fail(
    path: &Path,
    cell: &str,
    args: &ChangeArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    run(
        path,
        &format!("fail {cell}"),
        args,
        |topology| {
            redcell_topology::plan::fail(topology, cell).map_err(|error| match error {
                PlanError::Invalid(errors) if last_active(topology, cell) => {
                    PlanError::Invalid(ConfigErrors(
                        std::iter::once(ConfigError::new(
                            topology
                                .cells()
                                .iter()
                                .position(|c| c.name == cell)
                                .map_or_else(
                                    || "cells".to_owned(),
                                    |i| format!("cells[{i}].status"),
                                ),
                            format!(
                                "{cell:?} is the last active cell of its region; drain the \
                                 region first (minting.region_override)"
                            ),
                        ))
                        .chain(errors.0)
                        .collect(),
                    ))
                }
                other => other,
            })
        },
        out,
    )
}

/// `cellctl restore CELL [--apply]`.
pub fn restore(
    path: &Path,
    cell: &str,
    args: &ChangeArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    run(
        path,
        &format!("restore {cell}"),
        args,
        |topology| redcell_topology::plan::restore(topology, cell),
        out,
    )
}

/// Whether `cell` is the only active cell of its region.
fn last_active(topology: &Topology, cell: &str) -> bool {
    let Some(target) = topology.cell(cell) else {
        return false;
    };
    !topology.cells().iter().any(|other| {
        other.name != cell && other.region == target.region && other.status == CellStatus::Active
    })
}

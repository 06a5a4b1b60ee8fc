//! Every topology change goes through this module (issue 11 item 1): `fail`,
//! `restore` today; drain, degrade and expansion commands later.
//!
//! The flow is the same for each: read cells.yaml once (its bytes and their
//! SHA-256), make the plan with `redcell_topology::plan` (plans edit the
//! validated document and validate again), show it as a unified diff of the
//! file plus the resulting mint pool per region (the `mint-pool` command's own
//! rendering), and change nothing unless `--apply`. With `--apply` the new
//! text is validated once more and written atomically by [`write_atomically`]:
//! under an exclusive lock (`flock`, via std's `File::try_lock`) on `cells.yaml.lock`, only if the file's hash is
//! still the one read at plan time (else a concurrent change is refused), the
//! previous bytes kept as `cells.yaml.prev`, the new text written to a temp
//! file in the same directory, fsynced, renamed over, the directory fsynced.
//!
//! The file is written in canonical form ([`Topology::to_yaml`]): comments and
//! layout of a hand-edited file are not kept in the new file (the old one is
//! in `cells.yaml.prev`), and the diff shown is between the canonical forms,
//! so it lists only what the plan changes.
//!
//! **Not here yet (seam: [`FLEET_SEAM`])**: signalling the fleet and waiting
//! until every router and cell reports the new topology version. The cells and
//! routers already watch cells.yaml and reload it; `cellctl status` shows the
//! topology fingerprint each one serves, which the apply report prints.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use redcell_topology::{CellStatus, ConfigError, ConfigErrors, Topology, plan::PlanError};
use sha2::{Digest, Sha256};

use crate::{CommandError, LoadError, commands::mint_pool};

/// What [`run`] prints after an apply, in place of waiting for the fleet:
/// the one place a fleet signal + wait belongs when it is implemented.
pub const FLEET_SEAM: &str = "the cells and routers watching this file reload it; \
     `cellctl status` shows the topology fingerprint each one serves";

/// SHA-256 of the file's bytes as read at plan time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(Sha256::digest(bytes).into())
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        self.0[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
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

/// Why a change could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "{path} changed since it was read (sha256 {expected} at plan time, {found} now); \
         nothing written — plan again"
    )]
    Changed {
        path: String,
        expected: String,
        found: String,
    },
    #[error("another cellctl is changing {path} (lock {lock} is held); nothing written")]
    Locked { path: String, lock: String },
    #[error("cannot write {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |error| WriteError::Io {
        path: path.display().to_string(),
        error,
    }
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

/// Shows a plan, and with `apply` writes it. `what` names the change
/// (`fail n1`).
pub fn run(
    path: &Path,
    what: &str,
    apply: bool,
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
    if !apply {
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
    // FLEET_SEAM: signal the fleet and wait for each part's version here.
    writeln!(out, "{FLEET_SEAM}")?;
    Ok(())
}

/// `cells.yaml` -> `cells.yaml.<suffix>` in the same directory.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Writes `text` to `path` atomically if the file's bytes still hash to
/// `expected`; returns where the previous version was kept (`<path>.prev`).
///
/// Under an exclusive, non-blocking `flock` on `<path>.lock` (a second writer
/// is refused, not queued): compare the hash, copy the current bytes to
/// `<path>.prev` (itself written atomically), write a temp file in the same
/// directory, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomically(
    path: &Path,
    text: &str,
    expected: ContentHash,
) -> Result<PathBuf, WriteError> {
    let lock_path = sibling(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // std's file lock is flock(2) on Linux: released when `lock` is closed.
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(WriteError::Locked {
                path: path.display().to_string(),
                lock: lock_path.display().to_string(),
            });
        }
        Err(fs::TryLockError::Error(error)) => return Err(io(&lock_path)(error)),
    }
    let current = fs::read(path).map_err(io(path))?;
    let found = ContentHash::of(&current);
    if found != expected {
        return Err(WriteError::Changed {
            path: path.display().to_string(),
            expected: expected.short(),
            found: found.short(),
        });
    }
    let prev = sibling(path, ".prev");
    replace(&prev, &current)?;
    replace(path, text.as_bytes())?;
    drop(lock); // closing the descriptor releases the flock
    Ok(prev)
}

/// Temp file in the same directory, fsync, rename over, fsync the directory.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let temp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temp).map_err(io(&temp))?;
        file.write_all(bytes).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        fs::rename(&temp, path).map_err(io(path))?;
        let dir = directory(path);
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// A unified diff (3 lines of context) of two texts, `--- name` / `+++ name
/// (planned)`; "(no change)" when equal.
pub fn unified_diff(old: &str, new: &str, name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table (cells.yaml is small).
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // Edit script: (kind, old index, new index).
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j));
            i += 1;
        } else {
            ops.push(('+', i, j));
            j += 1;
        }
    }
    let mut text = format!("--- {name}\n+++ {name} (planned)\n");
    if ops.iter().all(|(kind, _, _)| *kind == ' ') {
        text.push_str("(no change)\n");
        return text;
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let old_len = hunk.iter().filter(|op| op.0 != '+').count();
        let new_len = hunk.iter().filter(|op| op.0 != '-').count();
        let (_, old_start, new_start) = hunk[0];
        text.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            old_start + usize::from(old_len > 0),
            new_start + usize::from(new_len > 0)
        ));
        for &(kind, i, j) in hunk {
            let line = if kind == '+' { b[j] } else { a[i] };
            text.push(kind);
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// `cellctl fail CELL [--apply]`. Failing the last active cell of a region is
/// refused by the plan's validation (a region must be able to mint); the
/// refusal names the cell and says to drain the region first.
pub fn fail(
    path: &Path,
    cell: &str,
    apply: bool,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    run(
        path,
        &format!("fail {cell}"),
        apply,
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
    apply: bool,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    run(
        path,
        &format!("restore {cell}"),
        apply,
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

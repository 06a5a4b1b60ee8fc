//! Naming, creating and sweeping the per-server directories.
//!
//! Every directory the harness creates for a server (or for building the
//! pristine cluster) is `temp_dir()/redcell-pg-<pid>-<n>`, where `<pid>` is the
//! test process that owns it. That name is the whole ownership record: when
//! `<pid>` is no longer alive, nobody will ever clean the directory up except
//! the sweep below, which the first server start of each test process runs. A
//! test process killed with SIGKILL (or a Ctrl-C) therefore leaks its
//! servers only until the next test run.
//!
//! Layout of a server directory (owned by the server user, mode 0700):
//!
//! ```text
//! redcell-pg-<pid>-<n>/
//!   data/              PGDATA, copied from the pristine cluster
//!   data/postmaster.pid  first line: the postmaster's pid (written by postgres)
//!   server.log         postmaster stdout + stderr, appended across restarts
//!   .s.PGSQL.<port>    unix socket (-k points here, not at /var/run/postgresql)
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redcell_pgsys::{ServerUser, process_tree};

use crate::error::HarnessError;

const PREFIX: &str = "redcell-pg-";

/// Grace period for a stale postmaster to honour SIGQUIT during a sweep.
const SWEEP_GRACE: Duration = Duration::from_secs(3);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh, private `redcell-pg-<our pid>-<n>` directory owned by the
/// server user.
pub(crate) fn create(user: Option<&ServerUser>) -> Result<PathBuf, HarnessError> {
    let root = std::env::temp_dir();
    let pid = std::process::id();
    loop {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{PREFIX}{pid}-{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => {
                if let Err(err) = redcell_pgsys::make_private_dir(&dir, user) {
                    remove(&dir);
                    return Err(err.into());
                }
                return Ok(dir);
            }
            // Left over by an earlier process that had our pid; pick another n.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(HarnessError::io(format!("creating {}", dir.display()))(err)),
        }
    }
}

/// Removes a server directory, logging (not failing) when it cannot.
pub(crate) fn remove(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir)
        && err.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), %err, "could not remove a postgres test directory");
    }
}

/// Runs [`sweep_stale`] once per process.
pub(crate) fn sweep_stale_once() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_stale);
}

/// Removes the directories (and stops the postmasters) of test processes
/// that are gone.
fn sweep_stale() {
    let root = std::env::temp_dir();
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(owner) = entry.file_name().to_str().and_then(owner_pid) else {
            continue;
        };
        if owner == me || process_tree::is_alive(owner) {
            continue;
        }
        let dir = entry.path();
        if let Some(postmaster) = recorded_postmaster(&dir) {
            tracing::info!(dir = %dir.display(), postmaster, "stopping a postgres left by a dead test process");
            // Not our child: it is reparented to init, which reaps it.
            process_tree::end_postmaster(postmaster, SWEEP_GRACE, &mut || {
                !process_tree::is_alive(postmaster)
            });
        }
        remove(&dir);
    }
}

/// `<pid>` from a `redcell-pg-<pid>-<n>` name.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(PREFIX)?.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// The live postmaster recorded in `<dir>/data/postmaster.pid`, if that pid
/// is still a running `postgres` (and not an unrelated process that reused
/// the pid).
fn recorded_postmaster(dir: &Path) -> Option<u32> {
    let pid_file = fs::read_to_string(dir.join("data").join("postmaster.pid")).ok()?;
    let pid: u32 = pid_file.lines().next()?.trim().parse().ok()?;
    let is_postgres =
        process_tree::command_name(pid).is_some_and(|name| name.starts_with("postgres"));
    (is_postgres && process_tree::is_alive(pid)).then_some(pid)
}

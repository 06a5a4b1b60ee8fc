//! The pristine cluster: one `initdb` per machine, copied for every server.
//!
//! `initdb` costs one to two seconds; copying its ~40 MB result costs tens of
//! milliseconds. So the harness runs `initdb` once and keeps the result in
//! `temp_dir()/redcell-harness-cache-<version>-<key>-u<uid>`, where the key
//! covers the binary directory, the full version string and the `initdb`
//! flags below, and `<uid>` is the owner of the files (the server user).
//!
//! Invariant: a cache directory that exists is complete. It is built under a
//! `redcell-pg-<pid>-<n>` name (swept if the builder dies), a `complete`
//! marker is written last, and only then is it renamed into place; rename(2)
//! of a directory is atomic and fails if a complete (non-empty) directory is
//! already there, in which case the loser discards its copy and uses the
//! winner's. Within one process the path is resolved once.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::sync::OnceCell;

use redcell_pgsys::{PgBinaries, ServerUser};

use crate::error::HarnessError;
use crate::server::run_blocking;
use crate::server_dirs;

/// `initdb` arguments besides `-D`. Changing them changes the cache key.
///
/// `--locale=C` keeps sorting byte-wise and initdb independent of whichever
/// locales the machine happens to have installed.
const INITDB_ARGS: &[&str] = &[
    "-A",
    "trust",
    "-U",
    "postgres",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
];

/// Marker written into a cache directory after `initdb` succeeded.
const COMPLETE_MARKER: &str = "complete";

static PRISTINE_DATA_DIR: OnceCell<PathBuf> = OnceCell::const_new();

/// Path of a pristine data directory to copy; runs `initdb` on first use.
pub(crate) async fn data_dir(
    binaries: &PgBinaries,
    user: Option<&ServerUser>,
) -> Result<PathBuf, HarnessError> {
    let binaries = binaries.clone();
    let user = user.cloned();
    PRISTINE_DATA_DIR
        .get_or_try_init(|| {
            run_blocking("preparing the pristine cluster", move || {
                build_or_reuse(&binaries, user.as_ref())
            })
        })
        .await
        .cloned()
}

fn build_or_reuse(
    binaries: &PgBinaries,
    user: Option<&ServerUser>,
) -> Result<PathBuf, HarnessError> {
    let version = server_version(binaries)?;
    let cache = std::env::temp_dir().join(cache_name(binaries, &version, user));
    if is_complete(&cache) {
        tracing::debug!(cache = %cache.display(), "reusing the pristine postgres cluster");
        return Ok(cache.join("data"));
    }

    let staging = server_dirs::create(user)?;
    if let Err(err) = run_initdb(binaries, &staging.join("data"), user) {
        server_dirs::remove(&staging);
        return Err(err);
    }
    if let Err(err) = fs::write(staging.join(COMPLETE_MARKER), version.as_bytes()) {
        server_dirs::remove(&staging);
        return Err(HarnessError::io(format!(
            "writing the marker in {}",
            staging.display()
        ))(err));
    }

    match fs::rename(&staging, &cache) {
        Ok(()) => Ok(cache.join("data")),
        Err(_) if is_complete(&cache) => {
            // Another test process won the race; its copy is as good as ours.
            server_dirs::remove(&staging);
            Ok(cache.join("data"))
        }
        Err(err) => {
            // The cache path is unusable (say, a broken leftover we may not
            // replace). Use our copy for this process; the sweep of a later
            // run removes it, since it carries our pid.
            tracing::warn!(cache = %cache.display(), %err, "cannot publish the pristine cluster; using a private copy");
            Ok(staging.join("data"))
        }
    }
}

fn is_complete(cache: &Path) -> bool {
    cache.join(COMPLETE_MARKER).is_file() && cache.join("data").join("PG_VERSION").is_file()
}

/// `postgres --version`, e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
fn server_version(binaries: &PgBinaries) -> Result<String, HarnessError> {
    let postgres = binaries.postgres();
    let output = Command::new(&postgres)
        .arg("--version")
        .output()
        .map_err(HarnessError::io(format!(
            "running {} --version",
            postgres.display()
        )))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn cache_name(binaries: &PgBinaries, version: &str, user: Option<&ServerUser>) -> String {
    let mut hasher = DefaultHasher::new();
    binaries.bindir().hash(&mut hasher);
    version.hash(&mut hasher);
    INITDB_ARGS.hash(&mut hasher);
    // "postgres (PostgreSQL) 15.18 (Debian ...)" -> "15.18"
    let number: String = version
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let owner = ServerUser::owner_uid(user);
    format!(
        "redcell-harness-cache-{number}-{:016x}-u{owner}",
        hasher.finish()
    )
}

fn run_initdb(
    binaries: &PgBinaries,
    data_dir: &Path,
    user: Option<&ServerUser>,
) -> Result<(), HarnessError> {
    let initdb = binaries.initdb();
    let mut command = Command::new(&initdb);
    command.arg("-D").arg(data_dir).args(INITDB_ARGS);
    // The server user may not be able to enter our working directory.
    if let Some(parent) = data_dir.parent() {
        command.current_dir(parent);
    }
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
    tracing::debug!(initdb = %initdb.display(), data_dir = %data_dir.display(), "running initdb");
    let output = command
        .output()
        .map_err(HarnessError::io(format!("running {}", initdb.display())))?;
    if output.status.success() {
        return Ok(());
    }
    let mut printed = String::from_utf8_lossy(&output.stderr).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(HarnessError::InitdbFailed {
        status: output.status,
        data_dir: data_dir.to_path_buf(),
        stderr: printed,
    })
}

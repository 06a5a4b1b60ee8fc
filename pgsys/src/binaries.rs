//! Locating the PostgreSQL server programs (`initdb`, `postgres`).
//!
//! Debian and Ubuntu install them under `/usr/lib/postgresql/<major>/bin`,
//! which is not on `PATH`; `pg_config --bindir` names that directory when the
//! matching `pg_config` is installed. The search order is:
//!
//! 1. `REDCELL_PG_BINDIR`, authoritative: if it is set and wrong, that is an
//!    error rather than a silent fall-through to some other version;
//! 2. `pg_config --bindir`;
//! 3. the highest numbered version under `/usr/lib/postgresql/*/bin`;
//! 4. the first `PATH` directory holding both programs.
//!
//! The environment is read once, in [`BinarySearch::from_env`]; the search
//! itself takes the result as a value, so it can be exercised without
//! touching the process environment.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::PgSysError;

/// Environment variable that names the server binary directory outright.
pub const BINDIR_ENV: &str = "REDCELL_PG_BINDIR";

/// Where to look for the server programs; see the module docs for the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinarySearch {
    /// `REDCELL_PG_BINDIR`: when set, the only place searched.
    pub override_dir: Option<PathBuf>,
    /// Program to ask for `--bindir` (normally `pg_config`); `None` skips it.
    pub pg_config: Option<PathBuf>,
    /// Directory whose `<version>/bin` subdirectories are searched
    /// (normally `/usr/lib/postgresql`).
    pub versioned_root: PathBuf,
    /// Value of `PATH`, searched last.
    pub path: Option<OsString>,
}

impl BinarySearch {
    /// The search this process's environment asks for.
    pub fn from_env() -> BinarySearch {
        BinarySearch {
            override_dir: std::env::var_os(BINDIR_ENV)
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
            pg_config: Some(PathBuf::from("pg_config")),
            versioned_root: PathBuf::from("/usr/lib/postgresql"),
            path: std::env::var_os("PATH"),
        }
    }
}

/// A directory holding executable `initdb` and `postgres` programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    bindir: PathBuf,
}

impl PgBinaries {
    /// Finds the server programs, or explains where it looked and how to
    /// install them.
    pub fn locate(search: &BinarySearch) -> Result<PgBinaries, PgSysError> {
        let mut searched = Vec::new();

        if let Some(dir) = &search.override_dir {
            if holds_server_programs(dir) {
                return Ok(PgBinaries::at(dir));
            }
            return Err(PgSysError::BinariesNotFound {
                searched: format!(
                    "{BINDIR_ENV}={} (no executable initdb and postgres there)",
                    dir.display()
                ),
            });
        }

        if let Some(pg_config) = &search.pg_config {
            match bindir_from_pg_config(pg_config) {
                Some(dir) if holds_server_programs(&dir) => return Ok(PgBinaries::at(&dir)),
                Some(dir) => searched.push(format!(
                    "`{} --bindir` = {} (no initdb/postgres)",
                    pg_config.display(),
                    dir.display()
                )),
                None => searched.push(format!("`{} --bindir` (did not run)", pg_config.display())),
            }
        }

        match highest_versioned_bindir(&search.versioned_root) {
            Some(dir) => return Ok(PgBinaries::at(&dir)),
            None => searched.push(format!("{}/*/bin", search.versioned_root.display())),
        }

        if let Some(path) = &search.path {
            for dir in std::env::split_paths(path) {
                if holds_server_programs(&dir) {
                    // Prefer the real directory when PATH holds symlinks into
                    // /usr/lib/postgresql/<major>/bin.
                    let resolved = fs::canonicalize(dir.join("initdb"))
                        .ok()
                        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
                        .filter(|real| holds_server_programs(real))
                        .unwrap_or(dir);
                    return Ok(PgBinaries::at(&resolved));
                }
            }
            searched.push("PATH".to_owned());
        } else {
            searched.push("PATH (unset)".to_owned());
        }

        Err(PgSysError::BinariesNotFound {
            searched: searched.join("; "),
        })
    }

    fn at(dir: &Path) -> PgBinaries {
        PgBinaries {
            bindir: dir.to_path_buf(),
        }
    }

    /// The directory holding the programs.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Path of `initdb`.
    pub fn initdb(&self) -> PathBuf {
        self.bindir.join("initdb")
    }

    /// Path of `postgres` (the postmaster).
    pub fn postgres(&self) -> PathBuf {
        self.bindir.join("postgres")
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn holds_server_programs(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"))
}

fn bindir_from_pg_config(pg_config: &Path) -> Option<PathBuf> {
    let output = Command::new(pg_config).arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `<root>/<version>/bin` for the numerically highest version (so 15 beats
/// 9.6) that holds both programs.
fn highest_versioned_bindir(root: &Path) -> Option<PathBuf> {
    let entries = fs::read_dir(root).ok()?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bindir = entry.path().join("bin");
            holds_server_programs(&bindir).then_some((version, bindir))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bindir)| bindir)
}

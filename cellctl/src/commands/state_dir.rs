//! The state directory of a local fleet (`--state-dir`, default `./.redcell/`):
//! everything `cellctl up` keeps across restarts and everything `down`,
//! `fund` and `demo` need to find the running fleet.
//!
//! ```text
//! .redcell/
//!   internal-token      0600  the router<->cell credential, generated once
//!   hs256.key           0600  the routers' HS256 key (dev tokens), generated once
//!   topology            absolute path of the cells.yaml `up` runs with
//!   ledger-dsn          the ledger's DSN (fund, demo and reconcile read it)
//!   routers             router addresses, one a line: written once every part
//!                       answers its health check, removed when `up` stops
//!   up.pid              the `cellctl up` process
//!   pids/<part>.pid     each process `up` started (postgres, cell, router)
//!   logs/<part>.log     each process's stdout and stderr, appended across runs
//!   postgres-<port>/    data directory of the PostgreSQL server on that port
//!                       (a primary, or a standby of `up --standby`)
//!   postgres-<port>/fenced  that server was failed over (`cellctl failover`):
//!                       never started again; its data holds standby.signal
//!   standbys/<port>     the synchronous standby of the server on that port
//!                       (`primary=`, `standby=` ports; see up/roles.rs)
//!   standby-offset      --standby-port-offset of an `up --standby` (expand
//!                       keeps a new server's port + it free; up/standby.rs)
//! ```
//!
//! Secrets are created with mode 0600 and never rewritten, so a second `up`
//! starts routers and cells with the same credentials and the dev tokens
//! minted before still verify. A pid file is the only record that lets
//! `down` stop what a crashed `up` left; it is trusted only when the pid is
//! alive *and* runs the program the file is named for (a reused pid is not
//! signalled).

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::CommandError;

/// Default of `--state-dir` for every command that uses one.
pub const DEFAULT: &str = ".redcell";

/// Bytes of randomness in each generated secret (hex-encoded on disk).
const SECRET_BYTES: usize = 32;

/// One process `up` started, as recorded in `pids/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidRecord {
    /// Component name (`postgres-6101`, `cell-n1-7101`, `router-7000`).
    pub part: String,
    pub pid: u32,
}

/// The state directory, by path; nothing is read until asked.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The directory at `path`, made absolute (children run elsewhere).
    pub fn at(path: &Path) -> Result<StateDir, CommandError> {
        let root = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|error| {
                    CommandError::Input(format!("cannot read the working directory: {error}"))
                })?
                .join(path)
        };
        Ok(StateDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory and its `pids/` and `logs/`. Mode 0711: the
    /// PostgreSQL account (when `up` runs as root) must be able to enter it
    /// to reach its data directory, but not list it.
    pub fn create(&self) -> Result<(), CommandError> {
        for dir in [self.root.clone(), self.pids_dir(), self.logs_dir()] {
            fs::create_dir_all(&dir).map_err(|error| {
                CommandError::Input(format!(
                    "--state-dir: cannot create {}: {error}",
                    dir.display()
                ))
            })?;
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o711)).map_err(|error| {
            CommandError::Input(format!(
                "--state-dir: cannot chmod {}: {error}",
                self.root.display()
            ))
        })
    }

    pub fn pids_dir(&self) -> PathBuf {
        self.root.join("pids")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log_file(&self, part: &str) -> PathBuf {
        self.logs_dir().join(format!("{part}.log"))
    }

    pub fn pid_file(&self, part: &str) -> PathBuf {
        self.pids_dir().join(format!("{part}.pid"))
    }

    pub fn up_pid_file(&self) -> PathBuf {
        self.root.join("up.pid")
    }

    pub fn hs256_key_file(&self) -> PathBuf {
        self.root.join("hs256.key")
    }

    pub fn internal_token_file(&self) -> PathBuf {
        self.root.join("internal-token")
    }

    pub fn routers_file(&self) -> PathBuf {
        self.root.join("routers")
    }

    pub fn ledger_dsn_file(&self) -> PathBuf {
        self.root.join("ledger-dsn")
    }

    pub fn topology_file(&self) -> PathBuf {
        self.root.join("topology")
    }

    /// Parent of the data directory of the PostgreSQL server on `port`.
    pub fn postgres_dir(&self, port: u16) -> PathBuf {
        self.root.join(format!("postgres-{port}"))
    }

    /// The internal token, generated on first use.
    pub fn internal_token(&self) -> Result<String, CommandError> {
        self.secret(&self.internal_token_file())
    }

    /// Makes sure the HS256 key file exists (generated on first use).
    pub fn ensure_hs256_key(&self) -> Result<(), CommandError> {
        self.secret(&self.hs256_key_file()).map(drop)
    }

    /// Reads the secret at `path`, or writes a fresh one there (0600, no
    /// trailing newline: the key file is used as raw bytes).
    fn secret(&self, path: &Path) -> Result<String, CommandError> {
        match fs::read_to_string(path) {
            Ok(text) => return Ok(text),
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(CommandError::Input(format!(
                    "cannot read {}: {error}",
                    path.display()
                )));
            }
            Err(_) => {}
        }
        let secret = random_hex()?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|error| {
                CommandError::Input(format!("cannot create {}: {error}", path.display()))
            })?;
        file.write_all(secret.as_bytes()).map_err(|error| {
            CommandError::Input(format!("cannot write {}: {error}", path.display()))
        })?;
        Ok(secret)
    }

    /// Writes a small text record (`routers`, `ledger-dsn`, `topology`).
    pub fn write_record(&self, path: &Path, text: &str) -> Result<(), CommandError> {
        let partial = path.with_extension("partial");
        fs::write(&partial, text)
            .and_then(|()| fs::rename(&partial, path))
            .map_err(|error| {
                CommandError::Input(format!("cannot write {}: {error}", path.display()))
            })
    }

    /// Reads a record `up` wrote; a missing one means no `up` ran (or ran
    /// elsewhere), and the error says so.
    pub fn read_record(&self, path: &Path) -> Result<String, CommandError> {
        fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|error| {
                CommandError::Input(format!(
                    "cannot read {}: {error} (is `cellctl up --state-dir {}` running?)",
                    path.display(),
                    self.root.display()
                ))
            })
    }

    /// The router addresses of the running fleet.
    pub fn routers(&self) -> Result<Vec<String>, CommandError> {
        let text = self.read_record(&self.routers_file())?;
        let routers: Vec<String> = text.lines().map(str::to_owned).collect();
        if routers.is_empty() {
            return Err(CommandError::Input(format!(
                "{} names no router",
                self.routers_file().display()
            )));
        }
        Ok(routers)
    }

    /// Every pid file in `pids/`, in name order.
    pub fn pid_records(&self) -> Vec<PidRecord> {
        let Ok(entries) = fs::read_dir(self.pids_dir()) else {
            return Vec::new();
        };
        let mut records: Vec<PidRecord> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let part = name.strip_suffix(".pid")?.to_owned();
                let pid = read_pid(&entry.path())?;
                Some(PidRecord { part, pid })
            })
            .collect();
        records.sort_by(|a, b| a.part.cmp(&b.part));
        records
    }
}

/// The pid in a pid file, if it holds one.
pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The program a component's process runs, by its part name: what `/proc/<pid>/comm`
/// must say before `down` signals it.
pub fn program_of(part: &str) -> &'static str {
    if part.starts_with("postgres") {
        "postgres"
    } else if part.starts_with("router") {
        "router"
    } else {
        "cell"
    }
}

/// True while `pid` is alive and runs `program` (not a reused pid).
pub fn runs(pid: u32, program: &str) -> bool {
    redcell_pgsys::process_tree::is_alive(pid)
        && redcell_pgsys::process_tree::command_name(pid).is_some_and(|name| name == program)
}

fn random_hex() -> Result<String, CommandError> {
    let mut bytes = [0u8; SECRET_BYTES];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|error| CommandError::Input(format!("cannot read /dev/urandom: {error}")))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(no log at {}: {error})", path.display()),
    }
}

//! One throwaway PostgreSQL cluster: [`PgServer`].
//!
//! Invariants, and why they hold:
//!
//! - **The harness owns the postmaster's pid.** `postgres` is spawned
//!   directly as our child (not through `pg_ctl`, which daemonizes), so
//!   [`PgServer::stop`], [`PgServer::kill9`] and `Drop` signal exactly that
//!   process and reap it, and no pid file has to be trusted.
//! - **Ready means answering queries.** A start returns only after a real
//!   connection ran `select 1`; the "ready" line in the log, the pid file or
//!   an open port would each come earlier than that.
//! - **Nothing runtime-bound is stored.** The postmaster is a plain
//!   [`std::process::Child`] polled with `try_wait`, and every client made by
//!   [`PgServer::connect`] has its connection task spawned on the *caller's*
//!   runtime. So one server can serve many `#[tokio::test]`s, each with its
//!   own runtime (see [`crate::shared`]). Those connection tasks are the only
//!   tasks the harness spawns; each ends when its `Client` is dropped or the
//!   server goes away, so the client is their handle: a cancellation token
//!   and tracker would outlive the per-test runtimes they belong to.
//! - **Committed means durable, across a crash of the server processes.**
//!   The server runs with `fsync=off` and `full_page_writes=off` (a
//!   SIGKILLed process loses nothing that reached the OS page cache; only a
//!   machine crash would), but `synchronous_commit` stays `on`, so a commit
//!   returns only after its WAL was written. [`PgServer::kill9`] followed by
//!   [`PgServer::restart`] is therefore a faithful crash-recovery test. Never
//!   copy these settings to production.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use redcell_pgsys::sys::{self, Signal};
use redcell_pgsys::{BinarySearch, PgBinaries, ServerUser, process_tree};

use crate::error::HarnessError;
use crate::{pristine, server_dirs};

/// The only address the server listens on.
const HOST: &str = "127.0.0.1";

/// `-c` settings besides the listen address. See the module docs for why
/// fsync can be off while durability tests stay meaningful.
const SERVER_SETTINGS: &[&str] = &[
    "fsync=off",
    "full_page_writes=off",
    "max_connections=200",
    "shared_buffers=64MB",
];

/// How long a start or restart may take before it is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connect timeout for every client the harness makes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean (SIGINT) shutdown may take before the server is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Drop` waits for an immediate (SIGQUIT) shutdown before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// Lines of server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// Log lines meaning "the previous server (or another process) still holds
/// something this start needs; try again shortly".
const TRANSIENT_START_FAILURES: &[&str] = &[
    "Address already in use",
    "could not create any TCP/IP sockets",
    "pre-existing shared memory block",
    "lock file",
];

/// Whether a launch may pick a new port when the current one is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortChoice {
    /// First start: any free port will do.
    Fresh,
    /// Restart: clients hold the old DSN, so the port must not change.
    Keep,
}

/// How waiting for the server ended.
enum Readiness {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// One PostgreSQL cluster in its own temporary directory, listening on
/// `127.0.0.1:<port>`, with a superuser `postgres` and trust authentication.
///
/// Dropping it shuts the server down (SIGQUIT, then SIGKILL of the whole
/// process tree if needed) and removes its directory.
#[derive(Debug)]
pub struct PgServer {
    /// The programs it was started with, so a restart runs the same version.
    binaries: PgBinaries,
    /// Account the server runs as when we are root; `None` runs it as us.
    user: Option<ServerUser>,
    /// `redcell-pg-<pid>-<n>`: holds data, log and socket; removed on drop.
    base_dir: PathBuf,
    /// PGDATA, inside `base_dir`.
    data_dir: PathBuf,
    /// Postmaster stdout and stderr, appended across restarts.
    log_path: PathBuf,
    /// Fixed after the first start so DSNs stay valid across restarts.
    port: u16,
    /// The running postmaster; `None` after stop, kill9 or a failed start.
    postmaster: Option<Child>,
    /// Templates made by `ensure_template`: name -> fingerprint of the
    /// migrations, so concurrent tests create each template once.
    pub(crate) templates: tokio::sync::Mutex<HashMap<String, u64>>,
}

impl PgServer {
    /// Starts a fresh cluster (a copy of the pristine `initdb` result) on a
    /// free port and waits until it answers `select 1`.
    ///
    /// The first start in a process also sweeps the directories and servers
    /// left behind by test processes that died.
    pub async fn start() -> Result<PgServer, HarnessError> {
        run_blocking("sweeping stale postgres test directories", || {
            server_dirs::sweep_stale_once();
            Ok(())
        })
        .await?;
        let binaries = PgBinaries::locate(&BinarySearch::from_env())?;
        let user = ServerUser::for_this_process()?;
        let pristine = pristine::data_dir(&binaries, user.as_ref()).await?;

        let base_dir = server_dirs::create(user.as_ref())?;
        // From here on, Drop cleans up whatever fails below.
        let mut server = PgServer {
            binaries,
            user,
            data_dir: base_dir.join("data"),
            log_path: base_dir.join("server.log"),
            base_dir,
            port: 0,
            postmaster: None,
            templates: tokio::sync::Mutex::new(HashMap::new()),
        };
        let (from, to, user) = (pristine, server.data_dir.clone(), server.user.clone());
        run_blocking("copying the pristine cluster", move || {
            Ok(redcell_pgsys::copy_tree(&from, &to, user.as_ref())?)
        })
        .await?;
        server.launch(PortChoice::Fresh).await?;
        tracing::debug!(port = server.port, dir = %server.base_dir.display(), "postgres test server ready");
        Ok(server)
    }

    /// TCP port the server listens on; stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Address the server listens on: always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// Connection string for `database`, as superuser `postgres`:
    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn dsn(&self, database: &str) -> String {
        format!(
            "postgres://postgres@{HOST}:{}/{}",
            self.port,
            percent_encode(database)
        )
    }

    /// Pid of the running postmaster, `None` when it is not running.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// The server's own directory (data, log, unix socket); gone after drop.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The cluster's data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Connects to `database`; the connection task is spawned on the
    /// caller's runtime and ends when the returned client is dropped.
    pub async fn connect(&self, database: &str) -> Result<Client, HarnessError> {
        connect_dsn(&self.dsn(database)).await
    }

    /// `CREATE DATABASE name` (sent alone: it cannot run in a transaction).
    pub async fn create_database(&self, name: &str) -> Result<(), HarnessError> {
        let admin = self.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .map_err(HarnessError::pg(format!("creating database {name}")))
    }

    /// Clean fast shutdown (SIGINT: open transactions roll back, a
    /// checkpoint is written); returns once the postmaster has exited.
    /// Does nothing when the server is not running.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        let Some(pid) = self.running_pid()? else {
            return Ok(());
        };
        sys::send_signal(pid, Signal::Interrupt).map_err(HarnessError::io(format!(
            "sending SIGINT to postgres (pid {pid})"
        )))?;
        let started = Instant::now();
        while self.running_pid()?.is_some() {
            if started.elapsed() > SHUTDOWN_TIMEOUT {
                self.kill_now();
                return Err(HarnessError::ShutdownTimeout {
                    waited: started.elapsed(),
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Crashes the server: SIGKILL to the postmaster and every one of its
    /// children, as an OOM kill or a power cut of the process would. Returns
    /// once none of them is alive. Does nothing when the server is not
    /// running.
    pub fn kill9(&mut self) -> Result<(), HarnessError> {
        let Some(mut postmaster) = self.postmaster.take() else {
            return Ok(());
        };
        process_tree::kill_tree(postmaster.id());
        postmaster
            .wait()
            .map_err(HarnessError::io("reaping the killed postmaster"))?;
        Ok(())
    }

    /// Starts the server again on the same port and data directory (after a
    /// clean stop first, if it is still running) and waits until it answers
    /// `select 1`. After [`PgServer::kill9`] this runs crash recovery.
    ///
    /// Retries for up to 30 s while the port or the old shared memory is
    /// still held; fails if another process keeps the port.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            self.stop().await?;
        }
        self.launch(PortChoice::Keep).await
    }

    /// True while the postmaster process is alive.
    pub fn is_running(&mut self) -> bool {
        match self.running_pid() {
            Ok(pid) => pid.is_some(),
            Err(err) => {
                tracing::warn!(%err, "could not poll the postmaster");
                self.postmaster.is_some()
            }
        }
    }

    /// The last `lines` lines of the server log (all attempts, all restarts).
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(err) => format!("(no server log at {}: {err})", self.log_path.display()),
        }
    }

    /// Pid of the postmaster while it runs; reaps it (and forgets it) once
    /// it has exited.
    fn running_pid(&mut self) -> Result<Option<u32>, HarnessError> {
        self.try_reap().map(|_| self.pid())
    }

    /// The postmaster's exit status if it has exited (it is then reaped and
    /// forgotten); `None` while it runs or when there is none.
    fn try_reap(&mut self) -> Result<Option<ExitStatus>, HarnessError> {
        let Some(postmaster) = self.postmaster.as_mut() else {
            return Ok(None);
        };
        let status = postmaster
            .try_wait()
            .map_err(HarnessError::io("polling the postmaster"))?;
        if status.is_some() {
            self.postmaster = None;
        }
        Ok(status)
    }

    /// SIGKILLs the tree and reaps the postmaster, logging failures.
    fn kill_now(&mut self) {
        if let Err(err) = self.kill9() {
            tracing::warn!(%err, "could not kill postgres");
        }
    }

    /// Spawns the postmaster and waits for it, retrying while a previous
    /// incarnation (or a port clash) stands in the way.
    async fn launch(&mut self, ports: PortChoice) -> Result<(), HarnessError> {
        let started = Instant::now();
        let deadline = started + READY_TIMEOUT;
        let mut pause = Duration::from_millis(50);
        loop {
            if ports == PortChoice::Fresh {
                self.port = free_port()?;
            }
            let log_start = fs::metadata(&self.log_path).map_or(0, |meta| meta.len());
            self.spawn_postmaster()?;
            match self.wait_until_ready(deadline).await? {
                Readiness::Ready => return Ok(()),
                Readiness::Exited(status) => {
                    let attempt_log = read_from(&self.log_path, log_start);
                    let transient = TRANSIENT_START_FAILURES
                        .iter()
                        .any(|needle| attempt_log.contains(needle));
                    if transient && Instant::now() + pause < deadline {
                        tracing::debug!(port = self.port, "postgres could not start yet; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    return Err(HarnessError::ServerExited {
                        status,
                        log_tail: self.log_tail(LOG_TAIL_LINES),
                    });
                }
                Readiness::TimedOut => {
                    self.kill_now();
                    return Err(HarnessError::NotReady {
                        waited: started.elapsed(),
                        log_tail: self.log_tail(LOG_TAIL_LINES),
                    });
                }
            }
        }
    }

    fn spawn_postmaster(&mut self) -> Result<(), HarnessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(HarnessError::io(format!(
                "opening {}",
                self.log_path.display()
            )))?;
        let log_for_stderr = log
            .try_clone()
            .map_err(HarnessError::io("duplicating the server log handle"))?;
        let postgres = self.binaries.postgres();
        let mut command = Command::new(&postgres);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-c", &format!("listen_addresses={HOST}")])
            .arg("-k")
            .arg(&self.base_dir)
            .arg("-p")
            .arg(self.port.to_string());
        for setting in SERVER_SETTINGS {
            command.arg("-c").arg(setting);
        }
        command
            // The server user may not be able to enter our working directory.
            .current_dir(&self.base_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr);
        if let Some(user) = &self.user {
            command.uid(user.uid).gid(user.gid);
        }
        let child = command
            .spawn()
            .map_err(HarnessError::io(format!("spawning {}", postgres.display())))?;
        self.postmaster = Some(child);
        Ok(())
    }

    /// Polls with backoff until `select 1` succeeds, the postmaster exits or
    /// `deadline` passes.
    async fn wait_until_ready(&mut self, deadline: Instant) -> Result<Readiness, HarnessError> {
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(Readiness::Exited(status));
            }
            let now = Instant::now();
            if now >= deadline || self.postmaster.is_none() {
                return Ok(Readiness::TimedOut);
            }
            let budget = (deadline - now).min(PROBE_TIMEOUT);
            match tokio::time::timeout(budget, self.answers_select_one()).await {
                Ok(Ok(())) => return Ok(Readiness::Ready),
                Ok(Err(err)) => tracing::trace!(%err, "postgres not ready yet"),
                Err(_elapsed) => tracing::trace!("postgres readiness probe timed out"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(250));
        }
    }

    async fn answers_select_one(&self) -> Result<(), HarnessError> {
        let client = self.connect("postgres").await?;
        let one: i32 = client
            .query_one("select 1", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(HarnessError::pg("select 1"))?;
        if one == 1 {
            Ok(())
        } else {
            Err(HarnessError::Io {
                context: "select 1".to_owned(),
                source: io::Error::other(format!("select 1 returned {one}")),
            })
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut postmaster) = self.postmaster.take() {
            let pid = postmaster.id();
            process_tree::end_postmaster(pid, DROP_GRACE, &mut || {
                !matches!(postmaster.try_wait(), Ok(None))
            });
            if let Err(err) = postmaster.wait() {
                tracing::warn!(pid, %err, "could not reap the postmaster");
            }
        }
        server_dirs::remove(&self.base_dir);
    }
}

/// Connects with the harness's timeout and spawns the connection task on
/// the caller's runtime.
pub(crate) async fn connect_dsn(dsn: &str) -> Result<Client, HarnessError> {
    let mut config: tokio_postgres::Config = dsn
        .parse()
        .map_err(HarnessError::pg(format!("parsing {dsn}")))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(HarnessError::pg(format!("connecting to {dsn}")))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "postgres connection ended with an error");
        }
    });
    Ok(client)
}

/// Runs blocking filesystem or process work off the async worker threads.
pub(crate) async fn run_blocking<T, F>(what: &str, work: F) -> Result<T, HarnessError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, HarnessError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| HarnessError::Io {
            context: format!("{what} (blocking task failed)"),
            source: io::Error::other(err),
        })?
}

/// A port that was free a moment ago. Another process may take it before
/// the server binds it; `launch` then retries with a new one.
fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind((HOST, 0)).map_err(HarnessError::io("binding 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(HarnessError::io("reading the bound port"))?
        .port();
    Ok(port)
}

/// What the log gained since byte `offset`: the current attempt's messages.
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    let read = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut text)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => String::new(),
    }
}

/// `name` as a quoted SQL identifier (`"a""b"` for `a"b`).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a
/// database name in the path of a URL DSN.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

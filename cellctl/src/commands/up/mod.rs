//! `cellctl up`: the whole fleet of a cells.yaml on this machine, in the
//! foreground, until Ctrl-C (or `cellctl down`).
//!
//! In order, each step shown as it runs:
//! 1. **Plan** ([`plan`]): PostgreSQL servers from the cells' `db` DSNs and
//!    `--ledger-dsn`, a `cell` process per address in `servers`, `--routers`
//!    routers. Every problem is listed before anything starts.
//! 2. **Preflight**: the `cell` and `router` binaries next to this `cellctl`,
//!    PostgreSQL's binaries and account ([`redcell_pgsys`]), no other `up` on
//!    the state directory, and every port free — a taken port is an error
//!    naming it and its part, never a hang.
//! 3. **PostgreSQL** ([`postgres`]): `initdb` once per data directory (a
//!    second `up` reuses the data), start, create and migrate databases.
//!    With `--standby` (and on every later run once a standby is recorded,
//!    [`roles`]), each server's synchronous streaming standby is copied
//!    (first time) and started before any database work ([`standby`]). A
//!    server that `cellctl failover` fenced, or an unpromoted standby's data,
//!    is refused as a primary.
//! 4. **Logic servers, then routers** ([`fleet`]), with the state directory's
//!    internal token and HS256 key; each must answer the gRPC health check
//!    `SERVING` before the deadline, or `up` stops everything it started and
//!    names the part, its log and the log's last lines.
//! 5. **Ready**: the routers file is written (what `demo` and later commands
//!    read), the router address, a dev token and the next commands printed.
//!    `--demo` then runs `cellctl demo` in this process.
//!    While it runs, `up` rereads cells.yaml every second and starts the
//!    PostgreSQL and logic servers of cells that appear in it ([`grow`]:
//!    `cellctl expand --apply`).
//! 6. **Stop** on SIGINT/SIGTERM, at any step: routers, logic servers, then
//!    PostgreSQL, each bounded.

pub mod fleet;
mod grow;
pub mod plan;
pub mod postgres;
pub mod progress;
pub mod roles;
pub mod standby;

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use redcell_pgsys::{BinarySearch, PgBinaries, ServerUser};
use tokio::signal::unix::{SignalKind, signal};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use self::{
    fleet::{Fleet, Kind},
    plan::Plan,
};
use super::state_dir::{self, StateDir};
use crate::{CommandError, load};

/// The ledger `up` runs when `--ledger-dsn` is not given (the README's).
pub const DEFAULT_LEDGER_DSN: &str = "postgres://redcell@127.0.0.1:6001/ledger";
/// The demo user `up` prints a token for.
const DEMO_USER: &str = "alice";
/// Longest `--demo-expiry`: a day, the cells' own default TTL.
const MAX_DEMO_EXPIRY_SECS: u64 = 86_400;
/// `--demo` without `--demo-expiry`: long enough for the demo's opens, short
/// enough that its refunds show.
const DEMO_DEFAULT_EXPIRY_SECS: u64 = 10;
/// One health probe's deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `cellctl up`'s flags.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where data directories, keys, logs and pids live (kept across runs).
    #[arg(long, env = "REDCELL_STATE_DIR", default_value = state_dir::DEFAULT)]
    pub state_dir: PathBuf,
    /// The ledger's DSN: a PostgreSQL server on this machine `up` starts.
    #[arg(long, env = "REDCELL_LEDGER_DSN", default_value = DEFAULT_LEDGER_DSN)]
    pub ledger_dsn: String,
    /// How many routers to start, on consecutive ports from --router-listen.
    #[arg(long, default_value_t = 1)]
    pub routers: u16,
    /// Address of the first router.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub router_listen: SocketAddr,
    /// PostgreSQL without fsync (demos and tests only: a machine crash may
    /// lose committed money).
    #[arg(long)]
    pub fast: bool,
    /// Envelopes expire after SECS (the cells' --envelope-ttl-secs), so a demo
    /// shows refunds; default: the cells' own (a day), 10 s with --demo.
    #[arg(long, value_name = "SECS")]
    pub demo_expiry: Option<u64>,
    /// Run `cellctl demo` once the fleet is up, then keep running.
    #[arg(long)]
    pub demo: bool,
    /// How long every logic server and router gets to answer SERVING.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub start_timeout: u64,
    /// Run in the background: return once the fleet is up (its output goes to
    /// STATE_DIR/logs/up.log); stop it with `cellctl down`.
    #[arg(long)]
    pub detach: bool,
    /// Serve Prometheus metrics: every logic server and router gets
    /// `--admin-listen` on 127.0.0.1 at its gRPC port plus N (e.g. 2000:
    /// cell 7101 -> 9101, router 7000 -> 9000). Off by default: an admin port
    /// derived from a gRPC port is not reserved, so a fleet on arbitrary ports
    /// (tests) would risk a collision.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port_offset: Option<u16>,
    /// Give every PostgreSQL server (each cell DB's and the ledger's) a
    /// synchronous streaming standby on this machine; once given, later runs
    /// keep it (see `cellctl failover`).
    #[arg(long)]
    pub standby: bool,
    /// A new standby listens on its primary's port plus OFFSET, or on the
    /// next free port above when that one is taken; its port is recorded.
    #[arg(
        long,
        default_value_t = standby::DEFAULT_OFFSET,
        value_name = "OFFSET",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub standby_port_offset: u16,
    /// Fault-injection tests: every logic server and PostgreSQL server
    /// listens at its cells.yaml (or --ledger-dsn) port plus N, while
    /// everything that connects to it — routers to logic servers, logic
    /// servers to their order DB and the ledger, cellctl's commands — still
    /// uses the cells.yaml ports, where the test runs a TCP fault proxy that
    /// forwards to port + N and can cut or delay each link. `up`'s own
    /// checks (health, migrations) go to port + N directly. Not with
    /// --standby.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub listen_offset: Option<u16>,
    /// Fault-injection tests: start again every part that exits — routers,
    /// logic servers and PostgreSQL primaries too — as a process supervisor
    /// would, at most once per 5 s. Without it a dead primary stays down for
    /// `cellctl failover`.
    #[arg(long)]
    pub restart_crashed: bool,
}

/// Runs `up` until a stop signal (or, with `--detach`, until it is up).
pub fn run(topology: &Path, args: UpArgs, out: &mut impl Write) -> Result<(), CommandError> {
    if args.detach {
        return detach(&args, out);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| CommandError::Input(format!("cannot start a runtime: {error}")))?;
    runtime.block_on(up(topology, args, out))
}

async fn up(
    topology_path: &Path,
    mut args: UpArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    if args.demo && args.demo_expiry.is_none() {
        args.demo_expiry = Some(DEMO_DEFAULT_EXPIRY_SECS);
    }
    if let Some(secs) = args.demo_expiry
        && !(1..=MAX_DEMO_EXPIRY_SECS).contains(&secs)
    {
        return Err(CommandError::Input(format!(
            "--demo-expiry: must be 1 to {MAX_DEMO_EXPIRY_SECS} seconds, got {secs}"
        )));
    }
    let topology_path = std::path::absolute(topology_path).map_err(|error| {
        CommandError::Input(format!("--topology {}: {error}", topology_path.display()))
    })?;
    let topology = load::topology(&topology_path)?;
    let state = StateDir::at(&args.state_dir)?;
    let standbys = standby::choice(&state, args.standby.then_some(args.standby_port_offset))?;
    let plan = standby::plan_free(standbys, |standbys| {
        Plan::new(
            &topology,
            &args.ledger_dsn,
            args.routers,
            args.router_listen,
            standbys,
        )
    })
    .and_then(|plan| plan.with_listen_offset(args.listen_offset))
    .and_then(|plan| match plan.collisions(|_| true) {
        collisions if collisions.is_empty() => Ok(plan),
        collisions => Err(collisions),
    })
    .map_err(|errors| {
        CommandError::Input(format!(
            "cannot start {} ({} problems):\n  {}",
            topology_path.display(),
            errors.len(),
            errors.join("\n  ")
        ))
    })?;

    let (cell_binary, router_binary) = fleet_binaries()?;
    let pg_binaries = PgBinaries::locate(&BinarySearch::from_env())
        .map_err(|error| CommandError::Input(error.to_string()))?;
    let pg_user =
        ServerUser::for_this_process().map_err(|error| CommandError::Input(error.to_string()))?;
    refuse_second_up(&state, &args.state_dir)?;
    let refused: Vec<String> = plan
        .postgres
        .iter()
        .filter_map(|pg| roles::check_primary(&state, pg.port).err())
        .collect();
    if !refused.is_empty() {
        return Err(CommandError::Input(format!(
            "cannot start {}:\n  {}",
            topology_path.display(),
            refused.join("\n  ")
        )));
    }
    state.create()?;
    standby::record_offset(&state, args.standby.then_some(args.standby_port_offset))?;
    if let Some(user) = &pg_user {
        check_reachable(state.root(), user)?;
    }
    check_ports(&plan, args.admin_port_offset, &state, &args.state_dir)?;

    let internal_token = state.internal_token()?;
    state.ensure_hs256_key()?;
    state.write_record(
        &state.topology_file(),
        &format!("{}\n", topology_path.display()),
    )?;
    state.write_record(&state.ledger_dsn_file(), &format!("{}\n", args.ledger_dsn))?;
    let _ = std::fs::remove_file(state.routers_file());
    state.write_record(&state.up_pid_file(), &format!("{}\n", std::process::id()))?;

    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|error| CommandError::Input(format!("cannot catch SIGINT: {error}")))?;
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| CommandError::Input(format!("cannot catch SIGTERM: {error}")))?;

    progress::note(&format!(
        "starting {} from {} (state in {})",
        summary(&plan),
        topology_path.display(),
        args.state_dir.display()
    ));
    let mut fleet = Fleet::new(state.clone());
    if args.restart_crashed {
        fleet.restart_crashed(pg_user.as_ref().map(|user| (user.uid, user.gid)));
    }
    let launch = Launch {
        plan: &plan,
        topology: &topology_path,
        args: &args,
        state: &state,
        pg_binaries: &pg_binaries,
        pg_user: pg_user.as_ref(),
        cell_binary: &cell_binary,
        router_binary: &router_binary,
        internal_token: &internal_token,
    };
    let started = tokio::select! {
        started = launch.start(&mut fleet) => started.map(|()| true),
        _ = interrupt.recv() => Ok(false),
        _ = terminate.recv() => Ok(false),
    };
    let outcome = match started {
        Ok(true) => {
            let served = serve(
                &launch,
                &args,
                &state,
                &mut fleet,
                out,
                &mut interrupt,
                &mut terminate,
            )
            .await;
            progress::note("stopping");
            served
        }
        Ok(false) => {
            progress::note("interrupted; stopping what was started");
            Ok(())
        }
        Err(error) => {
            progress::note("start failed; stopping what was started");
            Err(error)
        }
    };
    let _ = std::fs::remove_file(state.routers_file());
    fleet.stop_all().await;
    let _ = std::fs::remove_file(state.up_pid_file());
    outcome
}

/// Everything the start sequence needs.
struct Launch<'a> {
    plan: &'a Plan,
    topology: &'a Path,
    args: &'a UpArgs,
    state: &'a StateDir,
    pg_binaries: &'a PgBinaries,
    pg_user: Option<&'a ServerUser>,
    cell_binary: &'a Path,
    router_binary: &'a Path,
    internal_token: &'a str,
}

impl Launch<'_> {
    async fn start(&self, fleet: &mut Fleet) -> Result<(), CommandError> {
        for pg in &self.plan.postgres {
            postgres::start(
                pg,
                self.pg_binaries,
                self.pg_user,
                self.args.fast,
                self.state,
                fleet,
            )
            .await?;
        }

        let step = progress::step(format!("starting {} logic servers", self.plan.cells.len()));
        let mut cells = Vec::new();
        for cell in &self.plan.cells {
            let command = self.cell_command(cell);
            if let Err(error) = fleet.spawn(&cell.part(), Kind::Cell, command) {
                step.failed();
                return Err(error);
            }
            cells.push((cell.part(), cell.listen));
        }
        self.healthy(fleet, step, &cells).await?;

        let step = progress::step(format!("starting {} router(s)", self.plan.routers.len()));
        let mut routers = Vec::new();
        for router in &self.plan.routers {
            let mut command = Command::new(self.router_binary);
            command
                .arg("--topology")
                .arg(self.topology)
                .args(["--listen", &router.listen.to_string()])
                .args(["--region", &router.region])
                .args(self.admin_listen(router.listen))
                .arg("--jwt-hs256-key-file")
                .arg(self.state.hs256_key_file())
                .env("REDCELL_INTERNAL_TOKEN", self.internal_token)
                .env_remove("REDCELL_JWT_RS256_PUBLIC_KEY_FILE");
            if let Err(error) = fleet.spawn(&router.part(), Kind::Router, command) {
                step.failed();
                return Err(error);
            }
            routers.push((router.part(), router.listen));
        }
        self.healthy(fleet, step, &routers).await
    }

    /// `--admin-listen` for the process serving gRPC on `listen`, with
    /// `--admin-port-offset` (nothing without it).
    fn admin_listen(&self, listen: SocketAddr) -> Vec<String> {
        admin_address(listen, self.args.admin_port_offset).map_or_else(Vec::new, |admin| {
            vec!["--admin-listen".to_owned(), admin.to_string()]
        })
    }

    /// The logic server process of one planned server (at start, and for a
    /// cell added later, [`grow`]).
    fn cell_command(&self, cell: &plan::CellPlan) -> Command {
        let mut command = Command::new(self.cell_binary);
        command
            .arg("--topology")
            .arg(self.topology)
            .args(["--cell", &cell.cell])
            .args(["--listen", &cell.listen.to_string()])
            .args(self.admin_listen(cell.listen))
            .args(["--ledger-dsn", &self.args.ledger_dsn])
            .env("REDCELL_INTERNAL_TOKEN", self.internal_token)
            .env_remove("REDCELL_DB_DSN");
        if let Some(secs) = self.args.demo_expiry {
            command.args(["--envelope-ttl-secs", &secs.to_string()]);
        }
        command
    }

    /// Waits until every part answers SERVING; the first that exits or
    /// misses the deadline fails the start.
    async fn healthy(
        &self,
        fleet: &mut Fleet,
        step: progress::Step,
        parts: &[(String, SocketAddr)],
    ) -> Result<(), CommandError> {
        let deadline = Instant::now() + Duration::from_secs(self.args.start_timeout);
        let mut waiting: Vec<&(String, SocketAddr)> = parts.iter().collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for part in waiting {
                let (name, address) = part;
                if let Some(status) = fleet.exit_status(name) {
                    step.failed();
                    return Err(fleet.failure(name, &format!("exited ({status}) while starting")));
                }
                if !serving(*address).await {
                    still.push(part);
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                step.failed();
                let (name, address) = waiting[0];
                return Err(fleet.failure(
                    name,
                    &format!(
                        "did not answer SERVING on {address} within {}s (--start-timeout)",
                        self.args.start_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        step.done("SERVING");
        Ok(())
    }
}

/// True when the gRPC health service at `address` answers SERVING (for the
/// server as a whole, `""`) within [`PROBE_TIMEOUT`].
pub async fn serving(address: SocketAddr) -> bool {
    let probe = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .ok()?
            .connect_timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(response.into_inner().status() == ServingStatus::Serving)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// The fleet is up: record it, say how to use it, then wait for a stop
/// signal, reporting parts that exit meanwhile.
async fn serve(
    launch: &Launch<'_>,
    args: &UpArgs,
    state: &StateDir,
    fleet: &mut Fleet,
    out: &mut impl Write,
    interrupt: &mut tokio::signal::unix::Signal,
    terminate: &mut tokio::signal::unix::Signal,
) -> Result<(), CommandError> {
    let plan = launch.plan;
    let mut growth = grow::Growth::new(launch);
    let routers: Vec<String> = plan.routers.iter().map(|r| r.listen.to_string()).collect();
    let mut token = Vec::new();
    super::dev_token::run(DEMO_USER, &state.hs256_key_file(), 3600, &mut token)?;
    let token = String::from_utf8_lossy(&token).trim().to_owned();
    let dir = args.state_dir.display();
    writeln!(out, "redcell is up: {}", summary(plan))?;
    for router in &plan.routers {
        writeln!(
            out,
            "router     {} (region {})",
            router.listen, router.region
        )?;
    }
    writeln!(out, "state      {dir} (logs in {dir}/logs)")?;
    writeln!(out, "token      {DEMO_USER} (1 h): {token}")?;
    writeln!(out, "next, in another terminal:")?;
    writeln!(out, "  cellctl demo --state-dir {dir}")?;
    writeln!(out, "  cellctl fund {DEMO_USER} 10000 --state-dir {dir}")?;
    writeln!(
        out,
        "  cellctl dev-token --user bob --hs256-key-file {dir}/hs256.key"
    )?;
    writeln!(
        out,
        "  cellctl down --state-dir {dir}      (or Ctrl-C here)"
    )?;
    out.flush()?;
    // Last: the routers file is the "ready" signal (`--detach`, scripts,
    // tests), so everything above is printed before it appears.
    state.write_record(&state.routers_file(), &format!("{}\n", routers.join("\n")))?;

    if args.demo {
        let demo = super::demo::run_async(state, out);
        tokio::select! {
            shown = demo => shown?,
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
        out.flush()?;
    }

    let mut poll = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = poll.tick() => {
                for (name, status, log) in fleet.newly_exited() {
                    progress::note(&format!(
                        "{name} exited ({status}); its log is {}; the rest keeps running",
                        log.display()
                    ));
                }
                for said in fleet.respawn() {
                    progress::note(&said);
                }
                growth.follow(launch, fleet).await;
            }
        }
    }
}

fn summary(plan: &Plan) -> String {
    let mut cells: Vec<&str> = plan.cells.iter().map(|c| c.cell.as_str()).collect();
    cells.dedup();
    let standbys = plan
        .postgres
        .iter()
        .filter(|pg| pg.standby.is_some())
        .count();
    format!(
        "{} cells ({} logic servers), {} router(s), {} PostgreSQL server(s){}",
        cells.len(),
        plan.cells.len(),
        plan.routers.len(),
        plan.postgres.len(),
        if standbys == 0 {
            String::new()
        } else {
            format!(" with {standbys} synchronous standby(s)")
        }
    )
}

/// `--detach`: this same command line without `--detach`, as a child in its
/// own process group with its output in `logs/up.log`; returns once the
/// routers file says the fleet is up (printing what `up` printed), or fails
/// with the log's tail if that `up` exits first.
fn detach(args: &UpArgs, out: &mut impl Write) -> Result<(), CommandError> {
    use std::os::unix::process::CommandExt as _;
    let state = StateDir::at(&args.state_dir)?;
    refuse_second_up(&state, &args.state_dir)?;
    state.create()?;
    let _ = std::fs::remove_file(state.routers_file());
    let log = state.log_file("up");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
    };
    let (stdout, stderr) = open()
        .and_then(|file| Ok((file, open()?)))
        .map_err(|error| CommandError::Input(format!("cannot open {}: {error}", log.display())))?;
    let start = std::fs::metadata(&log).map_or(0, |meta| meta.len());
    let exe = std::env::current_exe()
        .map_err(|error| CommandError::Input(format!("cannot find this program: {error}")))?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1).filter(|arg| arg != "--detach"))
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|error| {
            CommandError::Input(format!("cannot start up in the background: {error}"))
        })?;
    // PostgreSQL's crash recovery and initdb come before the health deadline.
    let deadline = Instant::now() + Duration::from_secs(args.start_timeout + 300);
    let failed = |what: String| {
        CommandError::Input(format!(
            "the background up {what}; its log is {}; last lines:\n{}",
            log.display(),
            fleet::indent(&state_dir::log_tail(&log, fleet::LOG_LINES))
        ))
    };
    while !state.routers_file().is_file() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(format!("exited ({status}) before it was up")));
        }
        if Instant::now() >= deadline {
            return Err(failed("is not up yet (still starting)".to_owned()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // What `up` printed to stdout is in the log after its progress lines.
    let text = std::fs::read(&log)
        .map(|bytes| {
            String::from_utf8_lossy(&bytes[usize::try_from(start).unwrap_or(0).min(bytes.len())..])
                .into_owned()
        })
        .unwrap_or_default();
    if let Some(at) = text.find("redcell is up:") {
        let printed: Vec<&str> = text[at..]
            .lines()
            .take_while(|line| !line.starts_with("demo through"))
            .collect();
        writeln!(out, "{}", printed.join("\n"))?;
    }
    writeln!(
        out,
        "running in the background (pid {}); its log is {}",
        child.id(),
        log.display()
    )?;
    Ok(())
}

/// `cell` and `router` from the directory this `cellctl` runs from (cargo
/// builds them side by side).
fn fleet_binaries() -> Result<(PathBuf, PathBuf), CommandError> {
    let exe = std::env::current_exe()
        .map_err(|error| CommandError::Input(format!("cannot find this program: {error}")))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let build = if dir.ends_with("release") {
        "cargo build --release --bins"
    } else {
        "cargo build --bins"
    };
    let find = |name: &str| {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(CommandError::Input(format!(
                "the `{name}` binary is not next to cellctl ({} is missing); build every binary first: {build}",
                path.display()
            )))
        }
    };
    Ok((find("cell")?, find("router")?))
}

/// Refuses to start while another `up` runs on the same state directory.
fn refuse_second_up(state: &StateDir, shown: &Path) -> Result<(), CommandError> {
    if let Some(pid) = state_dir::read_pid(&state.up_pid_file())
        && pid != std::process::id()
        && state_dir::runs(pid, "cellctl")
    {
        return Err(CommandError::Input(format!(
            "another `cellctl up` (pid {pid}) runs on {}; stop it first: cellctl down --state-dir {}",
            shown.display(),
            shown.display()
        )));
    }
    Ok(())
}

/// Every port of the plan must be free now; lists each taken one with its
/// part, and points at `down` when a part of an earlier `up` still runs.
/// The metrics address of the process serving gRPC on `listen`: 127.0.0.1
/// at `listen`'s port plus `offset` (none without an offset, or past 65535).
pub fn admin_address(listen: SocketAddr, offset: Option<u16>) -> Option<SocketAddr> {
    let port = listen.port().checked_add(offset?)?;
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn check_ports(
    plan: &Plan,
    admin_offset: Option<u16>,
    state: &StateDir,
    shown: &Path,
) -> Result<(), CommandError> {
    let mut taken = Vec::new();
    if let Some(offset) = admin_offset {
        let listens = plan
            .cells
            .iter()
            .map(|c| (c.listen, c.part()))
            .chain(plan.routers.iter().map(|r| (r.listen, r.part())));
        for (listen, part) in listens {
            match admin_address(listen, Some(offset)) {
                Some(admin) => {
                    if let Err(error) = TcpListener::bind(admin) {
                        taken.push(format!(
                            "port {} (metrics of {part}) is already in use: {error}",
                            admin.port()
                        ));
                    }
                }
                None => taken.push(format!(
                    "--admin-port-offset {offset}: the metrics port of {part} would be past 65535"
                )),
            }
        }
    }
    for (port, part) in plan.ports() {
        let ip = plan
            .cells
            .iter()
            .map(|c| c.listen)
            .chain(plan.routers.iter().map(|r| r.listen))
            .find(|address| address.port() == port)
            .map_or_else(|| [127, 0, 0, 1].into(), |address| address.ip());
        if let Err(error) = TcpListener::bind((ip, port)) {
            taken.push(format!("port {port} ({part}) is already in use: {error}"));
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    let leftovers: Vec<String> = state
        .pid_records()
        .into_iter()
        .filter(|record| state_dir::runs(record.pid, state_dir::program_of(&record.part)))
        .map(|record| format!("{} (pid {})", record.part, record.pid))
        .collect();
    let hint = if leftovers.is_empty() {
        "stop what holds it, or change the port in the topology/flags".to_owned()
    } else {
        format!(
            "an earlier `up` left {} running: cellctl down --state-dir {}",
            leftovers.join(", "),
            shown.display()
        )
    };
    Err(CommandError::Input(format!(
        "cannot start: {}\n  {hint}",
        taken.join("\n  ")
    )))
}

/// When root, PostgreSQL runs as `user`, which must be able to enter every
/// directory above its data directory.
fn check_reachable(root: &Path, user: &ServerUser) -> Result<(), CommandError> {
    use std::os::unix::fs::MetadataExt as _;
    for dir in root.ancestors() {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let enter = if meta.uid() == user.uid {
            meta.mode() & 0o100 != 0
        } else if meta.gid() == user.gid {
            meta.mode() & 0o010 != 0
        } else {
            meta.mode() & 0o001 != 0
        };
        if !enter {
            return Err(CommandError::Input(format!(
                "--state-dir {}: PostgreSQL runs as `{}` (this is root), which cannot enter {}; \
                 choose a state directory it can reach (e.g. --state-dir /tmp/redcell) or `chmod o+x {}`",
                root.display(),
                user.name,
                dir.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

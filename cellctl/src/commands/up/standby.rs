//! The synchronous streaming standby of one PostgreSQL server (`up
//! --standby`), on this machine.
//!
//! - **Created once** by `pg_basebackup -R` from the running primary, with a
//!   physical replication slot (so the primary keeps every WAL segment the
//!   standby has not received, however long it is down), into
//!   `postgres-<standby-port>/data` (copied to `data.partial` first, renamed
//!   when complete, so a half copy is never started). `-R` writes
//!   `standby.signal` and `primary_conninfo` with the standby's
//!   `application_name`. Replication connects over TCP to 127.0.0.1 with the
//!   primary's superuser: `initdb -A trust` allows `host replication all
//!   127.0.0.1/32`.
//! - **Synchronous**: the primary is started with
//!   `synchronous_standby_names=<name>` and `synchronous_commit=on`, so a
//!   commit is acknowledged only once the standby has flushed it. The primary
//!   starts first (the copy needs it), then its standby, and only then does
//!   `up` create or migrate databases, which would otherwise wait for a
//!   standby that is not there yet.
//! - **Supervised**: a standby that exits while the primary runs would block
//!   every commit of that primary; `up` restarts it (see
//!   [`super::fleet::Fleet::respawn`]). Commits wait meanwhile: a payment
//!   system prefers blocking to acknowledging money one copy holds.
//! - `up` reports the standby ready once the primary lists it as `streaming`
//!   and `sync` in `pg_stat_replication`.
//! - **Its port** is chosen once and recorded (`standbys/<primary-port>`):
//!   the primary's port plus `--standby-port-offset` when that is free, else
//!   the next free port above ([`super::plan`]; [`choice`] gives it every
//!   port the state directory holds, [`plan_free`] the ports taken now). A
//!   primary that was a standby (promoted by `cellctl failover`) has no
//!   standby until the next `up --standby` gives it one that way: a running
//!   `up` starts standbys only for servers it starts ([`super::grow`]).
//! - `up --standby` records its offset in `standby-offset` (removed by an
//!   `up` without `--standby`), so that `cellctl expand` can keep a new
//!   server's port + offset free for its standby.

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use redcell_pgsys::{PgBinaries, ServerUser};

use super::{
    fleet::{Fleet, Kind},
    plan::{PgPlan, Plan, StandbyChoice, StandbyPlan},
    postgres::{admin_config, connect, server_command, wait_ready},
    progress, roles,
};
use crate::{
    CommandError,
    commands::{migrate::chain, state_dir::StateDir},
};

/// Default of `--standby-port-offset`: the standbys of the default
/// cells.yaml's servers (6001, 6101-6103, 6201-6202) land on 6501,
/// 6601-6603, 6701-6702, clear of its logic servers and routers (7000,
/// 7101-7212).
pub const DEFAULT_OFFSET: u16 = 500;
/// How long a standby may take to stream synchronously once it accepts
/// connections (it first replays what it missed).
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// How many times [`plan_free`] plans again around ports found taken.
const REPLANS: usize = 64;

/// The standbys an `up` plans: the recorded ones, `offset` (`--standby`) for
/// the rest, and every port of the state directory to avoid.
pub fn choice(state: &StateDir, offset: Option<u16>) -> Result<StandbyChoice, CommandError> {
    let recorded: Vec<(u16, u16)> = roles::pairs(state)?
        .into_iter()
        .map(|pair| (pair.primary, pair.standby))
        .collect();
    Ok(StandbyChoice {
        offset,
        avoid: held_ports(state)?,
        running: BTreeSet::new(),
        recorded,
    })
}

/// Every port the state directory holds: both ports of each recorded pair
/// and each `postgres-<port>` with a complete data directory (a fenced
/// primary's too: a server started on that port would start its data). A
/// half copy (`data.partial` only) holds nothing: the next copy removes it.
pub fn held_ports(state: &StateDir) -> Result<BTreeSet<u16>, CommandError> {
    let mut held: BTreeSet<u16> = roles::pairs(state)?
        .into_iter()
        .flat_map(|pair| [pair.primary, pair.standby])
        .collect();
    if let Ok(entries) = std::fs::read_dir(state.root()) {
        held.extend(entries.flatten().filter_map(|entry| {
            let port = entry
                .file_name()
                .to_str()?
                .strip_prefix("postgres-")?
                .parse::<u16>()
                .ok()?;
            entry
                .path()
                .join("data")
                .join("PG_VERSION")
                .is_file()
                .then_some(port)
        }));
    }
    Ok(held)
}

/// The plan `make` gives for `choice`, planned again (at most [`REPLANS`]
/// times) while a standby it chose (one not recorded) is on a port that
/// cannot be bound on 127.0.0.1 now, with that port avoided.
pub fn plan_free(
    mut choice: StandbyChoice,
    make: impl Fn(&StandbyChoice) -> Result<Plan, Vec<String>>,
) -> Result<Plan, Vec<String>> {
    let mut plan = make(&choice)?;
    for _ in 0..REPLANS {
        let taken: Vec<u16> = plan
            .postgres
            .iter()
            .filter(|pg| {
                !choice
                    .recorded
                    .iter()
                    .any(|(primary, _)| *primary == pg.port)
            })
            .filter_map(|pg| pg.standby.as_ref().map(|standby| standby.port))
            .filter(|port| TcpListener::bind(("127.0.0.1", *port)).is_err())
            .collect();
        if taken.is_empty() {
            break;
        }
        choice.avoid.extend(taken);
        plan = make(&choice)?;
    }
    Ok(plan)
}

fn offset_file(state: &StateDir) -> PathBuf {
    state.root().join("standby-offset")
}

/// Records the `--standby-port-offset` of a running `up --standby`, or
/// removes the record for an `up` without standbys for new servers.
pub fn record_offset(state: &StateDir, offset: Option<u16>) -> Result<(), CommandError> {
    let path = offset_file(state);
    match offset {
        Some(offset) => state.write_record(&path, &format!("{offset}\n")),
        None => match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(CommandError::Input(
                format!("cannot remove {}: {error}", path.display()),
            )),
            _ => Ok(()),
        },
    }
}

/// The offset the fleet's `up --standby` gives new servers' standbys, if it
/// runs with standbys.
pub fn recorded_offset(state: &StateDir) -> Option<u16> {
    std::fs::read_to_string(offset_file(state))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What starting a server needs, besides its plan.
pub struct Server<'a> {
    pub binaries: &'a PgBinaries,
    pub user: Option<&'a ServerUser>,
    pub fast: bool,
    pub state: &'a StateDir,
}

/// Copies (first time only), starts and waits for the standby of `pg`,
/// which runs already.
pub async fn start(
    pg: &PgPlan,
    standby: &StandbyPlan,
    server: &Server<'_>,
    fleet: &mut Fleet,
) -> Result<(), CommandError> {
    let part = standby.part();
    let dir = server.state.postgres_dir(standby.port);
    if !dir.join("data").join("PG_VERSION").is_file() {
        let step = progress::step(format!(
            "{part}: pg_basebackup from {} (standby {})",
            pg.part(),
            standby.name()
        ));
        match copy(pg, standby, server, &dir).await {
            Ok(()) => step.done("copied"),
            Err(error) => {
                step.failed();
                return Err(error);
            }
        }
    }
    roles::record(
        server.state,
        roles::Pair {
            primary: pg.port,
            standby: standby.port,
        },
    )?;

    let step = progress::step(format!(
        "{part}: starting the standby of {} on 127.0.0.1:{}",
        pg.part(),
        standby.port
    ));
    let (binaries, user, fast, port) = (
        server.binaries.clone(),
        server.user.cloned(),
        server.fast,
        standby.port,
    );
    let restart = move || server_command(&binaries, user.as_ref(), &dir, port, fast);
    let ready = match fleet.spawn_supervised(&part, Kind::Postgres, Box::new(restart)) {
        Ok(_) => wait_ready(standby.port, &pg.superuser, &part, fleet).await,
        Err(error) => Err(error),
    };
    let streaming = match ready {
        Ok(()) => wait_synchronous(pg, standby, &part, fleet).await,
        Err(error) => Err(error),
    };
    match streaming {
        Ok(()) => {
            step.done("streaming, synchronous");
            Ok(())
        }
        Err(error) => {
            step.failed();
            Err(error)
        }
    }
}

/// `pg_basebackup -R` of the running primary into `dir/data`, through
/// `dir/data.partial`, with a fresh replication slot.
async fn copy(
    pg: &PgPlan,
    standby: &StandbyPlan,
    server: &Server<'_>,
    dir: &Path,
) -> Result<(), CommandError> {
    let failed = |what: String| CommandError::Input(format!("{}: {what}", standby.part()));
    std::fs::create_dir_all(dir)
        .map_err(|error| failed(format!("cannot create {}: {error}", dir.display())))?;
    redcell_pgsys::make_private_dir(dir, server.user).map_err(|error| failed(error.to_string()))?;
    let partial = dir.join("data.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|error| {
            failed(format!(
                "cannot remove a half copy {}: {error}",
                partial.display()
            ))
        })?;
    }
    drop_stale_slot(pg, standby)
        .await
        .map_err(|error| failed(format!("replication slot on {}: {error}", pg.part())))?;

    let program = server.binaries.bindir().join("pg_basebackup");
    let mut command = Command::new(&program);
    command
        .arg("-D")
        .arg(&partial)
        .args(["-R", "-C", "-S", &standby.name(), "-X", "stream"])
        .args(["-c", "fast"])
        .arg("-d")
        .arg(format!(
            "host=127.0.0.1 port={} user={} application_name={}",
            pg.port,
            pg.superuser,
            standby.name()
        ))
        .current_dir(dir);
    if server.fast {
        command.arg("--no-sync");
    }
    if let Some(user) = server.user {
        use std::os::unix::process::CommandExt as _;
        command.uid(user.uid).gid(user.gid);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|error| failed(format!("pg_basebackup did not finish: {error}")))?
        .map_err(|error| failed(format!("cannot run {}: {error}", program.display())))?;
    if !output.status.success() {
        let mut printed = String::from_utf8_lossy(&output.stderr).into_owned();
        printed.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(failed(format!(
            "pg_basebackup from {} failed ({}):\n{}",
            pg.part(),
            output.status,
            super::fleet::indent(printed.trim_end())
        )));
    }
    std::fs::rename(&partial, dir.join("data"))
        .map_err(|error| failed(format!("cannot rename {}: {error}", partial.display())))
}

/// A slot of the same name left by a copy that did not complete (or by a
/// standby whose data was removed) would make `pg_basebackup -C` fail; an
/// active one means a standby of that name streams already, and is refused.
async fn drop_stale_slot(pg: &PgPlan, standby: &StandbyPlan) -> Result<(), String> {
    let admin = connect(&admin_config(pg.port, "postgres", &pg.superuser))
        .await
        .map_err(|error| format!("cannot connect as {}: {}", pg.superuser, chain(&error)))?;
    let row = admin
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&standby.name()],
        )
        .await
        .map_err(|error| chain(&error))?;
    match row.map(|row| row.get::<_, bool>(0)) {
        None => Ok(()),
        Some(true) => Err(format!(
            "slot {} is in use by a running standby, but {} has no data",
            standby.name(),
            standby.part()
        )),
        Some(false) => admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&standby.name()])
            .await
            .map(drop)
            .map_err(|error| chain(&error)),
    }
}

/// Until the primary lists the standby as streaming and synchronous.
async fn wait_synchronous(
    pg: &PgPlan,
    standby: &StandbyPlan,
    part: &str,
    fleet: &mut Fleet,
) -> Result<(), CommandError> {
    let config = admin_config(pg.port, "postgres", &pg.superuser);
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let mut seen = "not connected".to_owned();
    loop {
        if let Some(status) = fleet.exit_status(part) {
            return Err(fleet.failure(part, &format!("exited ({status}) while catching up")));
        }
        if let Ok(client) = connect(&config).await
            && let Ok(row) = client
                .query_opt(
                    "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1",
                    &[&standby.name()],
                )
                .await
        {
            match row.map(|row| (row.get::<_, String>(0), row.get::<_, String>(1))) {
                Some((state, sync)) if state == "streaming" && sync == "sync" => return Ok(()),
                Some((state, sync)) => seen = format!("{state}, {sync}"),
                None => seen = "not connected".to_owned(),
            }
        }
        if Instant::now() >= deadline {
            return Err(fleet.failure(
                part,
                &format!(
                    "is not a streaming synchronous standby of {} within {SYNC_TIMEOUT:?} ({seen})",
                    pg.part()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use redcell_pgsys::{PgBinaries, ServerUser};

use super::{
    fleet::{Fleet, Kind},
    plan::{PgPlan, StandbyPlan},
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

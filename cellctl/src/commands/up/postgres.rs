//! One PostgreSQL server of the fleet: `initdb` once per data directory, start
//! the postmaster as our child (as the `postgres` account when we are root),
//! wait until it answers, create its roles and databases, migrate them.
//!
//! Settings: durable by default (`fsync`, `synchronous_commit` and
//! `full_page_writes` on: a payment service's books must survive a power
//! cut); `--fast` turns `fsync` and `full_page_writes` off for demos and
//! tests and keeps `synchronous_commit` on, so a commit still survives a
//! crash of the processes (not of the machine). Unix sockets are off: the
//! DSNs are TCP on 127.0.0.1, and a socket path inside a deep state directory
//! could exceed the 107-byte limit.
//!
//! A server with a standby ([`super::standby`]) is started with
//! `synchronous_standby_names` naming it, and its standby is started before
//! any database is created or migrated.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use redcell_pgsys::{PgBinaries, ServerUser};
use tokio_postgres::NoTls;

use super::{
    fleet::{Fleet, Kind},
    plan::PgPlan,
    progress,
};
use crate::{CommandError, commands::state_dir::StateDir};

/// How long a server may take to accept connections (crash recovery of a
/// large WAL can take a while).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const DURABLE: &[&str] = &["fsync=on", "synchronous_commit=on", "full_page_writes=on"];
const FAST: &[&str] = &["fsync=off", "synchronous_commit=on", "full_page_writes=off"];
/// Room for a router's worth of cells' pools (16 + 8 per logic server).
const COMMON: &[&str] = &["max_connections=300", "unix_socket_directories="];

/// Initializes (first time only), starts and prepares one server.
pub async fn start(
    pg: &PgPlan,
    binaries: &PgBinaries,
    user: Option<&ServerUser>,
    fast: bool,
    state: &StateDir,
    fleet: &mut Fleet,
) -> Result<(), CommandError> {
    let part = pg.part();
    let dir = state.postgres_dir(pg.port);
    let data = dir.join("data");
    if !data.join("PG_VERSION").is_file() {
        let step = progress::step(format!("{part}: initdb {}", data.display()));
        match initdb(binaries, user, &dir, &data, &pg.superuser, fast) {
            Ok(()) => step.done("initialized"),
            Err(error) => {
                step.failed();
                return Err(error);
            }
        }
    }

    let step = progress::step(format!(
        "{part}: starting PostgreSQL on 127.0.0.1:{}",
        pg.port
    ));
    let mut command = server_command(binaries, user, &dir, pg.port, fast);
    if let Some(standby) = &pg.standby {
        // Every commit waits until the standby has flushed it
        // (synchronous_commit=on): on the command line, not in the data
        // directory, so a standby copied from this one (and promoted one
        // day) never inherits a wait for a standby it does not have.
        command
            .arg("-c")
            .arg(format!("synchronous_standby_names={}", standby.name()));
    }
    let started = fleet.spawn(&part, Kind::Postgres, command).map(drop);
    let ready = match started {
        Ok(()) => wait_ready(pg.port, &pg.superuser, &part, fleet).await,
        Err(error) => Err(error),
    };
    if let Err(error) = ready {
        step.failed();
        return Err(error);
    }
    step.done(match (fast, &pg.standby) {
        (true, None) => "fast (fsync off)",
        (false, None) => "durable",
        (true, Some(_)) => "fast (fsync off), synchronous commit to its standby",
        (false, Some(_)) => "durable, synchronous commit to its standby",
    });

    // Before any database work: with a standby named, a commit waits for it.
    if let Some(standby) = &pg.standby {
        let server = super::standby::Server {
            binaries,
            user,
            fast,
            state,
        };
        super::standby::start(pg, standby, &server, fleet).await?;
    }

    for database in &pg.databases {
        let step = progress::step(format!(
            "{part}: database {} ({}) migrated",
            database.name, database.label
        ));
        match prepare(pg, database).await {
            Ok(detail) => step.done(&detail),
            Err(error) => {
                step.failed();
                return Err(CommandError::Input(format!(
                    "{part}: database {} ({}): {error}",
                    database.name, database.label
                )));
            }
        }
    }
    Ok(())
}

/// The postmaster of the data directory `dir/data`, listening on
/// 127.0.0.1:`port` (a primary, or a standby when `standby.signal` is there),
/// as `user` when we are root.
pub fn server_command(
    binaries: &PgBinaries,
    user: Option<&ServerUser>,
    dir: &Path,
    port: u16,
    fast: bool,
) -> Command {
    let mut command = Command::new(binaries.postgres());
    command
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1"])
        .current_dir(dir);
    for setting in COMMON.iter().chain(if fast { FAST } else { DURABLE }) {
        command.arg("-c").arg(setting);
    }
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
    command
}

fn initdb(
    binaries: &PgBinaries,
    user: Option<&ServerUser>,
    dir: &Path,
    data: &Path,
    superuser: &str,
    fast: bool,
) -> Result<(), CommandError> {
    std::fs::create_dir_all(dir).map_err(|error| {
        CommandError::Input(format!("cannot create {}: {error}", dir.display()))
    })?;
    redcell_pgsys::make_private_dir(dir, user)
        .map_err(|error| CommandError::Input(error.to_string()))?;
    let mut command = Command::new(binaries.initdb());
    command
        .arg("-D")
        .arg(data)
        .args(["-U", superuser, "-A", "trust", "-E", "UTF8", "--locale=C"])
        .current_dir(dir);
    if fast {
        command.arg("--no-sync");
    }
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
    let output = command.output().map_err(|error| {
        CommandError::Input(format!(
            "cannot run {}: {error}",
            binaries.initdb().display()
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let mut printed = String::from_utf8_lossy(&output.stderr).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stdout));
    let hint = match user {
        Some(user) => format!(
            " (it runs as `{}`, which must be able to enter every directory above {})",
            user.name,
            dir.display()
        ),
        None => String::new(),
    };
    Err(CommandError::Input(format!(
        "initdb {} failed ({}){hint}:\n{}",
        data.display(),
        output.status,
        super::fleet::indent(printed.trim_end())
    )))
}

pub fn admin_config(port: u16, database: &str, user: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(database)
        .connect_timeout(CONNECT_TIMEOUT);
    config
}

pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Until the server answers `select 1`; fails at once if it exits.
pub async fn wait_ready(
    port: u16,
    superuser: &str,
    part: &str,
    fleet: &mut Fleet,
) -> Result<(), CommandError> {
    let config = admin_config(port, "postgres", superuser);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = fleet.exit_status(part) {
            return Err(fleet.failure(
                part,
                &format!("exited ({status}) before accepting connections"),
            ));
        }
        if let Ok(client) = connect(&config).await
            && client.simple_query("select 1").await.is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fleet.failure(
                part,
                &format!("did not accept connections within {READY_TIMEOUT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the database's role and the database when missing, then applies
/// the embedded migrations; says what it did.
async fn prepare(pg: &PgPlan, database: &super::plan::PgDatabase) -> Result<String, String> {
    let admin = connect(&admin_config(pg.port, "postgres", &pg.superuser))
        .await
        .map_err(|error| format!("cannot connect as {}: {error}", pg.superuser))?;
    ensure(
        &admin,
        "SELECT 1 FROM pg_roles WHERE rolname = $1",
        &database.owner,
        &format!("CREATE ROLE {} LOGIN", quote_ident(&database.owner)),
    )
    .await
    .map_err(|error| format!("role {}: {error}", database.owner))?;
    let exists = ensure(
        &admin,
        "SELECT 1 FROM pg_database WHERE datname = $1",
        &database.name,
        &format!(
            "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0",
            quote_ident(&database.name),
            quote_ident(&database.owner)
        ),
    )
    .await
    .map_err(|error| format!("creating the database: {error}"))?;
    drop(admin);
    let mut client = connect(&admin_config(pg.port, &database.name, &database.owner))
        .await
        .map_err(|error| format!("cannot connect as {}: {error}", database.owner))?;
    let applied = redcell_migrations::apply(&mut client, database.schema.migrations())
        .await
        .map_err(|error| format!("migrating: {error}"))?;
    let version = database.schema.expected_version();
    Ok(match (exists, applied.is_empty()) {
        (false, _) => format!("created, version {version}"),
        (true, true) => format!("reused, version {version}"),
        (true, false) => format!("reused, migrated to version {version}"),
    })
}

/// Runs `create` unless `probe` (one `$1` parameter, `name`) finds a row;
/// whether it existed. `CREATE ROLE`/`DATABASE` have no `IF NOT EXISTS` in
/// PostgreSQL 15, and `CREATE DATABASE` cannot run in a transaction.
async fn ensure(
    admin: &tokio_postgres::Client,
    probe: &str,
    name: &str,
    create: &str,
) -> Result<bool, tokio_postgres::Error> {
    let exists = admin.query_opt(probe, &[&name]).await?.is_some();
    if !exists {
        admin.batch_execute(create).await?;
    }
    Ok(exists)
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

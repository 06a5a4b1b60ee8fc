//! PostgreSQL's own limits on the fleet's server, in the same invocation as
//! the workload: the pgbench scripts of `bench/` (built into loadgen, so the
//! binary needs no checkout) on a scratch database `loadgen_baseline` of
//! the first cell's server, with as many clients as a cell's pool, and
//! `pg_test_fsync`'s fdatasync rate when it is installed next to `initdb`.
//! See bench/README.md for what each limit bounds.

use std::time::Duration;

use redcell_pgsys::{BinarySearch, PgBinaries};
use serde::Serialize;

use crate::fleet::Fleet;

const DATABASE: &str = "loadgen_baseline";
const SCHEMA: &str = include_str!("../../bench/schema.sql");

/// (name, script, rows per transaction, single client).
const SCRIPTS: &[(&str, &str, f64, bool)] = &[
    (
        "hot_claim",
        include_str!("../../bench/hot_claim.sql"),
        1.0,
        false,
    ),
    (
        "hot_claim32",
        include_str!("../../bench/hot_claim32.sql"),
        32.0,
        false,
    ),
    (
        "random_update",
        include_str!("../../bench/random_update.sql"),
        1.0,
        false,
    ),
    (
        "tiny_commit",
        include_str!("../../bench/tiny_commit.sql"),
        1.0,
        true,
    ),
];

/// One baseline's result.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Baseline {
    pub name: String,
    pub clients: usize,
    pub tps: f64,
    /// tps × rows per transaction (claims/s for hot_claim32).
    pub rows_per_sec: f64,
}

/// Every baseline, `secs` seconds each.
pub async fn run(fleet: &Fleet, secs: u64) -> Result<Vec<Baseline>, String> {
    let binaries =
        PgBinaries::locate(&BinarySearch::from_env()).map_err(|error| error.to_string())?;
    prepare(fleet).await?;
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let mut results = Vec::new();
    for &(name, script, rows, single) in SCRIPTS {
        let path = dir.path().join(format!("{name}.sql"));
        std::fs::write(&path, script).map_err(|error| error.to_string())?;
        let clients = if single { 1 } else { fleet.db_pool.max(1) };
        let tps = pgbench(
            &binaries.bindir().join("pgbench"),
            fleet,
            &path,
            clients,
            secs,
        )
        .await?;
        eprintln!("loadgen: baseline {name}: {tps:.0} tps ({clients} clients)");
        results.push(Baseline {
            name: name.to_owned(),
            clients,
            tps,
            rows_per_sec: tps * rows,
        });
    }
    if let Some(rate) = fsync_rate(&binaries.bindir().join("pg_test_fsync"), &fleet.state_dir).await
    {
        results.push(Baseline {
            name: "pg_test_fsync_fdatasync".into(),
            clients: 1,
            tps: rate,
            rows_per_sec: rate,
        });
    }
    Ok(results)
}

/// A fresh scratch database with the baselines' tables.
async fn prepare(fleet: &Fleet) -> Result<(), String> {
    let admin = connect(fleet, "postgres").await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .await
        .map_err(|error| format!("baseline: drop {DATABASE}: {}", db_error(&error)))?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .map_err(|error| format!("baseline: create {DATABASE}: {}", db_error(&error)))?;
    let scratch = connect(fleet, DATABASE).await?;
    scratch
        .batch_execute(SCHEMA)
        .await
        .map_err(|error| format!("baseline: bench/schema.sql: {}", db_error(&error)))
}

/// The server's message for a database error (tokio-postgres's Display
/// says only "db error").
fn db_error(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned())
}

async fn connect(fleet: &Fleet, database: &str) -> Result<tokio_postgres::Client, String> {
    let dsn = format!(
        "postgres://{}@127.0.0.1:{}/{database}",
        fleet.pg_user, fleet.pg_port
    );
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .map_err(|error| format!("baseline: connect to {dsn}: {error}"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn pgbench(
    binary: &std::path::Path,
    fleet: &Fleet,
    script: &std::path::Path,
    clients: usize,
    secs: u64,
) -> Result<f64, String> {
    let output = tokio::process::Command::new(binary)
        .args(["-n", "-h", "127.0.0.1", "-U", &fleet.pg_user])
        .args(["-p", &fleet.pg_port.to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &secs.max(1).to_string(), "-f"])
        .arg(script)
        .arg(DATABASE)
        .output()
        .await
        .map_err(|error| format!("{}: {error}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    tps(&text).ok_or_else(|| {
        format!(
            "pgbench {} printed no tps: {text}{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `tps = 1234.5 (without initial connection time)`.
fn tps(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// `pg_test_fsync -s 1` in the state directory (the data's disk): the
/// fdatasync line of its first section (one 8 kB write per sync), in ops/s;
/// the tool is stopped once that line is out (its later sections would
/// take half a minute).
async fn fsync_rate(binary: &std::path::Path, dir: &std::path::Path) -> Option<f64> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    if !binary.is_file() {
        return None;
    }
    let file = dir.join("pg_test_fsync.out");
    let mut child = tokio::process::Command::new(binary)
        .args(["-s", "1", "-f"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut lines = BufReader::new(child.stdout.take()?).lines();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim();
            if line.starts_with("fdatasync") {
                return line.split_whitespace().nth(1)?.parse().ok();
            }
        }
        None
    };
    let rate = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .ok()
        .flatten();
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&file);
    rate
}

#[cfg(test)]
mod tests {
    #[test]
    fn pgbench_tps_is_read() {
        let text = "latency average = 1.0 ms\ntps = 1532.204 (without initial connection time)\n";
        assert_eq!(super::tps(text), Some(1532.204));
    }
}

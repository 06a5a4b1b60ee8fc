//! `cellctl migrate`: apply the embedded, versioned migrations to a cell's order
//! DB (`--cell NAME`, `--all-cells`) or to the ledger (`--ledger`). Safe to re-run:
//! applied versions are skipped, concurrent runs serialize on an advisory lock,
//! and a database whose applied migration text changed is refused.

use std::{io::Write, path::Path, time::Duration};

use redcell_migrations::{LEDGER, Migration, ORDER_DB};

use crate::{CommandError, load};

/// One database to migrate.
#[derive(Debug)]
pub struct Target {
    /// What it is, for the report (`cell n1`, `ledger`).
    pub label: String,
    pub dsn: String,
    pub migrations: &'static [Migration],
}

/// Resolves the flags into databases to migrate.
pub fn targets(
    topology: &Path,
    cell: Option<String>,
    all_cells: bool,
    ledger: bool,
    dsn: Option<String>,
) -> Result<Vec<Target>, CommandError> {
    if ledger {
        let dsn = dsn.ok_or_else(|| {
            CommandError::Input("--ledger needs --dsn or --ledger-dsn (REDCELL_LEDGER_DSN)".into())
        })?;
        return Ok(vec![Target {
            label: "ledger".into(),
            dsn,
            migrations: LEDGER,
        }]);
    }
    let topology = load::topology(topology)?;
    let cells: Vec<_> = match (&cell, all_cells) {
        (Some(name), _) => {
            let found = topology.cell(name).ok_or_else(|| {
                let names: Vec<&str> = topology.cells().iter().map(|c| c.name.as_str()).collect();
                CommandError::Input(format!(
                    "--cell: unknown cell {name:?} (cells: {})",
                    names.join(", ")
                ))
            })?;
            vec![found]
        }
        (None, true) => topology.cells().iter().collect(),
        (None, false) => {
            return Err(CommandError::Input(
                "say what to migrate: --cell NAME, --all-cells or --ledger".into(),
            ));
        }
    };
    if dsn.is_some() && cells.len() != 1 {
        return Err(CommandError::Input(
            "--dsn names one database; use it with --cell or --ledger".into(),
        ));
    }
    Ok(cells
        .into_iter()
        .map(|found| Target {
            label: format!("cell {}", found.name),
            dsn: dsn.clone().unwrap_or_else(|| found.db.clone()),
            migrations: ORDER_DB,
        })
        .collect())
}

/// How long one database gets to accept the connection: a black-holed host
/// must not stall the databases after it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrates every target, in order, whatever happened to the ones before: one
/// line per database on `out`, then (for several) a summary. Any failure makes
/// the command fail (exit 1) after all were tried, listing each failed
/// database by its DSN (never its password) with the whole cause.
pub fn run(targets: &[Target], out: &mut impl Write) -> Result<(), CommandError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CommandError::Input(format!("cannot start a runtime: {error}")))?;
    let mut failures = Vec::new();
    for target in targets {
        let shown = redcell_migrations::display_dsn(&target.dsn);
        let applied = match runtime.block_on(migrate(target)) {
            Ok(applied) => applied,
            Err(reason) => {
                writeln!(out, "{}: FAILED ({shown})", target.label)?;
                failures.push(format!("{} ({shown}): {reason}", target.label));
                continue;
            }
        };
        let newest = target.migrations.last().map_or(0, |m| m.version);
        if applied.is_empty() {
            writeln!(out, "{}: up to date (version {newest})", target.label)?;
        } else {
            let list: Vec<String> = applied.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "{}: applied {} -> version {newest}",
                target.label,
                list.join(", ")
            )?;
        }
    }
    let total = targets.len();
    let migrated = total - failures.len();
    if failures.is_empty() {
        if total > 1 {
            writeln!(out, "all {total} databases migrated")?;
        }
        return Ok(());
    }
    if let [only] = failures.as_slice()
        && total == 1
    {
        return Err(CommandError::Input(only.clone()));
    }
    Err(CommandError::Input(format!(
        "{} of {total} databases failed ({migrated} migrated):\n  {}",
        failures.len(),
        failures.join("\n  ")
    )))
}

/// Migrates one database; the reason it failed, with the whole source chain.
async fn migrate(target: &Target) -> Result<Vec<i32>, String> {
    let mut config: tokio_postgres::Config = target
        .dsn
        .parse()
        .map_err(|error| format!("malformed DSN: {}", chain(&error)))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    let (mut client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|error| format!("cannot connect: {}", chain(&error)))?;
    let connection = tokio::spawn(connection);
    let applied = redcell_migrations::apply(&mut client, target.migrations)
        .await
        .map_err(|error| chain(&error));
    drop(client);
    let _ = connection.await;
    applied
}

/// An error and its sources, `outer: inner: root`, each said once (an error
/// that prints its source is not repeated by it).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

//! `cellctl migrate`: apply the embedded, versioned migrations to a cell's order
//! DB (`--cell NAME`, `--all-cells`) or to the ledger (`--ledger`). Safe to re-run:
//! applied versions are skipped, concurrent runs serialize on an advisory lock,
//! and a database whose applied migration text changed is refused.

use std::{io::Write, path::Path};

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

pub fn run(targets: &[Target], out: &mut impl Write) -> Result<(), CommandError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CommandError::Input(format!("cannot start a runtime: {error}")))?;
    for target in targets {
        let applied = runtime.block_on(migrate(target))?;
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
    Ok(())
}

async fn migrate(target: &Target) -> Result<Vec<i32>, CommandError> {
    let failed = |what: String| CommandError::Input(format!("{}: {what}", target.label));
    let config: tokio_postgres::Config = target
        .dsn
        .parse()
        .map_err(|error| failed(format!("malformed DSN: {error}")))?;
    let (mut client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|error| failed(format!("cannot connect: {error}")))?;
    let connection = tokio::spawn(connection);
    let applied = redcell_migrations::apply(&mut client, target.migrations)
        .await
        .map_err(|error| failed(error.to_string()));
    drop(client);
    let _ = connection.await;
    applied
}

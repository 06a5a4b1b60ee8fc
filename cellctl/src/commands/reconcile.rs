//! `cellctl reconcile [--cell C]`: the money invariants of DESIGN §5 against
//! the live databases, by `redcell_cell::reconcile` (exact while traffic
//! flows; see that module). Without `--cell`, every cell of the topology and
//! the ledger in one fleet check, ending with the conservation line (ledger
//! balances + held + orphaned = deposited); with it, that cell's keys only.
//!
//! Exit 1 on any discrepancy (each listed by kind, cell, envelope and key) or
//! on a database it cannot reach (named by its DSN without the password).
//! Never hangs on a dead host: every connection is bounded by
//! [`CONNECT_TIMEOUT`] (the ledger's pool bounds its own).

use std::{io::Write, path::Path, time::Duration};

use redcell_cell::reconcile::{CellOrders, FleetReport, Report};
use redcell_migrations::display_dsn;
use redcell_payments::PgLedger;
use redcell_topology::Topology;
use tokio_postgres::Client;

use super::fund::money;
use crate::CommandError;

/// Bound on opening one order-DB connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The ledger at `dsn` (a lazy pool of one; every error names the ledger by
/// its DSN without the password).
pub fn ledger(dsn: &str) -> Result<PgLedger, CommandError> {
    PgLedger::connect(dsn, 1).map_err(|error| ledger_error(dsn, &error))
}

/// `ledger DSN: cause`.
pub fn ledger_error(dsn: &str, error: &dyn std::fmt::Display) -> CommandError {
    CommandError::Input(format!("ledger {}: {error}", display_dsn(dsn)))
}

/// The runtime a command's async part runs on.
pub fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| CommandError::Input(format!("cannot start a runtime: {error}")))
}

/// Opens one connection to `dsn` within [`CONNECT_TIMEOUT`] (unless the DSN
/// sets its own); the error names the database without its password.
pub async fn connect(dsn: &str) -> Result<Client, String> {
    let mut config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|error| format!("{}: invalid DSN: {error}", display_dsn(dsn)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|error| format!("{}: cannot connect: {error}", display_dsn(dsn)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Connects to the order DB of every named cell; every unreachable one is
/// listed (`cell NAME (DSN): cause`) in the error.
pub async fn connect_cells(
    topology: &Topology,
    only: Option<&str>,
) -> Result<Vec<(String, Client)>, CommandError> {
    let mut clients = Vec::new();
    let mut failures = Vec::new();
    for cell in topology.cells() {
        if only.is_some_and(|name| name != cell.name) {
            continue;
        }
        match connect(&cell.db).await {
            Ok(client) => clients.push((cell.name.clone(), client)),
            Err(error) => failures.push(format!("cell {} order DB {error}", cell.name)),
        }
    }
    if let Some(name) = only
        && clients.is_empty()
        && failures.is_empty()
    {
        let names: Vec<&str> = topology
            .cells()
            .iter()
            .map(|cell| cell.name.as_str())
            .collect();
        return Err(CommandError::Input(format!(
            "--cell: unknown cell {name:?} (cells: {})",
            names.join(", ")
        )));
    }
    if !failures.is_empty() {
        return Err(CommandError::Input(format!(
            "{} of {} order DBs unreachable:\n  {}",
            failures.len(),
            failures.len() + clients.len(),
            failures.join("\n  ")
        )));
    }
    Ok(clients)
}

/// Every cell's order DB against the ledger, in one fleet check (also what
/// `cellctl demo` prints at its end).
pub async fn check_fleet(
    topology: &Topology,
    ledger: &PgLedger,
) -> Result<FleetReport, CommandError> {
    let mut clients = connect_cells(topology, None).await?;
    let cells = clients
        .iter_mut()
        .map(|(cell, orders)| CellOrders { cell, orders });
    redcell_cell::reconcile::check_fleet(cells, ledger, topology)
        .await
        .map_err(|error| CommandError::Input(format!("reconcile: {error}")))
}

/// The ledger's DSN: `explicit` (`--ledger-dsn`), else the one the `up` on
/// `state_dir` runs.
pub fn ledger_dsn(
    explicit: Option<String>,
    state_dir: &std::path::Path,
) -> Result<String, CommandError> {
    match explicit {
        Some(dsn) => Ok(dsn),
        None => {
            let state = super::state_dir::StateDir::at(state_dir)?;
            state.read_record(&state.ledger_dsn_file())
        }
    }
}

/// `cellctl reconcile`: the ledger at `ledger_dsn`, the cells of `topology`;
/// with `metrics_file`, the outcome is also written there for Prometheus.
pub fn run(
    topology: &Topology,
    cell: Option<&str>,
    ledger_dsn: &str,
    metrics_file: Option<&Path>,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    runtime()?.block_on(run_async(topology, cell, ledger_dsn, metrics_file, out))
}

async fn run_async(
    topology: &Topology,
    cell: Option<&str>,
    ledger_dsn: &str,
    metrics_file: Option<&Path>,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let ledger = ledger(ledger_dsn)?;
    // The ledger first, so an unreachable one is named as such.
    ledger
        .total_balance()
        .await
        .map_err(|error| ledger_error(ledger_dsn, &error))?;
    let (reports, discrepancies) = match cell {
        None => {
            let fleet = check_fleet(topology, &ledger).await?;
            writeln!(
                out,
                "reconcile: {} cells, {} discrepancies",
                fleet.cells.len(),
                fleet.discrepancies.len()
            )?;
            print_cells(&fleet.cells, out)?;
            writeln!(
                out,
                "conservation: ledger balances {} + held {} + orphaned {} = deposited {} ({})",
                money(fleet.ledger_balance_cents),
                money(fleet.held_cents),
                money(fleet.orphaned_cents),
                money(fleet.deposited_cents),
                if fleet.ledger_balance_cents + fleet.held_cents + fleet.orphaned_cents
                    == fleet.deposited_cents
                {
                    "holds"
                } else {
                    "BROKEN"
                }
            )?;
            (fleet.cells, fleet.discrepancies)
        }
        Some(name) => {
            let mut clients = connect_cells(topology, Some(name)).await?;
            let mut reports = Vec::new();
            for (cell, orders) in &mut clients {
                let report = redcell_cell::reconcile::check_cell(orders, &ledger, topology, cell)
                    .await
                    .map_err(|error| CommandError::Input(format!("reconcile: {error}")))?;
                reports.push(report);
            }
            let discrepancies: Vec<_> = reports
                .iter()
                .flat_map(|report| report.discrepancies.clone())
                .collect();
            writeln!(
                out,
                "reconcile: cell {name}, {} discrepancies",
                discrepancies.len()
            )?;
            print_cells(&reports, out)?;
            (reports, discrepancies)
        }
    };
    for discrepancy in &discrepancies {
        writeln!(out, "  {discrepancy}")?;
    }
    if let Some(path) = metrics_file {
        write_metrics(path, &reports, discrepancies.len())?;
    }
    drop(reports);
    if discrepancies.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Input(format!(
            "reconcile found {} discrepancies",
            discrepancies.len()
        )))
    }
}

/// The run's outcome as a Prometheus textfile, replaced atomically (written
/// beside it, then renamed) so the exporter never reads half a file.
/// Discrepancies of no cell (the ledger's books, unroutable keys) count under
/// `cell="fleet"`.
fn write_metrics(path: &Path, reports: &[Report], total: usize) -> Result<(), CommandError> {
    let mut per_cell: Vec<(&str, usize)> = reports
        .iter()
        .map(|report| (report.cell.as_str(), report.discrepancies.len()))
        .collect();
    let of_cells: usize = per_cell.iter().map(|(_, count)| count).sum();
    per_cell.push(("fleet", total.saturating_sub(of_cells)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let text = redcell_lifecycle::metrics::reconcile_textfile(&per_cell, now);
    let failed = |error: std::io::Error| {
        CommandError::Input(format!("--metrics-file {}: {error}", path.display()))
    };
    let partial = path.with_extension("prom.partial");
    std::fs::write(&partial, text).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}

fn print_cells(reports: &[Report], out: &mut impl Write) -> Result<(), CommandError> {
    for report in reports {
        writeln!(
            out,
            "  cell {:<8} {} envelopes, {} claims, {} pending sends, {} pending transfers, held {}, settled {}",
            report.cell,
            report.envelopes,
            report.claims,
            report.pending_payments,
            report.pending_transfers,
            money(report.held_cents),
            money(report.settled_cents)
        )?;
        if report.archived_envelopes > 0 {
            writeln!(
                out,
                "           {} archived envelopes matched by their carried totals",
                report.archived_envelopes
            )?;
        }
    }
    Ok(())
}

//! `cellctl transfers --stuck | --retry KEY`: the settlement outbox seen and
//! nudged by hand.
//!
//! The settlement worker (cell/src/workers/settlement.rs) retries a failed
//! credit forever, backing off 0.2 s doubling to a 60 s cap, so "exhausted its
//! automatic retries" is defined here: a transfer still pending (`status = 1`)
//! after at least `--attempts N` failed credits ([`DEFAULT_STUCK_ATTEMPTS`]:
//! about two minutes of consecutive failures, past which every retry waits the
//! full 60 s). `--stuck` lists them per cell with key, user, amount, attempts,
//! age and the last error the worker kept.
//!
//! `--retry KEY` settles one transfer by hand, exactly as the worker would:
//! credit through the ledger under the transfer's own key (the ledger credits
//! a key once, so a retry racing the worker or another retry pays once), then
//! mark it done guarded by `status = 1`. A transfer already done is reported
//! and not credited again. A credit that fails leaves the transfer pending
//! and exits 1 with the ledger's error.

use std::{io::Write, time::Duration};

use clap::Args;
use redcell_payments::{LedgerKey, Payments};
use redcell_topology::Topology;
use tokio_postgres::Client;

use super::{fund::money, reconcile::connect};
use crate::CommandError;

/// Default of `--attempts`: failed credits after which a pending transfer
/// counts as stuck (backoff is at its 60 s cap from the 9th retry on).
pub const DEFAULT_STUCK_ATTEMPTS: i32 = 10;

const STUCK: &str = "SELECT key, user_id, amount_cents, attempts, \
       extract(epoch FROM now() - created_at)::bigint AS age_secs, \
       COALESCE(last_error, '') AS last_error \
     FROM transfers WHERE status = 1 AND attempts >= $1 ORDER BY id";
const ONE: &str = "SELECT user_id, amount_cents, status FROM transfers WHERE key = $1";
const MARK_DONE: &str = "UPDATE transfers SET status = 2, done_at = now(), attempts = attempts + 1, \
       last_error = NULL WHERE key = $1 AND status = 1";

/// Arguments of `cellctl transfers`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["stuck", "retry"])))]
pub struct TransfersArgs {
    /// List the pending transfers that failed at least --attempts times.
    #[arg(long)]
    pub stuck: bool,
    /// Settle the transfer with this ledger key (`claim:ID:SEQ`,
    /// `refund:ID`) by hand: credit it once, mark it done.
    #[arg(long, value_name = "KEY")]
    pub retry: Option<String>,
    /// Only this cell (default: every cell; for --retry, the cell the key's
    /// envelope routes to).
    #[arg(long)]
    pub cell: Option<String>,
    /// Failed credits after which a pending transfer is stuck.
    #[arg(long, default_value_t = DEFAULT_STUCK_ATTEMPTS)]
    pub attempts: i32,
    #[arg(long, env = "REDCELL_STATE_DIR", default_value = super::state_dir::DEFAULT)]
    pub state_dir: std::path::PathBuf,
    /// The ledger's DSN, for --retry (default: the one the `up` on
    /// --state-dir runs).
    #[arg(long, env = "REDCELL_LEDGER_DSN")]
    pub ledger_dsn: Option<String>,
}

/// `cellctl transfers`.
pub fn run(
    topology: &Topology,
    args: TransfersArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    if args.attempts < 1 {
        return Err(CommandError::Input(format!(
            "--attempts: must be at least 1, got {}",
            args.attempts
        )));
    }
    let runtime = super::reconcile::runtime()?;
    match &args.retry {
        Some(key) => {
            let ledger_dsn =
                super::reconcile::ledger_dsn(args.ledger_dsn.clone(), &args.state_dir)?;
            runtime.block_on(retry(topology, key, args.cell.as_deref(), &ledger_dsn, out))
        }
        None => runtime.block_on(stuck(topology, args.cell.as_deref(), args.attempts, out)),
    }
}

async fn stuck(
    topology: &Topology,
    only: Option<&str>,
    attempts: i32,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let clients = super::reconcile::connect_cells(topology, only).await?;
    let mut rows = Vec::new();
    for (cell, client) in &clients {
        let found = client.query(STUCK, &[&attempts]).await.map_err(|error| {
            CommandError::Input(format!("cell {cell}: reading transfers: {error}"))
        })?;
        for row in found {
            rows.push((cell.clone(), row));
        }
    }
    writeln!(
        out,
        "stuck transfers (pending after >= {attempts} failed credits): {}",
        rows.len()
    )?;
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "  {:<6} {:<32} {:<12} {:>10} {:>8} {:>8}  last error",
        "cell", "key", "user", "amount", "attempts", "age"
    )?;
    for (cell, row) in &rows {
        let column = |error: tokio_postgres::Error| {
            CommandError::Input(format!("cell {cell}: reading transfers: {error}"))
        };
        let key: String = row.try_get("key").map_err(column)?;
        let user: String = row.try_get("user_id").map_err(column)?;
        let cents: i64 = row.try_get("amount_cents").map_err(column)?;
        let attempts: i32 = row.try_get("attempts").map_err(column)?;
        let age: i64 = row.try_get("age_secs").map_err(column)?;
        let error: String = row.try_get("last_error").map_err(column)?;
        writeln!(
            out,
            "  {cell:<6} {key:<32} {user:<12} {:>10} {attempts:>8} {:>8}  {error}",
            money(cents),
            age_text(age)
        )?;
    }
    Ok(())
}

async fn retry(
    topology: &Topology,
    key: &str,
    only: Option<&str>,
    ledger_dsn: &str,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let parsed: LedgerKey = key
        .parse()
        .map_err(|error| CommandError::Input(format!("--retry: {key:?}: {error}")))?;
    if matches!(parsed, LedgerKey::Send(_)) {
        return Err(CommandError::Input(format!(
            "--retry: {key:?} is a Send's debit, not a settlement transfer (claim:… or refund:…)"
        )));
    }
    let cell = match only {
        Some(name) => topology
            .cell(name)
            .ok_or_else(|| CommandError::Input(format!("--cell: unknown cell {name:?}")))?,
        None => topology
            .route(&parsed.envelope())
            .map_err(|error| CommandError::Input(format!("--retry: {key:?}: {error}")))?,
    };
    let client = connect(&cell.db)
        .await
        .map_err(|error| CommandError::Input(format!("cell {} order DB {error}", cell.name)))?;
    let read = |error: tokio_postgres::Error| {
        CommandError::Input(format!("cell {}: transfer {key}: {error}", cell.name))
    };
    let Some(row) = client.query_opt(ONE, &[&key]).await.map_err(read)? else {
        return Err(CommandError::Input(format!(
            "--retry: cell {} has no transfer {key}",
            cell.name
        )));
    };
    let user: String = row.try_get("user_id").map_err(read)?;
    let cents: i64 = row.try_get("amount_cents").map_err(read)?;
    let status: i16 = row.try_get("status").map_err(read)?;
    if status != 1 {
        writeln!(
            out,
            "{key}: already settled ({user} {}); nothing credited",
            money(cents)
        )?;
        return Ok(());
    }
    credit_and_mark(
        &client,
        cell.name.as_str(),
        key,
        &user,
        cents,
        ledger_dsn,
        out,
    )
    .await
}

async fn credit_and_mark(
    client: &Client,
    cell: &str,
    key: &str,
    user: &str,
    cents: i64,
    ledger_dsn: &str,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let ledger = super::reconcile::ledger(ledger_dsn)?;
    ledger.credit(key, user, cents).await.map_err(|error| {
        let cause = format!("crediting {key}: {error}; the transfer stays pending");
        super::reconcile::ledger_error(ledger_dsn, &cause)
    })?;
    let marked = client.execute(MARK_DONE, &[&key]).await.map_err(|error| {
        CommandError::Input(format!(
            "cell {cell}: {key} is credited but not marked done ({error}); the settlement \
             worker or another --retry will mark it, paying nothing twice"
        ))
    })?;
    if marked == 1 {
        writeln!(
            out,
            "{key}: credited {user} {} and marked done (cell {cell})",
            money(cents)
        )?;
    } else {
        writeln!(
            out,
            "{key}: credit of {user} {} confirmed by its key; already marked done meanwhile (cell {cell})",
            money(cents)
        )?;
    }
    Ok(())
}

/// Seconds as `45s`, `12m05s`, `3h20m`, `2d04h`.
fn age_text(seconds: i64) -> String {
    let age = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

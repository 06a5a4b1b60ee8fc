//! The commands of `cellctl`, as a library so tests drive the same code paths.
//!
//! Each command lives in its own module with one shape: read what it needs from
//! the loaded [`Topology`], write a human-readable report to the given output.
//! Exit codes: 0 success, 1 the command ran and found a problem (an invalid
//! topology, an unroutable ID), 2 bad usage (clap's own code).
//!
//! **Owns**: the operator's commands (check, plan, migrate, reconcile, ...)
//! over cells.yaml and the databases it names. **Never**: serves traffic,
//! writes rows of an order DB or the ledger except through the crate that
//! owns them (migrations, payments), or edits cells.yaml without validating
//! it first.

mod commands;
mod load;

use std::{io::Write, path::PathBuf};

use clap::{Parser, Subcommand};

pub use commands::change;
pub use commands::render;
pub use load::LoadError;

/// Operate a redcell deployment: topology, routing and mint pools.
#[derive(Debug, Parser)]
#[command(name = "cellctl", version, about)]
pub struct Cli {
    /// The topology file.
    #[arg(
        long,
        global = true,
        env = "REDCELL_TOPOLOGY",
        default_value = "cells.yaml"
    )]
    pub topology: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a topology file; lists every error (exit 1) or prints a summary.
    Validate {
        /// File to check instead of --topology.
        file: Option<PathBuf>,
    },
    /// Show where an envelope ID lives: region, epoch, suffix, cell, servers.
    Route {
        /// The 22-digit envelope ID.
        envelope_id: String,
    },
    /// Show the suffixes new envelopes may be minted with, per cell, with shares.
    MintPool {
        /// Only this sender region.
        #[arg(long)]
        region: Option<String>,
    },
    /// Mint an HS256 bearer token for a user (development and tests only: in
    /// production tokens come from the identity provider, verified with RS256).
    DevToken {
        /// The user (the token's `sub`).
        #[arg(long)]
        user: String,
        /// The router's HS256 key file.
        #[arg(long, env = "REDCELL_JWT_HS256_KEY_FILE")]
        hs256_key_file: PathBuf,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Apply the embedded schema migrations (safe to re-run).
    Migrate {
        /// Migrate this cell's order DB (its `db` in the topology, or --dsn).
        #[arg(long, conflicts_with_all = ["all_cells", "ledger"])]
        cell: Option<String>,
        /// Migrate the order DB of every cell in the topology.
        #[arg(long, conflicts_with = "ledger")]
        all_cells: bool,
        /// Migrate the ledger (its DSN from --dsn or --ledger-dsn).
        #[arg(long)]
        ledger: bool,
        /// Database to migrate instead of the one the topology names.
        #[arg(long)]
        dsn: Option<String>,
        /// The ledger's DSN, used by --ledger when --dsn is not given.
        #[arg(long, env = "REDCELL_LEDGER_DSN")]
        ledger_dsn: Option<String>,
    },
    /// Start the whole fleet of the topology on this machine (PostgreSQL,
    /// logic servers, routers) and keep it running until Ctrl-C.
    Up(commands::up::UpArgs),
    /// Stop everything an `up` on the state directory left running.
    Down {
        #[arg(long, env = "REDCELL_STATE_DIR", default_value = commands::state_dir::DEFAULT)]
        state_dir: PathBuf,
    },
    /// Top up an account in the built-in ledger (CENTS: 10000 is 100.00).
    Fund {
        user: String,
        #[arg(allow_hyphen_values = true)]
        cents: String,
        #[arg(long, env = "REDCELL_STATE_DIR", default_value = commands::state_dir::DEFAULT)]
        state_dir: PathBuf,
        /// The ledger's DSN (default: the one the `up` on --state-dir runs).
        #[arg(long)]
        ledger_dsn: Option<String>,
    },
    /// Check the money invariants of the live order DBs against the ledger;
    /// lists every discrepancy and exits 1 on any (or on an unreachable DB).
    Reconcile {
        /// Only this cell's keys (default: the whole fleet, with conservation).
        #[arg(long)]
        cell: Option<String>,
        #[arg(long, env = "REDCELL_STATE_DIR", default_value = commands::state_dir::DEFAULT)]
        state_dir: PathBuf,
        /// The ledger's DSN (default: the one the `up` on --state-dir runs).
        #[arg(long, env = "REDCELL_LEDGER_DSN")]
        ledger_dsn: Option<String>,
        /// Also write the outcome for Prometheus (node_exporter's textfile
        /// collector): discrepancies per cell and when this run finished.
        #[arg(long)]
        metrics_file: Option<PathBuf>,
    },
    /// Export and delete the rows of settled envelopes minted before a day,
    /// keeping their totals for reconcile and Get (dry run unless --apply).
    Archive(commands::archive::ArchiveArgs),
    /// Every cell, logic server, order DB and router of the fleet: health,
    /// lanes, outbox, the topology each serves (--json for scripts).
    Status(commands::status::StatusArgs),
    /// The settlement outbox: list stuck transfers (--stuck) or settle one by
    /// hand, idempotently (--retry KEY).
    Transfers(commands::transfers::TransfersArgs),
    /// Against a running `up`: fund users, send envelopes of every kind, open
    /// them concurrently, wait for expiry and settlement, print a summary.
    Demo {
        #[arg(long, env = "REDCELL_STATE_DIR", default_value = commands::state_dir::DEFAULT)]
        state_dir: PathBuf,
    },
    /// Take a cell out of the mint pool (its old envelopes still route to it):
    /// shows the diff of cells.yaml and the new pool; writes only with --apply.
    Fail {
        cell: String,
        #[command(flatten)]
        change: commands::change::ChangeArgs,
    },
    /// Put a failed or draining cell back into the mint pool (dry run unless
    /// --apply).
    Restore {
        cell: String,
        #[command(flatten)]
        change: commands::change::ChangeArgs,
    },
    /// Replace a cell's database server by its synchronous standby (`up
    /// --standby`): refuses a standby that is behind; with --apply fences the
    /// old primary, promotes the standby, repoints cells.yaml.
    Failover(commands::failover::FailoverArgs),
    /// Mint new envelopes of region FROM in region TO's cells (FROM's
    /// existing envelopes still open in its own cells); dry run unless --apply.
    DrainRegion {
        from: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        change: commands::change::ChangeArgs,
    },
    /// Let a drained region mint in its own cells again (dry run unless
    /// --apply).
    Undrain {
        from: String,
        #[command(flatten)]
        change: commands::change::ChangeArgs,
    },
    /// Set runtime switches that shed work under load: history=on|off,
    /// history.pages=N, claims=on|off (=on removes the switch); dry run
    /// unless --apply.
    Degrade {
        #[arg(required = true, value_name = "KEY=VALUE")]
        switches: Vec<String>,
        #[command(flatten)]
        change: commands::change::ChangeArgs,
    },
    /// Parallel expansion: new cells and a new epoch splitting the chosen
    /// cells' suffixes (--split OLD:NEW,... or --add N); minting stays put
    /// until `switch`. Dry run unless --apply; a `cellctl up` fleet starts
    /// the new cells' databases and logic servers.
    Expand(commands::expand::ExpandArgs),
    /// Move minting to the epoch `expand` added, once every new cell serves
    /// (dry run unless --apply).
    Switch {
        #[command(flatten)]
        change: commands::change::ChangeArgs,
    },
    /// Move minting back to the epoch before `switch`; envelopes minted on
    /// the new cells still route and open there (dry run unless --apply).
    Reverse {
        #[command(flatten)]
        change: commands::change::ChangeArgs,
    },
    /// Make a switch final once it has soaked; reverse is refused after it
    /// (dry run unless --apply).
    Complete {
        /// How long after the switch a reverse may still be needed.
        #[arg(long, default_value_t = commands::switch::DEFAULT_SOAK_SECS, value_name = "SECS")]
        soak_secs: u64,
        #[command(flatten)]
        change: commands::change::ChangeArgs,
    },
    /// Render deployment manifests from the topology: `render k8s -o k8s/`.
    #[command(subcommand)]
    Render(commands::render::Target),
}

/// Why a command failed; each maps to an exit code.
#[derive(Debug)]
pub enum CommandError {
    /// The topology file could not be read or is invalid.
    Load(LoadError),
    /// The command's own input is wrong (e.g. a malformed envelope ID).
    Input(String),
    /// Writing the report failed (e.g. a closed pipe).
    Output(std::io::Error),
}

impl CommandError {
    pub fn exit_code(&self) -> u8 {
        1
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Load(error) => error.fmt(f),
            CommandError::Input(message) => f.write_str(message),
            CommandError::Output(error) => write!(f, "cannot write output: {error}"),
        }
    }
}

impl From<LoadError> for CommandError {
    fn from(error: LoadError) -> CommandError {
        CommandError::Load(error)
    }
}

impl From<std::io::Error> for CommandError {
    fn from(error: std::io::Error) -> CommandError {
        CommandError::Output(error)
    }
}

/// Runs one command, writing its report to `out`.
pub fn run(cli: Cli, out: &mut impl Write) -> Result<(), CommandError> {
    match cli.command {
        Command::Validate { file } => {
            commands::validate::run(file.as_deref().unwrap_or(&cli.topology), out)
        }
        Command::Route { envelope_id } => {
            commands::route::run(&load::topology(&cli.topology)?, &envelope_id, out)
        }
        Command::Migrate {
            cell,
            all_cells,
            ledger,
            dsn,
            ledger_dsn,
        } => {
            let dsn = if ledger { dsn.or(ledger_dsn) } else { dsn };
            let targets = commands::migrate::targets(&cli.topology, cell, all_cells, ledger, dsn)?;
            commands::migrate::run(&targets, out)
        }
        Command::DevToken {
            user,
            hs256_key_file,
            ttl_secs,
        } => commands::dev_token::run(&user, &hs256_key_file, ttl_secs, out),
        Command::Up(args) => commands::up::run(&cli.topology, args, out),
        Command::Down { state_dir } => commands::down::run(&state_dir, out),
        Command::Fund {
            user,
            cents,
            state_dir,
            ledger_dsn,
        } => commands::fund::run(&user, &cents, &state_dir, ledger_dsn, out),
        Command::Reconcile {
            cell,
            state_dir,
            ledger_dsn,
            metrics_file,
        } => {
            let dsn = commands::reconcile::ledger_dsn(ledger_dsn, &state_dir)?;
            let topology = load::topology(&cli.topology)?;
            commands::reconcile::run(
                &topology,
                cell.as_deref(),
                &dsn,
                metrics_file.as_deref(),
                out,
            )
        }
        Command::Archive(args) => {
            commands::archive::run(&load::topology(&cli.topology)?, args, out)
        }
        Command::Status(args) => commands::status::run(&cli.topology, args, out),
        Command::Transfers(args) => {
            commands::transfers::run(&load::topology(&cli.topology)?, args, out)
        }
        Command::Demo { state_dir } => commands::demo::run(&state_dir, out),
        Command::Fail { cell, change } => {
            commands::change::fail(&cli.topology, &cell, &change, out)
        }
        Command::Restore { cell, change } => {
            commands::change::restore(&cli.topology, &cell, &change, out)
        }
        Command::Failover(args) => commands::failover::run(&cli.topology, args, out),
        Command::DrainRegion { from, to, change } => {
            commands::region::drain(&cli.topology, &from, &to, &change, out)
        }
        Command::Undrain { from, change } => {
            commands::region::undrain(&cli.topology, &from, &change, out)
        }
        Command::Degrade { switches, change } => {
            commands::degrade::run(&cli.topology, &switches, &change, out)
        }
        Command::Expand(args) => commands::expand::run(&cli.topology, &args, out),
        Command::Switch { change } => commands::switch::switch(&cli.topology, &change, out),
        Command::Reverse { change } => commands::switch::reverse(&cli.topology, &change, out),
        Command::Complete { soak_secs, change } => {
            commands::switch::complete(&cli.topology, soak_secs, &change, out)
        }
        Command::Render(target) => commands::render::run(&cli.topology, target, out),
        Command::MintPool { region } => {
            commands::mint_pool::run(&load::topology(&cli.topology)?, region.as_deref(), out)
        }
    }
}

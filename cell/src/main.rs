//! `cell`: one logic server. Parses flags, loads and validates the topology and
//! the configuration (exit 78, EX_CONFIG, naming the bad flag or key, before
//! binding; clap's own usage errors exit 2), checks that the order DB is the
//! one this binary expects, then runs until SIGINT/SIGTERM.
//!
//! The order DB at start: one that answers with another schema (never
//! migrated, behind, newer, edited, not UTF8) is a deployment error like a bad
//! flag: exit 78 before binding, with the schema problem and what to run. One
//! that does not answer is an outage, not an error: the server starts
//! `NOT_SERVING` and the health probe checks the schema before its first
//! `SERVING` (see [`redcell_cell::health`]). The ledger is held to the same
//! rule at start; when it does not answer, the payment boundary reports it.

use std::process::ExitCode;

use clap::Parser;
use redcell_cell::{
    CellArgs, CellConfig,
    db::{self, SchemaCheck},
};
use redcell_lifecycle::TopologyFileError;
use redcell_payments::PgLedger;
use tokio_util::sync::CancellationToken;

/// Exit code of a configuration error (EX_CONFIG of sysexits.h).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Tests only: fail points and a skewed clock, from the environment.
    #[cfg(feature = "failpoints")]
    let _failpoints = redcell_cell::failpoints::setup();
    let args = CellArgs::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cell: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the trace exporter's channel lives on it. Dropped
    // last (after the runtime's work ended), flushing the spans still buffered.
    let telemetry = {
        let _entered = runtime.enter();
        redcell_lifecycle::telemetry::init("cell", args.telemetry.format())
    };
    let config = match load(&args) {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                eprintln!("cell: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let served = runtime.block_on(serve(args, config));
    drop(telemetry);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            eprintln!("cell: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("cell: {error}");
            ExitCode::FAILURE
        }
    }
}

/// How `serve` failed: configuration (78) or at run time (1).
enum Failure {
    Config(String),
    Runtime(String),
}

fn load(args: &CellArgs) -> Result<CellConfig, Vec<String>> {
    let topology =
        redcell_lifecycle::read_topology(&args.topology).map_err(|error| match error {
            TopologyFileError::Invalid { path, errors } => errors
                .iter()
                .map(|error| format!("{}: {error}", path.display()))
                .collect::<Vec<_>>(),
            read => vec![format!("--topology: {read}")],
        })?;
    CellConfig::from_args(args, topology)
}

async fn serve(args: CellArgs, config: CellConfig) -> Result<(), Failure> {
    check_order_db(&config).await?;
    check_ledger(&args.ledger_dsn).await?;
    let ledger = PgLedger::connect(&args.ledger_dsn, args.ledger_pool)
        .map_err(|error| Failure::Runtime(format!("--ledger-dsn: {error}")))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| {
            Failure::Runtime(format!("--listen: cannot bind {}: {error}", args.listen))
        })?;
    let admin = CancellationToken::new();
    let _stop_admin = admin.clone().drop_guard();
    if let Some(address) = args.telemetry.admin_listen {
        let listener = redcell_lifecycle::admin::bind(address)
            .await
            .map_err(Failure::Runtime)?;
        tokio::spawn(redcell_lifecycle::admin::serve(
            listener,
            config.metrics.registry().clone(),
            admin,
        ));
    }
    redcell_cell::run(
        listener,
        config,
        ledger,
        redcell_lifecycle::shutdown_signal(),
    )
    .await
    .map_err(|error| Failure::Runtime(error.to_string()))
}

/// Refuses an order DB that answers with a schema this binary was not built
/// for; lets an unreachable one through (health keeps it NOT_SERVING).
async fn check_order_db(config: &CellConfig) -> Result<(), Failure> {
    let dsn = config
        .order_db_dsn(&config.topology.load())
        .ok_or_else(|| {
            Failure::Config(format!("--cell: {} is not in the topology", config.cell))
        })?;
    let shown = redcell_migrations::display_dsn(&dsn);
    let pool =
        db::pool(&dsn, 1).map_err(|error| Failure::Config(format!("order DB {shown}: {error}")))?;
    match db::check_schema(&pool).await {
        SchemaCheck::Current => Ok(()),
        SchemaCheck::Mismatch(problem) => Err(Failure::Config(format!(
            "order DB {shown}: {problem}; run `cellctl migrate --cell {}` (or deploy the binary built for it)",
            config.cell
        ))),
        SchemaCheck::Unreachable(reason) => {
            tracing::warn!(
                db = %shown,
                %reason,
                "order DB unreachable at start: NOT_SERVING until it answers with the expected schema"
            );
            Ok(())
        }
    }
}

/// The same rule for the built-in ledger: refused when it answers with a
/// schema this binary was not built for; an unreachable ledger is an outage
/// the payment boundary already reports (`UNAVAILABLE`, retried).
async fn check_ledger(dsn: &str) -> Result<(), Failure> {
    let shown = redcell_migrations::display_dsn(dsn);
    let unreachable = |reason: String| {
        tracing::warn!(ledger = %shown, %reason, "ledger unreachable at start");
        Ok(())
    };
    let mut config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|error| Failure::Config(format!("--ledger-dsn: malformed DSN: {error}")))?;
    config.connect_timeout(std::time::Duration::from_secs(2));
    let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(connected) => connected,
        Err(error) => return unreachable(error.to_string()),
    };
    let connection = tokio::spawn(connection);
    let checked =
        redcell_migrations::check_current(&client, redcell_migrations::Schema::Ledger).await;
    drop(client);
    let _ = connection.await;
    match checked {
        Ok(_) => Ok(()),
        Err(error) if error.is_mismatch() => Err(Failure::Config(format!(
            "ledger {shown}: {error}; run `cellctl migrate --ledger` (or deploy the binary built for it)"
        ))),
        Err(error) => unreachable(error.to_string()),
    }
}

//! `cell`: one logic server. Parses flags, loads and validates the topology and
//! the configuration (exit 78, EX_CONFIG, naming the bad flag or key, before
//! binding; clap's own usage errors exit 2), then runs until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use redcell_cell::{CellArgs, CellConfig};
use redcell_payments::PgLedger;
use redcell_topology::Topology;

/// Exit code of a configuration error (EX_CONFIG of sysexits.h).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = CellArgs::parse();
    redcell_lifecycle::init_logging(args.log_json);
    let config = match load(&args) {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                eprintln!("cell: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cell: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cell: {error}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &CellArgs) -> Result<CellConfig, Vec<String>> {
    let path = args.topology.display();
    let text = std::fs::read_to_string(&args.topology)
        .map_err(|error| vec![format!("--topology: cannot read {path}: {error}")])?;
    let topology = Topology::parse(&text).map_err(|errors| {
        errors
            .iter()
            .map(|error| format!("{path}: {error}"))
            .collect::<Vec<_>>()
    })?;
    CellConfig::from_args(args, topology)
}

async fn serve(args: CellArgs, config: CellConfig) -> Result<(), String> {
    let ledger = PgLedger::connect(&args.ledger_dsn, args.ledger_pool)
        .map_err(|error| format!("--ledger-dsn: {error}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("--listen: cannot bind {}: {error}", args.listen))?;
    redcell_cell::run(
        listener,
        config,
        ledger,
        redcell_lifecycle::shutdown_signal(),
    )
    .await
    .map_err(|error| error.to_string())
}

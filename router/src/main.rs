//! `router`: parses flags, validates the topology and the configuration (exit 78,
//! EX_CONFIG, naming the bad flag, before binding), then serves until
//! SIGINT/SIGTERM. SIGHUP rereads the topology.

use std::process::ExitCode;

use clap::Parser;
use redcell_router::{RouterArgs, RouterConfig};

const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = RouterArgs::parse();
    redcell_lifecycle::init_logging(args.log_json);
    let config = match RouterConfig::from_args(&args) {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                eprintln!("router: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("router: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|error| format!("--listen: cannot bind {}: {error}", args.listen))?;
        redcell_router::run(listener, config, redcell_lifecycle::shutdown_signal())
            .await
            .map_err(|error| error.to_string())
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("router: {error}");
            ExitCode::FAILURE
        }
    }
}

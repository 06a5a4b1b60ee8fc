//! `router`: parses flags, validates the topology and the configuration (exit 78,
//! EX_CONFIG, naming the bad flag, before binding), then serves until
//! SIGINT/SIGTERM. SIGHUP rereads the topology.

use std::process::ExitCode;

use clap::Parser;
use redcell_router::{RouterArgs, RouterConfig};
use tokio_util::sync::CancellationToken;

const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = RouterArgs::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("router: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the trace exporter's channel lives on it. Dropped
    // after serving ended, flushing the spans still buffered.
    let telemetry = {
        let _entered = runtime.enter();
        redcell_lifecycle::telemetry::init("router", args.telemetry.format())
    };
    let config = match RouterConfig::from_args(&args) {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                eprintln!("router: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|error| format!("--listen: cannot bind {}: {error}", args.listen))?;
        let admin = CancellationToken::new();
        let _stop_admin = admin.clone().drop_guard();
        if let Some(address) = args.telemetry.admin_listen {
            let listener = redcell_lifecycle::admin::bind(address).await?;
            tokio::spawn(redcell_lifecycle::admin::serve(
                listener,
                config.metrics.registry().clone(),
                admin,
            ));
        }
        redcell_router::run(listener, config, redcell_lifecycle::shutdown_signal())
            .await
            .map_err(|error| error.to_string())
    });
    drop(telemetry);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("router: {error}");
            ExitCode::FAILURE
        }
    }
}

//! `cellctl`: the operator's CLI (DESIGN.md §7). Thin: parse the arguments, load
//! the topology, call the command, map its outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = redcell_cellctl::Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match redcell_cellctl::run(cli, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cellctl: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

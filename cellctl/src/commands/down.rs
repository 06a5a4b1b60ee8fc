//! `cellctl down`: stops everything an `up` on the state directory left
//! running, from another terminal or after that `up` crashed.
//!
//! First the `up` itself (SIGTERM: it stops its fleet in order and exits),
//! then whatever pid files still name: routers, logic servers, PostgreSQL
//! (each signalled, waited for, killed after a grace period). A pid is
//! signalled only while it runs the program its file is named for, so a pid
//! reused by an unrelated process is left alone. Stale pid files are removed.
//! Running it when nothing runs is fine (it says so).

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use redcell_pgsys::{
    process_tree,
    sys::{self, Signal},
};

use super::state_dir::{self, PidRecord, StateDir};
use crate::CommandError;

/// How long `up` gets to stop its fleet (its own per-part grace is 30 s, in
/// three groups).
const UP_GRACE: Duration = Duration::from_secs(120);
/// How long a leftover part gets after its signal before it is killed.
const PART_GRACE: Duration = Duration::from_secs(30);

pub fn run(state_dir: &Path, out: &mut impl Write) -> Result<(), CommandError> {
    let state = StateDir::at(state_dir)?;
    if !state.root().is_dir() {
        return Err(CommandError::Input(format!(
            "--state-dir {}: no such directory (nothing was started there)",
            state_dir.display()
        )));
    }
    let mut stopped = 0;
    if let Some(pid) = state_dir::read_pid(&state.up_pid_file())
        && state_dir::runs(pid, "cellctl")
    {
        let _ = sys::send_signal(pid, Signal::Terminate);
        if wait_gone(pid, UP_GRACE) {
            writeln!(out, "stopped cellctl up (pid {pid}) and its fleet")?;
        } else {
            let _ = sys::send_signal(pid, Signal::Kill);
            writeln!(
                out,
                "cellctl up (pid {pid}) did not stop within {UP_GRACE:?}; killed it"
            )?;
        }
        stopped += 1;
    }

    let records = state.pid_records();
    for group in ["router", "cell", "postgres"] {
        let running: Vec<&PidRecord> = records
            .iter()
            .filter(|record| state_dir::program_of(&record.part) == group)
            .filter(|record| state_dir::runs(record.pid, group))
            .collect();
        let signal = if group == "postgres" {
            Signal::Interrupt
        } else {
            Signal::Terminate
        };
        for record in &running {
            let _ = sys::send_signal(record.pid, signal);
        }
        for record in running {
            if wait_gone(record.pid, PART_GRACE) {
                writeln!(out, "stopped {} (pid {})", record.part, record.pid)?;
            } else {
                if group == "postgres" {
                    process_tree::kill_tree(record.pid);
                } else {
                    let _ = sys::send_signal(record.pid, Signal::Kill);
                }
                writeln!(
                    out,
                    "{} (pid {}) did not stop within {PART_GRACE:?}; killed it",
                    record.part, record.pid
                )?;
            }
            stopped += 1;
        }
    }
    for record in &records {
        let _ = std::fs::remove_file(state.pid_file(&record.part));
    }
    let _ = std::fs::remove_file(state.routers_file());
    let _ = std::fs::remove_file(state.up_pid_file());
    if stopped == 0 {
        writeln!(out, "nothing was running on {}", state_dir.display())?;
    }
    Ok(())
}

/// Polls until `pid` has exited (a zombie counts), at most `grace`.
fn wait_gone(pid: u32, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while process_tree::is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

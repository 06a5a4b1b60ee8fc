//! Fencing the old primary before its standby is promoted, so the cells'
//! databases never have two writers.
//!
//! In this order, each step making the next one safe to skip on a rerun:
//! 1. `postgres-<port>/fenced` is recorded: `up` refuses to start that server
//!    again (as a primary or at all).
//! 2. `standby.signal` is written into its data directory: a postmaster
//!    started on it by hand comes up in recovery, read-only, with no primary
//!    to follow.
//! 3. If its postmaster still runs (by the pid `up` recorded), it is stopped
//!    at once (SIGQUIT, PostgreSQL's immediate shutdown: no new commit can
//!    start; whatever it had not shipped to its synchronous standby was never
//!    acknowledged), killed with its children if it lingers.
//! 4. Nothing may answer on its port any more; if something does (a server
//!    this state directory did not start), the failover stops there, before
//!    the promotion.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use redcell_pgsys::process_tree;

use crate::{
    CommandError,
    commands::{
        state_dir::{self, StateDir},
        up::roles,
    },
};

/// How long the postmaster gets to exit after SIGQUIT before it is killed
/// with its children.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Fences the server on `port`; says what it did.
pub fn fence(state: &StateDir, port: u16, why: &str) -> Result<String, CommandError> {
    let part = format!("postgres-{port}");
    roles::record_fence(state, port, why)?;
    let data = state.postgres_dir(port).join("data");
    if data.is_dir() {
        let signal = data.join("standby.signal");
        std::fs::write(&signal, b"").map_err(|error| {
            CommandError::Input(format!("cannot write {}: {error}", signal.display()))
        })?;
        use std::os::unix::fs::MetadataExt as _;
        if let Ok(meta) = std::fs::metadata(&data) {
            std::os::unix::fs::chown(&signal, Some(meta.uid()), Some(meta.gid())).map_err(
                |error| CommandError::Input(format!("cannot chown {}: {error}", signal.display())),
            )?;
        }
    }
    let stopped = match state_dir::read_pid(&state.pid_file(&part))
        .filter(|pid| state_dir::runs(*pid, "postgres"))
    {
        Some(pid) => {
            // A zombie counts as gone: `up`, its parent, reaps it.
            process_tree::end_postmaster(pid, STOP_GRACE, &mut || !process_tree::is_alive(pid));
            format!("stopped its postmaster (pid {pid}, immediate shutdown)")
        }
        None => "it was not running".to_owned(),
    };
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
        return Err(CommandError::Input(format!(
            "{part} is fenced ({stopped}), but something still answers on {address} that {} \
             did not start; stop it, then run failover again (nothing was promoted)",
            state.root().display()
        )));
    }
    Ok(format!(
        "fenced {part}: {stopped}; standby.signal written to {}; recorded in {}",
        data.display(),
        state.postgres_dir(port).join("fenced").display()
    ))
}

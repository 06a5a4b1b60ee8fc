#![allow(unsafe_code)]
//! The only `unsafe` of the harness and `cellctl up`: four thin wrappers over libc.
//!
//! Each wrapper validates its arguments so that callers cannot reach the
//! dangerous corners of the underlying call (for `kill(2)`, a pid of 0 or -1
//! addresses a whole process group or every process; the wrapper refuses them).

use std::io;

/// Signals sent to PostgreSQL servers and to the processes `cellctl up` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Fast shutdown: roll back open transactions, checkpoint, exit.
    Interrupt,
    /// Polite termination (a logic server or router drains and exits; for
    /// PostgreSQL, smart shutdown).
    Terminate,
    /// Immediate shutdown: exit without a checkpoint (crash recovery on next start).
    Quit,
    /// Freeze the process so it cannot fork new children while we kill them.
    Stop,
    /// A crash.
    Kill,
    /// Reread configuration: routers and logic servers reload cells.yaml.
    Hangup,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Quit => libc::SIGQUIT,
            Signal::Stop => libc::SIGSTOP,
            Signal::Kill => libc::SIGKILL,
            Signal::Hangup => libc::SIGHUP,
        }
    }
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, touches no memory of ours and
    // cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends `signal` to the single process `pid`.
///
/// Refuses pids below 2: 0 and negative pids address process groups, -1
/// addresses every process we may signal, and 1 is init.
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = single_pid(pid)?;
    // SAFETY: kill(2) only reads its two integer arguments; `pid` was checked
    // above to name exactly one process, never a group.
    let rc = unsafe { libc::kill(pid, signal.number()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reaps `pid` if it is an exited child of this process; true when it has
/// exited (now or earlier) or is not our child at all.
///
/// Used only where no [`std::process::Child`] is at hand: in the `atexit`
/// hook, whose postmaster `Child` lives in a static that is never dropped.
pub fn reap_child_if_exited(pid: u32) -> bool {
    let Ok(pid) = single_pid(pid) else {
        return true;
    };
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable c_int for the duration of the
    // call; WNOHANG makes waitpid(2) return at once; `pid` names one process.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    // rc == pid: reaped now; rc == -1 (ECHILD): already reaped or not ours;
    // rc == 0: still running.
    rc != 0
}

/// Registers `hook` to run when the process exits normally (`exit(3)`, which
/// is how both `main` returning and `std::process::exit` end a test binary).
pub fn run_at_exit(hook: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `hook` is a plain `extern "C" fn()` with 'static lifetime, as
    // atexit(3) requires; the hook itself never unwinds (it catches nothing
    // because it calls nothing that panics: see `shared::stop_shared_at_exit`).
    let rc = unsafe { libc::atexit(hook) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(
            "atexit(3) refused to register the cleanup hook",
        ))
    }
}

fn single_pid(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}: not a single ordinary process"),
        )),
    }
}

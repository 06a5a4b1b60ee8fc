//! Finding and ending a postmaster together with its children, via `/proc`.
//!
//! Every PostgreSQL server process (backends, checkpointer, walwriter,
//! autovacuum, background workers) is a direct child of the postmaster, so
//! "the server" is the postmaster plus the processes whose parent pid is the
//! postmaster's. A crash is simulated by killing all of them, children first
//! seen while the postmaster is frozen with SIGSTOP so that it cannot fork a
//! new backend between the scan and the kill.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::{self, Signal};

/// How long to wait for SIGKILLed processes to disappear from `/proc`.
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// State letter and parent pid of `pid`, read from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may contain spaces and parentheses, so
    // parse from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` exists and has not exited (a zombie has exited: it holds
/// no memory, sockets or shared memory attachments any more).
pub fn is_alive(pid: u32) -> bool {
    matches!(stat_of(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// The command name (`/proc/<pid>/comm`) of `pid`, if it exists.
pub fn command_name(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim_end().to_owned())
}

/// Live processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(stat_of(pid), Some((state, ppid)) if ppid == parent && state != 'Z' && state != 'X'))
        .collect()
}

/// Kills `postmaster` and all its children with SIGKILL, then waits (a few
/// seconds at most) until none of them is alive.
///
/// The postmaster itself may remain a zombie until its parent reaps it.
pub fn kill_tree(postmaster: u32) {
    // Freeze it first: a stopped postmaster cannot fork, so the scan below
    // sees every child there will ever be.
    if let Err(err) = sys::send_signal(postmaster, Signal::Stop) {
        tracing::debug!(postmaster, %err, "SIGSTOP failed (already gone?)");
    }
    let children = children_of(postmaster);
    for &child in &children {
        if let Err(err) = sys::send_signal(child, Signal::Kill) {
            tracing::debug!(child, %err, "SIGKILL of a postgres child failed (already gone?)");
        }
    }
    if let Err(err) = sys::send_signal(postmaster, Signal::Kill) {
        tracing::debug!(postmaster, %err, "SIGKILL of the postmaster failed (already gone?)");
    }
    let deadline = Instant::now() + KILL_SETTLE;
    while children.iter().copied().chain([postmaster]).any(is_alive) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Ends a postmaster politely if it can, by force if it must: SIGQUIT
/// (immediate shutdown: the postmaster stops its children and removes its
/// shared memory), wait up to `grace` for `has_exited` to say so, then
/// [`kill_tree`].
///
/// `has_exited` must reap the postmaster when it is our child, or a zombie
/// would never count as exited.
pub fn end_postmaster(postmaster: u32, grace: Duration, has_exited: &mut dyn FnMut() -> bool) {
    if sys::send_signal(postmaster, Signal::Quit).is_ok() {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if has_exited() {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    if !has_exited() {
        tracing::warn!(
            postmaster,
            "postgres ignored SIGQUIT; killing it and its children"
        );
        kill_tree(postmaster);
    }
}

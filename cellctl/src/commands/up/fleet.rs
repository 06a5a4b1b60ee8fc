//! The processes one `up` started, and how they stop.
//!
//! Invariants:
//! - **Every process is our child and has a pid file** written right after
//!   it is spawned, so `cellctl down` (from another terminal, or after this
//!   process was killed) finds it; the file is removed once the process is
//!   reaped.
//! - **Children are in their own process groups**: a Ctrl-C in the terminal
//!   reaches `up` only, and `up` stops the fleet in order — routers first
//!   (no new calls), then logic servers (SIGTERM: drain in-flight calls, stop
//!   lanes and workers), then PostgreSQL (SIGINT: fast shutdown, a
//!   checkpoint) — so no part loses the one below it while it still works.
//! - **Stopping is bounded**: a part that has not exited [`STOP_GRACE`] after
//!   its signal is killed (PostgreSQL with its children).
//! - A part that exits on its own is reported once, with its log; the rest
//!   keep running (an operator may kill a logic server on purpose to watch
//!   the router fail over, and `status` shows it down). Only *supervised*
//!   parts are started again ([`Fleet::respawn`]): the standbys, whose
//!   absence blocks every commit of their primary. A primary is never
//!   restarted behind the operator's back (a dead primary is what
//!   `cellctl failover` is for).
//! - Except under `up --restart-crashed` ([`Fleet::restart_crashed`]), a
//!   fault-injection switch: then *every* part is supervised, primaries,
//!   logic servers and routers included, so a chaos test's kill -9 or
//!   `pg_ctl stop -m immediate` is followed by a restart as a process
//!   supervisor (systemd, a kubelet) would do it, and the test judges what
//!   the fleet lost across it.

use std::{
    fs::OpenOptions,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use redcell_pgsys::{
    process_tree,
    sys::{self, Signal},
};

use super::super::state_dir::{StateDir, log_tail};
use crate::CommandError;

/// A supervised part is started again no sooner than this after its last
/// start, so one that cannot start does not spin.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(5);
/// How long a part may take to exit after its stop signal.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// Lines of a part's log quoted in an error.
pub const LOG_LINES: usize = 20;

/// What a part is; decides its stop signal and its place in the stop order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Stopped first.
    Router,
    Cell,
    /// Stopped last.
    Postgres,
}

/// One running process.
#[derive(Debug)]
pub struct Part {
    pub name: String,
    pub kind: Kind,
    pub log: PathBuf,
    child: Child,
    pid_file: PathBuf,
    /// Set once its unexpected exit was reported.
    exited: Option<ExitStatus>,
    /// How to start it again, for a supervised part.
    restart: Option<Restart>,
    started: Instant,
}

/// Builds the command of a supervised part, for each (re)start.
pub struct Restart(Box<dyn Fn() -> Command + Send>);

impl std::fmt::Debug for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Restart")
    }
}

/// Every process this `up` started, in start order.
#[derive(Debug)]
pub struct Fleet {
    state: StateDir,
    parts: Vec<Part>,
    /// `up --restart-crashed`: every part spawned is supervised; PostgreSQL
    /// started again as this account (`None`: as we run).
    restart_crashed: Option<Option<(u32, u32)>>,
}

impl Fleet {
    pub fn new(state: StateDir) -> Fleet {
        Fleet {
            state,
            parts: Vec::new(),
            restart_crashed: None,
        }
    }

    /// From now on every part spawned is started again when it exits
    /// ([`Fleet::respawn`]), PostgreSQL as `pg_user` (uid, gid) when given.
    pub fn restart_crashed(&mut self, pg_user: Option<(u32, u32)>) {
        self.restart_crashed = Some(pg_user);
    }

    /// Spawns `command` as part `name`: stdin closed, stdout and stderr
    /// appended to its log, in a process group of its own, pid recorded.
    pub fn spawn(
        &mut self,
        name: &str,
        kind: Kind,
        mut command: Command,
    ) -> Result<u32, CommandError> {
        let again = self.restart_crashed.map(|pg_user| {
            recipe(
                &command,
                (kind == Kind::Postgres).then_some(pg_user).flatten(),
            )
        });
        let log = self.state.log_file(name);
        let open = || OpenOptions::new().create(true).append(true).open(&log);
        let (stdout, stderr) = open().and_then(|out| Ok((out, open()?))).map_err(|error| {
            CommandError::Input(format!("{name}: cannot open {}: {error}", log.display()))
        })?;
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let child = command.spawn().map_err(|error| {
            CommandError::Input(format!(
                "{name}: cannot start {:?}: {error}",
                command.get_program()
            ))
        })?;
        let pid = child.id();
        let pid_file = self.state.pid_file(name);
        // A part started again replaces its exited self.
        self.parts
            .retain(|part| part.name != name || part.exited.is_none());
        self.parts.push(Part {
            name: name.to_owned(),
            kind,
            log,
            child,
            pid_file: pid_file.clone(),
            exited: None,
            restart: again.map(Restart),
            started: Instant::now(),
        });
        std::fs::write(&pid_file, format!("{pid}\n")).map_err(|error| {
            CommandError::Input(format!(
                "{name}: cannot write {}: {error}",
                pid_file.display()
            ))
        })?;
        Ok(pid)
    }

    /// [`Fleet::spawn`]s `restart()` as part `name`, and again (by
    /// [`Fleet::respawn`]) whenever it exits while the fleet runs.
    pub fn spawn_supervised(
        &mut self,
        name: &str,
        kind: Kind,
        restart: Box<dyn Fn() -> Command + Send>,
    ) -> Result<u32, CommandError> {
        let pid = self.spawn(name, kind, restart())?;
        if let Some(part) = self.parts.iter_mut().rev().find(|part| part.name == name) {
            part.restart = Some(Restart(restart));
        }
        Ok(pid)
    }

    /// Starts again every supervised part that exited, at most once per
    /// [`RESTART_BACKOFF`]; one line per restart (or failure to) to report.
    pub fn respawn(&mut self) -> Vec<String> {
        let due: Vec<usize> = (0..self.parts.len())
            .filter(|&index| {
                let part = &self.parts[index];
                part.restart.is_some()
                    && part.exited.is_some()
                    && part.started.elapsed() >= RESTART_BACKOFF
            })
            .collect();
        let mut said = Vec::new();
        // From the back, so the indexes of the rest stay valid.
        for index in due.into_iter().rev() {
            let part = self.parts.remove(index);
            let Some(Restart(restart)) = part.restart else {
                continue;
            };
            match self.spawn(&part.name, part.kind, restart()) {
                Ok(pid) => {
                    if let Some(again) = self.parts.last_mut() {
                        again.restart = Some(Restart(restart));
                    }
                    said.push(format!("{} started again (pid {pid})", part.name));
                }
                Err(error) => {
                    said.push(format!("{} could not be started again: {error}", part.name));
                    // Keep it, exited, to try again after the backoff.
                    self.parts.push(Part {
                        restart: Some(Restart(restart)),
                        started: Instant::now(),
                        ..part
                    });
                }
            }
        }
        said
    }

    /// The exit status of part `name` if it has exited.
    pub fn exit_status(&mut self, name: &str) -> Option<ExitStatus> {
        let part = self.parts.iter_mut().find(|part| part.name == name)?;
        if part.exited.is_none() {
            part.exited = part.child.try_wait().ok().flatten();
        }
        part.exited
    }

    /// The error for a part that failed: its name, what went wrong, its log
    /// file and the last lines of that log.
    pub fn failure(&self, name: &str, what: &str) -> CommandError {
        let log = self.state.log_file(name);
        CommandError::Input(format!(
            "{name} {what}; its log is {}; last lines:\n{}",
            log.display(),
            indent(&log_tail(&log, LOG_LINES))
        ))
    }

    /// Parts that exited since the last call, each reported once.
    pub fn newly_exited(&mut self) -> Vec<(String, ExitStatus, PathBuf)> {
        let mut exited = Vec::new();
        for part in &mut self.parts {
            if part.exited.is_some() {
                continue;
            }
            if let Ok(Some(status)) = part.child.try_wait() {
                part.exited = Some(status);
                let _ = std::fs::remove_file(&part.pid_file);
                exited.push((part.name.clone(), status, part.log.clone()));
            }
        }
        exited
    }

    /// Stops every part: routers, then logic servers, then PostgreSQL; each
    /// group signalled at once and waited for (killed after [`STOP_GRACE`]).
    pub async fn stop_all(&mut self) {
        for kind in [Kind::Router, Kind::Cell, Kind::Postgres] {
            let signal = match kind {
                Kind::Router | Kind::Cell => Signal::Terminate,
                Kind::Postgres => Signal::Interrupt,
            };
            let group: Vec<&mut Part> = self
                .parts
                .iter_mut()
                .filter(|part| part.kind == kind)
                .collect();
            if group.is_empty() {
                continue;
            }
            let step = super::progress::step(format!("stopping {}", describe(kind, group.len())));
            for part in &group {
                if part.exited.is_none() {
                    let _ = sys::send_signal(part.child.id(), signal);
                }
            }
            let deadline = Instant::now() + STOP_GRACE;
            let mut killed = Vec::new();
            for part in group {
                loop {
                    if part.exited.is_some() {
                        break;
                    }
                    if let Ok(Some(status)) = part.child.try_wait() {
                        part.exited = Some(status);
                        break;
                    }
                    if Instant::now() >= deadline {
                        match part.kind {
                            Kind::Postgres => process_tree::kill_tree(part.child.id()),
                            Kind::Router | Kind::Cell => {
                                let _ = sys::send_signal(part.child.id(), Signal::Kill);
                            }
                        }
                        part.exited = part.child.wait().ok();
                        killed.push(part.name.clone());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = std::fs::remove_file(&part.pid_file);
            }
            if killed.is_empty() {
                step.done("stopped");
            } else {
                step.done(&format!(
                    "killed after {STOP_GRACE:?}: {}",
                    killed.join(", ")
                ));
            }
        }
        self.parts.clear();
    }
}

/// How to build `command` again (program, arguments, environment changes,
/// directory; as `user` (uid, gid) when given, which a `Command` does not
/// tell), for a part `--restart-crashed` supervises.
fn recipe(command: &Command, user: Option<(u32, u32)>) -> Box<dyn Fn() -> Command + Send> {
    let program = command.get_program().to_owned();
    let args: Vec<std::ffi::OsString> = command.get_args().map(ToOwned::to_owned).collect();
    let envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)> = command
        .get_envs()
        .map(|(key, value)| (key.to_owned(), value.map(ToOwned::to_owned)))
        .collect();
    let dir = command.get_current_dir().map(ToOwned::to_owned);
    Box::new(move || {
        let mut again = Command::new(&program);
        again.args(&args);
        for (key, value) in &envs {
            match value {
                Some(value) => again.env(key, value),
                None => again.env_remove(key),
            };
        }
        if let Some(dir) = &dir {
            again.current_dir(dir);
        }
        if let Some((uid, gid)) = user {
            again.uid(uid).gid(gid);
        }
        again
    })
}

fn describe(kind: Kind, count: usize) -> String {
    let noun = match (kind, count) {
        (Kind::Router, 1) => "router",
        (Kind::Router, _) => "routers",
        (Kind::Cell, 1) => "logic server",
        (Kind::Cell, _) => "logic servers",
        (Kind::Postgres, 1) => "PostgreSQL server",
        (Kind::Postgres, _) => "PostgreSQL servers",
    };
    format!("{count} {noun}")
}

/// `text` with every line indented, for quoting logs in errors.
pub fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

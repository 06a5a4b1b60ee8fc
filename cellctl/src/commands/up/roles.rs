//! The role of each PostgreSQL data directory in the state directory, as
//! recorded by `up --standby` and `cellctl failover`:
//!
//! ```text
//! standbys/<primary-port>   the standby of the server on that port (its port,
//!                           replication name, synchronous=on)
//! postgres-<port>/fenced    this server was failed over: it is never started
//!                           again as a primary (its data also holds
//!                           standby.signal, so even a hand-started postmaster
//!                           comes up read-only)
//! ```
//!
//! A `standbys/` record is written once the standby's data exists and is never
//! removed by `up`: from then on every `up` starts that standby and keeps its
//! primary synchronous with it, whatever the flags. That is what lets
//! `failover` trust a standby whose primary is dead: every commit the primary
//! ever acknowledged while the record existed was flushed by the standby
//! first.

use std::path::PathBuf;

use crate::{CommandError, commands::state_dir::StateDir};

/// A recorded primary/standby pair, by port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub primary: u16,
    pub standby: u16,
}

fn standbys_dir(state: &StateDir) -> PathBuf {
    state.root().join("standbys")
}

fn fence_file(state: &StateDir, port: u16) -> PathBuf {
    state.postgres_dir(port).join("fenced")
}

/// Every recorded pair; a malformed record is an error naming its file (a
/// standby `up` does not know about would fall behind unnoticed).
pub fn pairs(state: &StateDir) -> Result<Vec<Pair>, CommandError> {
    let dir = standbys_dir(state);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(CommandError::Input(format!(
                "cannot read {}: {error}",
                dir.display()
            )));
        }
    };
    let mut pairs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "partial") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|error| {
            CommandError::Input(format!("cannot read {}: {error}", path.display()))
        })?;
        let pair = parse(&text)
            .filter(|pair| entry.file_name().to_str() == Some(&pair.primary.to_string()))
            .ok_or_else(|| {
                CommandError::Input(format!(
                    "{} is not a standby record (primary=PORT, standby=PORT named by its primary's port)",
                    path.display()
                ))
            })?;
        pairs.push(pair);
    }
    pairs.sort_by_key(|pair| pair.primary);
    Ok(pairs)
}

/// Records that `pair.standby` is the synchronous standby of `pair.primary`.
pub fn record(state: &StateDir, pair: Pair) -> Result<(), CommandError> {
    let dir = standbys_dir(state);
    std::fs::create_dir_all(&dir).map_err(|error| {
        CommandError::Input(format!("cannot create {}: {error}", dir.display()))
    })?;
    state.write_record(
        &dir.join(pair.primary.to_string()),
        &format!(
            "primary={}\nstandby={}\nname=standby_{}\nsynchronous=on\n",
            pair.primary, pair.standby, pair.standby
        ),
    )
}

fn parse(text: &str) -> Option<Pair> {
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.trim().parse::<u16>().ok())
    };
    Some(Pair {
        primary: value("primary")?,
        standby: value("standby")?,
    })
}

/// Why the server on `port` was fenced, if it was.
pub fn fenced(state: &StateDir, port: u16) -> Option<String> {
    std::fs::read_to_string(fence_file(state, port))
        .ok()
        .map(|text| text.trim().to_owned())
}

/// Records the fence of the server on `port` (its `standby.signal` is the
/// caller's to write).
pub fn record_fence(state: &StateDir, port: u16, why: &str) -> Result<(), CommandError> {
    state.write_record(&fence_file(state, port), &format!("{why}\n"))
}

/// Whether `up` may start the data directory of `port` as a primary: not
/// when it was fenced, nor when it is an unpromoted standby's (only
/// `failover` promotes, after checking the standby is caught up).
pub fn check_primary(state: &StateDir, port: u16) -> Result<(), String> {
    if let Some(why) = fenced(state, port) {
        return Err(format!(
            "postgres-{port} is fenced ({why}); it is never started again as a primary: \
             point its cells (and --ledger-dsn) at the promoted server"
        ));
    }
    let data = state.postgres_dir(port).join("data");
    if data.join("standby.signal").is_file() {
        return Err(format!(
            "postgres-{port} holds a standby's data ({} exists), not a primary's: \
             promote it with `cellctl failover`",
            data.join("standby.signal").display()
        ));
    }
    Ok(())
}

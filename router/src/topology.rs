//! The router's topology: an immutable snapshot swapped atomically on reload
//! (DESIGN.md §3 hot reload).
//!
//! Reload triggers are a file watch (modification time, polled) and SIGHUP. A new
//! file is parsed and validated first; an invalid one is refused with a log line
//! and a counter, and the old topology keeps serving. In-flight requests finish
//! on the snapshot they started with (`ArcSwap::load_full`).

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use redcell_topology::Topology;
use tokio_util::sync::CancellationToken;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is unchanged (same modification time): nothing read.
    Unchanged,
    /// A new valid topology is now serving.
    Swapped,
    /// The file is invalid or unreadable; the old topology keeps serving.
    Refused(String),
}

#[derive(Debug)]
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    path: PathBuf,
    /// Modification time of the file last read (valid or not), to skip rereads.
    seen: Mutex<Option<SystemTime>>,
    reloads: AtomicU64,
    refused: AtomicU64,
}

impl TopologyHandle {
    pub fn new(path: PathBuf, initial: Topology) -> TopologyHandle {
        let seen = std::fs::metadata(&path)
            .and_then(|meta| meta.modified())
            .ok();
        TopologyHandle {
            current: ArcSwap::from_pointee(initial),
            path,
            seen: Mutex::new(seen),
            reloads: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The serving snapshot.
    pub fn load(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Successful swaps so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Refused reloads so far (invalid or unreadable files).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Rereads the file if it changed (or always, with `force`, for SIGHUP).
    pub fn reload(&self, force: bool) -> Reload {
        let modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .ok();
        if let Ok(mut seen) = self.seen.lock() {
            if !force && modified.is_some() && *seen == modified {
                return Reload::Unchanged;
            }
            *seen = modified;
        }
        let parsed = std::fs::read_to_string(&self.path)
            .map_err(|error| format!("cannot read {}: {error}", self.path.display()))
            .and_then(|text| Topology::parse(&text).map_err(|errors| errors.to_string()));
        match parsed {
            Ok(topology) => {
                if *self.current.load_full() == topology {
                    return Reload::Unchanged;
                }
                self.current.store(Arc::new(topology));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %self.path.display(), "topology reloaded");
                Reload::Swapped
            }
            Err(reason) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), %reason, "topology reload refused; the old topology keeps serving");
                Reload::Refused(reason)
            }
        }
    }

    /// Polls the file every `interval` and rereads it on SIGHUP, until cancelled.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let forced = tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            self.reload(forced);
        }
    }
}

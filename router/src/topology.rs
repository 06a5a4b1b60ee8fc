//! The router's topology: an immutable snapshot swapped atomically on reload
//! (DESIGN.md §3 hot reload).
//!
//! Reload triggers are a file watch (the file's bytes, polled) and SIGHUP. A new
//! file is parsed and validated first; an invalid one is refused with a log line
//! and a counter, and the old topology keeps serving. In-flight requests finish
//! on the snapshot they started with (`ArcSwap::load_full`).
//!
//! The watch compares contents, not modification times: an in-place rewrite
//! within one timestamp tick of the last read (coarse file systems, editors
//! that restore mtimes, ConfigMap symlink swaps) would keep an mtime and be
//! missed. cells.yaml is a few kilobytes; reading it every poll costs nothing.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use redcell_topology::Topology;
use tokio_util::sync::CancellationToken;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file holds what was last read, or the topology now serving.
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
    /// The bytes last read (valid or not; `None`: unreadable): an unchanged
    /// file is neither parsed again nor refused again at every poll.
    seen: Mutex<Option<Vec<u8>>>,
    reloads: AtomicU64,
    refused: AtomicU64,
}

impl TopologyHandle {
    pub fn new(path: PathBuf, initial: Topology) -> TopologyHandle {
        let seen = std::fs::read(&path).ok();
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

    /// Parses the file again if its contents changed since the last read (or
    /// always, with `force`, for SIGHUP).
    pub fn reload(&self, force: bool) -> Reload {
        let read = std::fs::read(&self.path);
        if let Ok(mut seen) = self.seen.lock() {
            let observed = read.as_ref().ok();
            if !force && seen.as_ref() == observed {
                return Reload::Unchanged;
            }
            *seen = observed.cloned();
        }
        let parsed = read
            .map_err(|error| format!("cannot read {}: {error}", self.path.display()))
            .and_then(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| format!("{} is not UTF-8", self.path.display()))
            })
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
    ///
    /// The SIGHUP handler is installed when this is called, not when the
    /// returned future first runs: the router calls it before it serves, so a
    /// SIGHUP sent once the router answers can never meet the default action
    /// (terminate). Call it inside the tokio runtime.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        if let Err(error) = &hangup {
            tracing::warn!(%error, "no SIGHUP handler: cells.yaml is reread by the file watch only");
        }
        self.watch_with(interval, hangup.ok(), cancel)
    }

    async fn watch_with(
        self: Arc<Self>,
        interval: Duration,
        mut hangup: Option<tokio::signal::unix::Signal>,
        cancel: CancellationToken,
    ) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{fs, time::SystemTime};

    use super::*;

    const BUNDLED: &str = include_str!("../../cells.yaml");

    fn handle(dir: &tempfile::TempDir) -> (TopologyHandle, PathBuf) {
        let path = dir.path().join("cells.yaml");
        fs::write(&path, BUNDLED).unwrap();
        let handle = TopologyHandle::new(path.clone(), Topology::parse(BUNDLED).unwrap());
        (handle, path)
    }

    /// Writes `text` and puts the file's modification time back to what it
    /// was: a rewrite the modification time does not show.
    fn rewrite_keeping_mtime(path: &PathBuf, text: &str) {
        let modified: SystemTime = fs::metadata(path).unwrap().modified().unwrap();
        fs::write(path, text).unwrap();
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(fs::metadata(path).unwrap().modified().unwrap(), modified);
    }

    #[test]
    fn a_rewrite_is_seen_by_its_contents_even_with_the_same_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, path) = handle(&dir);
        assert_eq!(handle.reload(false), Reload::Unchanged);

        let failed = BUNDLED.replacen("status: active", "status: failed", 1);
        assert_ne!(failed, BUNDLED);
        rewrite_keeping_mtime(&path, &failed);
        assert_eq!(handle.reload(false), Reload::Swapped);
        assert_eq!(*handle.load(), Topology::parse(&failed).unwrap());
        assert_eq!(handle.reload(false), Reload::Unchanged);
        assert_eq!((handle.reloads(), handle.refused()), (1, 0));
    }

    #[test]
    fn an_invalid_file_is_refused_once_and_the_old_topology_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, path) = handle(&dir);
        let serving = handle.load();

        rewrite_keeping_mtime(&path, "version: 1\ncells: [");
        assert!(matches!(handle.reload(false), Reload::Refused(_)));
        // Polling the same broken file again neither re-parses nor re-counts it.
        assert_eq!(handle.reload(false), Reload::Unchanged);
        assert_eq!(handle.refused(), 1);
        // SIGHUP forces a reread: refused again, counted again.
        assert!(matches!(handle.reload(true), Reload::Refused(_)));
        assert_eq!(handle.refused(), 2);
        fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        match handle.reload(false) {
            Reload::Refused(reason) => assert!(reason.ends_with("is not UTF-8"), "{reason}"),
            other => panic!("{other:?}"),
        }
        fs::remove_file(&path).unwrap();
        match handle.reload(false) {
            Reload::Refused(reason) => assert!(reason.starts_with("cannot read"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(handle.reload(false), Reload::Unchanged);
        assert_eq!(handle.refused(), 4);
        assert_eq!(handle.load(), serving);
        assert_eq!(handle.reloads(), 0);

        // The good file back: same topology as serving, nothing to swap.
        fs::write(&path, BUNDLED).unwrap();
        assert_eq!(handle.reload(false), Reload::Unchanged);
        assert_eq!(handle.load(), serving);
    }
}

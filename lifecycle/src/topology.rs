//! The live topology of a server binary: cells.yaml read, validated and
//! swapped atomically on reload (DESIGN.md §3 hot reload). Routers and cells
//! both hold a [`TopologyHandle`]; every binary (and `cellctl`) reads a
//! topology file through [`read_topology`], the one place that turns a path
//! into a validated [`Topology`] (the `topology` crate itself does no I/O).
//!
//! Reload triggers are a file watch (the file's bytes, polled) and SIGHUP. A new
//! file is parsed and validated first; an invalid one is refused with a log line
//! and a counter ([`TopologyHandle::refused`]), and the old topology keeps
//! serving. Requests read one snapshot each ([`TopologyHandle::load`]) and
//! finish on it, whatever is swapped in meanwhile.
//!
//! The watch compares contents, not modification times: an in-place rewrite
//! within one timestamp tick of the last read (coarse file systems, editors
//! that restore mtimes, ConfigMap symlink swaps) would keep an mtime and be
//! missed. cells.yaml is a few kilobytes; reading it every poll costs nothing.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use redcell_topology::{ConfigErrors, Topology};
use tokio_util::sync::CancellationToken;

/// A topology file that cannot be used, with every reason.
#[derive(Debug)]
pub enum TopologyFileError {
    /// Unreadable, or not UTF-8 (an [`std::io::ErrorKind::InvalidData`] error,
    /// as [`std::fs::read_to_string`] reports it).
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Read, but not a valid topology: every error, each with its line.
    Invalid { path: PathBuf, errors: ConfigErrors },
}

impl TopologyFileError {
    /// The file this is about.
    pub fn path(&self) -> &Path {
        match self {
            TopologyFileError::Read { path, .. } | TopologyFileError::Invalid { path, .. } => path,
        }
    }
}

impl fmt::Display for TopologyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyFileError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            TopologyFileError::Invalid { path, errors } => {
                write!(f, "{} is invalid: {errors}", path.display())
            }
        }
    }
}

impl std::error::Error for TopologyFileError {}

/// Reads and validates the topology file at `path`.
pub fn read_topology(path: &Path) -> Result<Topology, TopologyFileError> {
    let bytes = std::fs::read(path).map_err(|error| TopologyFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse_topology(path, bytes)
}

/// Validates the bytes read from `path`.
fn parse_topology(path: &Path, bytes: Vec<u8>) -> Result<Topology, TopologyFileError> {
    let text = String::from_utf8(bytes).map_err(|_| TopologyFileError::Read {
        path: path.to_owned(),
        error: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ),
    })?;
    Topology::parse(&text).map_err(|errors| TopologyFileError::Invalid {
        path: path.to_owned(),
        errors,
    })
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file holds what was last read, or the topology now serving (or the
    /// handle has no file).
    Unchanged,
    /// A new valid topology is now serving.
    Swapped,
    /// The file is invalid or unreadable; the old topology keeps serving.
    Refused(String),
}

/// The serving topology of one server and, unless it is [`fixed`], the file
/// it reloads from.
///
/// [`fixed`]: TopologyHandle::fixed
#[derive(Debug)]
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    /// `None`: a fixed topology (embedders, tests), never reloaded.
    path: Option<PathBuf>,
    /// The bytes last read (valid or not; `None`: unreadable): an unchanged
    /// file is neither parsed again nor refused again at every poll.
    seen: Mutex<Option<Vec<u8>>>,
    reloads: AtomicU64,
    refused: AtomicU64,
}

impl TopologyHandle {
    /// Serves `initial`, read from `path`, and reloads from `path`.
    pub fn new(path: PathBuf, initial: impl Into<Arc<Topology>>) -> TopologyHandle {
        let seen = std::fs::read(&path).ok();
        TopologyHandle {
            current: ArcSwap::new(initial.into()),
            path: Some(path),
            seen: Mutex::new(seen),
            reloads: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Serves `topology` for good: no file, nothing to watch.
    pub fn fixed(topology: impl Into<Arc<Topology>>) -> TopologyHandle {
        TopologyHandle {
            current: ArcSwap::new(topology.into()),
            path: None,
            seen: Mutex::new(None),
            reloads: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The file this handle reloads from; `None` for a fixed topology.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The serving snapshot. A request takes one and asks it every topology
    /// question it has, so its answers agree with each other.
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
        let Some(path) = &self.path else {
            return Reload::Unchanged;
        };
        let read = std::fs::read(path);
        if let Ok(mut seen) = self.seen.lock() {
            let observed = read.as_ref().ok();
            if !force && seen.as_ref() == observed {
                return Reload::Unchanged;
            }
            *seen = observed.cloned();
        }
        let parsed = read
            .map_err(|error| TopologyFileError::Read {
                path: path.clone(),
                error,
            })
            .and_then(|bytes| parse_topology(path, bytes));
        match parsed {
            Ok(topology) => {
                if *self.current.load_full() == topology {
                    return Reload::Unchanged;
                }
                self.current.store(Arc::new(topology));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %path.display(), "topology reloaded");
                Reload::Swapped
            }
            Err(error) => {
                let reason = match error {
                    TopologyFileError::Invalid { errors, .. } => errors.to_string(),
                    read => read.to_string(),
                };
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %path.display(), %reason, "topology reload refused; the old topology keeps serving");
                Reload::Refused(reason)
            }
        }
    }

    /// Polls the file every `interval` and rereads it on SIGHUP, until cancelled.
    ///
    /// The SIGHUP handler is installed when this is called, not when the
    /// returned future first runs: a server calls it before it serves, so a
    /// SIGHUP sent once the server answers can never meet the default action
    /// (terminate). Call it inside the tokio runtime, and only for a handle
    /// with a file (a fixed one has nothing to reread; the future then just
    /// waits for `cancel`).
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let hangup = if self.path.is_some() {
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
            if let Err(error) = &hangup {
                tracing::warn!(%error, "no SIGHUP handler: cells.yaml is reread by the file watch only");
            }
            hangup.ok()
        } else {
            None
        };
        self.watch_with(interval, hangup, cancel)
    }

    async fn watch_with(
        self: Arc<Self>,
        interval: Duration,
        mut hangup: Option<tokio::signal::unix::Signal>,
        cancel: CancellationToken,
    ) {
        if self.path.is_none() {
            cancel.cancelled().await;
            return;
        }
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
            Reload::Refused(reason) => assert!(
                reason.ends_with("stream did not contain valid UTF-8"),
                "{reason}"
            ),
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

#[cfg(test)]
mod files {
    #![allow(clippy::unwrap_used)]

    use std::fs;

    use super::*;

    const BUNDLED: &str = include_str!("../../cells.yaml");

    #[test]
    fn read_topology_names_the_file_in_every_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cells.yaml");
        fs::write(&path, BUNDLED).unwrap();
        assert_eq!(
            read_topology(&path).unwrap(),
            Topology::parse(BUNDLED).unwrap()
        );

        fs::write(&path, "version: 1\ncells: [").unwrap();
        let invalid = read_topology(&path).unwrap_err();
        assert!(
            matches!(invalid, TopologyFileError::Invalid { .. }),
            "{invalid}"
        );
        assert_eq!(invalid.path(), path);
        assert!(
            invalid
                .to_string()
                .starts_with(&format!("{} is invalid: ", path.display()))
        );

        fs::write(&path, [0xff, 0xfe]).unwrap();
        let binary = read_topology(&path).unwrap_err();
        assert_eq!(
            binary.to_string(),
            format!(
                "cannot read {}: stream did not contain valid UTF-8",
                path.display()
            )
        );

        fs::remove_file(&path).unwrap();
        let missing = read_topology(&path).unwrap_err();
        assert!(
            matches!(&missing, TopologyFileError::Read { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_fixed_topology_never_reloads() {
        let handle = TopologyHandle::fixed(Topology::parse(BUNDLED).unwrap());
        assert_eq!(handle.path(), None);
        assert_eq!(handle.reload(true), Reload::Unchanged);
        assert_eq!((handle.reloads(), handle.refused()), (0, 0));
    }
}

//! Writing cells.yaml: atomically (temp file, fsync, rename, fsync of the
//! directory), under an exclusive lock, only over the bytes the plan was made
//! from (compare-and-swap on the content hash), keeping the previous version.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// SHA-256 of the file's bytes as read at plan time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(Sha256::digest(bytes).into())
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        self.0[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// Why a change could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "{path} changed since it was read (sha256 {expected} at plan time, {found} now); \
         nothing written — plan again"
    )]
    Changed {
        path: String,
        expected: String,
        found: String,
    },
    #[error("another cellctl is changing {path} (lock {lock} is held); nothing written")]
    Locked { path: String, lock: String },
    #[error("cannot write {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |error| WriteError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// `cells.yaml` -> `cells.yaml.<suffix>` in the same directory.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Writes `text` to `path` atomically if the file's bytes still hash to
/// `expected`; returns where the previous version was kept (`<path>.prev`).
///
/// Under an exclusive, non-blocking `flock` on `<path>.lock` (a second writer
/// is refused, not queued): compare the hash, copy the current bytes to
/// `<path>.prev` (itself written atomically), write a temp file in the same
/// directory, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomically(
    path: &Path,
    text: &str,
    expected: ContentHash,
) -> Result<PathBuf, WriteError> {
    let lock_path = sibling(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // std's file lock is flock(2) on Linux: released when `lock` is closed.
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(WriteError::Locked {
                path: path.display().to_string(),
                lock: lock_path.display().to_string(),
            });
        }
        Err(fs::TryLockError::Error(error)) => return Err(io(&lock_path)(error)),
    }
    let current = fs::read(path).map_err(io(path))?;
    let found = ContentHash::of(&current);
    if found != expected {
        return Err(WriteError::Changed {
            path: path.display().to_string(),
            expected: expected.short(),
            found: found.short(),
        });
    }
    let prev = sibling(path, ".prev");
    replace(&prev, &current)?;
    replace(path, text.as_bytes())?;
    drop(lock); // closing the descriptor releases the flock
    Ok(prev)
}

/// Temp file in the same directory, fsync, rename over, fsync the directory.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let temp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temp).map_err(io(&temp))?;
        file.write_all(bytes).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        fs::rename(&temp, path).map_err(io(path))?;
        let dir = directory(path);
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

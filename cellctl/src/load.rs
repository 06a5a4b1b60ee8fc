//! Reading a topology file: the only file I/O the read-only commands do.

use std::{fmt, path::Path};

use redcell_lifecycle::TopologyFileError;
use redcell_topology::{ConfigErrors, Topology};

/// A topology file that cannot be used, with every reason.
#[derive(Debug)]
pub enum LoadError {
    Read { path: String, error: std::io::Error },
    Invalid { path: String, errors: ConfigErrors },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, error } => write!(f, "cannot read {path}: {error}"),
            LoadError::Invalid { path, errors } => {
                let count = errors.len();
                let noun = if count == 1 { "error" } else { "errors" };
                write!(f, "{path} is invalid ({count} {noun}):")?;
                for error in errors.iter() {
                    write!(f, "\n  {path}: {error}")?;
                }
                Ok(())
            }
        }
    }
}

/// Reads and validates a topology file (the one reader every binary uses,
/// [`redcell_lifecycle::read_topology`]).
pub fn topology(path: &Path) -> Result<Topology, LoadError> {
    redcell_lifecycle::read_topology(path).map_err(|error| match error {
        TopologyFileError::Read { path, error } => LoadError::Read {
            path: path.display().to_string(),
            error,
        },
        TopologyFileError::Invalid { path, errors } => LoadError::Invalid {
            path: path.display().to_string(),
            errors,
        },
    })
}

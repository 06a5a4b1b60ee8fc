//! Reading a topology file: the only file I/O the read-only commands do.

use std::{fmt, path::Path};

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

/// Reads and validates a topology file.
pub fn topology(path: &Path) -> Result<Topology, LoadError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: shown.clone(),
        error,
    })?;
    Topology::parse(&text).map_err(|errors| LoadError::Invalid {
        path: shown,
        errors,
    })
}

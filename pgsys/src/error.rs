//! The one error type of this crate.

use std::io;

/// Why the PostgreSQL programs or their account could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgSysError {
    /// No directory holding both `initdb` and `postgres` was found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found; looked in: {searched}. \
         Install them with `apt-get install -y postgresql` (Debian/Ubuntu), \
         or set REDCELL_PG_BINDIR to the directory that holds initdb and postgres"
    )]
    BinariesNotFound {
        /// Every place that was searched, in order, with why it was rejected.
        searched: String,
    },

    /// This process runs as root (PostgreSQL refuses to), and the
    /// unprivileged account the server should run as does not exist.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but user `{user}` is not in \
         /etc/passwd; install the server package (`apt-get install -y postgresql` creates the \
         `postgres` user), create the user, or set REDCELL_PG_USER to an existing one"
    )]
    ServerUserNotFound {
        /// The account that was looked up.
        user: String,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl PgSysError {
    /// Wraps an [`io::Error`] with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> PgSysError {
        let context = context.into();
        move |source| PgSysError::Io { context, source }
    }
}

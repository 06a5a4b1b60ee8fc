//! The one error type of the harness.
//!
//! Every variant carries enough context to act on without re-running the test
//! with extra logging: what was looked for, which command failed and what it
//! printed, or the tail of the server log when the server would not come up.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use redcell_pgsys::PgSysError;

/// Everything that can go wrong while starting, driving or stopping a
/// throwaway PostgreSQL server.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The binaries or their account could not be found or used (no
    /// `initdb`/`postgres`, no unprivileged user while root, an OS call
    /// failed); see [`PgSysError`].
    #[error(transparent)]
    System(#[from] PgSysError),

    /// `initdb` ran and failed.
    #[error("initdb failed ({status}) for {data_dir}:\n{stderr}")]
    InitdbFailed {
        /// Exit status of initdb.
        status: ExitStatus,
        /// Data directory it was asked to create.
        data_dir: PathBuf,
        /// What initdb printed (stderr, then stdout).
        stderr: String,
    },

    /// The postmaster exited before it accepted a connection.
    #[error(
        "postgres exited ({status}) before accepting connections; server log tail:\n{log_tail}"
    )]
    ServerExited {
        /// Exit status of the postmaster.
        status: ExitStatus,
        /// Last lines of the server log.
        log_tail: String,
    },

    /// The postmaster is alive but did not answer `select 1` in time.
    #[error("postgres did not answer `select 1` within {waited:?}; server log tail:\n{log_tail}")]
    NotReady {
        /// How long the harness waited.
        waited: Duration,
        /// Last lines of the server log.
        log_tail: String,
    },

    /// A clean shutdown (SIGINT) did not finish in time; the server was then
    /// killed.
    #[error(
        "postgres did not shut down within {waited:?} (it was then killed); server log tail:\n{log_tail}"
    )]
    ShutdownTimeout {
        /// How long the harness waited.
        waited: Duration,
        /// Last lines of the server log.
        log_tail: String,
    },

    /// `ensure_template` was asked for a template that already exists on this
    /// server with different migrations.
    #[error(
        "template database `{name}` was already created on this server from different migrations"
    )]
    TemplateMismatch {
        /// Name of the template database.
        name: String,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A PostgreSQL client call failed.
    #[error("{context}: {source}")]
    Postgres {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl HarnessError {
    /// Wraps an [`io::Error`] with what the harness was doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
        let context = context.into();
        move |source| HarnessError::Io { context, source }
    }

    /// Wraps a [`tokio_postgres::Error`] with what the harness was doing.
    pub(crate) fn pg(
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> HarnessError {
        let context = context.into();
        move |source| HarnessError::Postgres { context, source }
    }
}

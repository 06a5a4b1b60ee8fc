//! The order DB connection pool and the one place where PostgreSQL errors are
//! classified by SQLSTATE, so callers match on meaning.

use std::{str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{NoTls, error::SqlState};

/// A database failure, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connection refused / lost / pool timeout / server shutting down: retryable
    /// elsewhere or later; the DB may not have seen the statement at all.
    #[error("{0}")]
    Unavailable(String),
    /// Serialization failure or deadlock: the transaction rolled back; retry it.
    #[error("{0}")]
    Conflict(String),
    /// A unique constraint refused the row (the caller decides what that means).
    #[error("{0}")]
    UniqueViolation(String),
    #[error("{0}")]
    Other(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(error: tokio_postgres::Error) -> DbError {
        let message = match error.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => error.to_string(),
        };
        match error.code() {
            None => DbError::Unavailable(message),
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => DbError::UniqueViolation(message),
            Some(code)
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                DbError::Conflict(message)
            }
            Some(code)
                if code.code().starts_with("08")
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    || *code == SqlState::TOO_MANY_CONNECTIONS =>
            {
                DbError::Unavailable(message)
            }
            Some(_) => DbError::Other(message),
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(error: deadpool_postgres::PoolError) -> DbError {
        match error {
            deadpool_postgres::PoolError::Backend(error) => DbError::from(error),
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

/// A lazy pool (it connects on first use), with a wait timeout so a dead DB
/// answers `UNAVAILABLE` instead of hanging requests.
pub fn pool(dsn: &str, size: usize) -> Result<Pool, String> {
    let config =
        tokio_postgres::Config::from_str(dsn).map_err(|error| format!("malformed DSN: {error}"))?;
    let mut config = config;
    config.connect_timeout(Duration::from_secs(2));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|error| format!("cannot build pool: {error}"))
}

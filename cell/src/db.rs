//! The order DB connection pool, and [`DbError`]: the order DB's failures by
//! what the cell does about them. The SQLSTATE table itself is shared with
//! the ledger ([`redcell_payments::sqlstate`]), so a failure means the same
//! on both sides of the money boundary (a statement timeout is retryable in
//! both); this module only picks the cell's variant for each meaning.
//!
//! A logic server's pool follows the cell's `db` in the live topology
//! ([`follow`]).

use std::{str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use redcell_payments::sqlstate::SqlFailure;
use tokio_postgres::NoTls;

pub mod follow;

pub use follow::OrderDb;

/// A database failure, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connection refused / lost / pool timeout / server shutting down or out
    /// of resources / a statement, lock or session timeout: retryable
    /// elsewhere or later; nothing committed (or the outcome is unknown).
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
        match SqlFailure::of(&error) {
            SqlFailure::Unavailable => DbError::Unavailable(message),
            // Statement, lock and session timeouts: the database is
            // overloaded or a lock is held long. Nothing committed; the
            // client may retry (UNAVAILABLE), as it would against the ledger.
            SqlFailure::TimedOut => DbError::Unavailable(format!("timed out: {message}")),
            SqlFailure::Conflict => DbError::Conflict(message),
            SqlFailure::UniqueViolation => DbError::UniqueViolation(message),
            SqlFailure::Unexpected => DbError::Other(message),
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

/// A lazy pool (it connects on first use) of `size` connections to `dsn`
/// for good, with a wait timeout so a dead DB answers `UNAVAILABLE` instead
/// of hanging requests. A logic server's pool follows the topology instead
/// ([`OrderDb::pool`]); this one is for one-off checks and tools.
pub fn pool(dsn: &str, size: usize) -> Result<Pool, String> {
    let mut config =
        tokio_postgres::Config::from_str(dsn).map_err(|error| format!("malformed DSN: {error}"))?;
    config.connect_timeout(Duration::from_secs(2));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    build_pool(manager, size)
}

/// The pool settings every order-DB pool has, whatever it connects to.
fn build_pool(manager: Manager, size: usize) -> Result<Pool, String> {
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|error| format!("cannot build pool: {error}"))
}

/// What the order DB said when asked whether it is the one this binary
/// expects (DESIGN §6: a server serves only a schema it was built for).
#[derive(Debug)]
pub enum SchemaCheck {
    /// Migrated to exactly this binary's embedded migrations, UTF8 text.
    Current,
    /// It answered, and it is not: never migrated, behind, newer, edited, or
    /// not a UTF8 database. Serving would answer every request with an error.
    Mismatch(String),
    /// It did not answer (down, refusing, pool timeout): ask again later.
    Unreachable(String),
}

/// Asks the order DB behind `pool` for its schema version (read-only).
pub async fn check_schema(pool: &Pool) -> SchemaCheck {
    let client = match pool.get().await {
        Ok(client) => client,
        Err(error) => return SchemaCheck::Unreachable(DbError::from(error).to_string()),
    };
    match redcell_migrations::check_current(&client, redcell_migrations::Schema::Orders).await {
        Ok(_) => {}
        Err(error) if error.is_mismatch() => return SchemaCheck::Mismatch(error.to_string()),
        Err(redcell_migrations::MigrateError::Postgres(error)) => {
            return match DbError::from(error) {
                DbError::Unavailable(message) => SchemaCheck::Unreachable(message),
                other => SchemaCheck::Mismatch(format!("cannot read its schema version: {other}")),
            };
        }
        Err(error) => return SchemaCheck::Mismatch(error.to_string()),
    }
    // Text columns hold whatever a client sends (DESIGN §8 allows any Unicode
    // greeting but NUL): only a UTF8 database stores all of it.
    match client.query_one("SHOW server_encoding", &[]).await {
        Ok(row) => match row.try_get::<_, String>(0) {
            Ok(encoding) if encoding == "UTF8" => SchemaCheck::Current,
            Ok(encoding) => SchemaCheck::Mismatch(format!(
                "the order DB's encoding is {encoding}; redcell stores text as UTF8 (create it with ENCODING 'UTF8')"
            )),
            Err(error) => SchemaCheck::Mismatch(format!("server_encoding is unreadable: {error}")),
        },
        Err(error) => match DbError::from(error) {
            DbError::Unavailable(message) => SchemaCheck::Unreachable(message),
            other => SchemaCheck::Mismatch(format!("cannot read its encoding: {other}")),
        },
    }
}

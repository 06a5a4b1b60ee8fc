//! The one error type of the payments boundary, and the one place where
//! database and pool errors are classified.
//!
//! Callers match on meaning: [`PaymentsError::Unavailable`] is retried with
//! the same key, the other variants are bugs in the caller and are not. Every
//! failure of the ledger's storage becomes `Unavailable` (never a panic):
//! from the caller's side an unknown outcome is an unknown outcome, and the
//! idempotency key makes the retry safe. What the classification (the shared
//! [`crate::sqlstate`] table) adds is the log level: transient failures
//! (connection loss, shutdowns, timeouts, serialization failures) are
//! expected weather (`warn`), anything else means the ledger or its schema
//! is wrong (`error`) and an operator should look.

use std::error::Error as StdError;
use std::fmt::Write as _;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::sqlstate::SqlFailure;

/// Why a payments call failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// The payment system could not be reached or did not answer (connection,
    /// pool, timeout, shutdown, serialization failure, or an unexpected
    /// storage error, described in the message). The outcome is unknown:
    /// retry with the same key.
    #[error("payment system unavailable: {0}")]
    Unavailable(String),
    /// The key was already used for a different operation (another account,
    /// amount or kind). A bug in the caller; retrying cannot help.
    #[error("idempotency key {key:?} was already used for a different operation")]
    KeyConflict {
        /// The reused key.
        key: String,
    },
    /// Amounts are positive cents; this one was not. Nothing was written.
    #[error("amount must be a positive number of cents, got {0}")]
    InvalidAmount(i64),
}

impl PaymentsError {
    /// Whether retrying the same call with the same key may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PaymentsError::Unavailable(_) => true,
            PaymentsError::KeyConflict { .. } | PaymentsError::InvalidAmount(_) => false,
        }
    }
}

/// The error and its sources on one line (tokio-postgres' own `Display`
/// leaves the server's message in the source).
fn describe(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

impl From<tokio_postgres::Error> for PaymentsError {
    fn from(err: tokio_postgres::Error) -> Self {
        let text = describe(&err);
        let code = err.code().map_or("none", SqlState::code);
        if SqlFailure::of(&err).is_transient() {
            tracing::warn!(sqlstate = code, error = %text, "ledger unavailable");
            PaymentsError::Unavailable(text)
        } else {
            tracing::error!(sqlstate = code, error = %text, "unexpected ledger error");
            PaymentsError::Unavailable(format!("unexpected ledger error (SQLSTATE {code}): {text}"))
        }
    }
}

impl From<PoolError> for PaymentsError {
    fn from(err: PoolError) -> Self {
        match err {
            // A failed connect is a database error like any other.
            PoolError::Backend(err) => err.into(),
            other => {
                let text = describe(&other);
                tracing::warn!(error = %text, "ledger pool unavailable");
                PaymentsError::Unavailable(format!("ledger connection pool: {text}"))
            }
        }
    }
}

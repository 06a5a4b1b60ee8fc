//! The one error type of the payments boundary, and the one place where
//! database and pool errors are classified.
//!
//! Callers match on meaning: [`PaymentsError::Unavailable`] is retried with
//! the same key, the other variants are bugs in the caller and are not. Every
//! failure of the ledger's storage becomes `Unavailable` (never a panic):
//! from the caller's side an unknown outcome is an unknown outcome, and the
//! idempotency key makes the retry safe. What the classification adds is the
//! log level: connection loss, shutdowns, timeouts and serialization
//! failures are expected weather (`warn`), anything else means the ledger or
//! its schema is wrong (`error`) and an operator should look.

use std::error::Error as StdError;
use std::fmt::Write as _;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

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

/// How bad a storage failure is; both become `Unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Connection trouble, shutdown, timeout, lock conflict: goes away by itself.
    Transient,
    /// A failure the ledger's queries should never cause (constraint, syntax,
    /// decoding): a bug or a schema mismatch.
    Unexpected,
}

fn classify(err: &tokio_postgres::Error) -> Failure {
    let Some(code) = err.code() else {
        // No SQLSTATE: I/O, closed connection, connect failure, timeout.
        // (Client-side decoding errors also have none; the ledger's queries
        // and schema are tested together, so they are not worth a text match.)
        return Failure::Transient;
    };
    let transient = code.code().starts_with("08") // connection exception
        || code.code().starts_with("53") // insufficient resources (too many connections, disk full)
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::QUERY_CANCELED, // statement_timeout, if the DSN sets one
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        ]
        .contains(code);
    if transient {
        Failure::Transient
    } else {
        Failure::Unexpected
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
        match classify(&err) {
            Failure::Transient => {
                tracing::warn!(sqlstate = code, error = %text, "ledger unavailable");
                PaymentsError::Unavailable(text)
            }
            Failure::Unexpected => {
                tracing::error!(sqlstate = code, error = %text, "unexpected ledger error");
                PaymentsError::Unavailable(format!(
                    "unexpected ledger error (SQLSTATE {code}): {text}"
                ))
            }
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

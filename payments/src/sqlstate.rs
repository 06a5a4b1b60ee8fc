//! What a PostgreSQL failure means, by SQLSTATE: the one classification the
//! ledger ([`crate::PaymentsError`]) and the cell's order DB
//! (`redcell_cell::db::DbError`) both use, so a failure means the same thing
//! on both sides of the money boundary. Callers match on [`SqlFailure`],
//! never on message text.
//!
//! | SQLSTATE                                   | meaning                                      | [`SqlFailure`]      |
//! |--------------------------------------------|----------------------------------------------|---------------------|
//! | none (I/O error, closed connection, connect timeout) | no answer from the server          | `Unavailable`       |
//! | class `08` (connection exception)          | the connection failed or was refused         | `Unavailable`       |
//! | class `53` (insufficient resources: 53300 too many connections, disk full, out of memory) | the server cannot take the work now | `Unavailable` |
//! | 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now | the server is stopping or starting | `Unavailable` |
//! | 25P03 idle-in-transaction timeout, 57P05 idle-session timeout | the server closed the session | `Unavailable` |
//! | 40001 serialization failure, 40P01 deadlock | the transaction was rolled back for a concurrent one | `Conflict` |
//! | 57014 query canceled (`statement_timeout`, a cancel request), 55P03 lock not available (`lock_timeout`, `NOWAIT`) | the statement gave up waiting: the server is overloaded or a lock is held long | `TimedOut` |
//! | 23505 unique violation                     | a unique index refused the row               | `UniqueViolation`   |
//! | anything else (syntax, undefined column, check violation, ...) | the query or the schema is wrong | `Unexpected` |
//!
//! `Unavailable`, `Conflict` and `TimedOut` are **transient**: the statement's
//! transaction did not commit (or, for a lost connection, its outcome is
//! unknown), nothing is wrong with the request, and the same request may
//! succeed later; an answer to a client is `UNAVAILABLE`, retryable. A
//! `UniqueViolation` means what the caller's statement says it means.
//! `Unexpected` is a bug or a schema drift for an operator: `INTERNAL` to a
//! client (the cell), logged as an error (the ledger).
//!
//! A driver error without a SQLSTATE is counted as `Unavailable`, though a
//! few of them (a column that does not decode, a `query_one` that found no
//! row) are the caller's: tokio-postgres does not expose its error kind, and
//! both callers decode columns with `try_get` into their own errors first.

use tokio_postgres::error::SqlState;

/// What a PostgreSQL failure means to the caller (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlFailure {
    /// The server could not be reached, refused the session, or closed it.
    Unavailable,
    /// Serialization failure or deadlock: rolled back; retry the transaction.
    Conflict,
    /// A statement, lock or session timeout cancelled the statement.
    TimedOut,
    /// A unique index refused the row.
    UniqueViolation,
    /// Anything else: a bug or a schema mismatch.
    Unexpected,
}

impl SqlFailure {
    /// Whether the same request may succeed if tried again later.
    pub fn is_transient(self) -> bool {
        match self {
            SqlFailure::Unavailable | SqlFailure::Conflict | SqlFailure::TimedOut => true,
            SqlFailure::UniqueViolation | SqlFailure::Unexpected => false,
        }
    }

    /// The meaning of `error`.
    pub fn of(error: &tokio_postgres::Error) -> SqlFailure {
        SqlFailure::of_code(error.code())
    }

    /// The meaning of a SQLSTATE (`None`: the error carried none).
    pub fn of_code(code: Option<&SqlState>) -> SqlFailure {
        let Some(code) = code else {
            return SqlFailure::Unavailable;
        };
        let class = code.code().get(..2);
        if matches!(class, Some("08" | "53"))
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                SqlState::IDLE_SESSION_TIMEOUT,
            ]
            .contains(code)
        {
            SqlFailure::Unavailable
        } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            SqlFailure::Conflict
        } else if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE {
            SqlFailure::TimedOut
        } else if *code == SqlState::UNIQUE_VIOLATION {
            SqlFailure::UniqueViolation
        } else {
            SqlFailure::Unexpected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_in_the_module_doc() {
        let cases = [
            (None, SqlFailure::Unavailable),
            (Some("08006"), SqlFailure::Unavailable), // connection failure
            (Some("08001"), SqlFailure::Unavailable), // cannot establish
            (Some("53300"), SqlFailure::Unavailable), // too many connections
            (Some("53100"), SqlFailure::Unavailable), // disk full
            (Some("57P01"), SqlFailure::Unavailable),
            (Some("57P02"), SqlFailure::Unavailable),
            (Some("57P03"), SqlFailure::Unavailable),
            (Some("25P03"), SqlFailure::Unavailable),
            (Some("57P05"), SqlFailure::Unavailable),
            (Some("40001"), SqlFailure::Conflict),
            (Some("40P01"), SqlFailure::Conflict),
            (Some("57014"), SqlFailure::TimedOut),
            (Some("55P03"), SqlFailure::TimedOut),
            (Some("23505"), SqlFailure::UniqueViolation),
            (Some("23503"), SqlFailure::Unexpected), // foreign key
            (Some("23514"), SqlFailure::Unexpected), // check
            (Some("42703"), SqlFailure::Unexpected), // undefined column
            (Some("42601"), SqlFailure::Unexpected), // syntax
            (Some("22P02"), SqlFailure::Unexpected), // invalid text
            (Some("XX000"), SqlFailure::Unexpected),
        ];
        for (code, meaning) in cases {
            let state = code.map(SqlState::from_code);
            assert_eq!(SqlFailure::of_code(state.as_ref()), meaning, "{code:?}");
        }
    }

    #[test]
    fn transient_means_retry_later() {
        assert!(SqlFailure::Unavailable.is_transient());
        assert!(SqlFailure::Conflict.is_transient());
        assert!(SqlFailure::TimedOut.is_transient());
        assert!(!SqlFailure::UniqueViolation.is_transient());
        assert!(!SqlFailure::Unexpected.is_transient());
    }
}

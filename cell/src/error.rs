//! The cell's errors and their gRPC codes (DESIGN.md §4).
//!
//! One enum for the request path, one exhaustive `From<CellError> for Status`
//! with no `_` arm: a new variant forces a decision about its code. Database
//! errors are classified in one place ([`crate::db::DbError`]) so callers match on
//! meaning, never on message text.
//!
//! No client ever reads a database's or the payment system's own words: SQL
//! text names tables, columns and constraints, and a driver's message can
//! carry addresses. A [`DbError`] or [`redcell_payments::PaymentsError`]
//! becomes a generic message with an incident reference (`ref 1a2b3c4d`); the
//! detail is logged once, here, with the same reference, so an operator finds
//! it from the answer a client reports. The message of every [`CellError`]
//! may reach a client (a lane carries one failure to all its callers as
//! text), so this is the one place to strip it.

use redcell_proto::internal::SendRefusal;
use tonic::{Code, Status};

use crate::db::DbError;

/// `Clone`: a lane answers every caller of one user's Open with the same
/// error, code and all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CellError {
    /// Bad input; `field` names the request field.
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but the state forbids it (insufficient
    /// balance, an unpaid or cancelled envelope, a suffix this cell does not mint).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The lane's queue is full: retry later.
    #[error("{0}")]
    Busy(String),
    /// The order DB or the payment system is unreachable: retryable.
    #[error("{0}")]
    Unavailable(String),
    #[error("missing caller identity ({0})")]
    Unauthenticated(&'static str),
    /// Shutting down: retryable on another server of the cell.
    #[error("server is shutting down")]
    ShuttingDown,
    /// A Send failed before it wrote anything and before any money moved: the
    /// router may send the same request to another cell (DESIGN §6
    /// self-healing). Carried to the router as the `x-redcell-nothing-written`
    /// metadata entry on the inner error's status.
    #[error("{0}")]
    NothingWritten(Box<CellError>),
    /// The Send's idempotency key already paid for another envelope (the
    /// payment system pays one order once, DESIGN §4): the client's retry
    /// reached a cell other than the one holding its envelope. Nothing is
    /// written here; the router asks the envelope's own cell, whose replay
    /// answers. Carried as `x-redcell-paid-envelope` with `ALREADY_EXISTS`.
    #[error("idempotency_key: already paid for envelope {envelope_id}")]
    AlreadyPaid { envelope_id: String },
    /// A bug or a broken invariant; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CellError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> CellError {
        CellError::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

/// A short random tag joining a client's generic error to the log line that
/// holds its detail.
fn incident_reference() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl From<DbError> for CellError {
    fn from(error: DbError) -> CellError {
        let reference = incident_reference();
        match error {
            DbError::Unavailable(detail) => {
                tracing::warn!(reference, %detail, "order database unavailable");
                CellError::Unavailable(format!("order database unavailable (ref {reference})"))
            }
            DbError::Conflict(detail) => {
                tracing::debug!(reference, %detail, "order database write conflict");
                CellError::Unavailable(format!("write conflict, retry (ref {reference})"))
            }
            DbError::UniqueViolation(detail) | DbError::Other(detail) => {
                tracing::error!(reference, %detail, "order database error");
                CellError::Internal(format!("order database error (ref {reference})"))
            }
        }
    }
}

impl From<redcell_payments::PaymentsError> for CellError {
    fn from(error: redcell_payments::PaymentsError) -> CellError {
        use redcell_payments::PaymentsError;
        match error {
            PaymentsError::Unavailable(detail) => {
                let reference = incident_reference();
                tracing::warn!(reference, %detail, "payment system unavailable");
                CellError::Unavailable(format!("payment system unavailable (ref {reference})"))
            }
            PaymentsError::KeyConflict { key } => {
                CellError::Internal(format!("ledger key conflict on {key}"))
            }
            PaymentsError::InvalidAmount(cents) => {
                CellError::Internal(format!("ledger refused amount {cents}"))
            }
        }
    }
}

impl From<CellError> for Status {
    fn from(error: CellError) -> Status {
        // The two Send signals for the router: [`SendRefusal`] is their one
        // wire form.
        if let CellError::NothingWritten(inner) = error {
            return SendRefusal::NothingWritten(Status::from(*inner)).into();
        }
        if let CellError::AlreadyPaid { envelope_id } = error {
            return SendRefusal::PaidFor { envelope_id }.into();
        }
        let code = match &error {
            // Handled above; kept here so the match stays exhaustive.
            CellError::NothingWritten(_) => Code::Unavailable,
            CellError::AlreadyPaid { .. } => Code::AlreadyExists,
            CellError::InvalidArgument { .. } => Code::InvalidArgument,
            CellError::NotFound(_) => Code::NotFound,
            CellError::FailedPrecondition(_) => Code::FailedPrecondition,
            CellError::Busy(_) => Code::ResourceExhausted,
            CellError::Unavailable(_) | CellError::ShuttingDown => Code::Unavailable,
            CellError::Unauthenticated(_) => Code::Unauthenticated,
            CellError::Internal(message) => {
                let reference = incident_reference();
                tracing::error!(reference, %message, "internal error");
                return Status::internal(format!("internal error (ref {reference})"));
            }
        };
        Status::new(code, error.to_string())
    }
}

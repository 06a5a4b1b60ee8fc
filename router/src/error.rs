//! The router's errors and the one mapping to the status a client sees.
//!
//! One enum for what the router itself decides ([`RouterError`]) and one
//! exhaustive `From<RouterError> for Status` with no `_` arm: a new variant
//! forces a decision about its code. Every arm ends in
//! [`failover::client_status`], the exhaustive mapping of gRPC codes, so
//! `UNKNOWN` and `CANCELLED` never leave the router and no cell metadata
//! (`x-redcell-*`) reaches a client.
//!
//! The layers that admit a call — [`crate::auth`], [`crate::limits`],
//! [`crate::deadline`] and [`crate::history`] — answer with a `Status` of
//! their own making (`UNAUTHENTICATED`, `RESOURCE_EXHAUSTED`,
//! `DEADLINE_EXCEEDED`, History's page checks); [`RouterError::Refused`]
//! carries it through the same mapping.

use tonic::Status;

use crate::failover::{self, CellError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RouterError {
    /// Bad input; `field` names the request field or metadata entry.
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    /// Refused before any cell was asked, by a layer that answers in its
    /// own words (token, rate limit, deadline, History's paging).
    #[error("{}", .0.message())]
    Layer(Status),
    /// What calling a cell ended in: its handler's answer, or no answer.
    #[error("{0:?}")]
    Cell(CellError),
    /// A cell's answer to a Send, after the router read its signals.
    #[error("{}", .0.message())]
    CellAnswer(Status),
    /// No cell of the region can take new envelopes now: retryable.
    #[error("no cell can take new envelopes of region {region} now; retry")]
    NoCellForRegion { region: String },
    /// A Send's idempotency key paid for an envelope no cell holds: a broken
    /// invariant (logged where it is found).
    #[error("the envelope this idempotency key paid for cannot be found")]
    PaidEnvelopeLost,
    /// A bug in the router: details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<Status> for RouterError {
    fn from(status: Status) -> RouterError {
        RouterError::Layer(status)
    }
}

impl From<CellError> for RouterError {
    fn from(error: CellError) -> RouterError {
        RouterError::Cell(error)
    }
}

impl From<RouterError> for Status {
    fn from(error: RouterError) -> Status {
        let status = match error {
            RouterError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            RouterError::Layer(status) | RouterError::CellAnswer(status) => status,
            RouterError::Cell(error) => return error.into_status(),
            RouterError::NoCellForRegion { .. } => Status::unavailable(error.to_string()),
            RouterError::PaidEnvelopeLost => Status::internal(error.to_string()),
            RouterError::Internal(what) => {
                tracing::error!(what, "router internal error");
                Status::internal("internal error")
            }
        };
        failover::client_status(&status)
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, metadata::MetadataValue};

    use super::*;

    fn with_cell_metadata(mut status: Status) -> Status {
        status
            .metadata_mut()
            .insert("x-redcell-nothing-written", MetadataValue::from_static("1"));
        status
    }

    /// Every variant has its code, none answers UNKNOWN or CANCELLED, and no
    /// cell metadata passes through.
    #[test]
    fn every_error_has_its_code_and_none_is_unknown() {
        let cases = [
            (
                RouterError::InvalidArgument {
                    field: "envelope_id",
                    message: "too short".into(),
                },
                Code::InvalidArgument,
                Some("envelope_id: too short"),
            ),
            (
                RouterError::Layer(Status::unauthenticated("token expired")),
                Code::Unauthenticated,
                Some("token expired"),
            ),
            (
                RouterError::Layer(Status::unknown("from a layer")),
                Code::Unavailable,
                None,
            ),
            (
                RouterError::Cell(CellError::Answered(with_cell_metadata(
                    Status::failed_precondition("insufficient balance"),
                ))),
                Code::FailedPrecondition,
                Some("insufficient balance"),
            ),
            (
                RouterError::Cell(CellError::NoAnswer {
                    status: Status::cancelled("stream reset"),
                    reached: true,
                }),
                Code::Unavailable,
                None,
            ),
            (
                RouterError::CellAnswer(with_cell_metadata(Status::unavailable("db down"))),
                Code::Unavailable,
                Some("db down"),
            ),
            (
                RouterError::NoCellForRegion {
                    region: "north".into(),
                },
                Code::Unavailable,
                Some("no cell can take new envelopes of region north now; retry"),
            ),
            (
                RouterError::PaidEnvelopeLost,
                Code::Internal,
                Some("the envelope this idempotency key paid for cannot be found"),
            ),
            (
                RouterError::Internal("mismatched reply"),
                Code::Internal,
                Some("internal error"),
            ),
        ];
        for (error, code, message) in cases {
            let described = format!("{error:?}");
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{described}");
            if let Some(message) = message {
                assert_eq!(status.message(), message, "{described}");
            }
            assert!(status.metadata().is_empty(), "{described}");
        }
    }
}

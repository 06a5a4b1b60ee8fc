//! The router↔cell contract that is not in redcell.proto: the metadata a
//! router puts on every call to a cell, the credential check a cell makes, and
//! the two signals a cell's refusal of a Send carries for the router.
//!
//! Its one home: the cell (server side), the router (client side), loadgen and
//! the tests all import these names; none of them types an `x-redcell-*`
//! string. Clients of the router never see any of it (the router strips
//! metadata from every status it returns).
//!
//! Invariants, and why they hold:
//! - **A cell serves routers only.** [`RequireInternal`] compares the
//!   presented `x-redcell-internal` value with the configured token in
//!   constant time (no early exit on the first differing byte, so response
//!   timing does not reveal a prefix).
//! - **The caller is metadata, never a request field.** [`AsUser`] writes
//!   `x-redcell-user` (the verified token's subject) on the router's side; a
//!   cell reads only that entry.
//! - **A Send's refusal says whether another cell may take it.**
//!   [`SendRefusal`] is the only way either side builds or reads
//!   `x-redcell-nothing-written` and `x-redcell-paid-envelope`, so the two
//!   sides cannot drift: [`From<SendRefusal> for Status`] and
//!   [`From<Status> for SendRefusal`] round-trip (tested below).

use std::sync::Arc;

use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataMap, MetadataValue},
};

/// The credential a router presents to cells (the cell's `--internal-token`).
pub const INTERNAL_METADATA: &str = "x-redcell-internal";
/// The authenticated caller: the subject of the token the router verified.
pub const USER_METADATA: &str = "x-redcell-user";
/// The three-digit suffix a router drew from the mint pool for a Send.
pub const SUFFIX_METADATA: &str = "x-redcell-suffix";
/// The region a client sends from (client → router; a region name or digit).
pub const REGION_METADATA: &str = "x-redcell-region";
/// On a cell's status: the Send failed before it wrote anything and before
/// any money moved.
pub const NOTHING_WRITTEN_METADATA: &str = "x-redcell-nothing-written";
/// On a cell's `ALREADY_EXISTS`: the envelope the Send's idempotency key
/// already paid for.
pub const PAID_ENVELOPE_METADATA: &str = "x-redcell-paid-envelope";

/// Whether `text` is a user id: 1-64 of `[A-Za-z0-9_-]`. The router takes
/// token subjects only in this form, and the cell (which also uses it as a
/// ledger account name) refuses any other.
pub fn is_user_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Server-side check of the internal credential, in constant time. With no
/// token configured every call passes (local development only; the `cell`
/// binary requires one).
#[derive(Debug, Clone)]
pub struct RequireInternal(Option<Arc<str>>);

impl RequireInternal {
    pub fn new(token: Option<&str>) -> RequireInternal {
        RequireInternal(token.map(Arc::from))
    }
}

impl tonic::service::Interceptor for RequireInternal {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get(INTERNAL_METADATA)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(presented, expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "cells serve routers only: missing or wrong internal credential",
            ))
        }
    }
}

/// Equal bytes, compared without an early exit (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client side: names the caller the way routers do (`x-redcell-user`,
/// plus the internal credential when one is set). The router stamps every
/// call to a cell with it; loadgen and tests use it as an interceptor.
#[derive(Debug, Clone)]
pub struct AsUser {
    user: AsciiMetadataValue,
    internal: Option<AsciiMetadataValue>,
}

impl AsUser {
    /// `None` when `user` is not valid metadata (not visible ASCII).
    pub fn new(user: &str) -> Option<AsUser> {
        Some(AsUser {
            user: user.parse().ok()?,
            internal: None,
        })
    }

    /// Also present the internal credential; `None` if it is not visible ASCII.
    pub fn with_internal(self, token: &str) -> Option<AsUser> {
        Some(AsUser {
            internal: Some(token.parse().ok()?),
            ..self
        })
    }

    /// Writes the caller (and the credential) into `metadata`, replacing any
    /// entries of the same names.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        metadata.insert(USER_METADATA, self.user.clone());
        if let Some(token) = &self.internal {
            metadata.insert(INTERNAL_METADATA, token.clone());
        }
    }
}

impl tonic::service::Interceptor for AsUser {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.stamp(request.metadata_mut());
        Ok(request)
    }
}

/// What a cell's error status on a Send means for the router (DESIGN §6
/// self-healing).
#[derive(Debug)]
pub enum SendRefusal {
    /// Nothing was written and no money moved: another cell may take the
    /// Send. The status is the cell's answer (carried on the wire with
    /// `x-redcell-nothing-written: 1`).
    NothingWritten(Status),
    /// The Send's idempotency key already paid for this envelope, which may
    /// live in another cell: that cell's replay is the answer. On the wire:
    /// `ALREADY_EXISTS` with `x-redcell-paid-envelope: <id>`.
    PaidFor { envelope_id: String },
    /// Any other answer: the client's, as it is.
    Final(Status),
}

impl From<SendRefusal> for Status {
    fn from(refusal: SendRefusal) -> Status {
        match refusal {
            SendRefusal::NothingWritten(mut status) => {
                status
                    .metadata_mut()
                    .insert(NOTHING_WRITTEN_METADATA, MetadataValue::from_static("1"));
                status
            }
            SendRefusal::PaidFor { envelope_id } => {
                let mut status = Status::already_exists(format!(
                    "idempotency_key: already paid for envelope {envelope_id}"
                ));
                // An envelope id is digits; one that is not metadata cannot be
                // routed to either, so the plain ALREADY_EXISTS is the answer.
                if let Ok(value) = AsciiMetadataValue::try_from(envelope_id.as_str()) {
                    status.metadata_mut().insert(PAID_ENVELOPE_METADATA, value);
                }
                status
            }
            SendRefusal::Final(status) => status,
        }
    }
}

impl From<Status> for SendRefusal {
    fn from(status: Status) -> SendRefusal {
        if status.code() == tonic::Code::AlreadyExists
            && let Some(paid) = status.metadata().get(PAID_ENVELOPE_METADATA)
            && let Ok(envelope_id) = paid.to_str()
        {
            return SendRefusal::PaidFor {
                envelope_id: envelope_id.to_owned(),
            };
        }
        if status.metadata().get(NOTHING_WRITTEN_METADATA).is_some() {
            SendRefusal::NothingWritten(status)
        } else {
            SendRefusal::Final(status)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tonic::{Code, service::Interceptor};

    use super::*;

    #[test]
    fn send_refusals_round_trip_through_a_status() {
        let status = Status::from(SendRefusal::NothingWritten(Status::unavailable("db down")));
        assert_eq!(status.code(), Code::Unavailable);
        match SendRefusal::from(status) {
            SendRefusal::NothingWritten(inner) => assert_eq!(inner.message(), "db down"),
            other => panic!("{other:?}"),
        }

        let status = Status::from(SendRefusal::PaidFor {
            envelope_id: "2601221000000481516742".into(),
        });
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(
            status.message(),
            "idempotency_key: already paid for envelope 2601221000000481516742"
        );
        match SendRefusal::from(status) {
            SendRefusal::PaidFor { envelope_id } => {
                assert_eq!(envelope_id, "2601221000000481516742")
            }
            other => panic!("{other:?}"),
        }

        let plain = SendRefusal::from(Status::failed_precondition("insufficient balance"));
        assert!(matches!(plain, SendRefusal::Final(ref s) if s.code() == Code::FailedPrecondition));
        let plain = Status::from(plain);
        assert!(plain.metadata().is_empty());
    }

    /// A paid-envelope entry on a code other than ALREADY_EXISTS is not the
    /// cell's signal (a proxy or a bug added it): the status is final.
    #[test]
    fn a_paid_envelope_entry_counts_only_on_already_exists() {
        let mut status = Status::unavailable("x");
        status
            .metadata_mut()
            .insert(PAID_ENVELOPE_METADATA, MetadataValue::from_static("1"));
        assert!(matches!(SendRefusal::from(status), SendRefusal::Final(_)));
    }

    #[test]
    fn the_credential_check_takes_only_the_exact_token() {
        let mut check = RequireInternal::new(Some("s3cret"));
        let with = |token: Option<&str>| {
            let mut request = Request::new(());
            let stamp = AsUser::new("alice").unwrap();
            let stamp = match token {
                Some(token) => stamp.with_internal(token).unwrap(),
                None => stamp,
            };
            stamp.stamp(request.metadata_mut());
            request
        };
        assert!(check.call(with(Some("s3cret"))).is_ok());
        for wrong in [
            None,
            Some("s3cre"),
            Some("s3cret!"),
            Some("S3cret"),
            Some(""),
        ] {
            let refused = check.call(with(wrong)).unwrap_err();
            assert_eq!(refused.code(), Code::Unauthenticated, "{wrong:?}");
        }
        assert!(RequireInternal::new(None).call(with(None)).is_ok());
    }

    #[test]
    fn as_user_stamps_the_caller_and_the_credential() {
        let mut stamp = AsUser::new("bob_1").unwrap().with_internal("tok").unwrap();
        let request = stamp.call(Request::new(())).unwrap();
        let text = |key| request.metadata().get(key).map(|v| v.to_str().unwrap());
        assert_eq!(text(USER_METADATA), Some("bob_1"));
        assert_eq!(text(INTERNAL_METADATA), Some("tok"));
        assert!(AsUser::new("bob\n").is_none());
        assert!(is_user_id("bob_1-X") && !is_user_id("") && !is_user_id("a b"));
        assert!(!is_user_id(&"a".repeat(65)) && is_user_id(&"a".repeat(64)));
    }
}

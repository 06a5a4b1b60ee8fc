//! The deadline of one client call, and what is left of it for each call to a
//! cell (gRPC deadline propagation).
//!
//! A call's deadline is the router's budget for it (`--cell-timeout-ms`), cut
//! short by the client's own `grpc-timeout` when that is shorter. Every request
//! to a cell carries what is *left* of it, retries on the next server and the
//! Send's second cell included, so the work a call causes never outlives the
//! caller's patience, and a retry never gets a fresh budget of its own.

use std::time::{Duration, Instant};

use tonic::{Status, metadata::MetadataMap};

/// The header gRPC clients send their timeout in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The instant a call must be answered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// `budget` from now, or the client's `grpc-timeout` if it is shorter,
    /// less [`client_margin`] of it: the router must answer
    /// `DEADLINE_EXCEEDED` itself before tonic's own enforcement of the
    /// client's timeout (which started a moment earlier) answers `CANCELLED`.
    pub fn for_call(budget: Duration, metadata: &MetadataMap) -> Deadline {
        let budget = client_timeout(metadata).map_or(budget, |client| {
            client.saturating_sub(client_margin(client)).min(budget)
        });
        Deadline {
            at: Instant::now() + budget,
        }
    }

    /// What is left, or `None` once the deadline passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.at
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    /// What is left, or `DEADLINE_EXCEEDED` naming what could not be done.
    pub fn left_for(&self, what: &str) -> Result<Duration, Status> {
        self.remaining().ok_or_else(|| {
            Status::deadline_exceeded(format!("the call's deadline passed before {what}"))
        })
    }
}

/// How much earlier than the client's timeout the router's deadline ends, so
/// that its answer reaches the client before the client's own timer fires:
/// 5% of it, at most 50 ms.
pub fn client_margin(client: Duration) -> Duration {
    (client / 20).min(Duration::from_millis(50))
}

/// The client's `grpc-timeout`, if it sent a valid one: at most 8 digits and
/// a unit, `H`ours, `M`inutes, `S`econds, `m`illi-, `u`micro- or `n`anoseconds
/// (gRPC over HTTP/2). An invalid value is ignored, as if absent.
pub fn client_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let unit_at = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn with_timeout(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(GRPC_TIMEOUT, value.parse().unwrap());
        metadata
    }

    #[test]
    fn the_clients_grpc_timeout_is_read_in_every_unit() {
        for (value, expected) in [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("10S", Duration::from_secs(10)),
            ("250m", Duration::from_millis(250)),
            ("99999999u", Duration::from_micros(99_999_999)),
            ("5n", Duration::from_nanos(5)),
            ("0m", Duration::ZERO),
        ] {
            assert_eq!(
                client_timeout(&with_timeout(value)),
                Some(expected),
                "{value}"
            );
        }
        for invalid in [
            "",
            "m",
            "10",
            "10s",
            "123456789S",
            "-1S",
            "1.5S",
            "10 S",
            "S10",
        ] {
            let metadata = if invalid.is_empty() {
                MetadataMap::new()
            } else {
                with_timeout(invalid)
            };
            assert_eq!(client_timeout(&metadata), None, "{invalid:?}");
        }
    }

    #[test]
    fn the_deadline_is_the_shorter_of_budget_and_client_timeout() {
        let budget = Duration::from_secs(2);
        let own = Deadline::for_call(budget, &MetadataMap::new());
        let left = own.remaining().unwrap();
        assert!(left <= budget && left > Duration::from_secs(1), "{left:?}");

        let client = Deadline::for_call(budget, &with_timeout("300m"));
        let left = client.remaining().unwrap();
        assert!(left <= Duration::from_millis(300), "{left:?}");

        let longer = Deadline::for_call(budget, &with_timeout("1H"));
        assert!(longer.remaining().unwrap() <= budget);

        let passed = Deadline::for_call(budget, &with_timeout("0n"));
        assert_eq!(passed.remaining(), None);
        let status = passed.left_for("asking cell n1").unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            status.message(),
            "the call's deadline passed before asking cell n1"
        );
    }
}

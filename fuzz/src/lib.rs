//! What the fuzz targets share: how an input is split into the caller (the
//! `x-redcell-user` metadata a router stamps) and the message bytes, a fixed
//! topology to route against, and the DESIGN §8 rules an accepted request must
//! satisfy. Each rule is written here again, independently of the validators
//! it checks, so a validator that lets something through is caught rather
//! than agreed with.

use redcell_cell::error::CellError;
use redcell_topology::Topology;

/// Two regions, two epochs (the second splits north onto a new cell): enough
/// for an ID's region and epoch digits to route, or to miss, either way.
pub const TOPOLOGY: &str = r#"version: 1
regions: [north, south]
cells:
  - name: n1
    region: north
    status: active
    servers: ["127.0.0.1:7101"]
    db: "postgres://redcell@127.0.0.1:6101/cell_n1"
  - name: n2
    region: north
    status: active
    servers: ["127.0.0.1:7111"]
    db: "postgres://redcell@127.0.0.1:6102/cell_n2"
  - name: s1
    region: south
    status: failed
    servers: ["127.0.0.1:7201"]
    db: "postgres://redcell@127.0.0.1:6201/cell_s1"
  - name: s2
    region: south
    status: active
    servers: ["127.0.0.1:7211"]
    db: "postgres://redcell@127.0.0.1:6202/cell_s2"
epochs:
  - id: 0
    ranges:
      north: { n1: "000-999" }
      south: { s1: "000-499", s2: "500-999" }
  - id: 3
    ranges:
      north: { n1: "000-499", n2: "500-999" }
      south: { s1: "000-499", s2: "500-999" }
minting:
  epoch: 3
"#;

/// The fixed topology; parsed once per process.
pub fn topology() -> &'static Topology {
    static TOPOLOGY_ONCE: std::sync::OnceLock<Topology> = std::sync::OnceLock::new();
    TOPOLOGY_ONCE.get_or_init(|| match Topology::parse(TOPOLOGY) {
        Ok(topology) => topology,
        Err(errors) => panic!("the fuzz fixture topology is invalid: {errors}"),
    })
}

/// `caller '\n' message`: the caller is everything before the first newline
/// (lossy UTF-8, as metadata would be refused if not ASCII anyway), the
/// message everything after it. No newline: the caller is `alice` and the
/// whole input is the message.
pub fn split_caller(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => ("alice".to_owned(), data),
    }
}

/// DESIGN §8: user ids and idempotency keys are 1-64 of `[A-Za-z0-9_-]`.
pub fn is_token(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// DESIGN §2: 22 ASCII digits.
pub fn is_id_text(text: &str) -> bool {
    text.len() == 22 && text.bytes().all(|b| b.is_ascii_digit())
}

/// A refusal must be INVALID_ARGUMENT naming one of `fields`, with a message.
pub fn assert_invalid(error: &CellError, fields: &[&str]) {
    match error {
        CellError::InvalidArgument { field, message } => {
            assert!(
                fields.contains(field),
                "refusal names {field:?}, not one of {fields:?}"
            );
            assert!(!message.is_empty(), "refusal of {field} has no message");
            assert_eq!(
                tonic_code(error),
                "InvalidArgument",
                "an invalid {field} is not INVALID_ARGUMENT on the wire"
            );
        }
        other => panic!("refused with {other:?}, not INVALID_ARGUMENT"),
    }
}

/// The gRPC code the cell answers `error` with, by name.
fn tonic_code(error: &CellError) -> String {
    let status: tonic::Status = error.clone().into();
    format!("{:?}", status.code())
}

//! W3C Trace Context propagation, router -> cell (DESIGN.md §6).
//!
//! The `traceparent` metadata entry is
//! `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`
//! (<https://www.w3.org/TR/trace-context/>). The router reads the client's entry
//! (or starts a trace when there is none), makes a child of it for its own hop,
//! and injects that into the call to the cell, so one trace id follows a
//! request across every process it touches.
//!
//! Invariants, and why they hold:
//! - **A [`TraceParent`] is always valid**: its fields are private and every
//!   constructor ([`TraceParent::parse`], [`TraceParent::new_root`],
//!   [`TraceParent::child`]) yields non-zero ids, so [`TraceParent::to_header`]
//!   always produces a header a conforming peer accepts.
//! - **Parsing is strict where the spec is**: lowercase hex only, exact field
//!   lengths, all-zero ids refused, version `ff` refused. For a version above
//!   `00` we follow the spec's forward-compatibility rule: parse the first 55
//!   characters as version 00, require the end of the value or a `-` right
//!   after them, and keep only the sampled flag, whose meaning we know. What we
//!   send on is always version `00`, the only one we can vouch for.
//! - **A bad incoming header never fails a request**: tracing is advisory, so
//!   [`TraceParent::from_metadata`] falls back to a fresh root (as the spec asks:
//!   "restart the trace") instead of returning an error.
//!
//! `tracestate` (vendor data) is not interpreted here.

use std::fmt;

use tonic::metadata::{MetadataMap, MetadataValue};

/// The metadata key (gRPC metadata keys are lowercase HTTP/2 header names).
pub const TRACEPARENT: &str = "traceparent";

/// The `sampled` bit of trace-flags: the caller may have recorded this trace.
pub const FLAG_SAMPLED: u8 = 0x01;

/// Length of a version-00 `traceparent` value: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const V00_LEN: usize = 55;

/// One hop's trace context: which trace, which span called us, and the
/// caller's sampling decision.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// Names the whole trace; never all zeros.
    trace_id: [u8; 16],
    /// Names the calling span; never all zeros.
    parent_id: [u8; 8],
    /// Bit 0 = sampled; other bits as received (version 00) or zero.
    flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` if it is not one we can use.
    ///
    /// Optional whitespace around the value (HTTP's OWS) is ignored.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let text = text.trim_matches([' ', '\t']).as_bytes();
        let version = hex_byte(text.get(0..2)?)?;
        let flags_mask = match version {
            0xff => return None,
            0x00 if text.len() != V00_LEN => return None,
            0x00 => 0xff,
            // A future version: at least the version-00 fields, then either the
            // end of the value or a dash before whatever that version appends.
            _ if text.len() > V00_LEN && text[V00_LEN] != b'-' => return None,
            _ => FLAG_SAMPLED,
        };
        let fields = text.get(..V00_LEN)?;
        if fields[2] != b'-' || fields[35] != b'-' || fields[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = hex_array(&fields[3..35])?;
        let parent_id: [u8; 8] = hex_array(&fields[36..52])?;
        let flags = hex_byte(&fields[53..55])?;
        if is_zero(&trace_id) || is_zero(&parent_id) {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags: flags & flags_mask,
        })
    }

    /// Starts a new trace: random trace and parent ids, sampled.
    pub fn new_root() -> TraceParent {
        TraceParent {
            trace_id: random_nonzero(),
            parent_id: random_nonzero(),
            flags: FLAG_SAMPLED,
        }
    }

    /// The context for a call this hop makes: same trace and flags, a new
    /// random parent id naming this hop's span.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            parent_id: random_nonzero(),
            ..*self
        }
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    pub fn is_sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits (what logs and trace UIs show).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        hex(&self.parent_id)
    }

    /// The version-00 `traceparent` value.
    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }

    /// From incoming metadata `traceparent`, or a new root when absent/invalid.
    /// Two `traceparent` entries are ambiguous and count as invalid.
    pub fn from_metadata(metadata: &MetadataMap) -> TraceParent {
        let mut values = metadata.get_all(TRACEPARENT).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok().and_then(TraceParent::parse),
            _ => None,
        }
        .unwrap_or_else(TraceParent::new_root)
    }

    /// Sets `traceparent` in outgoing metadata, replacing any existing entry.
    pub fn inject(&self, metadata: &mut MetadataMap) {
        // Lowercase hex and dashes: always a valid ASCII metadata value.
        if let Ok(value) = MetadataValue::try_from(self.to_header()) {
            metadata.insert(TRACEPARENT, value);
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header())
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({})", self.to_header())
    }
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    // All-zero ids are invalid; with 64+ random bits this loop runs once.
    loop {
        let bytes: [u8; N] = rand::random();
        if !is_zero(&bytes) {
            return bytes;
        }
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// A lowercase hex digit's value; uppercase is invalid in trace context.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    match pair {
        [hi, lo] => Some(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => None,
    }
}

fn hex_array<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The spec's examples (§3.2.2.x / §3.2.3 "Examples of HTTP traceparent
    /// Headers").
    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const NOT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn spec_examples_parse() {
        let sampled = TraceParent::parse(SAMPLED).unwrap();
        assert_eq!(sampled.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sampled.parent_id_hex(), "00f067aa0ba902b7");
        assert_eq!(sampled.trace_id()[0], 0x4b);
        assert_eq!(
            sampled.parent_id(),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(sampled.is_sampled());

        let not_sampled = TraceParent::parse(NOT_SAMPLED).unwrap();
        assert!(!not_sampled.is_sampled());
        assert_eq!(not_sampled.flags(), 0);
    }

    #[test]
    fn round_trips_through_the_header() {
        for text in [SAMPLED, NOT_SAMPLED] {
            assert_eq!(TraceParent::parse(text).unwrap().to_header(), text);
        }
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_header()), Some(root));
        assert_eq!(root.to_string(), root.to_header());
    }

    #[test]
    fn unknown_flag_bits_survive_version_00() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.flags(), 0x09);
        assert!(parsed.is_sampled());
        assert_eq!(parsed.to_header(), text);
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let padded = format!(" \t{SAMPLED} ");
        assert_eq!(TraceParent::parse(&padded).unwrap().to_header(), SAMPLED);
    }

    #[test]
    fn invalid_values_are_refused() {
        let cases = [
            ("empty", ""),
            (
                "version ff",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "uppercase trace id",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            ),
            (
                "uppercase parent id",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            ),
            (
                "uppercase flags",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            ),
            (
                "uppercase version",
                "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "zero trace id",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            (
                "zero parent id",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            ),
            (
                "short trace id",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            ),
            (
                "long trace id",
                "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            ),
            (
                "short parent id",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            ),
            (
                "short flags",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            ),
            (
                "v00 with extra field",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            ),
            (
                "v00 trailing garbage",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            ),
            (
                "wrong separator",
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            ),
            (
                "non-hex trace id",
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            ),
            (
                "non-hex flags",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            ),
            (
                "one-digit version",
                "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "inner whitespace",
                "00- 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "non-ascii",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
            ),
        ];
        for (why, text) in cases {
            assert_eq!(TraceParent::parse(text), None, "{why}: {text:?}");
        }
    }

    #[test]
    fn future_versions_parse_their_first_55_characters() {
        let exact = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let extended =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        for text in [exact, extended] {
            let parsed = TraceParent::parse(text).unwrap();
            assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            // Sent on as the one version we speak.
            assert_eq!(parsed.to_header(), SAMPLED);
        }
        // Only the sampled bit is kept: other bits' meaning may have changed.
        let odd_flags = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe";
        assert_eq!(TraceParent::parse(odd_flags).unwrap().flags(), 0);

        for bad in [
            // Extra text must start with a dash.
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what",
            // Shorter than 55 characters.
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // The version-00 fields must still be valid.
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x-more",
            "cc-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn new_roots_are_sampled_and_distinct() {
        let a = TraceParent::new_root();
        let b = TraceParent::new_root();
        assert!(a.is_sampled());
        assert_eq!(a.flags(), FLAG_SAMPLED);
        assert_ne!(a.trace_id(), b.trace_id());
        assert_ne!(a.trace_id(), [0; 16]);
        assert_ne!(a.parent_id(), [0; 8]);
    }

    #[test]
    fn child_keeps_trace_and_flags_and_changes_parent() {
        let parent = TraceParent::parse(NOT_SAMPLED).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_eq!(child.flags(), parent.flags());
        assert_ne!(child.parent_id(), parent.parent_id());
        assert_ne!(child.parent_id(), [0; 8]);
        assert_ne!(child.child().parent_id(), child.parent_id());
    }

    #[test]
    fn inject_then_extract_through_metadata() {
        let sent = TraceParent::parse(SAMPLED).unwrap().child();
        let mut metadata = MetadataMap::new();
        sent.inject(&mut metadata);
        assert_eq!(
            metadata.get(TRACEPARENT).unwrap().to_str().unwrap(),
            sent.to_header()
        );
        assert_eq!(TraceParent::from_metadata(&metadata), sent);

        // Injecting again replaces rather than appends.
        let next = sent.child();
        next.inject(&mut metadata);
        assert_eq!(metadata.get_all(TRACEPARENT).iter().count(), 1);
        assert_eq!(TraceParent::from_metadata(&metadata), next);
    }

    #[test]
    fn missing_or_invalid_metadata_starts_a_new_trace() {
        let known = TraceParent::parse(SAMPLED).unwrap();

        let fresh = TraceParent::from_metadata(&MetadataMap::new());
        assert!(fresh.is_sampled());
        assert_ne!(fresh.trace_id(), known.trace_id());

        let mut invalid = MetadataMap::new();
        invalid.insert(TRACEPARENT, "00-not-a-trace".parse().unwrap());
        assert_ne!(
            TraceParent::from_metadata(&invalid).trace_id(),
            known.trace_id()
        );

        let mut doubled = MetadataMap::new();
        doubled.append(TRACEPARENT, SAMPLED.parse().unwrap());
        doubled.append(TRACEPARENT, SAMPLED.parse().unwrap());
        assert_ne!(
            TraceParent::from_metadata(&doubled).trace_id(),
            known.trace_id()
        );
    }
}

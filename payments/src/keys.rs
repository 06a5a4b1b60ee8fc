//! The ledger keys of the cells' money: built and parsed here, nowhere else.
//!
//! A key names one money movement forever (see the crate's contract). The
//! cells choose their keys as a merchant does; the ledger stores them
//! opaquely; the reconciler reads them back to find the row each one pays
//! for. All three use this module, so the format has one spelling:
//!
//! | key                         | movement                                   | written by                                  |
//! |-----------------------------|--------------------------------------------|---------------------------------------------|
//! | `send:<envelope id>`        | the sender's debit for an envelope         | Send; recovery resolves it                  |
//! | `claim:<envelope id>:<seq>` | receiver's credit for share number `seq`   | the batch commit, as the transfer's key     |
//! | `refund:<envelope id>`      | sender's credit of an expired remainder    | the expiry worker, as the transfer's key    |
//! | `deposit:<account>:<ref>`   | money into the system from outside         | operators and tests ([`deposit_key`])       |
//!
//! The first three are **the cells' key space** ([`LedgerKey`]): every money
//! entry under one of them must name a row of the cell its envelope routes
//! to. Any other key (deposits, a benchmark's top-ups) is money's way in and
//! parses as [`KeyError::Foreign`].
//!
//! # Invariants
//!
//! - **Canonical text.** A string parses to a [`LedgerKey`] only if it is
//!   exactly that key's [`Display`](std::fmt::Display) (no leading zeros or
//!   sign in `seq`): two different strings never name the same movement.
//!   Property-tested both ways.
//! - **One spelling in SQL too.** Where the order DB must compute a key from
//!   its rows (the expiry worker's refund, the reconciler's claim joins) the
//!   statement splices a fragment from [`sql`], made of the same prefixes;
//!   a test against PostgreSQL checks that it yields the text `Display` does.
//!   Everywhere else keys are built in Rust and bound as parameters (the
//!   lane's batch commit binds a `text[]`).

use std::fmt;
use std::str::FromStr;

use redcell_topology::{EnvelopeId, IdError};

/// The families of the cells' key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// `send:<envelope id>`: a debit.
    Send,
    /// `claim:<envelope id>:<seq>`: a credit.
    Claim,
    /// `refund:<envelope id>`: a credit.
    Refund,
}

impl KeyKind {
    /// Every family, in a fixed order.
    pub const ALL: [KeyKind; 3] = [KeyKind::Send, KeyKind::Claim, KeyKind::Refund];

    /// The text every key of the family starts with (`"send:"`, ...).
    pub const fn prefix(self) -> &'static str {
        match self {
            KeyKind::Send => "send:",
            KeyKind::Claim => "claim:",
            KeyKind::Refund => "refund:",
        }
    }
}

/// Between a claim key's envelope ID and its sequence.
const SEQUENCE_SEPARATOR: char = ':';

/// Starts every [`deposit_key`].
const DEPOSIT_PREFIX: &str = "deposit:";

/// A key of the cells' key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LedgerKey {
    /// The sender's debit paying for the envelope.
    Send(EnvelopeId),
    /// The credit of share number `sequence` (1-based) of the envelope.
    Claim { envelope: EnvelopeId, sequence: u32 },
    /// The credit of an expired envelope's remainder to its sender.
    Refund(EnvelopeId),
}

impl LedgerKey {
    pub fn kind(self) -> KeyKind {
        match self {
            LedgerKey::Send(_) => KeyKind::Send,
            LedgerKey::Claim { .. } => KeyKind::Claim,
            LedgerKey::Refund(_) => KeyKind::Refund,
        }
    }

    /// The envelope whose money the key moves.
    pub fn envelope(self) -> EnvelopeId {
        match self {
            LedgerKey::Send(envelope)
            | LedgerKey::Claim { envelope, .. }
            | LedgerKey::Refund(envelope) => envelope,
        }
    }

    /// The family of `key` and its envelope part as written, without
    /// checking that part: for a reconciler, which must account for every
    /// entry of the cells' key space, a malformed one included (it names no
    /// row, so it is an orphan). `None`: not in the cells' key space.
    pub fn split(key: &str) -> Option<(KeyKind, &str)> {
        KeyKind::ALL.into_iter().find_map(|kind| {
            let rest = key.strip_prefix(kind.prefix())?;
            let envelope = match kind {
                KeyKind::Claim => rest
                    .split_once(SEQUENCE_SEPARATOR)
                    .map_or(rest, |(envelope, _)| envelope),
                KeyKind::Send | KeyKind::Refund => rest,
            };
            Some((kind, envelope))
        })
    }
}

impl fmt::Display for LedgerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self.kind().prefix();
        match self {
            LedgerKey::Send(envelope) | LedgerKey::Refund(envelope) => {
                write!(f, "{prefix}{envelope}")
            }
            LedgerKey::Claim { envelope, sequence } => {
                write!(f, "{prefix}{envelope}{SEQUENCE_SEPARATOR}{sequence}")
            }
        }
    }
}

/// Why a string is not a [`LedgerKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not in the cells' key space at all (a deposit, a top-up).
    #[error("not a key of the cells' key space")]
    Foreign,
    /// A cells' prefix followed by something that is not an envelope ID.
    #[error("{kind:?} key: {source}")]
    Envelope {
        kind: KeyKind,
        #[source]
        source: IdError,
    },
    /// A claim key whose sequence is missing or not a canonical `u32`.
    #[error("claim key: sequence {0:?} is not a canonical number")]
    Sequence(String),
}

impl FromStr for LedgerKey {
    type Err = KeyError;

    fn from_str(key: &str) -> Result<LedgerKey, KeyError> {
        let (kind, envelope_text) = LedgerKey::split(key).ok_or(KeyError::Foreign)?;
        let envelope: EnvelopeId = envelope_text
            .parse()
            .map_err(|source| KeyError::Envelope { kind, source })?;
        match kind {
            KeyKind::Send | KeyKind::Refund => {
                // `split` gave the whole rest as the ID, and it parsed.
                Ok(if kind == KeyKind::Send {
                    LedgerKey::Send(envelope)
                } else {
                    LedgerKey::Refund(envelope)
                })
            }
            KeyKind::Claim => {
                let text = key
                    .strip_prefix(kind.prefix())
                    .and_then(|rest| rest.strip_prefix(envelope_text))
                    .and_then(|rest| rest.strip_prefix(SEQUENCE_SEPARATOR))
                    .ok_or_else(|| KeyError::Sequence(String::new()))?;
                let sequence =
                    canonical_u32(text).ok_or_else(|| KeyError::Sequence(text.into()))?;
                Ok(LedgerKey::Claim { envelope, sequence })
            }
        }
    }
}

/// `text` as a `u32` if it is exactly how `u32` displays (digits only, no
/// sign, no leading zero but in "0").
fn canonical_u32(text: &str) -> Option<u32> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if digits && !leading_zero {
        text.parse().ok()
    } else {
        None
    }
}

/// The key of a deposit into `account` (an operator's or a test's funding),
/// unique per `reference`. Outside the cells' key space by construction.
pub fn deposit_key(account: &str, reference: impl fmt::Display) -> String {
    format!("{DEPOSIT_PREFIX}{account}{SEQUENCE_SEPARATOR}{reference}")
}

/// SQL expressions that compute keys from columns, for the statements that
/// must pick their keys from rows: spliced into query text (`format!`, once,
/// at start), never typed out by hand. Arguments are SQL expressions of the
/// caller's own query (column names), never client input.
pub mod sql {
    use super::{KeyKind, SEQUENCE_SEPARATOR};

    /// `send:` || envelope id.
    pub fn send_key(envelope_id: &str) -> String {
        prefixed(KeyKind::Send, envelope_id)
    }

    /// `claim:` || envelope id || `:` || seq (an integer column: its text is
    /// the canonical decimal).
    pub fn claim_key(envelope_id: &str, sequence: &str) -> String {
        format!(
            "{} || '{SEQUENCE_SEPARATOR}' || ({sequence})::text",
            prefixed(KeyKind::Claim, envelope_id)
        )
    }

    /// `refund:` || envelope id.
    pub fn refund_key(envelope_id: &str) -> String {
        prefixed(KeyKind::Refund, envelope_id)
    }

    /// The prefixes hold no quote (tested), so they are safe as literals.
    fn prefixed(kind: KeyKind, envelope_id: &str) -> String {
        format!("'{}' || ({envelope_id})", kind.prefix())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use redcell_topology::{EpochId, MintDate, RegionDigit, Suffix};

    use super::*;

    const ID: &str = "2612021000000000000123";

    fn envelope_ids() -> impl Strategy<Value = EnvelopeId> {
        (
            2000u16..2100,
            1u8..=12,
            1u8..=28,
            1u8..=9,
            0u8..=99,
            0u64..10_000_000_000,
            0u16..1000,
        )
            .prop_map(|(year, month, day, region, epoch, sequence, suffix)| {
                EnvelopeId::new(
                    MintDate::new(year, month, day).unwrap(),
                    RegionDigit::new(region).unwrap(),
                    EpochId::new(epoch).unwrap(),
                    sequence,
                    Suffix::new(suffix).unwrap(),
                )
                .unwrap()
            })
    }

    fn keys() -> impl Strategy<Value = LedgerKey> {
        prop_oneof![
            envelope_ids().prop_map(LedgerKey::Send),
            (envelope_ids(), any::<u32>())
                .prop_map(|(envelope, sequence)| LedgerKey::Claim { envelope, sequence }),
            envelope_ids().prop_map(LedgerKey::Refund),
        ]
    }

    proptest! {
        #[test]
        fn every_key_round_trips_through_its_text(key in keys()) {
            let text = key.to_string();
            prop_assert_eq!(text.parse::<LedgerKey>(), Ok(key));
            prop_assert!(text.starts_with(key.kind().prefix()));
            let envelope = key.envelope().to_string();
            prop_assert_eq!(LedgerKey::split(&text), Some((key.kind(), envelope.as_str())));
        }

        /// Whatever parses is canonical: no two strings name one movement.
        #[test]
        fn only_canonical_text_parses(text in "(send:|claim:|refund:|deposit:)?[0-9:+a]{0,30}") {
            if let Ok(key) = text.parse::<LedgerKey>() {
                prop_assert_eq!(key.to_string(), text);
            }
        }

        #[test]
        fn a_claim_key_with_another_spelling_of_its_sequence_is_refused(
            envelope in envelope_ids(),
            sequence in any::<u32>(),
        ) {
            for text in [
                format!("claim:{envelope}:0{sequence}"),
                format!("claim:{envelope}:+{sequence}"),
                format!("claim:{envelope}:{sequence} "),
            ] {
                prop_assert!(matches!(text.parse::<LedgerKey>(), Err(KeyError::Sequence(_))), "{}", text);
            }
        }

        #[test]
        fn deposits_are_outside_the_cells_key_space(account in "[a-z0-9:]{0,12}", reference in any::<u64>()) {
            let key = deposit_key(&account, reference);
            prop_assert_eq!(LedgerKey::split(&key), None);
            prop_assert_eq!(key.parse::<LedgerKey>(), Err(KeyError::Foreign));
        }
    }

    #[test]
    fn the_cells_key_space_names_its_envelope_and_nothing_else_is_in_it() {
        for (key, kind) in [
            (format!("send:{ID}"), KeyKind::Send),
            (format!("claim:{ID}:7"), KeyKind::Claim),
            (format!("refund:{ID}"), KeyKind::Refund),
        ] {
            assert_eq!(LedgerKey::split(&key), Some((kind, ID)), "{key}");
            assert_eq!(key.parse::<LedgerKey>().unwrap().to_string(), key);
        }
        // Malformed keys of the space still name what they name (for a
        // reconciler: an orphan, since no row has that ID) but do not parse.
        assert_eq!(LedgerKey::split("claim:e1"), Some((KeyKind::Claim, "e1")));
        assert_eq!(LedgerKey::split("send:"), Some((KeyKind::Send, "")));
        assert!(matches!(
            "claim:e1".parse::<LedgerKey>(),
            Err(KeyError::Envelope { .. })
        ));
        assert_eq!(
            format!("claim:{ID}").parse::<LedgerKey>(),
            Err(KeyError::Sequence(String::new()))
        );
        for key in [
            "deposit:ann:1",
            "bench:deposit",
            "topup:send:x",
            "sendx",
            "",
        ] {
            assert_eq!(LedgerKey::split(key), None, "{key}");
            assert_eq!(key.parse::<LedgerKey>(), Err(KeyError::Foreign), "{key}");
        }
        assert_eq!(deposit_key("ann", 1), "deposit:ann:1");
    }

    #[test]
    fn sql_fragments_are_made_of_the_same_prefixes_and_quote_nothing_else() {
        for kind in KeyKind::ALL {
            assert!(!kind.prefix().contains('\''), "{kind:?}");
        }
        assert_eq!(sql::send_key("e.id"), "'send:' || (e.id)");
        assert_eq!(sql::refund_key("id"), "'refund:' || (id)");
        assert_eq!(
            sql::claim_key("c.envelope_id", "c.seq"),
            "'claim:' || (c.envelope_id) || ':' || (c.seq)::text"
        );
    }
}

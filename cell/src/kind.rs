//! The envelope kinds of DESIGN.md §4, as the cell's domain knows them: how
//! each is stored, how it splits, and its wire form.
//!
//! Every `match` on a [`Kind`] in the cell lists the kinds (no `_` arm), so a
//! new kind is a compile error at each place that must decide about it: its
//! validation ([`crate::request::SendCommand::parse`]), its split rule, who
//! may open it ([`crate::envelope`]), its stored code.

use redcell_proto::v1 as pb;

use crate::allocation::SplitRule;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Lucky,
    Equal,
    Exclusive,
}

impl Kind {
    /// Stored code (mirrors `redcell.v1.EnvelopeKind`).
    pub fn code(self) -> i16 {
        match self {
            Kind::Lucky => 1,
            Kind::Equal => 2,
            Kind::Exclusive => 3,
        }
    }

    pub fn from_code(code: i16) -> Option<Kind> {
        match code {
            1 => Some(Kind::Lucky),
            2 => Some(Kind::Equal),
            3 => Some(Kind::Exclusive),
            _ => None,
        }
    }

    pub fn split_rule(self) -> SplitRule {
        match self {
            Kind::Lucky => SplitRule::Lucky,
            // An exclusive envelope has one share: any rule gives it all.
            Kind::Equal | Kind::Exclusive => SplitRule::Equal,
        }
    }

    pub fn to_proto(self) -> pb::EnvelopeKind {
        pb::EnvelopeKind::from(self)
    }
}

impl From<Kind> for pb::EnvelopeKind {
    fn from(kind: Kind) -> pb::EnvelopeKind {
        match kind {
            Kind::Lucky => pb::EnvelopeKind::Lucky,
            Kind::Equal => pb::EnvelopeKind::Equal,
            Kind::Exclusive => pb::EnvelopeKind::Exclusive,
        }
    }
}

/// The wire's `kind` field (an `i32` that may hold any value): `UNSPECIFIED`
/// and unknown numbers are not kinds.
impl TryFrom<i32> for Kind {
    type Error = i32;

    fn try_from(wire: i32) -> Result<Kind, i32> {
        match pb::EnvelopeKind::try_from(wire) {
            Ok(pb::EnvelopeKind::Lucky) => Ok(Kind::Lucky),
            Ok(pb::EnvelopeKind::Equal) => Ok(Kind::Equal),
            Ok(pb::EnvelopeKind::Exclusive) => Ok(Kind::Exclusive),
            Ok(pb::EnvelopeKind::Unspecified) | Err(_) => Err(wire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Kind; 3] = [Kind::Lucky, Kind::Equal, Kind::Exclusive];

    #[test]
    fn stored_and_wire_forms_round_trip() {
        for kind in ALL {
            assert_eq!(Kind::from_code(kind.code()), Some(kind));
            assert_eq!(
                Kind::try_from(i32::from(pb::EnvelopeKind::from(kind))),
                Ok(kind)
            );
            // The stored code is the wire number.
            assert_eq!(i32::from(kind.code()), i32::from(kind.to_proto()));
        }
        for wire in [0, 4, -1, i32::MAX] {
            assert_eq!(Kind::try_from(wire), Err(wire));
        }
        assert_eq!(Kind::from_code(0), None);
    }
}

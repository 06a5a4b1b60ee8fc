//! Answers of Grab and Open.

use redcell_proto::v1 as pb;

/// What a Grab answers, and an Open that took no share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareStatus {
    Available,
    Exhausted,
    Expired,
    AlreadyOpened,
    NotEligible,
}

impl ShareStatus {
    pub fn to_proto(self) -> pb::ShareStatus {
        match self {
            ShareStatus::Available => pb::ShareStatus::Available,
            ShareStatus::Exhausted => pb::ShareStatus::Exhausted,
            ShareStatus::Expired => pb::ShareStatus::Expired,
            ShareStatus::AlreadyOpened => pb::ShareStatus::AlreadyOpened,
            ShareStatus::NotEligible => pb::ShareStatus::NotEligible,
        }
    }
}

/// The result of an Open. A replayed Open returns the first result unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenResult {
    pub status: ShareStatus,
    /// Set when `status` is `Available`.
    pub amount_cents: i64,
    pub sequence: u32,
}

impl OpenResult {
    pub fn taken(amount_cents: i64, sequence: u32) -> OpenResult {
        OpenResult {
            status: ShareStatus::Available,
            amount_cents,
            sequence,
        }
    }

    pub fn refused(status: ShareStatus) -> OpenResult {
        OpenResult {
            status,
            amount_cents: 0,
            sequence: 0,
        }
    }

    pub fn to_proto(self) -> pb::OpenResponse {
        pb::OpenResponse {
            status: self.status.to_proto().into(),
            amount_cents: self.amount_cents,
            sequence: self.sequence,
        }
    }
}

//! The envelope and claim records as the cell holds them, between the wire and
//! the order DB.

use std::time::SystemTime;

use redcell_proto::v1 as pb;
use redcell_topology::EnvelopeId;

use crate::{
    allocation::{self, Seed, SplitVersion},
    kind::Kind,
};

/// Envelope states (DESIGN.md §5):
/// `PENDING_PAYMENT -> ACTIVE -> (EXHAUSTED | EXPIRED)`, or
/// `PENDING_PAYMENT -> CANCELLED` when the debit never happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    PendingPayment,
    Active,
    Exhausted,
    Expired,
    Cancelled,
}

impl Status {
    /// Stored code (mirrors `redcell.v1.EnvelopeStatus`).
    pub fn code(self) -> i16 {
        match self {
            Status::PendingPayment => 1,
            Status::Active => 2,
            Status::Exhausted => 3,
            Status::Expired => 4,
            Status::Cancelled => 5,
        }
    }

    pub fn from_code(code: i16) -> Option<Status> {
        match code {
            1 => Some(Status::PendingPayment),
            2 => Some(Status::Active),
            3 => Some(Status::Exhausted),
            4 => Some(Status::Expired),
            5 => Some(Status::Cancelled),
            _ => None,
        }
    }

    pub fn to_proto(self) -> pb::EnvelopeStatus {
        match self {
            Status::PendingPayment => pb::EnvelopeStatus::PendingPayment,
            Status::Active => pb::EnvelopeStatus::Active,
            Status::Exhausted => pb::EnvelopeStatus::Exhausted,
            Status::Expired => pb::EnvelopeStatus::Expired,
            Status::Cancelled => pb::EnvelopeStatus::Cancelled,
        }
    }
}

/// One envelope row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: EnvelopeId,
    pub sender: String,
    pub kind: Kind,
    pub status: Status,
    pub total_cents: i64,
    pub count: u32,
    pub remaining_cents: i64,
    pub remaining_count: u32,
    pub greeting: String,
    pub recipients: Vec<String>,
    pub seed: Seed,
    /// The LUCKY rule it was sent under: its seed replays that split.
    pub split_version: SplitVersion,
    /// Optimistic-concurrency version: every write bumps it.
    pub version: i64,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
}

impl Envelope {
    /// The LIST partition of this envelope's rows: the ID's day of month.
    pub fn day(&self) -> i16 {
        partition_day(&self.id)
    }

    /// The amount of share number `sequence` when `remaining_cents` are left
    /// for `remaining_count` shares, by this envelope's kind, rule and seed.
    pub fn share(&self, sequence: u32, remaining_cents: i64, remaining_count: u32) -> i64 {
        allocation::share(
            self.kind.split_rule(),
            self.split_version,
            &self.seed,
            sequence,
            remaining_cents,
            remaining_count,
        )
    }

    /// Whether `user` may take a share at all (EXCLUSIVE names one recipient).
    pub fn is_eligible(&self, user: &str) -> bool {
        match self.kind {
            Kind::Exclusive => self.recipients.iter().any(|recipient| recipient == user),
            Kind::Lucky | Kind::Equal => true,
        }
    }

    pub fn to_proto(&self) -> pb::Envelope {
        pb::Envelope {
            id: self.id.to_string(),
            sender: self.sender.clone(),
            kind: self.kind.to_proto().into(),
            status: self.status.to_proto().into(),
            total_cents: self.total_cents,
            count: self.count,
            remaining_cents: self.remaining_cents,
            remaining_count: self.remaining_count,
            greeting: self.greeting.clone(),
            recipients: self.recipients.clone(),
            created_at: Some(self.created_at.into()),
            expires_at: Some(self.expires_at.into()),
        }
    }
}

/// The partition key of an envelope ID.
pub fn partition_day(id: &EnvelopeId) -> i16 {
    i16::from(id.date().day())
}

/// One opened share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub user: String,
    pub amount_cents: i64,
    pub sequence: u32,
    pub opened_at: SystemTime,
}

impl Claim {
    pub fn to_proto(&self) -> pb::Claim {
        pb::Claim {
            user: self.user.clone(),
            amount_cents: self.amount_cents,
            sequence: self.sequence,
            opened_at: Some(self.opened_at.into()),
        }
    }
}

//! The history reads (DESIGN.md §4 History): one cell's slice of a user's
//! Sends or Opens, newest first, for the router to merge across cells.
//! Keyset pagination on (time, envelope id): stable under concurrent inserts,
//! no OFFSET scans. Rows are decoded by the store's one envelope and claim
//! decoders, selected through the one column lists.

use std::time::SystemTime;

use deadpool_postgres::Pool;

use super::{claim_from_row, envelope_from_row};
use crate::{
    db::DbError,
    envelope::{Claim, Envelope},
    request::HistoryCursor,
};

/// Envelopes the user sent and paid for (active, exhausted, expired).
const SENT: &str = concat!(
    "SELECT ",
    envelope_columns!(),
    " FROM envelopes \
     WHERE sender = $1 AND status IN (2, 3, 4) AND (created_at, id) < ($2, $3) \
     ORDER BY created_at DESC, id DESC LIMIT $4"
);
/// Shares the user opened, each with its envelope.
const RECEIVED: &str = concat!(
    "SELECT ",
    envelope_columns!("e"),
    ", ",
    claim_columns!("c"),
    " FROM claims c JOIN envelopes e ON e.day = c.day AND e.id = c.envelope_id \
     WHERE c.user_id = $1 AND (c.opened_at, c.envelope_id) < ($2, $3) \
     ORDER BY c.opened_at DESC, c.envelope_id DESC LIMIT $4"
);

/// Which side of the user's money a history slice shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    /// Envelopes the user sent, by `created_at`.
    Sent,
    /// Shares the user opened, by `opened_at`.
    Received,
}

/// One entry of a history slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub envelope: Envelope,
    /// The user's share (received history only).
    pub claim: Option<Claim>,
    /// What the slice is ordered by: the Send's or the Open's time.
    pub at: SystemTime,
}

/// Up to `limit` entries of `user`'s history strictly before `cursor`,
/// newest first.
pub async fn history(
    pool: &Pool,
    user: &str,
    kind: HistoryKind,
    cursor: &HistoryCursor,
    limit: u32,
) -> Result<Vec<HistoryEntry>, DbError> {
    let query = match kind {
        HistoryKind::Sent => SENT,
        HistoryKind::Received => RECEIVED,
    };
    let client = pool.get().await?;
    let rows = client
        .query(
            query,
            &[&user, &cursor.before, &cursor.before_id, &i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let envelope = envelope_from_row(row)?;
            Ok(match kind {
                HistoryKind::Sent => HistoryEntry {
                    at: envelope.created_at,
                    envelope,
                    claim: None,
                },
                HistoryKind::Received => {
                    let claim = claim_from_row(row)?;
                    HistoryEntry {
                        at: claim.opened_at,
                        envelope,
                        claim: Some(claim),
                    }
                }
            })
        })
        .collect()
}

//! The seam between a lane's plan and the database: a [`Committer`] takes one
//! planned batch (claims, transfers and the envelope's version-checked
//! decrement) and says what the database made of it.
//!
//! [`PgCommitter`] commits each batch in a transaction of its own
//! ([`store::commit_opens`]); [`MergedCommitter`] is the cell-level
//! committer of DESIGN §5: it merges the batches of many lanes into one
//! transaction (each envelope still guarded by its own version check) so one
//! WAL flush serves them all. Lanes only ever see this interface; a server
//! picks one with [`start_committer`] (`--committer`).

use std::{future::Future, pin::Pin, sync::Arc};

use deadpool_postgres::Pool;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::merge::{CommitterKind, MergeConfig, MergedCommitter};
use crate::{
    db::DbError,
    envelope::Envelope,
    store::{self, CommitOutcome, NewClaim},
};

/// One lane's planned batch.
#[derive(Debug, Clone, Copy)]
pub struct OpenBatch<'a> {
    /// The envelope as the lane read it (its version guards the write).
    pub envelope: &'a Envelope,
    pub claims: &'a [NewClaim],
    /// The envelope's remainder after the claims.
    pub remaining_cents: i64,
    pub remaining_count: u32,
}

/// The future a [`Committer`] answers with.
pub type CommitFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CommitOutcome, DbError>> + Send + 'a>>;

/// Writes lanes' batches. Object-safe, so a server picks its committer at
/// start without making every lane generic; one boxed future per batch is
/// noise next to a commit.
pub trait Committer: Send + Sync + std::fmt::Debug + 'static {
    fn commit<'a>(&'a self, batch: OpenBatch<'a>) -> CommitFuture<'a>;
}

/// One transaction per batch, on the cell's order DB.
#[derive(Debug, Clone)]
pub struct PgCommitter {
    pool: Pool,
}

impl PgCommitter {
    pub fn new(pool: Pool) -> PgCommitter {
        PgCommitter { pool }
    }
}

impl Committer for PgCommitter {
    fn commit<'a>(&'a self, batch: OpenBatch<'a>) -> CommitFuture<'a> {
        Box::pin(store::commit_opens(
            &self.pool,
            batch.envelope,
            batch.claims,
            batch.remaining_cents,
            batch.remaining_count,
        ))
    }
}

/// The committer `kind` names, over `pool`; a merged one runs its task on
/// `tracker` until `cancel` (then commits what is queued).
pub fn start_committer(
    kind: CommitterKind,
    merge: MergeConfig,
    pool: &Pool,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Arc<dyn Committer> {
    match kind {
        CommitterKind::PerLane => Arc::new(PgCommitter::new(pool.clone())),
        CommitterKind::Merged => {
            Arc::new(MergedCommitter::start(pool.clone(), merge, tracker, cancel))
        }
    }
}

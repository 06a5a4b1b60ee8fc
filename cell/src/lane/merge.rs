//! The cell-level committer (DESIGN §5): lanes hand their planned batches to
//! one committer task per logic server, which writes whatever is waiting in
//! ONE transaction ([`store::commit_merged`]), so under a uniform load (many
//! lanes, each holding a few Opens) one WAL flush serves many envelopes.
//!
//! The flush trigger is natural group commit: at most `in_flight` merged
//! transactions run at once; while they do, batches pile up in the queue, and
//! the next free slot takes everything waiting (up to `max_envelopes`) as one
//! group. A light load therefore commits each batch at once, alone, and a
//! heavy one merges more per flush without any timer. `linger` can add a
//! short wait for more batches before a group goes out; it is off by default
//! (see docs/DECISIONS.md, "Issue 15 — cell-level committer", for the
//! measurement).
//!
//! Invariants, and why they hold:
//! * **A lane hears its outcome only after the commit**: the reply is sent
//!   once `COMMIT` returned (or failed); a transaction whose reply channel is
//!   dropped unanswered is reported `Unavailable`, an unknown outcome the
//!   caller retries (Open is idempotent).
//! * **One stale envelope never fails the others**: each envelope keeps its
//!   own version check in the merged statement and gets its own outcome.
//! * **A failure of one envelope's rows stays its own**: if a merged
//!   transaction fails for another reason than an unreachable database (a
//!   deadlock with another writer, a constraint), its batches are committed
//!   again one by one, each in a transaction of its own, as the per-lane
//!   committer does.
//! * **One envelope once per group**: a second batch of an envelope already
//!   in the group waits for the next group (a lane has one batch in flight,
//!   so this is only a guard).
//! * **Shutdown loses nothing**: on cancellation the task stops taking new
//!   batches, commits what was queued and exits; a lane still draining its
//!   queue after that commits its batch alone.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::Pool;
use redcell_topology::EnvelopeId;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::commit::{CommitFuture, Committer, OpenBatch};
use crate::{
    db::DbError,
    store::{self, CommitOutcome, OpenWrite},
};

/// Which committer a logic server's lanes use (`--committer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitterKind {
    /// One transaction per lane batch.
    PerLane,
    /// Many lanes' batches merged into one transaction.
    Merged,
}

/// How the merged committer groups batches.
#[derive(Debug, Clone, Copy)]
pub struct MergeConfig {
    /// Most envelopes (lane batches) in one merged transaction.
    pub max_envelopes: usize,
    /// Merged transactions running at once (each holds a pooled connection).
    pub in_flight: usize,
    /// How long a group waits for more batches before it goes out (zero:
    /// natural group commit only).
    pub linger: Duration,
}

impl Default for MergeConfig {
    fn default() -> MergeConfig {
        MergeConfig {
            max_envelopes: 256,
            in_flight: 4,
            linger: Duration::ZERO,
        }
    }
}

/// A batch waiting for its group, and where its outcome goes.
struct Job {
    write: OpenWrite,
    reply: oneshot::Sender<Result<CommitOutcome, DbError>>,
}

/// The [`Committer`] that merges lanes' batches; see the module doc.
#[derive(Debug, Clone)]
pub struct MergedCommitter {
    jobs: mpsc::UnboundedSender<Job>,
    pool: Pool,
    stats: Arc<MergeStats>,
}

/// What the committer has done so far: batches handed to it, and merged
/// transactions it ran (batches per transaction is the merge factor).
#[derive(Debug, Default)]
pub struct MergeStats {
    /// Lane batches handed to the committer task.
    pub batches: AtomicU64,
    /// Groups the task sent to the database (one transaction each, plus one
    /// per batch when a group had to be committed again one by one).
    pub transactions: AtomicU64,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Job")
            .field("envelope", &self.write.id)
            .finish()
    }
}

impl MergedCommitter {
    /// Starts the committer task on `tracker`; it stops (after committing
    /// what is queued) when `cancel` fires.
    pub fn start(
        pool: Pool,
        config: MergeConfig,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> MergedCommitter {
        // Unbounded, yet bounded by the lanes: each has at most one batch here.
        let (jobs, queue) = mpsc::unbounded_channel();
        let stats = Arc::new(MergeStats::default());
        tracker.spawn(run(
            queue,
            pool.clone(),
            config,
            stats.clone(),
            tracker.clone(),
            cancel,
        ));
        MergedCommitter { jobs, pool, stats }
    }

    /// Counts of batches and transactions so far.
    pub fn stats(&self) -> &MergeStats {
        &self.stats
    }
}

impl Committer for MergedCommitter {
    fn commit<'a>(&'a self, batch: OpenBatch<'a>) -> CommitFuture<'a> {
        Box::pin(async move {
            let write = OpenWrite {
                id: batch.envelope.id,
                version: batch.envelope.version,
                claims: batch.claims.to_vec(),
                remaining_cents: batch.remaining_cents,
                remaining_count: batch.remaining_count,
            };
            let (reply, outcome) = oneshot::channel();
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            if self.jobs.send(Job { write, reply }).is_err() {
                // The committer stopped (shutdown): this lane commits alone.
                return store::commit_opens(
                    &self.pool,
                    batch.envelope,
                    batch.claims,
                    batch.remaining_cents,
                    batch.remaining_count,
                )
                .await;
            }
            outcome.await.unwrap_or_else(|_| {
                Err(DbError::Unavailable(
                    "the committer stopped before the commit's outcome was known".into(),
                ))
            })
        })
    }
}

/// The committer task: one group per free slot, everything waiting.
async fn run(
    mut queue: mpsc::UnboundedReceiver<Job>,
    pool: Pool,
    config: MergeConfig,
    stats: Arc<MergeStats>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.in_flight.max(1)));
    let max = config.max_envelopes.max(1);
    let mut carried: Vec<Job> = Vec::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut group = Vec::with_capacity(max.min(64));
        let mut ids = HashSet::new();
        for job in std::mem::take(&mut carried) {
            add(job, &mut group, &mut ids, &mut carried, max);
        }
        if group.is_empty() {
            let first = tokio::select! {
                job = queue.recv() => job,
                () = cancel.cancelled() => {
                    // Stop taking batches; what is queued still commits.
                    queue.close();
                    queue.recv().await
                }
            };
            let Some(first) = first else { break };
            add(first, &mut group, &mut ids, &mut carried, max);
        }
        while group.len() < max {
            match queue.try_recv() {
                Ok(job) => add(job, &mut group, &mut ids, &mut carried, max),
                Err(_) => break,
            }
        }
        if !config.linger.is_zero() && group.len() < max {
            let deadline = tokio::time::sleep(config.linger);
            tokio::pin!(deadline);
            while group.len() < max {
                tokio::select! {
                    job = queue.recv() => match job {
                        Some(job) => add(job, &mut group, &mut ids, &mut carried, max),
                        None => break,
                    },
                    () = &mut deadline => break,
                }
            }
        }
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        let pool = pool.clone();
        let stats = stats.clone();
        let span = tracing::info_span!("merged_commit", envelopes = group.len());
        tracker.spawn(
            async move {
                commit_group(&pool, group, &stats).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    // Closed and drained: a batch carried over (a second one of an envelope)
    // still commits.
    for job in carried {
        let _ = job.reply.send(store::commit_alone(&pool, &job.write).await);
    }
}

/// Puts `job` in `group` unless its envelope is already there (then it waits
/// in `carried` for the next group).
fn add(
    job: Job,
    group: &mut Vec<Job>,
    ids: &mut HashSet<EnvelopeId>,
    carried: &mut Vec<Job>,
    max: usize,
) {
    if group.len() < max && ids.insert(job.write.id) {
        group.push(job);
    } else {
        carried.push(job);
    }
}

/// Commits one group and answers every lane in it.
async fn commit_group(pool: &Pool, group: Vec<Job>, stats: &MergeStats) {
    let writes: Vec<OpenWrite> = group.iter().map(|job| job.write.clone()).collect();
    match store::commit_merged(pool, &writes).await {
        Ok(outcomes) => {
            for (job, outcome) in group.into_iter().zip(outcomes) {
                // A closed channel: the lane is gone (shutdown); skipped.
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(DbError::Unavailable(message)) => {
            for job in group {
                let _ = job.reply.send(Err(DbError::Unavailable(message.clone())));
            }
        }
        Err(error) if group.len() == 1 => {
            if let Some(job) = group.into_iter().next() {
                let _ = job.reply.send(Err(error));
            }
        }
        Err(error) => {
            // Something in the group failed the whole transaction (a deadlock
            // with another writer, a row one batch could not write): nothing
            // committed, so each batch is committed again on its own and a
            // failure stays with the batch that caused it.
            tracing::warn!(%error, envelopes = group.len(), "merged commit failed; committing its batches one by one");
            for job in group {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                let outcome = store::commit_alone(pool, &job.write).await;
                let _ = job.reply.send(outcome);
            }
        }
    }
}

//! Sticky lanes (DESIGN.md §5): one actor per hot envelope in this server.
//!
//! A lane owns its envelope's state in memory and serves requests FIFO from a
//! bounded queue. Grab and the Opens that take nothing (exhausted, expired, not
//! eligible, a replay of an earlier Open) are answered from memory. The Opens
//! that take a share are drawn in queue order and committed as ONE transaction
//! per batch ([`store::commit_opens`]): one commit serves the whole batch, which
//! is what beats row-lock contention on a hot envelope.
//!
//! The lane is split in three: this actor (queue, registry, retirement,
//! fan-out of replies), the pure planner ([`plan`]: what to answer from
//! memory, which shares to draw; property-tested against the money
//! invariants), and the [`Committer`] that writes a planned batch (the seam
//! for a cell-level committer that merges many lanes' batches).
//!
//! Invariants, and why they hold:
//! * A reply that says a share was taken is sent only after its commit: an
//!   acknowledged Open is never lost.
//! * One share per user: the lane checks its claims (and the batch in flight);
//!   the DB's `PRIMARY KEY (day, envelope_id, user_id)` is the last line.
//! * Correctness never relies on stickiness: if another server wrote first, the
//!   version check refuses the batch; the lane reloads the envelope and its
//!   claims and replans the batch's Opens against the fresh state.
//! * The queue is bounded: a full queue answers `RESOURCE_EXHAUSTED` at once.
//! * Idle lanes remove themselves; a request that races the removal finds the
//!   queue closed and starts a new lane.

mod commit;
mod merge;
pub mod plan;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use deadpool_postgres::Pool;
use redcell_topology::EnvelopeId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

pub use commit::{CommitFuture, Committer, OpenBatch, PgCommitter, start_committer};
pub use merge::{CommitterKind, MergeConfig, MergeStats, MergedCommitter};
use plan::{Answer, Ask, LaneState, Queued, Taker};

use crate::{
    clock::DbClock,
    envelope::{Envelope, Status},
    error::CellError,
    metrics::CellMetrics,
    share::{OpenResult, ShareStatus},
    store::{self, CommitOutcome},
};

/// How lanes behave; see the `cell` flags.
#[derive(Debug, Clone, Copy)]
pub struct LaneConfig {
    /// Requests queued per envelope before `RESOURCE_EXHAUSTED`.
    pub queue_cap: usize,
    /// Most Opens committed in one transaction.
    pub batch_max: usize,
    /// A lane with no request for this long is dropped.
    pub idle: Duration,
}

impl Default for LaneConfig {
    fn default() -> LaneConfig {
        LaneConfig {
            queue_cap: 4096,
            batch_max: 512,
            idle: Duration::from_secs(30),
        }
    }
}

/// Retries of a batch that lost the version race before giving up with
/// `UNAVAILABLE` (each retry reloads; contention between servers is rare).
const STALE_RETRIES: usize = 8;

enum Request {
    Grab {
        user: String,
        reply: oneshot::Sender<Result<ShareStatus, CellError>>,
        /// When it entered the queue (the batch wait metric).
        queued_at: Instant,
    },
    Open {
        user: String,
        reply: oneshot::Sender<Result<OpenResult, CellError>>,
        queued_at: Instant,
    },
}

impl Request {
    fn queued_at(&self) -> Instant {
        match self {
            Request::Grab { queued_at, .. } | Request::Open { queued_at, .. } => *queued_at,
        }
    }

    fn fail(self, error: impl Fn() -> CellError) {
        self.into_parts().1.send(Answer::Open(Err(error())));
    }

    fn into_parts(self) -> (String, Reply, Ask) {
        match self {
            Request::Grab { user, reply, .. } => (user, Reply::Grab(reply), Ask::Grab),
            Request::Open { user, reply, .. } => (user, Reply::Open(reply), Ask::Open),
        }
    }
}

/// Where a request's answer goes.
enum Reply {
    Grab(oneshot::Sender<Result<ShareStatus, CellError>>),
    Open(oneshot::Sender<Result<OpenResult, CellError>>),
}

impl Reply {
    /// Sends `answer` (an error reaches a Grab as well as an Open). A closed
    /// channel means the caller gave up: skipped.
    fn send(self, answer: Answer) {
        let mismatch = || CellError::Internal("lane answered a request of the other kind".into());
        match (self, answer) {
            (Reply::Grab(reply), Answer::Grab(answer)) => drop(reply.send(answer)),
            (Reply::Open(reply), Answer::Open(answer)) => drop(reply.send(answer)),
            (Reply::Grab(reply), Answer::Open(answer)) => {
                drop(reply.send(answer.and_then(|_| Err(mismatch()))))
            }
            (Reply::Open(reply), Answer::Grab(answer)) => {
                drop(reply.send(answer.and_then(|_| Err(mismatch()))))
            }
        }
    }
}

type Registry = Arc<Mutex<HashMap<EnvelopeId, mpsc::Sender<Request>>>>;

/// This server's lanes, keyed by envelope.
#[derive(Debug, Clone)]
pub struct Lanes {
    registry: Registry,
    pool: Pool,
    committer: Arc<dyn Committer>,
    config: LaneConfig,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Batch size, wait and commit time are recorded here.
    metrics: Arc<CellMetrics>,
    /// The DB's time, by which lanes judge expiry from memory.
    clock: Arc<DbClock>,
}

impl Lanes {
    /// Lanes that commit each batch in a transaction of its own.
    pub fn new(
        pool: Pool,
        config: LaneConfig,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Lanes {
        let committer = Arc::new(PgCommitter::new(pool.clone()));
        Lanes::with_committer(pool, committer, config, tracker, cancel)
    }

    /// Lanes that load envelopes from `pool` and hand their batches to
    /// `committer`.
    pub fn with_committer(
        pool: Pool,
        committer: Arc<dyn Committer>,
        config: LaneConfig,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Lanes {
        Lanes {
            registry: Arc::default(),
            pool,
            committer,
            config,
            tracker,
            cancel,
            metrics: Arc::default(),
            clock: Arc::default(),
        }
    }

    /// Judges expiry by `clock` (the server's, which its health probe sets;
    /// the default never has a reading, so lanes leave expiry to the DB).
    pub fn timed_by(mut self, clock: Arc<DbClock>) -> Lanes {
        self.clock = clock;
        self
    }

    /// Records batches in `metrics` (the server's; the default is a registry
    /// nobody serves).
    pub fn observed_by(mut self, metrics: Arc<CellMetrics>) -> Lanes {
        self.metrics = metrics;
        self
    }

    /// Requests queued in every lane, not yet taken into a batch.
    pub fn queued(&self) -> usize {
        self.registry
            .lock()
            .map(|lanes| {
                lanes
                    .values()
                    .map(|sender| sender.max_capacity() - sender.capacity())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Number of live lanes (for metrics and `cellctl status`).
    pub fn len(&self) -> usize {
        self.registry.lock().map(|lanes| lanes.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn grab(&self, id: EnvelopeId, user: String) -> Result<ShareStatus, CellError> {
        let (reply, answer) = oneshot::channel();
        self.submit(
            id,
            Request::Grab {
                user,
                reply,
                queued_at: Instant::now(),
            },
        )?;
        answer.await.map_err(|_| CellError::ShuttingDown)?
    }

    pub async fn open(&self, id: EnvelopeId, user: String) -> Result<OpenResult, CellError> {
        let (reply, answer) = oneshot::channel();
        self.submit(
            id,
            Request::Open {
                user,
                reply,
                queued_at: Instant::now(),
            },
        )?;
        answer.await.map_err(|_| CellError::ShuttingDown)?
    }

    /// Starts a lane that already knows its envelope (just sent through this
    /// server), so the first Opens skip the load.
    pub fn warm(&self, envelope: Envelope) {
        let Ok(mut registry) = self.registry.lock() else {
            return;
        };
        if !registry.contains_key(&envelope.id) && !self.cancel.is_cancelled() {
            let id = envelope.id;
            let sender = self.spawn(id, Some(LaneState::new(envelope, Vec::new())));
            registry.insert(id, sender);
        }
    }

    fn submit(&self, id: EnvelopeId, mut request: Request) -> Result<(), CellError> {
        for _attempt in 0..2 {
            let sender = {
                let mut registry = self
                    .registry
                    .lock()
                    .map_err(|_| CellError::Internal("lane registry poisoned".into()))?;
                if self.cancel.is_cancelled() {
                    return Err(CellError::ShuttingDown);
                }
                registry
                    .entry(id)
                    .or_insert_with(|| self.spawn(id, None))
                    .clone()
            };
            match sender.try_send(request) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(CellError::Busy(format!(
                        "envelope {id} has {} requests queued; retry",
                        self.config.queue_cap
                    )));
                }
                Err(mpsc::error::TrySendError::Closed(returned)) => {
                    // The lane retired between lookup and send: forget it, retry.
                    request = returned;
                    if let Ok(mut registry) = self.registry.lock()
                        && registry
                            .get(&id)
                            .is_some_and(|current| current.same_channel(&sender))
                    {
                        registry.remove(&id);
                    }
                }
            }
        }
        Err(CellError::Unavailable(format!(
            "lane of envelope {id} is restarting; retry"
        )))
    }

    fn spawn(&self, id: EnvelopeId, state: Option<LaneState>) -> mpsc::Sender<Request> {
        let (sender, receiver) = mpsc::channel(self.config.queue_cap.max(1));
        let lane = Lane {
            id,
            state,
            receiver,
            pool: self.pool.clone(),
            committer: self.committer.clone(),
            config: self.config,
            registry: self.registry.clone(),
            own_sender: sender.downgrade(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        };
        self.tracker.spawn(lane.run(self.cancel.clone()));
        sender
    }
}

struct Lane {
    id: EnvelopeId,
    state: Option<LaneState>,
    receiver: mpsc::Receiver<Request>,
    pool: Pool,
    committer: Arc<dyn Committer>,
    config: LaneConfig,
    registry: Registry,
    own_sender: mpsc::WeakSender<Request>,
    metrics: Arc<CellMetrics>,
    clock: Arc<DbClock>,
}

/// The time a lane judges expiry by: the DB's, as the health probe last
/// measured it (the DB stamped `expires_at` and its guard decides the
/// commit: a server whose clock runs ahead would otherwise refuse a fresh
/// envelope as EXPIRED). Before any reading, the epoch: no envelope is past
/// its time then, so the lane answers nothing EXPIRED on a guess and the
/// commit's `expires_at > now()` guard decides.
fn judged_now(clock: &DbClock) -> SystemTime {
    clock.now().unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Lane {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            let first = tokio::select! {
                request = self.receiver.recv() => request,
                () = tokio::time::sleep(self.config.idle) => {
                    if self.retire() { break } else { continue }
                }
                () = cancel.cancelled() => {
                    // Shutdown: stop taking requests, finish what is queued.
                    self.receiver.close();
                    self.receiver.recv().await
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < self.config.batch_max {
                match self.receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let waited = batch.first().map(|first| first.queued_at().elapsed());
            let span = tracing::info_span!(
                "lane_batch",
                size = batch.len(),
                wait_us = waited.map_or(0, |wait| wait.as_micros() as u64),
            );
            self.metrics
                .lane_batch_size
                .with_label_values(&[] as &[&str])
                .observe(batch.len() as f64);
            if let Some(waited) = waited {
                self.metrics
                    .lane_batch_wait
                    .with_label_values(&[] as &[&str])
                    .observe(waited.as_secs_f64());
            }
            self.serve(batch).instrument(span).await;
        }
    }

    /// Leaves the registry if nothing is queued; returns whether the lane ends.
    fn retire(&mut self) -> bool {
        let Ok(mut registry) = self.registry.lock() else {
            return false;
        };
        if !self.receiver.is_empty() {
            return false;
        }
        if let Some(own) = self.own_sender.upgrade()
            && registry
                .get(&self.id)
                .is_some_and(|current| current.same_channel(&own))
        {
            registry.remove(&self.id);
        }
        self.receiver.close();
        // Requests that raced in before the close are still served (run's loop
        // drains them); later senders see the closed queue and start a new lane.
        self.receiver.is_empty()
    }

    async fn serve(&mut self, batch: Vec<Request>) {
        // An unpaid envelope changes state outside this lane (its Send or the
        // recovery worker activates or cancels it): look again rather than
        // answer from a stale PENDING_PAYMENT.
        if self
            .state
            .as_ref()
            .is_some_and(|state| state.envelope.status == Status::PendingPayment)
        {
            self.state = None;
        }
        if self.state.is_none() {
            match store::load_with_claims(&self.pool, &self.id).await {
                Ok(Some((envelope, claims))) => self.state = Some(LaneState::new(envelope, claims)),
                Ok(None) => {
                    let id = self.id;
                    batch.into_iter().for_each(|request| {
                        request.fail(|| CellError::NotFound(format!("envelope {id} not found")))
                    });
                    return;
                }
                Err(error) => {
                    let error = CellError::from(error);
                    batch
                        .into_iter()
                        .for_each(|request| request.fail(|| error.clone()));
                    return;
                }
            }
        }
        let Some(state) = self.state.as_ref() else {
            return;
        };
        let (users, mut replies): (Vec<(String, Ask)>, Vec<Option<Reply>>) = batch
            .into_iter()
            .map(|request| {
                let (user, reply, ask) = request.into_parts();
                ((user, ask), Some(reply))
            })
            .unzip();
        let queue: Vec<Queued<'_>> = users
            .iter()
            .map(|(user, ask)| Queued { user, ask: *ask })
            .collect();
        let triage = plan::triage(state, &queue, judged_now(&self.clock));
        for (position, answer) in triage.answers {
            if let Some(reply) = replies[position].take() {
                reply.send(answer);
            }
        }
        if !triage.takers.is_empty() {
            self.commit(triage.takers, &mut replies).await;
        }
    }

    /// Plans the takers' shares and commits them; on a lost version race or
    /// an expiry seen by the DB, reloads (or notes it) and plans again.
    async fn commit(&mut self, mut takers: Vec<Taker>, replies: &mut [Option<Reply>]) {
        let answer = |replies: &mut [Option<Reply>], taker: &Taker, answer: Answer| {
            for position in &taker.requests {
                if let Some(reply) = replies[*position].take() {
                    reply.send(answer.clone());
                }
            }
        };
        for _attempt in 0..STALE_RETRIES {
            let Some(state) = self.state.as_mut() else {
                break;
            };
            let users: Vec<&str> = takers.iter().map(|taker| taker.user.as_str()).collect();
            let batch = plan::plan_batch(state, &users, judged_now(&self.clock));
            for (index, result) in &batch.answered {
                answer(replies, &takers[*index], Answer::Open(result.clone()));
            }
            let exhausted = Answer::Open(Ok(OpenResult::refused(ShareStatus::Exhausted)));
            if batch.claims.is_empty() {
                // Nothing fits: the committed state already says exhausted.
                for index in &batch.overflow {
                    answer(replies, &takers[*index], exhausted.clone());
                }
                return;
            }
            let started = Instant::now();
            // Tests crash the server here: nothing of the batch written.
            fail::fail_point!("lane::before_commit");
            let outcome = self
                .committer
                .commit(OpenBatch {
                    envelope: &state.envelope,
                    claims: &batch.claims,
                    remaining_cents: batch.remaining_cents,
                    remaining_count: batch.remaining_count,
                })
                .instrument(tracing::info_span!(
                    "db_transaction",
                    kind = "open_batch",
                    claims = batch.claims.len()
                ))
                .await;
            self.metrics
                .observe_transaction("open_batch", started.elapsed());
            match outcome {
                Ok(CommitOutcome::Committed(version)) => {
                    // Tests crash the server here: committed, nobody answered.
                    fail::fail_point!("lane::after_commit");
                    let results = state.apply(&batch, version);
                    for (index, result) in batch.taking.iter().zip(results) {
                        answer(replies, &takers[*index], Answer::Open(Ok(result)));
                    }
                    for index in &batch.overflow {
                        answer(replies, &takers[*index], exhausted.clone());
                    }
                    return;
                }
                Ok(CommitOutcome::Expired) => {
                    // Replanning now answers EXPIRED (or the user's share).
                    state.expired_in_db = true;
                }
                Ok(CommitOutcome::Stale | CommitOutcome::NotActive) => {
                    let failure = match store::load_with_claims(&self.pool, &self.id).await {
                        Ok(Some((envelope, loaded))) => {
                            self.state = Some(LaneState::new(envelope, loaded));
                            None
                        }
                        Ok(None) => Some(CellError::NotFound(format!(
                            "envelope {} not found",
                            self.id
                        ))),
                        Err(error) => Some(CellError::from(error)),
                    };
                    if let Some(error) = failure {
                        self.state = None;
                        for index in batch.unresolved() {
                            answer(replies, &takers[index], Answer::Open(Err(error.clone())));
                        }
                        return;
                    }
                }
                Err(error) => {
                    // Unknown whether the DB saw it: forget the state, reload
                    // on the next request, and let the callers retry (Open is
                    // idempotent, so a retry returns the share if it committed).
                    self.state = None;
                    let error = CellError::from(error);
                    for index in batch.unresolved() {
                        answer(replies, &takers[index], Answer::Open(Err(error.clone())));
                    }
                    return;
                }
            }
            let unresolved = batch.unresolved();
            takers = unresolved
                .into_iter()
                .map(|index| takers[index].clone())
                .collect();
        }
        let error = CellError::Unavailable(format!("envelope {} is contended; retry", self.id));
        for taker in &takers {
            answer(replies, taker, Answer::Open(Err(error.clone())));
        }
    }
}

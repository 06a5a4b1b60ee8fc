//! Sticky lanes (DESIGN.md §5): one actor per hot envelope in this server.
//!
//! A lane owns its envelope's state in memory and serves requests FIFO from a
//! bounded queue. Grab and the Opens that take nothing (exhausted, expired, not
//! eligible, a replay of an earlier Open) are answered from memory. The Opens
//! that take a share are drawn in queue order and committed as ONE transaction
//! per batch ([`store::commit_opens`]): one commit serves the whole batch, which
//! is what beats row-lock contention on a hot envelope.
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

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use deadpool_postgres::Pool;
use redcell_topology::EnvelopeId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    envelope::{Claim, Envelope, Status},
    error::CellError,
    share::{OpenResult, ShareStatus},
    store::{self, CommitOutcome, NewClaim},
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
    },
    Open {
        user: String,
        reply: oneshot::Sender<Result<OpenResult, CellError>>,
    },
}

impl Request {
    fn fail(self, error: impl Fn() -> CellError) {
        // A closed reply channel means the caller gave up: skip it.
        match self {
            Request::Grab { reply, .. } => drop(reply.send(Err(error()))),
            Request::Open { reply, .. } => drop(reply.send(Err(error()))),
        }
    }
}

type Registry = Arc<Mutex<HashMap<EnvelopeId, mpsc::Sender<Request>>>>;

/// This server's lanes, keyed by envelope.
#[derive(Debug, Clone)]
pub struct Lanes {
    registry: Registry,
    pool: Pool,
    config: LaneConfig,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Lanes {
    pub fn new(
        pool: Pool,
        config: LaneConfig,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Lanes {
        Lanes {
            registry: Arc::default(),
            pool,
            config,
            tracker,
            cancel,
        }
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
        self.submit(id, Request::Grab { user, reply })?;
        answer.await.map_err(|_| CellError::ShuttingDown)?
    }

    pub async fn open(&self, id: EnvelopeId, user: String) -> Result<OpenResult, CellError> {
        let (reply, answer) = oneshot::channel();
        self.submit(id, Request::Open { user, reply })?;
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
            config: self.config,
            registry: self.registry.clone(),
            own_sender: sender.downgrade(),
        };
        self.tracker.spawn(lane.run(self.cancel.clone()));
        sender
    }
}

/// An envelope and its claims, as the lane knows them.
#[derive(Debug)]
struct LaneState {
    envelope: Envelope,
    claims: HashMap<String, OpenResult>,
    /// The DB refused a commit because the envelope expired by its clock.
    expired_in_db: bool,
}

impl LaneState {
    fn new(envelope: Envelope, claims: Vec<Claim>) -> LaneState {
        let claims = claims
            .into_iter()
            .map(|claim| {
                (
                    claim.user,
                    OpenResult::taken(claim.amount_cents, claim.sequence),
                )
            })
            .collect();
        LaneState {
            envelope,
            claims,
            expired_in_db: false,
        }
    }

    /// Why nothing can be taken from this envelope by `user`, if so.
    /// `remaining_count` accounts for the batch in flight.
    fn refusal(
        &self,
        user: &str,
        remaining_count: u32,
        now: SystemTime,
    ) -> Result<Option<ShareStatus>, CellError> {
        match self.envelope.status {
            Status::PendingPayment => {
                return Err(CellError::FailedPrecondition(format!(
                    "envelope {} is not paid yet",
                    self.envelope.id
                )));
            }
            Status::Cancelled => {
                return Err(CellError::FailedPrecondition(format!(
                    "envelope {} was cancelled (its payment failed)",
                    self.envelope.id
                )));
            }
            Status::Active | Status::Exhausted | Status::Expired => {}
        }
        Ok(if self.claims.contains_key(user) {
            Some(ShareStatus::AlreadyOpened)
        } else if !self.envelope.is_eligible(user) {
            Some(ShareStatus::NotEligible)
        } else if self.expired_in_db || self.envelope.status == Status::Expired {
            Some(ShareStatus::Expired)
        } else if self.envelope.status == Status::Exhausted || self.envelope.remaining_count == 0 {
            // Emptied before it expired: it stays EXHAUSTED, as Get shows.
            Some(ShareStatus::Exhausted)
        } else if now >= self.envelope.expires_at {
            Some(ShareStatus::Expired)
        } else if remaining_count == 0 {
            Some(ShareStatus::Exhausted)
        } else {
            None
        })
    }
}

/// The Opens of one batch that are to take a share.
struct Taking {
    user: String,
    replies: Vec<oneshot::Sender<Result<OpenResult, CellError>>>,
}

struct Lane {
    id: EnvelopeId,
    state: Option<LaneState>,
    receiver: mpsc::Receiver<Request>,
    pool: Pool,
    config: LaneConfig,
    registry: Registry,
    own_sender: mpsc::WeakSender<Request>,
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
            self.serve(batch).await;
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
                    let error = CellError::from(error).to_string();
                    batch
                        .into_iter()
                        .for_each(|request| request.fail(|| CellError::Unavailable(error.clone())));
                    return;
                }
            }
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        let now = SystemTime::now();
        let mut remaining_count = state.envelope.remaining_count;
        let mut taking: Vec<Taking> = Vec::new();
        for request in batch {
            match request {
                Request::Grab { user, reply } => {
                    let answer = if taking.iter().any(|t| t.user == user) {
                        Ok(ShareStatus::AlreadyOpened)
                    } else {
                        state
                            .refusal(&user, remaining_count, now)
                            .map(|refusal| refusal.unwrap_or(ShareStatus::Available))
                    };
                    drop(reply.send(answer));
                }
                Request::Open { user, reply } => {
                    if let Some(taker) = taking.iter_mut().find(|t| t.user == user) {
                        taker.replies.push(reply);
                        continue;
                    }
                    if let Some(first) = state.claims.get(&user) {
                        drop(reply.send(Ok(*first)));
                        continue;
                    }
                    // Judged on the committed state: whether this Open still
                    // fits after the batch ahead of it is decided when the
                    // batch commits (a failed commit must not have told anyone
                    // EXHAUSTED while shares remain).
                    match state.refusal(&user, state.envelope.remaining_count, now) {
                        Ok(Some(refusal)) => drop(reply.send(Ok(OpenResult::refused(refusal)))),
                        Err(error) => drop(reply.send(Err(error))),
                        Ok(None) => {
                            remaining_count = remaining_count.saturating_sub(1);
                            taking.push(Taking {
                                user,
                                replies: vec![reply],
                            });
                        }
                    }
                }
            }
        }
        if !taking.is_empty() {
            self.commit(taking).await;
        }
    }

    /// Draws the shares of `taking` in order and commits them; on a lost version
    /// race reloads and replans.
    async fn commit(&mut self, mut taking: Vec<Taking>) {
        for _attempt in 0..STALE_RETRIES {
            let Some(state) = self.state.as_mut() else {
                break;
            };
            // Replan against the current state: after a reload some users may
            // already hold a share (opened through another server), and fewer
            // shares may be left.
            let now = SystemTime::now();
            let mut claims = Vec::with_capacity(taking.len());
            let mut remaining_cents = state.envelope.remaining_cents;
            let mut remaining_count = state.envelope.remaining_count;
            let mut still_taking = Vec::with_capacity(taking.len());
            // Opens that fit the committed state but not after the batch ahead
            // of them: EXHAUSTED once (and only if) that batch commits.
            let mut overflow = Vec::new();
            let committed_remaining = state.envelope.remaining_count;
            for taker in taking {
                match state.refusal(&taker.user, remaining_count, now) {
                    Ok(None) => {}
                    Ok(Some(ShareStatus::Exhausted))
                        if matches!(
                            state.refusal(&taker.user, committed_remaining, now),
                            Ok(None)
                        ) =>
                    {
                        overflow.push(taker);
                        continue;
                    }
                    answer => {
                        let answer = answer.map(|refusal| match refusal {
                            Some(ShareStatus::AlreadyOpened) => state
                                .claims
                                .get(&taker.user)
                                .copied()
                                .unwrap_or(OpenResult::refused(ShareStatus::AlreadyOpened)),
                            Some(status) => OpenResult::refused(status),
                            None => OpenResult::refused(ShareStatus::Available),
                        });
                        reply_all(taker.replies, || {
                            answer.as_ref().map(|a| *a).map_err(clone_error)
                        });
                        continue;
                    }
                }
                let envelope = &state.envelope;
                let sequence = envelope.count - remaining_count + 1;
                let amount = envelope.share(sequence, remaining_cents, remaining_count);
                remaining_cents -= amount;
                remaining_count -= 1;
                claims.push(NewClaim {
                    user: taker.user.clone(),
                    sequence,
                    amount_cents: amount,
                });
                still_taking.push(taker);
            }
            taking = still_taking;
            if taking.is_empty() {
                // Nothing fits: the committed state already says exhausted.
                reply_refused(overflow, ShareStatus::Exhausted);
                return;
            }
            let outcome = store::commit_opens(
                &self.pool,
                &state.envelope,
                &claims,
                remaining_cents,
                remaining_count,
            )
            .await;
            match outcome {
                Ok(CommitOutcome::Committed(version)) => {
                    let envelope = &mut state.envelope;
                    envelope.version = version;
                    envelope.remaining_cents = remaining_cents;
                    envelope.remaining_count = remaining_count;
                    if remaining_count == 0 {
                        envelope.status = Status::Exhausted;
                    }
                    for (taker, claim) in taking.into_iter().zip(claims) {
                        let result = OpenResult::taken(claim.amount_cents, claim.sequence);
                        state.claims.insert(claim.user, result);
                        reply_all(taker.replies, || Ok(result));
                    }
                    reply_refused(overflow, ShareStatus::Exhausted);
                    return;
                }
                Ok(CommitOutcome::Expired) => {
                    state.expired_in_db = true;
                    // Replanning now answers EXPIRED (or the user's share).
                    taking.extend(overflow);
                }
                Ok(CommitOutcome::Stale | CommitOutcome::NotActive) => {
                    taking.extend(overflow);
                    match store::load_with_claims(&self.pool, &self.id).await {
                        Ok(Some((envelope, loaded))) => {
                            self.state = Some(LaneState::new(envelope, loaded))
                        }
                        Ok(None) => {
                            self.state = None;
                            fail_all(taking, || {
                                CellError::NotFound(format!("envelope {} not found", self.id))
                            });
                            return;
                        }
                        Err(error) => {
                            self.state = None;
                            let message = CellError::from(error).to_string();
                            fail_all(taking, || CellError::Unavailable(message.clone()));
                            return;
                        }
                    }
                }
                Err(error) => {
                    // Unknown whether the DB saw it: forget the state, reload
                    // on the next request, and let the callers retry (Open is
                    // idempotent, so a retry returns the share if it committed).
                    taking.extend(overflow);
                    self.state = None;
                    let message = CellError::from(error).to_string();
                    fail_all(taking, || CellError::Unavailable(message.clone()));
                    return;
                }
            }
        }
        let id = self.id;
        fail_all(taking, || {
            CellError::Unavailable(format!("envelope {id} is contended; retry"))
        });
    }
}

fn clone_error(error: &CellError) -> CellError {
    match error {
        CellError::FailedPrecondition(message) => CellError::FailedPrecondition(message.clone()),
        other => CellError::Unavailable(other.to_string()),
    }
}

fn reply_all(
    replies: Vec<oneshot::Sender<Result<OpenResult, CellError>>>,
    answer: impl Fn() -> Result<OpenResult, CellError>,
) {
    for reply in replies {
        drop(reply.send(answer()));
    }
}

fn reply_refused(takers: Vec<Taking>, status: ShareStatus) {
    for taker in takers {
        reply_all(taker.replies, || Ok(OpenResult::refused(status)));
    }
}

fn fail_all(taking: Vec<Taking>, error: impl Fn() -> CellError) {
    for taker in taking {
        reply_all(taker.replies, || Err(error()));
    }
}

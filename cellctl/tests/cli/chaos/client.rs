//! The chaos run's client: the live scenarios' load ([`load::send`],
//! [`load::open`]: every acknowledgement logged, every retryable failure
//! retried with the very same request) plus **replays**: an acknowledged
//! Send is sent again 2–5 times with its idempotency key, an acknowledged
//! Open 2–5 times, and each answer must be the first one — the same
//! envelope (ID, total, count) for a Send, the same share (amount and
//! sequence) for an Open. A replayed Open is logged like any Open, so the
//! checks also hold it to the claim; a replayed Send is not (one envelope
//! acknowledged twice would read as a duplicate), it is compared here.
//!
//! Who replays what is drawn from the run's seed; when is not (the load
//! runs against a real fleet).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{RngExt, SeedableRng, rngs::StdRng};
use redcell_proto::{internal::REGION_METADATA, v1 as pb};

use crate::live::load::{self, Client, Router, Sender, SharedLog};

/// One in this many acknowledged operations is replayed.
const REPLAY_ONE_IN: u32 = 4;
/// Pause between rounds: a user stays under the router's 50 calls/s.
const ROUND_PAUSE: Duration = Duration::from_millis(40);
const BACKOFF: Duration = Duration::from_millis(50);

/// What the replays saw.
#[derive(Debug, Default)]
pub struct Replays {
    /// Replayed calls answered (each of the 2–5 of one operation counts).
    pub sends: AtomicU64,
    pub opens: AtomicU64,
    /// A replay answered differently from the first answer, in words.
    pub mismatches: Mutex<Vec<String>>,
}

impl Replays {
    fn mismatch(&self, what: String) {
        self.mismatches.lock().unwrap().push(what);
    }
}

/// The running load: one task per sender.
pub struct ChaosLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ChaosLoad {
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        router: &Router,
        senders: &[Sender],
        log: &SharedLog,
        replays: &Arc<Replays>,
        seed: u64,
    ) -> ChaosLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = senders
            .iter()
            .enumerate()
            .map(|(index, sender)| {
                let worker = Worker {
                    client: router.client(&sender.user),
                    sender: sender.clone(),
                    log: log.clone(),
                    replays: replays.clone(),
                    stop: stop.clone(),
                    key_prefix: format!("chaos-{seed}-{index}"),
                    tried: HashSet::new(),
                    rng: StdRng::seed_from_u64(seed ^ (index as u64 + 1)),
                };
                runtime.spawn(worker.run())
            })
            .collect();
        ChaosLoad { stop, tasks }
    }

    /// Stops after each task's current operation (answered, or given up
    /// after the load's retry limit).
    pub fn stop(self, runtime: &tokio::runtime::Runtime) {
        self.stop.store(true, Ordering::SeqCst);
        runtime.block_on(async {
            for task in self.tasks {
                task.await.unwrap();
            }
        });
    }
}

struct Worker {
    client: Client,
    sender: Sender,
    log: SharedLog,
    replays: Arc<Replays>,
    stop: Arc<AtomicBool>,
    key_prefix: String,
    tried: HashSet<String>,
    rng: StdRng,
}

impl Worker {
    async fn run(mut self) {
        let mut round: u64 = 0;
        while !self.stop.load(Ordering::SeqCst) {
            round += 1;
            let count: u32 = self.rng.random_range(1..=3);
            let share: i64 = self.rng.random_range(50..=250);
            let kind = if self.rng.random_bool(0.5) {
                pb::EnvelopeKind::Equal
            } else {
                pb::EnvelopeKind::Lucky
            };
            let request = pb::SendRequest {
                total_cents: share * i64::from(count),
                count,
                kind: kind.into(),
                greeting: "chaos".to_owned(),
                recipients: Vec::new(),
                idempotency_key: format!("{}-{round}", self.key_prefix),
            };
            let sent = load::send(&mut self.client, &self.log, &self.sender, request.clone()).await;
            if let Some(sent) = sent
                && let Some(times) = self.replay_times()
            {
                for _ in 0..times {
                    self.replay_send(&request, &sent).await;
                }
            }
            for newest in [true, false] {
                let Some(envelope) = self.pick(newest) else {
                    continue;
                };
                self.tried.insert(envelope.clone());
                let user = self.sender.user.clone();
                let first = load::open(&mut self.client, &self.log, &user, &envelope).await;
                if let Some(first) = first
                    && let Some(times) = self.replay_times()
                {
                    for _ in 0..times {
                        let again = load::open(&mut self.client, &self.log, &user, &envelope).await;
                        self.replays.opens.fetch_add(1, Ordering::Relaxed);
                        match again {
                            Some(again)
                                if (again.amount_cents, again.sequence)
                                    == (first.amount_cents, first.sequence) => {}
                            Some(again) => self.replays.mismatch(format!(
                                "Open {envelope} by {user}: first {} cents (share {}), replay {} cents (share {})",
                                first.amount_cents, first.sequence, again.amount_cents, again.sequence
                            )),
                            None => self.replays.mismatch(format!(
                                "Open {envelope} by {user}: first {} cents, the replay got no share",
                                first.amount_cents
                            )),
                        }
                    }
                }
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    /// 2–5 for one operation in [`REPLAY_ONE_IN`], else none.
    fn replay_times(&mut self) -> Option<u32> {
        (self.rng.random_range(0..REPLAY_ONE_IN) == 0).then(|| self.rng.random_range(2..=5))
    }

    /// The Send again, retried like the first; its answer must be `sent`.
    async fn replay_send(&mut self, request: &pb::SendRequest, sent: &load::Sent) {
        let issued = Instant::now();
        let key = &request.idempotency_key;
        loop {
            let mut call = tonic::Request::new(request.clone());
            call.metadata_mut()
                .insert(REGION_METADATA, self.sender.region.parse().unwrap());
            match self.client.send(call).await {
                Ok(reply) => {
                    self.replays.sends.fetch_add(1, Ordering::Relaxed);
                    let envelope = reply.into_inner().envelope;
                    let answered = envelope
                        .as_ref()
                        .map(|e| (e.id.as_str(), e.total_cents, e.count));
                    if answered != Some((sent.id.as_str(), sent.total_cents, sent.count)) {
                        self.replays.mismatch(format!(
                            "Send {key}: first {} ({} cents in {}), replay {answered:?}",
                            sent.id, sent.total_cents, sent.count
                        ));
                    }
                    return;
                }
                Err(status)
                    if load::retryable_status(&status) && issued.elapsed() < load::RETRY_FOR =>
                {
                    tokio::time::sleep(BACKOFF).await;
                }
                Err(status) => {
                    self.replays
                        .mismatch(format!("Send {key}: the replay was refused: {status}"));
                    return;
                }
            }
        }
    }

    /// Another user's envelope this one has not tried: the newest, or any.
    fn pick(&mut self, newest: bool) -> Option<String> {
        let candidates: Vec<String> = {
            let log = self.log.lock().unwrap();
            log.sends
                .iter()
                .rev()
                .filter(|sent| sent.sender != self.sender.user && !self.tried.contains(&sent.id))
                .map(|sent| sent.id.clone())
                .collect()
        };
        if candidates.is_empty() {
            return None;
        }
        let index = if newest {
            0
        } else {
            self.rng.random_range(0..candidates.len())
        };
        candidates.into_iter().nth(index)
    }
}

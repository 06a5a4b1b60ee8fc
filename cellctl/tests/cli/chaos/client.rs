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
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{RngExt, SeedableRng, rngs::StdRng};
use redcell_proto::{internal::REGION_METADATA, v1 as pb};

use crate::live::load::{self, Client, Load, Router, Sender, SharedLog, Variety};

/// One in this many acknowledged operations is replayed.
const REPLAY_ONE_IN: u32 = 4;

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

/// Starts the chaos load: the live scenarios' [`Load`] with [`Chaotic`]
/// rounds, one task per sender; stop it with [`Load::stop`] (after each
/// task's current operation: answered, or given up after the retry limit).
pub fn start(
    runtime: &tokio::runtime::Runtime,
    router: &Router,
    senders: &[Sender],
    log: &SharedLog,
    replays: &Arc<Replays>,
    seed: u64,
) -> Load {
    Load::start_with(
        runtime,
        router,
        senders,
        log,
        &format!("chaos-{seed}"),
        |index| Chaotic {
            replays: replays.clone(),
            rng: StdRng::seed_from_u64(seed ^ (index as u64 + 1)),
        },
    )
}

/// A sender's rounds drawn from the seed, with replays after them.
struct Chaotic {
    replays: Arc<Replays>,
    rng: StdRng,
}

impl Variety for Chaotic {
    const GREETING: &'static str = "chaos";
    /// A user stays under the router's 50 calls/s with the replays too.
    const ROUND_PAUSE: Duration = Duration::from_millis(40);

    fn shape(&mut self, _round: u64) -> (u32, i64, pb::EnvelopeKind) {
        let count: u32 = self.rng.random_range(1..=3);
        let share: i64 = self.rng.random_range(50..=250);
        let kind = if self.rng.random_bool(0.5) {
            pb::EnvelopeKind::Equal
        } else {
            pb::EnvelopeKind::Lucky
        };
        (count, share, kind)
    }

    fn index(&mut self, len: usize) -> usize {
        self.rng.random_range(0..len)
    }

    async fn after_send(
        &mut self,
        client: &mut Client,
        sender: &Sender,
        request: &pb::SendRequest,
        sent: &load::Sent,
    ) {
        if let Some(times) = self.replay_times() {
            for _ in 0..times {
                self.replay_send(client, sender, request, sent).await;
            }
        }
    }

    async fn after_open(
        &mut self,
        client: &mut Client,
        log: &SharedLog,
        user: &str,
        envelope: &str,
        first: &load::Opened,
    ) {
        let Some(times) = self.replay_times() else {
            return;
        };
        for _ in 0..times {
            let again = load::open(client, log, user, envelope).await;
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

impl Chaotic {
    /// 2–5 for one operation in [`REPLAY_ONE_IN`], else none.
    fn replay_times(&mut self) -> Option<u32> {
        (self.rng.random_range(0..REPLAY_ONE_IN) == 0).then(|| self.rng.random_range(2..=5))
    }

    /// The Send again, retried like the first; its answer must be `sent`.
    async fn replay_send(
        &self,
        client: &mut Client,
        sender: &Sender,
        request: &pb::SendRequest,
        sent: &load::Sent,
    ) {
        let issued = Instant::now();
        let key = &request.idempotency_key;
        loop {
            let mut call = tonic::Request::new(request.clone());
            call.metadata_mut()
                .insert(REGION_METADATA, sender.region.parse().unwrap());
            match client.send(call).await {
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
                    tokio::time::sleep(load::BACKOFF).await;
                }
                Err(status) => {
                    self.replays
                        .mismatch(format!("Send {key}: the replay was refused: {status}"));
                    return;
                }
            }
        }
    }
}

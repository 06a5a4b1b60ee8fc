//! The client of the live-fleet scenarios: a few tasks that send envelopes
//! and open each other's through the router throughout a scenario, as real
//! clients would (a bearer token per user, a region per sender), and log
//! every operation the fleet acknowledged. The checks hold the fleet to that
//! log, so nothing may be left ambiguous when the load stops: a call that
//! fails with a retryable code (`UNAVAILABLE` while a change is applied, a
//! deadline, the rate limit) is retried with the very same request — the
//! same idempotency key for a Send, the same envelope for an Open, which is
//! idempotent per user — until it is answered. An operation that never is
//! answered within [`RETRY_FOR`] is recorded as unresolved, and the checks
//! fail on it (its money may or may not have moved).

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redcell_proto::{
    internal::REGION_METADATA,
    token::{BearerToken, mint_hs256},
    v1::{self as pb, red_envelope_client::RedEnvelopeClient},
};
use tonic::transport::Channel;
use tonic::{Code, service::interceptor::InterceptedService};

pub type Client = RedEnvelopeClient<InterceptedService<Channel, BearerToken>>;

/// How long one operation is retried before the load gives up on it.
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// Pause between attempts of one operation.
pub const BACKOFF: Duration = Duration::from_millis(50);
/// Pause between rounds of one live-scenario task ([`Variety::ROUND_PAUSE`]).
const ROUND_PAUSE: Duration = Duration::from_millis(30);

/// The fleet's front door: a channel to the first router of a `cellctl up`
/// and its development token key.
#[derive(Clone)]
pub struct Router {
    channel: Channel,
    key: Arc<Vec<u8>>,
}

impl Router {
    /// The router `up` recorded in `state` (its `routers` and `hs256.key`).
    pub async fn connect(state: &Path) -> Router {
        let routers = std::fs::read_to_string(state.join("routers")).unwrap();
        let router = routers.lines().next().unwrap().to_owned();
        let key = std::fs::read(state.join("hs256.key")).unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{router}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        Router {
            channel,
            key: Arc::new(key),
        }
    }

    /// A client calling as `user`.
    pub fn client(&self, user: &str) -> Client {
        let token = mint_hs256(&self.key, user, 3600).unwrap();
        RedEnvelopeClient::with_interceptor(self.channel.clone(), BearerToken::new(&token).unwrap())
    }
}

/// A user who sends, and the region it sends from (`x-redcell-region`).
#[derive(Debug, Clone)]
pub struct Sender {
    pub user: String,
    pub region: String,
}

/// An acknowledged Send: the envelope the fleet answered.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub total_cents: i64,
    pub count: u32,
    pub sender: String,
    pub region: String,
    /// When the first attempt started (a retry keeps its key and this time).
    pub issued: Instant,
    pub acked: Instant,
}

/// An acknowledged Open that took (or returned) a share.
#[derive(Debug, Clone)]
pub struct Opened {
    pub envelope: String,
    pub user: String,
    pub amount_cents: i64,
    pub sequence: u32,
    pub issued: Instant,
    pub acked: Instant,
}

/// Everything the fleet answered, kept across scenarios.
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub sends: Vec<Sent>,
    pub opens: Vec<Opened>,
    /// Attempts that failed and were retried, by gRPC code.
    pub retried: BTreeMap<String, u64>,
    /// Opens answered without a share, by status (EXHAUSTED, ...).
    pub no_share: BTreeMap<String, u64>,
    /// Operations that ended unanswered or refused: what and why.
    pub unresolved: Vec<String>,
}

pub type SharedLog = Arc<Mutex<Log>>;

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
    )
}

/// [`retryable`], or the connection to the router broke under the call
/// (tonic reports that as `UNKNOWN` with the transport error as its source:
/// a router killed mid-call). Either way the answer is unknown and the
/// request, being idempotent, is sent again.
pub fn retryable_status(status: &tonic::Status) -> bool {
    retryable(status.code())
        || std::error::Error::source(status)
            .is_some_and(|source| source.is::<tonic::transport::Error>())
}

fn note_retry(log: &SharedLog, code: Code) {
    *log.lock()
        .unwrap()
        .retried
        .entry(format!("{code:?}"))
        .or_default() += 1;
}

/// One Send, retried with the same request until answered; logged.
pub async fn send(
    client: &mut Client,
    log: &SharedLog,
    sender: &Sender,
    request: pb::SendRequest,
) -> Option<Sent> {
    let issued = Instant::now();
    loop {
        let mut call = tonic::Request::new(request.clone());
        call.metadata_mut()
            .insert(REGION_METADATA, sender.region.parse().unwrap());
        let status = match client.send(call).await {
            Ok(reply) => {
                let Some(envelope) = reply.into_inner().envelope else {
                    log.lock().unwrap().unresolved.push(format!(
                        "Send {} by {}: answered without an envelope",
                        request.idempotency_key, sender.user
                    ));
                    return None;
                };
                let sent = Sent {
                    id: envelope.id,
                    total_cents: envelope.total_cents,
                    count: envelope.count,
                    sender: sender.user.clone(),
                    region: sender.region.clone(),
                    issued,
                    acked: Instant::now(),
                };
                log.lock().unwrap().sends.push(sent.clone());
                return Some(sent);
            }
            Err(status) => status,
        };
        if !retryable_status(&status) || issued.elapsed() >= RETRY_FOR {
            log.lock().unwrap().unresolved.push(format!(
                "Send {} by {}: {status}",
                request.idempotency_key, sender.user
            ));
            return None;
        }
        note_retry(log, status.code());
        tokio::time::sleep(BACKOFF).await;
    }
}

/// One Open, retried until answered; a share taken (or returned again) is
/// logged, any other answer counted.
pub async fn open(
    client: &mut Client,
    log: &SharedLog,
    user: &str,
    envelope: &str,
) -> Option<Opened> {
    open_watched(client, log, user, envelope, |_| true).await
}

/// [`open`], telling `refused` of every failed attempt, which is retried only
/// if it returns true (a scenario that waits through an outage reports what
/// the fleet answered meanwhile; one that must not see a refusal stops at
/// the first, recorded as unresolved).
pub async fn open_watched(
    client: &mut Client,
    log: &SharedLog,
    user: &str,
    envelope: &str,
    mut refused: impl FnMut(&tonic::Status) -> bool,
) -> Option<Opened> {
    let issued = Instant::now();
    let request = pb::OpenRequest {
        envelope_id: envelope.to_owned(),
    };
    loop {
        let status = match client.open(request.clone()).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let share = reply.status();
                let mut log = log.lock().unwrap();
                if !matches!(
                    share,
                    pb::ShareStatus::Available | pb::ShareStatus::AlreadyOpened
                ) {
                    *log.no_share.entry(format!("{share:?}")).or_default() += 1;
                    return None;
                }
                let opened = Opened {
                    envelope: envelope.to_owned(),
                    user: user.to_owned(),
                    amount_cents: reply.amount_cents,
                    sequence: reply.sequence,
                    issued,
                    acked: Instant::now(),
                };
                log.opens.push(opened.clone());
                return Some(opened);
            }
            Err(status) => status,
        };
        let retry = refused(&status);
        if !retry || !retryable_status(&status) || issued.elapsed() >= RETRY_FOR {
            log.lock()
                .unwrap()
                .unresolved
                .push(format!("Open {envelope} by {user}: {status}"));
            return None;
        }
        note_retry(log, status.code());
        tokio::time::sleep(BACKOFF).await;
    }
}

/// What varies between the loads that run on [`Worker`]: the shape of each
/// round's envelope, the random choices, and what to do after an
/// acknowledged operation (the chaos run replays some; the live scenarios
/// do nothing). One worker loop, so both loads retry and log alike.
pub trait Variety: Send + 'static {
    /// The greeting of every Send (tells the loads apart in the fleet).
    const GREETING: &'static str;
    /// Pause between rounds of one task, so a user stays under the router's
    /// per-user rate limit (50 calls/s) without leaning on its refusals.
    const ROUND_PAUSE: Duration;

    /// The `round`th envelope: share count, cents a share, kind.
    fn shape(&mut self, round: u64) -> (u32, i64, pb::EnvelopeKind);

    /// An index below `len` (> 0), for the older envelope a round opens.
    fn index(&mut self, len: usize) -> usize;

    /// After `request` was acknowledged as `sent`.
    fn after_send(
        &mut self,
        _client: &mut Client,
        _sender: &Sender,
        _request: &pb::SendRequest,
        _sent: &Sent,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// After an Open of `envelope` by `user` was acknowledged as `first`.
    fn after_open(
        &mut self,
        _client: &mut Client,
        _log: &SharedLog,
        _user: &str,
        _envelope: &str,
        _first: &Opened,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The live scenarios' variety: alternating kinds, xorshift64 for the rest
/// (reproducible variety without a dependency), nothing after an operation.
struct Plain {
    random: u64,
}

impl Variety for Plain {
    const GREETING: &'static str = "live";
    const ROUND_PAUSE: Duration = ROUND_PAUSE;

    fn shape(&mut self, round: u64) -> (u32, i64, pb::EnvelopeKind) {
        let count = 1 + (self.next() % 3) as u32;
        let share = 50 + (self.next() % 201) as i64;
        let kind = if round.is_multiple_of(2) {
            pb::EnvelopeKind::Equal
        } else {
            pb::EnvelopeKind::Lucky
        };
        (count, share, kind)
    }

    fn index(&mut self, len: usize) -> usize {
        (self.next() % len as u64) as usize
    }
}

impl Plain {
    /// xorshift64.
    fn next(&mut self) -> u64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random
    }
}

/// The running load: one task per sender.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts one task per sender on `runtime`. Each round a task sends one
    /// envelope (LUCKY or EQUAL, 1-3 shares of 0.50-2.50) from its region,
    /// then opens the newest envelope of another user it has not tried yet,
    /// and one older one at random (so old envelopes, of a failed cell too,
    /// keep being opened). A new load remembers nothing of the previous
    /// one's Opens, so its users also open again envelopes they already hold
    /// a share of: the fleet must answer that same share (the checks hold
    /// every acknowledgement of a share to its one claim). `tag` makes the idempotency keys of this load
    /// unique on the fleet.
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        router: &Router,
        senders: &[Sender],
        log: &SharedLog,
        tag: &str,
    ) -> Load {
        Load::start_with(runtime, router, senders, log, tag, |index| Plain {
            random: 0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1),
        })
    }

    /// [`Load::start`] with the `variety` of each sender (by index).
    pub fn start_with<V: Variety>(
        runtime: &tokio::runtime::Runtime,
        router: &Router,
        senders: &[Sender],
        log: &SharedLog,
        tag: &str,
        mut variety: impl FnMut(usize) -> V,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = senders
            .iter()
            .enumerate()
            .map(|(index, sender)| {
                let worker = Worker {
                    client: router.client(&sender.user),
                    sender: sender.clone(),
                    log: log.clone(),
                    stop: stop.clone(),
                    key_prefix: format!("{tag}-{index}"),
                    tried: HashSet::new(),
                    variety: variety(index),
                };
                runtime.spawn(worker.run())
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the tasks after their current operation (answered, or given up
    /// after [`RETRY_FOR`]).
    pub fn stop(self, runtime: &tokio::runtime::Runtime) {
        self.stop.store(true, Ordering::SeqCst);
        runtime.block_on(async {
            for task in self.tasks {
                task.await.unwrap();
            }
        });
    }
}

struct Worker<V> {
    client: Client,
    sender: Sender,
    log: SharedLog,
    stop: Arc<AtomicBool>,
    key_prefix: String,
    /// Envelopes this user has tried to open.
    tried: HashSet<String>,
    variety: V,
}

impl<V: Variety> Worker<V> {
    async fn run(mut self) {
        let mut round: u64 = 0;
        while !self.stop.load(Ordering::SeqCst) {
            round += 1;
            let (count, share, kind) = self.variety.shape(round);
            let request = pb::SendRequest {
                total_cents: share * i64::from(count),
                count,
                kind: kind.into(),
                greeting: V::GREETING.to_owned(),
                recipients: Vec::new(),
                idempotency_key: format!("{}-{round}", self.key_prefix),
            };
            let sent = send(&mut self.client, &self.log, &self.sender, request.clone()).await;
            if let Some(sent) = sent {
                self.variety
                    .after_send(&mut self.client, &self.sender, &request, &sent)
                    .await;
            }
            for pick in [Pick::Newest, Pick::Any] {
                let Some(envelope) = self.pick(pick) else {
                    continue;
                };
                self.tried.insert(envelope.clone());
                let user = &self.sender.user;
                let first = open(&mut self.client, &self.log, user, &envelope).await;
                if let Some(first) = first {
                    self.variety
                        .after_open(&mut self.client, &self.log, user, &envelope, &first)
                        .await;
                }
            }
            tokio::time::sleep(V::ROUND_PAUSE).await;
        }
    }

    /// An envelope of another user this one has not tried.
    fn pick(&mut self, pick: Pick) -> Option<String> {
        let candidates: Vec<String> = {
            let log = self.log.lock().unwrap();
            log.sends
                .iter()
                .rev()
                .filter(|sent| sent.sender != self.sender.user && !self.tried.contains(&sent.id))
                .map(|sent| sent.id.clone())
                .collect()
        };
        match pick {
            Pick::Newest => candidates.into_iter().next(),
            Pick::Any if candidates.is_empty() => None,
            Pick::Any => {
                let index = self.variety.index(candidates.len());
                candidates.into_iter().nth(index)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Pick {
    Newest,
    Any,
}

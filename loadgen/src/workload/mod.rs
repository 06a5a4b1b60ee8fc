//! The workloads, one file each, all through the router(s) as users do:
//! [`matrix`] (`hot`: few envelopes, many openers; `uniform`: many envelopes
//! over every cell), [`send`], [`festival`], [`burst`], [`kill`].
//!
//! Shared here: the calls every workload makes ([`Calls`]), the senders' setup ([`send_envelopes`]) and the
//! [`Context`] a workload runs in. Every user opens an envelope at most
//! once, so an AVAILABLE answer is one distinct share: the run's acknowledged
//! shares must equal the claims `cellctl reconcile` counts.

pub mod burst;
pub mod festival;
pub mod kill;
pub mod matrix;
pub mod send;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use redcell_proto::v1 as pb;
use serde::Serialize;
use tonic::Status;

use crate::{
    client::{Routers, Users},
    cost::{CostProbe, CpuSnapshot},
    driver::{Op, Pacing, drive},
    stats::{Outcome, PhaseSummary},
};

/// Most cents one `cellctl fund` may add (cellctl's MAX_FUND_CENTS).
pub const FUND_CENTS: i64 = 100_000_000;

/// What a workload runs with.
#[derive(Debug)]
pub struct Context {
    pub ops: Calls,
    /// Unique per run: idempotency keys of Sends never collide with an
    /// earlier run's on a reused fleet.
    pub run_id: String,
    pub cost: CostProbe,
    /// CPU at the start and end of the measured phase.
    pub measured: Option<(CpuSnapshot, CpuSnapshot)>,
    /// The cells' `/metrics` addresses (queue-depth gauge), maybe empty.
    pub cell_metrics: Vec<std::net::SocketAddr>,
}

impl Context {
    /// Runs the measured phase, with CPU snapshots around it.
    pub async fn measure(
        &mut self,
        name: &str,
        pacing: Pacing,
        expected: Option<u64>,
        generator: impl FnMut(crate::driver::Slot) -> Option<Op> + Send + 'static,
    ) -> Result<PhaseSummary, String> {
        let before = self.cost.snapshot();
        let phase = drive(name, pacing, expected, generator).await?;
        self.measured = Some((before, self.cost.snapshot()));
        Ok(phase)
    }
}

/// A workload's outcome.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WorkloadReport {
    pub workload: String,
    pub phases: Vec<PhaseSummary>,
    /// Headline numbers (`shares_per_sec`, `cold_p99_ratio`, ...).
    pub figures: BTreeMap<String, f64>,
    /// Opens answered AVAILABLE over every phase, plus the shares found on
    /// replaying the Opens whose outcome was unknown.
    pub acknowledged_shares: u64,
    /// Of those, found on replay (the first answer was lost or timed out).
    pub shares_found_on_replay: u64,
    /// Shares the workload's envelopes must have had taken by the end, when
    /// it knows (every share of every envelope opened).
    pub expected_shares: Option<u64>,
    /// Calls of the measured phase, by kind, for the cost model.
    pub measured_opens: u64,
    pub measured_sends: u64,
    /// Time series of a workload that has one (`kill`: OK Opens per 100 ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub series: BTreeMap<String, Vec<u64>>,
}

impl WorkloadReport {
    pub fn new(workload: &str, phases: Vec<PhaseSummary>) -> WorkloadReport {
        let acknowledged_shares = phases.iter().map(|phase| phase.shares_taken).sum();
        WorkloadReport {
            workload: workload.to_owned(),
            phases,
            figures: BTreeMap::new(),
            acknowledged_shares,
            shares_found_on_replay: 0,
            expected_shares: None,
            measured_opens: 0,
            measured_sends: 0,
            series: BTreeMap::new(),
        }
    }

    /// Counts the measured phase's Opens and Sends (labels starting so).
    pub fn measured(mut self, phase: &PhaseSummary) -> WorkloadReport {
        let count = |prefix: &str| {
            phase
                .ops
                .iter()
                .filter(|(label, _)| label.starts_with(prefix))
                .map(|(_, op)| op.calls)
                .sum()
        };
        self.measured_opens = count("open");
        self.measured_sends = count("send");
        self
    }

    pub fn figure(mut self, name: &str, value: f64) -> WorkloadReport {
        self.figures.insert(name.to_owned(), value);
        self
    }
}

/// An Open whose outcome is unknown: (user, envelope).
pub type UnknownOpen = (usize, Arc<str>);

/// Builds the calls; cheap to clone into a workload's generator.
#[derive(Debug, Clone)]
pub struct Calls {
    pub routers: Arc<Routers>,
    pub users: Arc<Users>,
    pub senders: Arc<Users>,
    /// Opens whose outcome the caller never learned (the call failed with a
    /// code that does not say "nothing happened"): replayed after the run,
    /// as a client retries, since an Open replay returns the first result.
    pub unresolved: Arc<std::sync::Mutex<Vec<UnknownOpen>>>,
}

impl Calls {
    /// A Send of `count` shares worth `total_cents` by sender `sender`.
    pub fn send(
        &self,
        label: &'static str,
        sender: usize,
        key: String,
        total_cents: i64,
        count: u32,
    ) -> Op {
        let mut client = self.routers.client(&self.senders, sender);
        let request = pb::SendRequest {
            total_cents,
            count,
            kind: pb::EnvelopeKind::Lucky.into(),
            greeting: "loadgen".into(),
            recipients: Vec::new(),
            idempotency_key: key,
        };
        Op {
            label,
            call: Box::pin(async move {
                let envelope = client.send(request).await?.into_inner().envelope;
                envelope
                    .map(|envelope| Outcome::Sent { id: envelope.id })
                    .ok_or_else(|| Status::internal("a Send answered without its envelope"))
            }),
        }
    }

    /// An Open of `envelope` by user `user`.
    pub fn open(&self, label: &'static str, user: usize, envelope: Arc<str>) -> Op {
        let mut client = self.routers.client(&self.users, user);
        let unresolved = self.unresolved.clone();
        Op {
            label,
            call: Box::pin(async move {
                let request = pb::OpenRequest {
                    envelope_id: envelope.to_string(),
                };
                let opened = match client.open(request).await {
                    Ok(opened) => opened.into_inner(),
                    Err(status) => {
                        if outcome_unknown(status.code())
                            && let Ok(mut unresolved) = unresolved.lock()
                        {
                            unresolved.push((user, envelope));
                        }
                        return Err(status);
                    }
                };
                Ok(match opened.status() {
                    pb::ShareStatus::Available => Outcome::Taken {
                        cents: opened.amount_cents,
                    },
                    _ => Outcome::Empty,
                })
            }),
        }
    }

    /// A Grab of `envelope` by user `user` (answered from memory).
    pub fn grab(&self, label: &'static str, user: usize, envelope: Arc<str>) -> Op {
        let mut client = self.routers.client(&self.users, user);
        Op {
            label,
            call: Box::pin(async move {
                let request = pb::GrabRequest {
                    envelope_id: envelope.to_string(),
                };
                client.grab(request).await?;
                Ok(Outcome::Grabbed)
            }),
        }
    }
}

/// True for the codes after which an Open may or may not have taken a
/// share (the reply was lost, or the router gave up waiting for the cell).
fn outcome_unknown(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::DeadlineExceeded
            | tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    )
}

/// Replays every Open whose outcome was unknown (each up to five times,
/// until it answers): the shares they had taken, which the run must count.
pub async fn resolve_unknown_opens(calls: &Calls) -> Result<u64, String> {
    let pending: Vec<UnknownOpen> = match calls.unresolved.lock() {
        Ok(mut unresolved) => std::mem::take(&mut *unresolved),
        Err(_) => return Err("an Open panicked".into()),
    };
    let mut taken = 0;
    for (user, envelope) in pending {
        let mut answered = false;
        for _ in 0..5 {
            let mut client = calls.routers.client(&calls.users, user);
            let request = pb::OpenRequest {
                envelope_id: envelope.to_string(),
            };
            if let Ok(opened) = client.open(request).await {
                if opened.into_inner().status() == pb::ShareStatus::Available {
                    taken += 1;
                }
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !answered {
            return Err(format!(
                "an Open of {envelope} by user {user} never answered on replay"
            ));
        }
    }
    Ok(taken)
}

/// Funds `senders` senders enough for `cents_each` (in top-ups of at most
/// [`FUND_CENTS`]) through `cellctl fund`.
pub fn fund_senders(
    fleet: &crate::fleet::Fleet,
    senders: usize,
    cents_each: i64,
) -> Result<(), String> {
    for sender in 0..senders {
        let mut left = cents_each.max(1);
        while left > 0 {
            let now = left.min(FUND_CENTS);
            fleet.fund(&format!("s{sender}"), now)?;
            left -= now;
        }
    }
    Ok(())
}

/// The setup every open workload starts with: `count` envelopes of
/// `shares` shares and `total_cents` each, sender i sending envelope i
/// (senders wrap), closed loop; every Send must succeed.
pub async fn send_envelopes(
    context: &Context,
    name: &str,
    count: usize,
    shares: u32,
    total_cents: i64,
    concurrency: usize,
) -> Result<(PhaseSummary, Vec<Arc<str>>), String> {
    let ops: Vec<Op> = (0..count)
        .map(|index| {
            let tag: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
            let key = format!("{}-{tag}-{index}", context.run_id);
            context.ops.send("send", index, key, total_cents, shares)
        })
        .collect();
    let mut ops = ops.into_iter();
    let phase = drive(
        name,
        Pacing::Closed {
            concurrency,
            duration: None,
        },
        Some(count as u64),
        move |_| ops.next(),
    )
    .await?;
    let failed: u64 = phase
        .ops
        .values()
        .map(|op| op.errors.values().sum::<u64>())
        .sum();
    if failed > 0 {
        let errors: Vec<String> = phase
            .ops
            .values()
            .flat_map(|op| {
                op.errors.iter().map(|(code, n)| {
                    let message = op.error_messages.get(code).map_or("", String::as_str);
                    format!("{code} x{n} ({message})")
                })
            })
            .collect();
        return Err(format!(
            "{name}: {failed} Sends failed: {}",
            errors.join(", ")
        ));
    }
    let ids = phase
        .sent_ids
        .iter()
        .map(|id| Arc::from(id.as_str()))
        .collect();
    Ok((phase, ids))
}

/// `secs` as a Duration (at least 100 ms).
pub fn seconds(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.max(0.1))
}

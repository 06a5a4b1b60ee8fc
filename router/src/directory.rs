//! The logic servers the router knows: one lazily connected gRPC channel per
//! server address, the health of each (from the gRPC health service), and the
//! cells marked suspect after a failed Send.
//!
//! A cell is *usable for new envelopes* while at least one of its servers
//! reports `SERVING` (its servers report `NOT_SERVING` while their order DB is
//! down) and it is not suspect. Existing envelopes are routed to their cell
//! whatever its health: only its cell has them.
//!
//! **Answers are believed at once, silence only when it lasts.** A server that
//! answers `NOT_SERVING`, or whose connection is refused, is down from that
//! check on: it said so. A check that times out says nothing about the server
//! (it may only be slow, or the router's own machine busy), so a server leaves
//! the pool after [`MISSED_CHECKS_TO_FALL`] timeouts in a row, not at the
//! first: one slow round under load must not empty a region's pool. Any
//! `SERVING` answer puts it back.
//!
//! **Calls see a stall before health checks do (outlier ejection).** A server
//! on which [`EJECT_AFTER`] calls in a row failed in transport or timed out
//! (a stalled process, a dying one) is taken out of rotation at once, without
//! waiting for [`MISSED_CHECKS_TO_FALL`] silent health checks; the first
//! `SERVING` answer to a health check *started after* the ejection puts it
//! back. Any answer from the server's handlers resets the count.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redcell_topology::Topology;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{metrics::RouterMetrics, topology::TopologyHandle};

/// The service a logic server's health is asked for.
const CELL_SERVICE: &str = "redcell.v1.RedEnvelope";

/// Health checks in a row that must time out before a server that was
/// `SERVING` counts as down (HAProxy's `fall`). At the default 500 ms interval, a
/// server that silently stopped answering leaves the pool within ~1.5 s.
pub const MISSED_CHECKS_TO_FALL: u32 = 3;

/// HTTP/2 keepalive of the router's connections to logic servers.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls in a row that failed in transport or timed out on one server before
/// it is ejected (taken out of rotation until a health check answers).
pub const EJECT_AFTER: u32 = 3;

/// A server's recent call failures, and whether they ejected it.
#[derive(Debug, Clone, Copy, Default)]
struct Outlier {
    /// Calls in a row that failed in transport or timed out.
    failures: u32,
    /// When the server was ejected, if it is.
    ejected_at: Option<Instant>,
}

/// What one health check learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The server answered `SERVING`.
    Serving,
    /// The server answered otherwise, or could not be connected to: down.
    Down,
    /// No answer within the timeout: maybe down, maybe slow.
    Silent,
}

/// A server's health as the router tracks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ServerHealth {
    serving: bool,
    /// Timed-out checks in a row since the last answer.
    silent: u32,
}

impl ServerHealth {
    /// The health after `check`.
    fn after(self, check: Check) -> ServerHealth {
        match check {
            Check::Serving => ServerHealth {
                serving: true,
                silent: 0,
            },
            Check::Down => ServerHealth {
                serving: false,
                silent: 0,
            },
            Check::Silent => {
                let silent = self.silent.saturating_add(1);
                ServerHealth {
                    serving: self.serving && silent < MISSED_CHECKS_TO_FALL,
                    silent,
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct Directory {
    channels: Mutex<HashMap<String, Channel>>,
    /// The health of every server checked so far (absent: never answered).
    health: RwLock<HashMap<String, ServerHealth>>,
    /// Servers with calls failing in a row (absent: none failing).
    outliers: RwLock<HashMap<String, Outlier>>,
    /// `outliers.len()`, read without the lock: calls on healthy servers (the
    /// hot path) skip it while nothing is failing.
    outlier_count: AtomicUsize,
    /// Cells that failed a Send, until the instant given.
    suspects: Mutex<HashMap<String, Instant>>,
    connect_timeout: Duration,
    suspect_for: Duration,
    /// Where calls to cells are counted and timed.
    metrics: Arc<RouterMetrics>,
}

impl Directory {
    /// Counts calls to cells in `metrics` (the router's; the default is a
    /// registry nobody serves).
    pub fn observed_by(mut self, metrics: Arc<RouterMetrics>) -> Directory {
        self.metrics = metrics;
        self
    }

    pub(crate) fn metrics(&self) -> &RouterMetrics {
        &self.metrics
    }

    pub fn new(connect_timeout: Duration, suspect_for: Duration) -> Directory {
        Directory {
            channels: Mutex::default(),
            health: RwLock::default(),
            outliers: RwLock::default(),
            outlier_count: AtomicUsize::new(0),
            suspects: Mutex::default(),
            connect_timeout,
            suspect_for,
            metrics: Arc::default(),
        }
    }

    /// The channel of a server (created on first use; connects lazily).
    pub fn channel(&self, address: &str) -> Result<Channel, tonic::Status> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| tonic::Status::internal("channel cache poisoned"))?;
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|_| tonic::Status::internal(format!("bad server address {address}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A connection whose peer vanished without closing it (a host
            // gone, a partition) would otherwise carry every call and health
            // check into silence forever: HTTP/2 pings find it, the channel
            // drops it and connects again.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Whether `address` is in rotation: its health checks say `SERVING` and
    /// it is not ejected.
    pub fn is_serving(&self, address: &str) -> bool {
        self.health
            .read()
            .map(|health| health.get(address).is_some_and(|server| server.serving))
            .unwrap_or(false)
            && !self.is_ejected(address)
    }

    /// Whether calls failing in a row took `address` out of rotation.
    pub fn is_ejected(&self, address: &str) -> bool {
        if self.outlier_count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.outliers
            .read()
            .map(|outliers| {
                outliers
                    .get(address)
                    .is_some_and(|outlier| outlier.ejected_at.is_some())
            })
            .unwrap_or(false)
    }

    /// A call to `address` was answered by its handlers: its failure count
    /// starts again (an ejection stays until a health check lifts it).
    pub fn call_answered(&self, address: &str) {
        if self.outlier_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let failing = self
            .outliers
            .read()
            .map(|outliers| {
                outliers
                    .get(address)
                    .is_some_and(|outlier| outlier.failures > 0)
            })
            .unwrap_or(false);
        if failing && let Ok(mut outliers) = self.outliers.write() {
            if let Some(outlier) = outliers.get_mut(address) {
                outlier.failures = 0;
            }
            outliers.retain(|_, outlier| outlier.failures > 0 || outlier.ejected_at.is_some());
            self.outlier_count.store(outliers.len(), Ordering::Relaxed);
        }
    }

    /// A call to `address` failed in transport or timed out; the
    /// [`EJECT_AFTER`]th in a row ejects it.
    pub fn call_failed(&self, address: &str) {
        if let Ok(mut outliers) = self.outliers.write() {
            let count = outliers.len() + usize::from(!outliers.contains_key(address));
            self.outlier_count.store(count, Ordering::Relaxed);
            let outlier = outliers.entry(address.to_owned()).or_default();
            outlier.failures = outlier.failures.saturating_add(1);
            if outlier.failures >= EJECT_AFTER && outlier.ejected_at.is_none() {
                outlier.ejected_at = Some(Instant::now());
                tracing::warn!(
                    server = address,
                    failures = outlier.failures,
                    "server ejected: calls in a row failed or timed out"
                );
            }
        }
    }

    /// Marks a cell suspect: out of the mint pool for a while.
    pub fn suspect(&self, cell: &str) {
        if let Ok(mut suspects) = self.suspects.lock() {
            suspects.insert(cell.to_owned(), Instant::now() + self.suspect_for);
        }
        tracing::warn!(cell, "cell marked suspect after a failed send");
    }

    fn is_suspect(&self, cell: &str) -> bool {
        self.suspects
            .lock()
            .map(|suspects| {
                suspects
                    .get(cell)
                    .is_some_and(|until| Instant::now() < *until)
            })
            .unwrap_or(false)
    }

    /// Whether new envelopes may go to `cell` now.
    pub fn usable_for_new(&self, topology: &Topology, cell: &str) -> bool {
        !self.is_suspect(cell)
            && topology
                .cell(cell)
                .is_some_and(|found| found.servers.iter().any(|server| self.is_serving(server)))
    }

    /// Puts back in rotation the ejected servers among `serving` (answered
    /// `SERVING` to a health check that started at `started`) if they were
    /// ejected before that check started; forgets servers not in `known`.
    fn lift_ejections<'a>(
        &self,
        started: Instant,
        serving: impl Iterator<Item = &'a str>,
        known: &[String],
    ) {
        if let Ok(mut outliers) = self.outliers.write() {
            for address in serving {
                if let Some(outlier) = outliers.get_mut(address)
                    && outlier.ejected_at.is_some_and(|at| at < started)
                {
                    tracing::info!(server = %address, "ejected server answers its health check: back in rotation");
                    *outlier = Outlier::default();
                }
            }
            outliers.retain(|address, outlier| {
                known.contains(address) && (outlier.failures > 0 || outlier.ejected_at.is_some())
            });
            self.outlier_count.store(outliers.len(), Ordering::Relaxed);
        }
    }

    /// Asks every server of the topology for its health, concurrently.
    pub async fn check_all(&self, topology: &Topology, timeout: Duration) {
        let started = Instant::now();
        let servers: Vec<String> = topology
            .cells()
            .iter()
            .flat_map(|cell| cell.servers.clone())
            .collect();
        // Checks run concurrently; the set is joined here (and aborted if this
        // future is dropped), so nothing outlives the call.
        let mut checks = tokio::task::JoinSet::new();
        for address in &servers {
            let channel = self.channel(address);
            let address = address.clone();
            checks.spawn(async move {
                let result = match channel {
                    Ok(channel) => check(channel, timeout).await,
                    Err(_) => Check::Down,
                };
                (address, result)
            });
        }
        let mut results = Vec::with_capacity(servers.len());
        while let Some(joined) = checks.join_next().await {
            if let Ok(result) = joined {
                results.push(result);
            }
        }
        if let Ok(mut health) = self.health.write() {
            for (address, result) in &results {
                let was = health.get(address).copied().unwrap_or_default();
                let now = was.after(*result);
                if now.serving && !was.serving {
                    tracing::info!(server = %address, "server SERVING");
                } else if !now.serving && was.serving {
                    tracing::warn!(server = %address, check = ?result, "server not serving");
                } else if *result == Check::Silent && now.serving {
                    tracing::warn!(server = %address, silent = now.silent, "health check timed out");
                }
                health.insert(address.clone(), now);
            }
            // Servers that left the topology are forgotten.
            health.retain(|address, _| servers.contains(address));
        }
        let serving = results
            .iter()
            .filter(|(_, result)| *result == Check::Serving)
            .map(|(address, _)| address.as_str());
        self.lift_ejections(started, serving, &servers);
        if let Ok(mut channels) = self.channels.lock() {
            channels.retain(|address, _| servers.contains(address));
        }
    }

    /// Health-checks every `interval` until cancelled.
    pub async fn watch(
        self: Arc<Self>,
        topology: Arc<TopologyHandle>,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        loop {
            self.check_all(&topology.load(), interval.max(Duration::from_millis(200)))
                .await;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

async fn check(channel: Channel, timeout: Duration) -> Check {
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: CELL_SERVICE.to_owned(),
    };
    match tokio::time::timeout(timeout, client.check(request)).await {
        Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving => Check::Serving,
        // NOT_SERVING, an unknown service, a refused connection: an answer.
        Ok(_) => Check::Down,
        Err(_elapsed) => Check::Silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that believes `servers` are SERVING (as if checked).
    fn healthy(servers: &[&str]) -> Directory {
        let directory = Directory::new(Duration::from_secs(1), Duration::from_secs(5));
        if let Ok(mut health) = directory.health.write() {
            for server in servers {
                health.insert(
                    (*server).to_owned(),
                    ServerHealth::default().after(Check::Serving),
                );
            }
        }
        directory
    }

    #[test]
    fn failing_calls_in_a_row_eject_a_server_until_a_later_health_check_answers() {
        let known = vec!["a:1".to_owned(), "b:1".to_owned()];
        let directory = healthy(&["a:1", "b:1"]);
        let before_ejection = Instant::now();
        // Failures with answers in between never eject.
        for _ in 0..10 {
            for _ in 1..EJECT_AFTER {
                directory.call_failed("a:1");
            }
            directory.call_answered("a:1");
            assert!(directory.is_serving("a:1"));
        }
        for _ in 1..EJECT_AFTER {
            directory.call_failed("a:1");
        }
        assert!(directory.is_serving("a:1"), "not yet");
        directory.call_failed("a:1");
        assert!(
            !directory.is_serving("a:1"),
            "ejected at {EJECT_AFTER} in a row"
        );
        assert!(directory.is_serving("b:1"), "only the failing server");
        // An answer to a call does not bring it back, nor a health check that
        // started before the ejection.
        directory.call_answered("a:1");
        assert!(!directory.is_serving("a:1"));
        directory.lift_ejections(before_ejection, ["a:1"].into_iter(), &known);
        assert!(
            !directory.is_serving("a:1"),
            "a check from before the ejection"
        );
        // A health check started after it, answered SERVING, does.
        let later = Instant::now() + Duration::from_millis(1);
        directory.lift_ejections(later, ["b:1"].into_iter(), &known);
        assert!(!directory.is_serving("a:1"), "another server's answer");
        directory.lift_ejections(later, ["a:1"].into_iter(), &known);
        assert!(directory.is_serving("a:1"), "back in rotation");
        // And its count starts again.
        for _ in 1..EJECT_AFTER {
            directory.call_failed("a:1");
        }
        assert!(directory.is_serving("a:1"));
    }

    #[test]
    fn answers_count_at_once_and_silence_only_when_it_lasts() {
        let up = ServerHealth::default().after(Check::Serving);
        assert!(up.serving);
        assert!(!up.after(Check::Down).serving, "NOT_SERVING is believed");

        let mut health = up;
        for missed in 1..MISSED_CHECKS_TO_FALL {
            health = health.after(Check::Silent);
            assert!(health.serving, "still serving after {missed} timeouts");
        }
        health = health.after(Check::Silent);
        assert!(
            !health.serving,
            "down after {MISSED_CHECKS_TO_FALL} timeouts"
        );
        assert!(
            health.after(Check::Serving).serving,
            "an answer brings it back"
        );

        // An answer in between starts the count again.
        let mut flaky = up;
        for _ in 0..10 {
            flaky = flaky
                .after(Check::Silent)
                .after(Check::Silent)
                .after(Check::Serving);
            assert!(flaky.serving);
        }
        // A server never seen serving stays out while it is silent.
        assert!(!ServerHealth::default().after(Check::Silent).serving);
    }
}

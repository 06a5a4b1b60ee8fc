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

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use redcell_topology::Topology;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::topology::TopologyHandle;

/// The service a logic server's health is asked for.
const CELL_SERVICE: &str = "redcell.v1.RedEnvelope";

/// Health checks in a row that must time out before a server that was
/// `SERVING` counts as down (HAProxy's `fall`). At the default 500 ms interval, a
/// server that silently stopped answering leaves the pool within ~1.5 s.
pub const MISSED_CHECKS_TO_FALL: u32 = 3;

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
    /// Cells that failed a Send, until the instant given.
    suspects: Mutex<HashMap<String, Instant>>,
    connect_timeout: Duration,
    suspect_for: Duration,
}

impl Directory {
    pub fn new(connect_timeout: Duration, suspect_for: Duration) -> Directory {
        Directory {
            channels: Mutex::default(),
            health: RwLock::default(),
            suspects: Mutex::default(),
            connect_timeout,
            suspect_for,
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
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    pub fn is_serving(&self, address: &str) -> bool {
        self.health
            .read()
            .map(|health| health.get(address).is_some_and(|server| server.serving))
            .unwrap_or(false)
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

    /// Asks every server of the topology for its health, concurrently.
    pub async fn check_all(&self, topology: &Topology, timeout: Duration) {
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
            for (address, result) in results {
                let was = health.get(&address).copied().unwrap_or_default();
                let now = was.after(result);
                if now.serving && !was.serving {
                    tracing::info!(server = %address, "server SERVING");
                } else if !now.serving && was.serving {
                    tracing::warn!(server = %address, check = ?result, "server not serving");
                } else if result == Check::Silent && now.serving {
                    tracing::warn!(server = %address, silent = now.silent, "health check timed out");
                }
                health.insert(address, now);
            }
            // Servers that left the topology are forgotten.
            health.retain(|address, _| servers.contains(address));
        }
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

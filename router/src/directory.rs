//! The logic servers the router knows: one lazily connected gRPC channel per
//! server address, the health of each (from the gRPC health service), and the
//! cells marked suspect after a failed Send.
//!
//! A cell is *usable for new envelopes* while at least one of its servers
//! reports `SERVING` (its servers report `NOT_SERVING` while their order DB is
//! down) and it is not suspect. Existing envelopes are routed to their cell
//! whatever its health: only its cell has them.

use std::{
    collections::{HashMap, HashSet},
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

#[derive(Debug)]
pub struct Directory {
    channels: Mutex<HashMap<String, Channel>>,
    /// Server addresses last seen SERVING.
    serving: RwLock<HashSet<String>>,
    /// Cells that failed a Send, until the instant given.
    suspects: Mutex<HashMap<String, Instant>>,
    connect_timeout: Duration,
    suspect_for: Duration,
}

impl Directory {
    pub fn new(connect_timeout: Duration, suspect_for: Duration) -> Directory {
        Directory {
            channels: Mutex::default(),
            serving: RwLock::default(),
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
        self.serving
            .read()
            .map(|serving| serving.contains(address))
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
                let up = match channel {
                    Ok(channel) => check(channel, timeout).await,
                    Err(_) => false,
                };
                (address, up)
            });
        }
        let mut results = Vec::with_capacity(servers.len());
        while let Some(joined) = checks.join_next().await {
            if let Ok(result) = joined {
                results.push(result);
            }
        }
        if let Ok(mut serving) = self.serving.write() {
            for (address, up) in results {
                let was = serving.contains(&address);
                if up && !was {
                    tracing::info!(server = %address, "server SERVING");
                    serving.insert(address);
                } else if !up && was {
                    tracing::warn!(server = %address, "server not serving");
                    serving.remove(&address);
                }
            }
        }
        // Channels of servers that left the topology are dropped.
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

async fn check(channel: Channel, timeout: Duration) -> bool {
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: CELL_SERVICE.to_owned(),
    };
    match tokio::time::timeout(timeout, client.check(request)).await {
        Ok(Ok(response)) => response.into_inner().status() == ServingStatus::Serving,
        _ => false,
    }
}

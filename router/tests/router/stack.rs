//! A whole local deployment for router tests: north n1-n3 and south s1-s2, each
//! cell with its own order DB and `servers_per_cell` logic servers, one ledger,
//! and one router reading a topology file in a temp dir (so tests can rewrite it
//! and watch the reload). Clients authenticate with HS256 tokens.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use redcell_cell::{CellConfig, metrics::CellMetrics, reconcile};
use redcell_harness::{PgServer, TestDb};
use redcell_payments::PgLedger;
use redcell_proto::v1::{self as pb, red_envelope_client::RedEnvelopeClient};
use redcell_proto::{internal::REGION_METADATA, token::mint_hs256};
use redcell_router::{
    RouterConfig, RouterHandle,
    auth::{Authenticator, VerifierKey},
};
use redcell_topology::Topology;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub const HS_KEY: &[u8] = b"redcell-test-hs256-key-0123456789abcdef";
pub const INTERNAL_TOKEN: &str = "internal-test-token-0123456789";
pub const ORDERS_TEMPLATE: &str = "router_orders";
pub const LEDGER_TEMPLATE: &str = "router_ledger";

/// (name, region, ranges) of the five cells.
pub const CELLS: [(&str, &str, &str); 5] = [
    ("n1", "north", "000-332"),
    ("n2", "north", "333-665"),
    ("n3", "north", "666-999"),
    ("s1", "south", "000-499"),
    ("s2", "south", "500-999"),
];

#[derive(Clone)]
pub struct Builder {
    pub servers_per_cell: usize,
    /// Cells whose order DB runs on a PostgreSQL of their own (to crash it).
    pub own_database: Vec<&'static str>,
    pub rate_per_user: u32,
    pub rate_burst: u32,
    pub max_in_flight: usize,
    /// The router's budget per call (`--cell-timeout-ms`).
    pub cell_timeout: Duration,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            servers_per_cell: 1,
            own_database: Vec::new(),
            rate_per_user: 10_000,
            rate_burst: 10_000,
            max_in_flight: 10_000,
            // Generous: tests share two cores with many servers; they assert
            // routing and money, not latency.
            cell_timeout: Duration::from_secs(10),
        }
    }
}

/// One logic server, on a tokio runtime of its own: killing it shuts that
/// runtime down, which drops every task of the server, its open connections
/// included, like the death of its process. (Aborting only the task of
/// `run` would leave the connections' tasks serving on the test's runtime.)
pub struct CellServer {
    pub address: SocketAddr,
    pub metrics: Arc<CellMetrics>,
    runtime: Option<tokio::runtime::Runtime>,
}

pub struct CellNode {
    pub name: &'static str,
    pub orders: TestDb,
    /// The cell's own PostgreSQL, when it has one.
    pub database_server: Option<PgServer>,
    pub servers: Vec<CellServer>,
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub topology_path: PathBuf,
    pub topology_text: String,
    pub ledger_db: TestDb,
    pub ledger: PgLedger,
    pub cells: Vec<CellNode>,
    pub router: RouterHandle,
    pub router_address: SocketAddr,
    router_stop: Option<oneshot::Sender<()>>,
    router_task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    pub deposits: i64,
}

/// Adds a bearer token (and optionally a region) to every call.
#[derive(Clone)]
pub struct Credentials {
    authorization: Option<AsciiMetadataValue>,
    region: Option<AsciiMetadataValue>,
    traceparent: Option<AsciiMetadataValue>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(value) = &self.region {
            request
                .metadata_mut()
                .insert(REGION_METADATA, value.clone());
        }
        if let Some(value) = &self.traceparent {
            request.metadata_mut().insert("traceparent", value.clone());
        }
        Ok(request)
    }
}

pub type Client = RedEnvelopeClient<InterceptedService<Channel, Credentials>>;

async fn templates(server: &PgServer) {
    let orders = redcell_migrations::script(redcell_migrations::ORDER_DB);
    let ledger = redcell_migrations::script(redcell_migrations::LEDGER);
    server
        .ensure_template(ORDERS_TEMPLATE, &[&orders])
        .await
        .unwrap();
    server
        .ensure_template(LEDGER_TEMPLATE, &[&ledger])
        .await
        .unwrap();
}

pub fn topology_text(
    cells: &[(&str, &str, Vec<SocketAddr>, String)],
    statuses: &[(&str, &str)],
    overrides: &str,
    degrade: &str,
) -> String {
    let mut text = String::from("version: 1\nregions: [north, south]\ncells:\n");
    for (name, region, servers, dsn) in cells {
        let status = statuses
            .iter()
            .find(|(cell, _)| cell == name)
            .map_or("active", |(_, status)| status);
        let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        text.push_str(&format!(
            "  - name: {name}\n    region: {region}\n    status: {status}\n    servers: [{}]\n    db: \"{dsn}\"\n",
            servers.join(", ")
        ));
    }
    let range = |name: &str| {
        CELLS
            .iter()
            .find(|(cell, _, _)| *cell == name)
            .map(|(_, _, r)| *r)
            .unwrap_or("")
    };
    text.push_str(&format!(
        "epochs:\n  - id: 0\n    ranges:\n      north: {{ n1: \"{}\", n2: \"{}\", n3: \"{}\" }}\n      south: {{ s1: \"{}\", s2: \"{}\" }}\n",
        range("n1"), range("n2"), range("n3"), range("s1"), range("s2")
    ));
    text.push_str(&format!(
        "minting:\n  epoch: 0\n  region_override: {overrides}\ndegrade: {degrade}\n"
    ));
    text
}

impl Builder {
    pub async fn start(self) -> Stack {
        let shared = redcell_harness::shared().await.unwrap();
        templates(shared).await;
        let ledger_db = shared.clone_database(LEDGER_TEMPLATE).await.unwrap();
        let ledger = PgLedger::connect(&ledger_db.dsn, 8).unwrap();

        let mut listeners = Vec::new();
        let mut layout = Vec::new();
        let mut databases = Vec::new();
        for (name, region, _) in CELLS {
            let (orders, own) = if self.own_database.contains(&name) {
                let server = PgServer::start().await.unwrap();
                templates(&server).await;
                (
                    server.clone_database(ORDERS_TEMPLATE).await.unwrap(),
                    Some(server),
                )
            } else {
                (shared.clone_database(ORDERS_TEMPLATE).await.unwrap(), None)
            };
            let mut cell_listeners = Vec::new();
            for _ in 0..self.servers_per_cell {
                cell_listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
            }
            let addresses: Vec<SocketAddr> = cell_listeners
                .iter()
                .map(|l| l.local_addr().unwrap())
                .collect();
            layout.push((name, region, addresses, orders.dsn.clone()));
            listeners.push(cell_listeners);
            databases.push((orders, own));
        }
        let topology_text = topology_text(&layout, &[], "{}", "{}");
        let dir = tempfile::tempdir().unwrap();
        let topology_path = dir.path().join("cells.yaml");
        std::fs::write(&topology_path, &topology_text).unwrap();
        let topology = Arc::new(Topology::parse(&topology_text).unwrap());

        let mut cells = Vec::new();
        for (((name, _, _), cell_listeners), (orders, own)) in
            CELLS.iter().zip(listeners).zip(databases)
        {
            let mut servers = Vec::new();
            for listener in cell_listeners {
                servers.push(spawn_cell_server(name, &topology, listener, &ledger_db.dsn));
            }
            cells.push(CellNode {
                name,
                orders,
                database_server: own,
                servers,
            });
        }

        let router_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router_address = router_listener.local_addr().unwrap();
        let north = topology.region_digit("north").unwrap();
        let auth = Authenticator::new(VerifierKey::Hs256(HS_KEY.to_vec())).unwrap();
        let mut config = RouterConfig::new(
            topology_path.clone(),
            (*topology).clone(),
            north,
            auth,
            INTERNAL_TOKEN.to_owned(),
        );
        config.health_interval = Duration::from_millis(100);
        config.reload_interval = Duration::from_millis(100);
        config.cell_timeout = self.cell_timeout;
        config.rate_per_user = std::num::NonZeroU32::new(self.rate_per_user).unwrap();
        config.rate_burst = std::num::NonZeroU32::new(self.rate_burst).unwrap();
        config.max_in_flight = self.max_in_flight;
        let (stop, stopped) = oneshot::channel::<()>();
        let (router, serve) = redcell_router::start(router_listener, config, async {
            let _ = stopped.await;
        });
        let router_task = tokio::spawn(serve);
        let stack = Stack {
            dir,
            topology_path,
            topology_text,
            ledger_db,
            ledger,
            cells,
            router,
            router_address,
            router_stop: Some(stop),
            router_task: Some(router_task),
            deposits: 0,
        };
        stack.wait_until_all_serving().await;
        stack
    }
}

fn spawn_cell_server(
    name: &str,
    topology: &Arc<Topology>,
    listener: TcpListener,
    ledger_dsn: &str,
) -> CellServer {
    let address = listener.local_addr().unwrap();
    let mut config = CellConfig::new(name, topology.clone()).unwrap();
    config.internal_token = Some(INTERNAL_TOKEN.to_owned());
    config.workers.interval = Duration::from_millis(50);
    config.workers.health_interval = Duration::from_millis(100);
    config.workers.recovery_grace = Duration::from_secs(1);
    let metrics = config.metrics.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("cell-{name}-{}", address.port()))
        .enable_all()
        .build()
        .unwrap();
    // The listener moves to the server's runtime (sockets belong to the
    // reactor that registered them), and so does the ledger's pool.
    let listener = listener.into_std().unwrap();
    let ledger = PgLedger::connect(ledger_dsn, 8).unwrap();
    runtime.spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        redcell_cell::run(listener, config, ledger, std::future::pending()).await
    });
    CellServer {
        address,
        metrics,
        runtime: Some(runtime),
    }
}

impl Stack {
    pub fn cell(&self, name: &str) -> &CellNode {
        self.cells.iter().find(|cell| cell.name == name).unwrap()
    }

    pub fn cell_mut(&mut self, name: &str) -> &mut CellNode {
        self.cells
            .iter_mut()
            .find(|cell| cell.name == name)
            .unwrap()
    }

    /// Waits until the router sees every logic server SERVING.
    pub async fn wait_until_all_serving(&self) {
        for attempt in 0.. {
            let all = self
                .cells
                .iter()
                .flat_map(|cell| cell.servers.iter())
                .all(|server| {
                    self.router
                        .directory
                        .is_serving(&server.address.to_string())
                });
            if all {
                return;
            }
            assert!(attempt < 300, "servers never became SERVING for the router");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of the router authenticated as `user`.
    pub fn client(&self, user: &str) -> Client {
        let token = mint_hs256(HS_KEY, user, 3600).unwrap();
        self.client_with(Some(&format!("Bearer {token}")), None)
    }

    /// A client sending from `region` (the `x-redcell-region` metadata).
    pub fn client_in(&self, user: &str, region: &str) -> Client {
        let token = mint_hs256(HS_KEY, user, 3600).unwrap();
        self.client_with(Some(&format!("Bearer {token}")), Some(region))
    }

    /// A client with exactly this `authorization` value (or none).
    pub fn client_with(&self, authorization: Option<&str>, region: Option<&str>) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.router_address))
            .unwrap()
            .connect_lazy();
        let credentials = Credentials {
            authorization: authorization.map(|value| value.parse().unwrap()),
            region: region.map(|value| value.parse().unwrap()),
            traceparent: None,
        };
        RedEnvelopeClient::with_interceptor(channel, credentials)
    }

    /// A client that also sends a W3C `traceparent`.
    pub fn client_traced(&self, user: &str, traceparent: &str) -> Client {
        let token = mint_hs256(HS_KEY, user, 3600).unwrap();
        let channel = Channel::from_shared(format!("http://{}", self.router_address))
            .unwrap()
            .connect_lazy();
        let credentials = Credentials {
            authorization: Some(format!("Bearer {token}").parse().unwrap()),
            region: None,
            traceparent: Some(traceparent.parse().unwrap()),
        };
        RedEnvelopeClient::with_interceptor(channel, credentials)
    }

    pub async fn fund(&mut self, user: &str, cents: i64) {
        let key = format!("deposit:{user}:{}", self.deposits);
        self.ledger.deposit(&key, user, cents).await.unwrap();
        self.deposits += cents;
    }

    /// Funds `sender` and sends one LUCKY envelope through the router.
    pub async fn send(&mut self, sender: &str, key: &str, total: i64, count: u32) -> pb::Envelope {
        self.fund(sender, total).await;
        let request = pb::SendRequest {
            total_cents: total,
            count,
            kind: pb::EnvelopeKind::Lucky.into(),
            greeting: "新年快乐".into(),
            recipients: Vec::new(),
            idempotency_key: key.into(),
        };
        self.client(sender)
            .send(request)
            .await
            .unwrap()
            .into_inner()
            .envelope
            .unwrap()
    }

    /// The cell an envelope ID routes to.
    pub fn cell_of(&self, envelope_id: &str) -> String {
        let topology = self.router.topology.load();
        topology
            .route(&envelope_id.parse().unwrap())
            .unwrap()
            .name
            .clone()
    }

    /// Rewrites the topology file (the router reloads it) and waits for the swap.
    pub async fn rewrite_topology(&mut self, text: &str) {
        let before = self.router.topology.reloads();
        std::fs::write(&self.topology_path, text).unwrap();
        for attempt in 0.. {
            if self.router.topology.reloads() > before {
                self.topology_text = text.to_owned();
                return;
            }
            assert!(attempt < 200, "the router never reloaded the topology");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The current layout, to build edited topology texts.
    pub fn layout(&self) -> Vec<(&'static str, &'static str, Vec<SocketAddr>, String)> {
        CELLS
            .iter()
            .map(|(name, region, _)| {
                let cell = self.cell(name);
                (
                    *name,
                    *region,
                    cell.servers.iter().map(|s| s.address).collect(),
                    cell.orders.dsn.clone(),
                )
            })
            .collect()
    }

    /// Abruptly kills logic server `index` of `cell`: its runtime is shut
    /// down, so every task of it (connections included) is dropped, with no
    /// drain. Returns once they are gone.
    pub async fn kill_cell_server(&mut self, cell: &str, index: usize) {
        let server = &mut self.cell_mut(cell).servers[index];
        if let Some(runtime) = server.runtime.take() {
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(10)))
                .await
                .unwrap();
        }
    }

    /// Waits until every cell's settlement outbox is empty.
    pub async fn drain_settlement(&self) {
        for cell in &self.cells {
            let client = cell.orders.connect().await.unwrap();
            for attempt in 0.. {
                let pending: i64 = client
                    .query_one("SELECT count(*) FROM transfers WHERE status = 1", &[])
                    .await
                    .unwrap()
                    .get(0);
                if pending == 0 {
                    break;
                }
                assert!(attempt < 600, "cell {} did not settle", cell.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// DESIGN §5 over the whole deployment, after settlement drained: every
    /// cell reconciles with zero discrepancies, and the ledger's balances plus
    /// the money held in all cells equal what was deposited.
    pub async fn check_money(&self) {
        self.drain_settlement().await;
        let mut clients = Vec::new();
        for cell in &self.cells {
            clients.push((cell.name, cell.orders.connect().await.unwrap()));
        }
        let cells = clients
            .iter_mut()
            .map(|(cell, orders)| reconcile::CellOrders { cell, orders });
        let topology = self.router.topology.load();
        let report = reconcile::check_fleet(cells, &self.ledger, &topology)
            .await
            .unwrap();
        assert!(
            report.discrepancies.is_empty(),
            "{:#?}",
            report.discrepancies
        );
        let (held, balance) = (report.held_cents, report.ledger_balance_cents);
        assert_eq!(
            balance + held,
            self.deposits,
            "conservation: balances {balance} + held {held}"
        );
    }

    /// Envelopes per cell (by each cell's order DB).
    pub async fn envelopes_per_cell(&self) -> Vec<(&'static str, i64)> {
        let mut counts = Vec::new();
        for cell in &self.cells {
            let client = cell.orders.connect().await.unwrap();
            let count: i64 = client
                .query_one("SELECT count(*) FROM envelopes", &[])
                .await
                .unwrap()
                .get(0);
            counts.push((cell.name, count));
        }
        counts
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(stop) = self.router_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.router_task.take() {
            task.abort();
        }
        for cell in &mut self.cells {
            for server in &mut cell.servers {
                if let Some(runtime) = server.runtime.take() {
                    runtime.shutdown_background();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers for router/failures.rs (cell, server and DB failures; topology
// reloads). Added as a separate block; nothing above depends on it.
// ---------------------------------------------------------------------------

/// How long (in polls of [`POLL`]) the failure tests wait for a condition.
pub const POLL_ATTEMPTS: u32 = 600;
pub const POLL: Duration = Duration::from_millis(50);

/// A LUCKY Send request.
pub fn lucky(total: i64, count: u32, key: &str) -> pb::SendRequest {
    pb::SendRequest {
        total_cents: total,
        count,
        kind: pb::EnvelopeKind::Lucky.into(),
        greeting: String::new(),
        recipients: Vec::new(),
        idempotency_key: key.into(),
    }
}

impl Stack {
    /// Writes the topology file atomically (a temp file renamed over it), as
    /// `cellctl` does, without waiting for the router.
    pub fn write_topology_file(&self, text: &str) {
        let temp = self.dir.path().join("cells.yaml.tmp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &self.topology_path).unwrap();
    }

    /// Whether the router would mint new envelopes in `cell` now.
    pub fn usable_for_new(&self, cell: &str) -> bool {
        self.router
            .directory
            .usable_for_new(&self.router.topology.load(), cell)
    }

    /// The envelope IDs in `cell`'s order DB.
    pub async fn envelope_ids_in(&self, cell: &str) -> Vec<String> {
        let client = self.cell(cell).orders.connect().await.unwrap();
        client
            .query("SELECT id FROM envelopes ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Funds and sends LUCKY envelopes from fresh senders `{prefix}-{n}` until
    /// one lands in `cell`.
    pub async fn send_until_in(
        &mut self,
        cell: &str,
        prefix: &str,
        total: i64,
        count: u32,
    ) -> pb::Envelope {
        for attempt in 0..200 {
            let sender = format!("{prefix}-{attempt}");
            let envelope = self.send(&sender, "k", total, count).await;
            if self.cell_of(&envelope.id) == cell {
                return envelope;
            }
        }
        panic!("no envelope landed in {cell} after 200 sends");
    }

    /// Opens `envelope_id` as `user` through the router.
    pub async fn open_as(&self, user: &str, envelope_id: &str) -> Result<pb::OpenResponse, Status> {
        self.client(user)
            .open(pb::OpenRequest {
                envelope_id: envelope_id.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Per-server `envelope_requests` of `cell`, in server order.
    pub fn envelope_requests(&self, cell: &str) -> Vec<u64> {
        self.cell(cell)
            .servers
            .iter()
            .map(|server| server.metrics.envelope_requests())
            .collect()
    }

    /// The router's view of every cell now (for failure messages): which
    /// servers it sees SERVING, and whether the cell takes new envelopes.
    pub fn router_view(&self) -> String {
        let topology = self.router.topology.load();
        let mut view = Vec::new();
        for cell in &self.cells {
            let serving: Vec<bool> = cell
                .servers
                .iter()
                .map(|server| {
                    self.router
                        .directory
                        .is_serving(&server.address.to_string())
                })
                .collect();
            let usable = self.router.directory.usable_for_new(&topology, cell.name);
            view.push(format!(
                "{}: serving {serving:?} usable_for_new {usable}",
                cell.name
            ));
        }
        view.join("; ")
    }

    /// Records, until dropped, every change of the router's view of which
    /// servers are SERVING (sampled every 10 ms), to explain failures.
    pub fn record_health(&self) -> HealthLog {
        let directory = self.router.directory.clone();
        let servers: Vec<(&'static str, String)> = self
            .cells
            .iter()
            .flat_map(|cell| {
                cell.servers
                    .iter()
                    .map(|server| (cell.name, server.address.to_string()))
            })
            .collect();
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let events = events.clone();
            async move {
                let started = tokio::time::Instant::now();
                let mut last: Vec<bool> = servers.iter().map(|_| true).collect();
                loop {
                    for ((cell, address), was) in servers.iter().zip(last.iter_mut()) {
                        let now = directory.is_serving(address);
                        if now != *was {
                            events.lock().unwrap().push(format!(
                                "+{:?} {cell} {address} {}",
                                started.elapsed(),
                                if now { "SERVING" } else { "not serving" }
                            ));
                            *was = now;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        HealthLog { events, task }
    }
}

/// Changes of the router's health view, recorded by [`Stack::record_health`].
pub struct HealthLog {
    events: Arc<std::sync::Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl HealthLog {
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for HealthLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Helpers for router/failover.rs (a logic server that stalls or dies with
// calls in flight).
// ---------------------------------------------------------------------------

/// A stalled logic server: see [`Stack::stall_cell_server`]. Dropping it
/// resumes the server.
pub struct Stall {
    resume: Option<std::sync::mpsc::Sender<()>>,
}

impl Stall {
    pub fn resume(mut self) {
        self.resume.take();
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.resume.take();
    }
}

impl Stack {
    /// Stalls logic server `index` of `cell` as SIGSTOP would: a task blocks
    /// the only worker thread of the server's runtime until the returned
    /// [`Stall`] is resumed, so nothing of the server runs (no handler, no
    /// HTTP/2 frame read, no health check answered) while the kernel still
    /// accepts its connections and buffers what peers send. Returns once the
    /// worker is blocked.
    pub async fn stall_cell_server(&self, cell: &str, index: usize) -> Stall {
        let server = &self.cell(cell).servers[index];
        let runtime = server.runtime.as_ref().expect("the server is alive");
        let (stalled, blocked) = oneshot::channel::<()>();
        let (resume, resumed) = std::sync::mpsc::channel::<()>();
        runtime.spawn(async move {
            let _ = stalled.send(());
            // Blocks the worker thread itself: a stall, not an await.
            let _ = resumed.recv();
        });
        blocked.await.unwrap();
        Stall {
            resume: Some(resume),
        }
    }

    /// Kills a stalled logic server: its runtime is told to shut down while
    /// the server is still stalled, then the stall ends, so the server's
    /// tasks (its connections, with every call in flight on them) are dropped
    /// without running again, like a process killed while stopped.
    pub async fn kill_stalled_cell_server(&mut self, cell: &str, index: usize, stall: Stall) {
        let server = &mut self.cell_mut(cell).servers[index];
        let runtime = server.runtime.take().expect("the server is alive");
        runtime.shutdown_background();
        stall.resume();
        // The listener is gone once its task is dropped: connections are
        // refused from then on.
        let address = server.address;
        for attempt in 0.. {
            if tokio::net::TcpStream::connect(address).await.is_err() {
                return;
            }
            assert!(attempt < 600, "the killed server {address} still accepts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

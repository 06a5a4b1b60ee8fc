//! A cell stack for tests: an order DB and a ledger DB cloned from migrated
//! templates on the shared PostgreSQL, a topology naming this cell's servers on
//! real ports, N in-process logic servers (`redcell_cell::run`), gRPC clients
//! acting as users, and the money check every money test ends with.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use redcell_cell::{CellConfig, OpenStrategy, reconcile};
use redcell_harness::TestDb;
use redcell_payments::PgLedger;
use redcell_proto::internal::AsUser;
use redcell_proto::v1::{self as pb, red_envelope_client::RedEnvelopeClient};
use redcell_topology::Topology;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub const ORDERS_TEMPLATE: &str = "cell_orders";
pub const LEDGER_TEMPLATE: &str = "cell_ledger";

/// The internal credential this test deployment's cells require (as `cell`
/// does in production), presented by every test client.
pub const INTERNAL_TOKEN: &str = "cell-test-internal-token-0123456789";

/// A client identity as a router presents it: user + internal credential.
pub fn as_user(user: &str) -> AsUser {
    AsUser::new(user)
        .unwrap()
        .with_internal(INTERNAL_TOKEN)
        .unwrap()
}

pub type Client = RedEnvelopeClient<InterceptedService<Channel, AsUser>>;

/// The ledger keys of an envelope (by its ID's text), as the cell writes
/// them: tests name keys through `LedgerKey`, never by hand.
pub fn send_key(id: &str) -> String {
    redcell_payments::LedgerKey::Send(id.parse().unwrap()).to_string()
}

pub fn claim_key(id: &str, sequence: u32) -> String {
    redcell_payments::LedgerKey::Claim {
        envelope: id.parse().unwrap(),
        sequence,
    }
    .to_string()
}

pub fn refund_key(id: &str) -> String {
    redcell_payments::LedgerKey::Refund(id.parse().unwrap()).to_string()
}

/// The prefix of every Send's debit key, for counting them in the ledger.
pub const SEND_KEYS: &str = redcell_payments::KeyKind::Send.prefix();

/// Test knobs; defaults are the product's, with fast workers.
#[derive(Clone)]
pub struct StackBuilder {
    pub servers: usize,
    pub ttl: Duration,
    pub strategy: OpenStrategy,
    pub worker_interval: Duration,
    pub recovery_grace: Duration,
    pub queue_cap: usize,
}

impl Default for StackBuilder {
    fn default() -> StackBuilder {
        StackBuilder {
            servers: 1,
            ttl: Duration::from_secs(3600),
            strategy: OpenStrategy::Lane,
            worker_interval: Duration::from_millis(50),
            recovery_grace: Duration::from_secs(1),
            queue_cap: 4096,
        }
    }
}

struct Server {
    address: SocketAddr,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), redcell_cell::RunError>>>,
}

pub struct Stack {
    pub orders: TestDb,
    pub ledger_db: TestDb,
    pub ledger: PgLedger,
    pub topology: Arc<Topology>,
    pub topology_text: String,
    pub config: CellConfig,
    servers: Vec<Server>,
    /// Everything deposited into the ledger by this test: the conserved sum.
    pub deposits: i64,
}

pub async fn databases() -> (TestDb, TestDb) {
    let server = redcell_harness::shared().await.unwrap();
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
    (
        server.clone_database(ORDERS_TEMPLATE).await.unwrap(),
        server.clone_database(LEDGER_TEMPLATE).await.unwrap(),
    )
}

/// A topology: north n1 (this cell, suffixes 000-499) and n2 (500-999, never
/// started), south s1. `servers` are n1's addresses.
pub fn topology_text(servers: &[SocketAddr], orders_dsn: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|address| format!("\"{address}\""))
        .collect();
    format!(
        r#"version: 1
regions: [north, south]
cells:
  - name: n1
    region: north
    status: active
    servers: [{servers}]
    db: "{orders_dsn}"
  - name: n2
    region: north
    status: active
    servers: ["127.0.0.1:9"]
    db: "postgres://redcell@127.0.0.1:9/cell_n2"
  - name: s1
    region: south
    status: active
    servers: ["127.0.0.1:10"]
    db: "postgres://redcell@127.0.0.1:10/cell_s1"
epochs:
  - id: 0
    ranges:
      north: {{ n1: "000-499", n2: "500-999" }}
      south: {{ s1: "000-999" }}
minting:
  epoch: 0
"#,
        servers = servers.join(", ")
    )
}

impl StackBuilder {
    pub async fn start(self) -> Stack {
        let (orders, ledger_db) = databases().await;
        let mut listeners = Vec::new();
        for _ in 0..self.servers {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addresses: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let topology_text = topology_text(&addresses, &orders.dsn);
        let topology = Arc::new(Topology::parse(&topology_text).unwrap());
        let mut config = CellConfig::new("n1", topology.clone()).unwrap();
        config.internal_token = Some(INTERNAL_TOKEN.to_owned());
        config.envelope_ttl = self.ttl;
        config.open_strategy = self.strategy;
        config.workers.interval = self.worker_interval;
        config.workers.recovery_grace = self.recovery_grace;
        config.workers.health_interval = Duration::from_millis(100);
        config.lanes.queue_cap = self.queue_cap;
        let ledger = PgLedger::connect(&ledger_db.dsn, 8).unwrap();
        let mut stack = Stack {
            orders,
            ledger_db,
            ledger,
            topology,
            topology_text,
            config,
            servers: Vec::new(),
            deposits: 0,
        };
        for listener in listeners {
            let server = stack.spawn_server(listener).await;
            stack.servers.push(server);
        }
        stack
    }
}

impl Stack {
    async fn spawn_server(&self, listener: TcpListener) -> Server {
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(redcell_cell::run(
            listener,
            self.config.clone(),
            self.ledger.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        Server {
            address,
            channel,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn address(&self, server: usize) -> SocketAddr {
        self.servers[server].address
    }

    /// A client of logic server `server` acting as `user`.
    pub fn client(&self, server: usize, user: &str) -> Client {
        RedEnvelopeClient::with_interceptor(self.servers[server].channel.clone(), as_user(user))
    }

    /// Deposits `cents` for `user` in the ledger (tracked for conservation).
    pub async fn fund(&mut self, user: &str, cents: i64) {
        let key = redcell_payments::deposit_key(user, self.deposits);
        self.ledger.deposit(&key, user, cents).await.unwrap();
        self.deposits += cents;
    }

    /// Funds `sender` and sends an envelope through server 0.
    pub async fn send(
        &mut self,
        sender: &str,
        kind: pb::EnvelopeKind,
        total: i64,
        count: u32,
    ) -> pb::Envelope {
        self.fund(sender, total).await;
        let request = pb::SendRequest {
            total_cents: total,
            count,
            kind: kind.into(),
            greeting: "恭喜发财".into(),
            recipients: Vec::new(),
            idempotency_key: format!("key-{sender}-{total}-{count}"),
        };
        let response = self
            .client(0, sender)
            .send(request)
            .await
            .unwrap()
            .into_inner();
        let envelope = response.envelope.unwrap();
        assert_eq!(envelope.status(), pb::EnvelopeStatus::Active);
        envelope
    }

    /// Graceful stop of server `server` (returns once it drained).
    pub async fn stop_server(&mut self, server: usize) {
        let handle = &mut self.servers[server];
        if let Some(stop) = handle.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = handle.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Waits until the settlement worker has credited every transfer.
    pub async fn drain_settlement(&self) {
        let client = self.orders.connect().await.unwrap();
        for _ in 0..600 {
            let pending: i64 = client
                .query_one("SELECT count(*) FROM transfers WHERE status = 1", &[])
                .await
                .unwrap()
                .get(0);
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("settlement did not drain in 30 s");
    }

    /// The money invariants of DESIGN.md §5: zero discrepancies and
    /// `sum(balances) + money held in the cell == deposits`, from consistent
    /// snapshots (valid while workers run).
    pub async fn check_money(&self) -> reconcile::Report {
        let mut client = self.orders.connect().await.unwrap();
        let report =
            reconcile::check_cell(&mut client, &self.ledger, &self.topology, &self.config.cell)
                .await
                .unwrap();
        assert!(
            report.discrepancies.is_empty(),
            "discrepancies: {:#?}",
            report.discrepancies
        );
        let balances = report.ledger_balance_cents;
        assert_eq!(
            balances + report.held_cents,
            self.deposits,
            "conservation: balances {balances} + held {} != deposits {}",
            report.held_cents,
            self.deposits
        );
        report
    }

    /// Shares of an envelope as stored: (user, amount), by sequence.
    pub async fn claims(&self, envelope_id: &str) -> Vec<(String, i64)> {
        let client = self.orders.connect().await.unwrap();
        client
            .query(
                "SELECT user_id, amount_cents FROM claims WHERE envelope_id = $1 ORDER BY seq",
                &[&envelope_id],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(stop) = server.stop.take() {
                let _ = stop.send(());
            }
            if let Some(task) = server.task.take() {
                task.abort();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Additions for process.rs and bad_input.rs (new items only; nothing above
// changes behaviour).

/// Row counts of every order-DB table a request may write, and the ledger's
/// books: equal before and after a request that must write nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub envelopes: i64,
    pub claims: i64,
    pub transfers: i64,
    pub send_requests: i64,
    pub id_blocks: i64,
    pub ledger_total_balance: i64,
    pub ledger_entries: i64,
}

impl StackBuilder {
    /// Like [`StackBuilder::start`], on databases the caller made (e.g. an
    /// order DB on a PostgreSQL server of the test's own, to stop and crash).
    pub async fn start_on(self, orders: TestDb, ledger_db: TestDb) -> Stack {
        let mut listeners = Vec::new();
        for _ in 0..self.servers {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addresses: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut stack = self.assemble(orders, ledger_db, &addresses);
        for listener in listeners {
            let server = stack.spawn_server(listener).await;
            stack.servers.push(server);
        }
        stack
    }

    /// Databases, topology (n1's servers at `addresses`), config and ledger for
    /// logic servers that run outside this process (the `cell` binary). No
    /// in-process server: reach them with [`Stack::client_on`].
    pub async fn start_external(self, addresses: &[SocketAddr]) -> Stack {
        let (orders, ledger_db) = databases().await;
        self.assemble(orders, ledger_db, addresses)
    }

    /// [`StackBuilder::start_external`] on databases the caller made (an
    /// order DB on a PostgreSQL server of the test's own, to stop).
    pub fn start_external_on(
        self,
        orders: TestDb,
        ledger_db: TestDb,
        addresses: &[SocketAddr],
    ) -> Stack {
        self.assemble(orders, ledger_db, addresses)
    }

    /// The stack `start` builds, with the same knobs, before any server runs.
    fn assemble(&self, orders: TestDb, ledger_db: TestDb, addresses: &[SocketAddr]) -> Stack {
        let topology_text = topology_text(addresses, &orders.dsn);
        let topology = Arc::new(Topology::parse(&topology_text).unwrap());
        let mut config = CellConfig::new("n1", topology.clone()).unwrap();
        config.internal_token = Some(INTERNAL_TOKEN.to_owned());
        config.envelope_ttl = self.ttl;
        config.open_strategy = self.strategy;
        config.workers.interval = self.worker_interval;
        config.workers.recovery_grace = self.recovery_grace;
        config.workers.health_interval = Duration::from_millis(100);
        config.lanes.queue_cap = self.queue_cap;
        let ledger = PgLedger::connect(&ledger_db.dsn, 8).unwrap();
        Stack {
            orders,
            ledger_db,
            ledger,
            topology,
            topology_text,
            config,
            servers: Vec::new(),
            deposits: 0,
        }
    }
}

impl Stack {
    /// A lazy channel to the logic server at `address` (in this process or
    /// not); it reconnects on its own after the server comes back.
    pub fn channel_to(address: SocketAddr) -> Channel {
        Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy()
    }

    /// A client on `channel` acting as `user`.
    pub fn client_on(channel: &Channel, user: &str) -> Client {
        RedEnvelopeClient::with_interceptor(channel.clone(), as_user(user))
    }

    /// Row counts of the order DB's tables and the ledger's total balance and
    /// entry count.
    pub async fn snapshot(&self) -> Snapshot {
        let client = self.orders.connect().await.unwrap();
        let count = |table: &'static str| {
            let client = &client;
            async move {
                client
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
            }
        };
        Snapshot {
            envelopes: count("envelopes").await,
            claims: count("claims").await,
            transfers: count("transfers").await,
            send_requests: count("send_requests").await,
            id_blocks: count("id_blocks").await,
            ledger_total_balance: self.ledger.total_balance().await.unwrap(),
            ledger_entries: self.ledger.entries_count_by_prefix("").await.unwrap(),
        }
    }
}

// ---------------------------------------------------------------------------
// Additions for money.rs (new items only; nothing above changes behaviour):
// logic servers running on a `Payments` of the test's choice (fault injection).

impl StackBuilder {
    /// Like [`StackBuilder::start`], but every logic server talks to the
    /// payment system `payments(ledger)` builds around the stack's ledger (a
    /// fault-injecting wrapper, say). `Stack::ledger` stays the plain ledger,
    /// so the money checks see the real books.
    pub async fn start_with<P, F>(self, payments: F) -> Stack
    where
        P: redcell_payments::Payments + Clone,
        F: FnOnce(PgLedger) -> P,
    {
        let (orders, ledger_db) = databases().await;
        let mut listeners = Vec::new();
        for _ in 0..self.servers {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addresses: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut stack = self.assemble(orders, ledger_db, &addresses);
        let payments = payments(stack.ledger.clone());
        for listener in listeners {
            let server = stack.spawn_server_with(listener, payments.clone()).await;
            stack.servers.push(server);
        }
        stack
    }
}

impl Stack {
    /// [`Stack::spawn_server`] with a payment system of the caller's choice.
    async fn spawn_server_with<P: redcell_payments::Payments>(
        &self,
        listener: TcpListener,
        payments: P,
    ) -> Server {
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(redcell_cell::run(
            listener,
            self.config.clone(),
            payments,
            async {
                let _ = stopped.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        Server {
            address,
            channel,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

// ---------------------------------------------------------------------------
// Calls as a client makes them (shared by money.rs and reconcile.rs).

/// The codes a client retries (DESIGN §4): a full lane queue, an unavailable
/// cell or database.
pub fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
    )
}

/// One Open as a client does it: the retryable codes are retried (bounded,
/// 10 ms apart); any share status is an answer (an expired envelope answers
/// EXPIRED).
pub async fn open_retrying(client: &mut Client, envelope: &str) -> pb::OpenResponse {
    for _ in 0..1000 {
        let request = pb::OpenRequest {
            envelope_id: envelope.to_owned(),
        };
        match client.open(request).await {
            Ok(response) => return response.into_inner(),
            Err(status) if retryable(&status) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(status) => panic!("Open of {envelope} failed: {status:?}"),
        }
    }
    panic!("Open of {envelope} stayed retryable for 1000 attempts");
}

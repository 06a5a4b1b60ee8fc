//! The client's view (DESIGN.md §10): Sends and Opens through a router in
//! front of several cells, per open strategy of the cells.
//!
//! A deployment per strategy, in this process on real sockets: `cells` cells
//! of region north (suffix ranges split evenly), each one logic server with
//! its own order DB, one ledger, and one router with HS256 bearer tokens. The
//! workload: `envelopes` senders send one LUCKY envelope each (the router
//! mints them over the cells), then every one of `users` users opens every
//! envelope. Each phase is timed on its own, every call's latency goes into
//! an HDR histogram, and the deployment is reconciled afterwards (DESIGN §5:
//! every cell, plus conservation over the ledger): a fast run that loses a
//! cent, or takes a share too many or too few, is a failed run.

use std::{sync::Arc, time::Duration};

use redcell_cell::{CellConfig, OpenStrategy, reconcile};
use redcell_payments::PgLedger;
use redcell_proto::token::{BearerToken, mint_hs256};
use redcell_proto::v1::{self as pb, red_envelope_client::RedEnvelopeClient};
use redcell_router::{
    RouterConfig,
    auth::{Authenticator, VerifierKey},
};
use redcell_topology::Topology;
use tokio::{net::TcpListener, task::JoinSet};
use tonic::{Status, service::interceptor::InterceptedService, transport::Channel};

use crate::{
    bench,
    phase::{Call, Phase, timed},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Cells behind the router (region north, one logic server each).
    #[arg(long, default_value_t = 4)]
    cells: u32,
    /// Envelopes sent, one per sender.
    #[arg(long, default_value_t = 256)]
    envelopes: u32,
    /// Shares per envelope.
    #[arg(long, default_value_t = 20)]
    shares: u32,
    /// Users opening every envelope (more than shares: the late ones get EXHAUSTED).
    #[arg(long, default_value_t = 40)]
    users: u32,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Order DB connections of each cell.
    #[arg(long, default_value_t = 8)]
    db_pool: usize,
    /// Which strategies the cells run (both by default, lane first).
    #[arg(long, value_enum)]
    strategy: Option<OpenStrategy>,
}

/// The deployment's credentials: the router's HS256 key and the cells'
/// internal token (cells serve routers only, as in production).
const HS256_KEY: &[u8] = b"loadgen-router-bench-hs256-key-0123456789";
const INTERNAL_TOKEN: &str = "loadgen-internal-token-0123456789";

struct Outcome {
    strategy: OpenStrategy,
    sends: Phase,
    opens: Phase,
    shares_taken: u64,
}

pub async fn run(args: Args) -> Result<(), String> {
    if args.cells == 0 || args.cells > 1000 {
        return Err(format!("--cells: must be 1 to 1000, got {}", args.cells));
    }
    let strategies = bench::strategies(args.strategy);
    let server = bench::postgres().await?;
    println!(
        "router: {} cells, {} envelopes x {} shares, {} users open each, concurrency {}, db pool {} per cell",
        args.cells, args.envelopes, args.shares, args.users, args.concurrency, args.db_pool
    );
    let mut outcomes = Vec::new();
    for strategy in strategies {
        outcomes.push(run_strategy(&args, strategy, server).await?);
    }
    let limit = crate::pg_limit::single_row_update_limit(server, args.db_pool).await?;
    println!();
    println!(
        "| strategy | sends | sends/s | send p50 ms | send p99 ms | opens | shares taken | errors | opens/s | open p50 ms | open p99 ms | open p999 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for outcome in &outcomes {
        let Outcome {
            strategy,
            sends,
            opens,
            shares_taken,
        } = outcome;
        println!(
            "| {strategy:?} | {} | {:.0} | {:.1} | {:.1} | {} | {shares_taken} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            sends.calls,
            sends.rate(),
            sends.latency.ms(0.5),
            sends.latency.ms(0.99),
            opens.calls,
            sends.errors + opens.errors,
            opens.rate(),
            opens.latency.ms(0.5),
            opens.latency.ms(0.99),
            opens.latency.ms(0.999),
        );
    }
    println!(
        "| pgbench: one hot row, `UPDATE .. SET v = v + 1`, {} clients | {limit:.0} tps |",
        args.db_pool
    );
    Ok(())
}

/// A deployment of `cells` north cells and a router, on real sockets.
struct Deployment {
    /// Kept until the end: the databases are dropped with them.
    _orders: Vec<redcell_harness::TestDb>,
    _ledger_db: redcell_harness::TestDb,
    /// The deployment's cells (names, order DBs), for the fleet reconcile.
    topology: Arc<Topology>,
    ledger: PgLedger,
    router: Channel,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    servers: JoinSet<Result<(), String>>,
    _dir: tempfile::TempDir,
}

impl Deployment {
    async fn start(
        args: &Args,
        strategy: OpenStrategy,
        server: &redcell_harness::PgServer,
    ) -> Result<Deployment, String> {
        let mut orders = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..args.cells {
            orders.push(
                server
                    .clone_database(bench::ORDERS_TEMPLATE)
                    .await
                    .map_err(|e| e.to_string())?,
            );
            listeners.push(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let ledger_db = server
            .clone_database(bench::LEDGER_TEMPLATE)
            .await
            .map_err(|e| e.to_string())?;
        let mut cells = Vec::new();
        for (index, (listener, db)) in listeners.iter().zip(&orders).enumerate() {
            let address = listener.local_addr().map_err(|e| e.to_string())?;
            cells.push((
                format!("n{}", index + 1),
                address.to_string(),
                db.dsn.clone(),
            ));
        }
        let text = topology_text(&cells);
        let topology = Topology::parse(&text).map_err(|errors| errors.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("cells.yaml");
        std::fs::write(&path, &text).map_err(|e| e.to_string())?;

        let shared = Arc::new(topology.clone());
        let mut stops = Vec::new();
        let mut servers = JoinSet::new();
        for ((name, _, _), listener) in cells.iter().zip(listeners) {
            let mut config = CellConfig::new(name, shared.clone())?;
            config.open_strategy = strategy;
            config.internal_token = Some(INTERNAL_TOKEN.to_owned());
            config.db_pool = args.db_pool;
            let ledger = PgLedger::connect(&ledger_db.dsn, 4).map_err(|e| e.to_string())?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            servers.spawn(async move {
                redcell_cell::run(listener, config, ledger, async {
                    let _ = stopped.await;
                })
                .await
                .map_err(|e| e.to_string())
            });
        }

        let north = topology
            .region_digit("north")
            .ok_or("the topology has no north")?;
        let auth = Authenticator::new(VerifierKey::Hs256(HS256_KEY.to_vec()))
            .map_err(|e| e.to_string())?;
        let mut config = RouterConfig::new(path, topology, north, auth, INTERNAL_TOKEN.to_owned());
        // The benchmark measures the service, not its flow control.
        config.rate_per_user = std::num::NonZeroU32::MAX;
        config.rate_burst = std::num::NonZeroU32::MAX;
        config.max_in_flight = args.concurrency.saturating_mul(4).max(1);
        config.cell_timeout = Duration::from_secs(30);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        let (handle, serve) = redcell_router::start(listener, config, async {
            let _ = stopped.await;
        });
        servers.spawn(async move { serve.await.map_err(|e| e.to_string()) });
        // Every cell in the mint pool before the clock starts.
        let current = handle.topology.load();
        for attempt in 0.. {
            let ready = cells
                .iter()
                .all(|(name, _, _)| handle.directory.usable_for_new(&current, name));
            if ready {
                break;
            }
            if attempt == 600 {
                return Err("the router never saw every cell SERVING".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let router = Channel::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .connect_lazy();
        let ledger = PgLedger::connect(&ledger_db.dsn, 4).map_err(|e| e.to_string())?;
        Ok(Deployment {
            topology: shared,
            _orders: orders,
            _ledger_db: ledger_db,
            ledger,
            router,
            stops,
            servers,
            _dir: dir,
        })
    }

    /// DESIGN §5 over every cell, and conservation: what was deposited is in
    /// the ledger's balances or held by the cells. One fleet check reads the
    /// ledger in one snapshot and accounts per key, so it is exact while
    /// workers run; the outboxes are drained first only so that a run ends
    /// with its money settled.
    async fn reconcile(&self, deposited: i64) -> Result<(), String> {
        let mut clients = Vec::new();
        for cell in self.topology.cells() {
            let (client, connection) = tokio_postgres::connect(&cell.db, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let connection = tokio::spawn(connection);
            wait_for_settlement(&client).await?;
            clients.push((cell.name.as_str(), client, connection));
        }
        let cells = clients
            .iter_mut()
            .map(|(cell, orders, _)| reconcile::CellOrders { cell, orders });
        let report = reconcile::check_fleet(cells, &self.ledger, &self.topology)
            .await
            .map_err(|e| e.to_string())?;
        for (_, client, connection) in clients {
            drop(client);
            let _ = connection.await;
        }
        if !report.discrepancies.is_empty() {
            return Err(format!("money discrepancies: {:?}", report.discrepancies));
        }
        let (held, balances) = (report.held_cents, report.ledger_balance_cents);
        if balances + held != deposited {
            return Err(format!(
                "conservation broken: balances {balances} + held {held} != deposited {deposited}"
            ));
        }
        Ok(())
    }

    async fn stop(mut self) -> Result<(), String> {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        while let Some(joined) = self.servers.join_next().await {
            joined.map_err(|e| e.to_string())??;
        }
        Ok(())
    }
}

/// Waits until a cell's settlement outbox is empty (a minute at most).
async fn wait_for_settlement(orders: &tokio_postgres::Client) -> Result<(), String> {
    for _ in 0..1200 {
        let pending: i64 = orders
            .query_one(
                "SELECT count(*) AS pending FROM transfers WHERE status = 1",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .try_get("pending")
            .map_err(|e| format!("transfers: column pending: {e}"))?;
        if pending == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("a cell's settlement outbox did not drain within a minute".into())
}

/// North only, `cells` cells over 000-999 in near-equal ranges.
fn topology_text(cells: &[(String, String, String)]) -> String {
    let mut text = String::from("version: 1\nregions: [north]\ncells:\n");
    for (name, address, dsn) in cells {
        text.push_str(&format!(
            "  - name: {name}\n    region: north\n    status: active\n    servers: [\"{address}\"]\n    db: \"{dsn}\"\n"
        ));
    }
    text.push_str("epochs:\n  - id: 0\n    ranges:\n      north: {");
    let count = cells.len();
    let ranges: Vec<String> = cells
        .iter()
        .enumerate()
        .map(|(index, (name, _, _))| {
            let low = index * 1000 / count;
            let high = (index + 1) * 1000 / count - 1;
            format!(" {name}: \"{low:03}-{high:03}\"")
        })
        .collect();
    text.push_str(&ranges.join(","));
    text.push_str(" }\nminting:\n  epoch: 0\n");
    text
}

type RouterClient = RedEnvelopeClient<InterceptedService<Channel, BearerToken>>;

/// A client of the router calling as `user` (a bearer token of its own).
fn client(router: &Channel, user: &str) -> Result<RouterClient, String> {
    let token = mint_hs256(HS256_KEY, user, 3600).map_err(|e| e.to_string())?;
    let bearer = BearerToken::new(&token).ok_or("the token is not metadata")?;
    Ok(RedEnvelopeClient::with_interceptor(router.clone(), bearer))
}

async fn run_strategy(
    args: &Args,
    strategy: OpenStrategy,
    server: &redcell_harness::PgServer,
) -> Result<Outcome, String> {
    let deployment = Deployment::start(args, strategy, server).await?;
    let total = i64::from(args.shares) * 100;
    let mut deposited = 0;
    let mut sends = Vec::new();
    for index in 0..args.envelopes {
        let sender = format!("sender{index}");
        deployment
            .ledger
            .deposit(&format!("bench:deposit:{sender}"), &sender, total)
            .await
            .map_err(|e| e.to_string())?;
        deposited += total;
        let mut client = client(&deployment.router, &sender)?;
        let request = pb::SendRequest {
            total_cents: total,
            count: args.shares,
            kind: pb::EnvelopeKind::Lucky.into(),
            greeting: "bench".into(),
            recipients: Vec::new(),
            idempotency_key: format!("bench-{index}"),
        };
        let call: Call<String> = Box::pin(async move {
            let envelope = client.send(request).await?.into_inner().envelope;
            envelope
                .map(|envelope| envelope.id)
                .ok_or_else(|| Status::internal("a Send returned no envelope"))
        });
        sends.push(call);
    }
    let (send_phase, envelopes) = timed(args.concurrency, sends).await?;
    if send_phase.errors > 0 {
        return Err(format!("{strategy:?}: {} Sends failed", send_phase.errors));
    }

    let mut opens = Vec::new();
    for user in 0..args.users {
        let client = client(&deployment.router, &format!("user{user}"))?;
        for envelope in &envelopes {
            let mut client = client.clone();
            let request = pb::OpenRequest {
                envelope_id: envelope.clone(),
            };
            let call: Call<bool> = Box::pin(async move {
                let opened = client.open(request).await?.into_inner();
                Ok(opened.status() == pb::ShareStatus::Available)
            });
            opens.push(call);
        }
    }
    let (open_phase, taken) = timed(args.concurrency, opens).await?;
    let shares_taken = taken.iter().filter(|taken| **taken).count() as u64;

    // A benchmark that loses money, or issues a share too many or too few,
    // is a failed benchmark.
    deployment
        .reconcile(deposited)
        .await
        .map_err(|error| format!("{strategy:?}: {error}"))?;
    let expected = u64::from(args.shares.min(args.users)) * u64::from(args.envelopes);
    if shares_taken != expected {
        return Err(format!(
            "{strategy:?}: {shares_taken} shares taken, expected {expected}"
        ));
    }
    deployment.stop().await?;
    Ok(Outcome {
        strategy,
        sends: send_phase,
        opens: open_phase,
        shares_taken,
    })
}

//! The hot-envelope workload against one cell, per open strategy.

use std::sync::Arc;

use redcell_cell::{CellConfig, OpenStrategy, reconcile};
use redcell_payments::PgLedger;
use redcell_proto::internal::AsUser;
use redcell_proto::v1::{self as pb, red_envelope_client::RedEnvelopeClient};
use redcell_topology::Topology;
use tokio::net::TcpListener;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{
    bench,
    phase::{Call, Phase, timed},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Envelopes opened at the same time.
    #[arg(long, default_value_t = 4)]
    envelopes: u32,
    /// Shares per envelope.
    #[arg(long, default_value_t = 500)]
    shares: u32,
    /// Users opening every envelope (more than shares: the late ones get EXHAUSTED).
    #[arg(long, default_value_t = 1000)]
    users: u32,
    /// Opens in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Order DB connections of the cell.
    #[arg(long, default_value_t = 16)]
    db_pool: usize,
    /// Which strategies to run (both by default, lane first).
    #[arg(long, value_enum)]
    strategy: Option<OpenStrategy>,
}

/// The cells of a benchmark require the internal credential, as in production.
const BENCH_INTERNAL_TOKEN: &str = "loadgen-internal-token-0123456789";

struct Outcome {
    strategy: OpenStrategy,
    opens: Phase,
    shares_taken: u64,
}

pub async fn run(args: Args) -> Result<(), String> {
    let strategies = bench::strategies(args.strategy);
    let server = bench::postgres().await?;
    println!(
        "cell-hot: {} envelopes x {} shares, {} users each, concurrency {}, db pool {}",
        args.envelopes, args.shares, args.users, args.concurrency, args.db_pool
    );
    let mut outcomes = Vec::new();
    for strategy in strategies {
        let orders = server
            .clone_database(bench::ORDERS_TEMPLATE)
            .await
            .map_err(|e| e.to_string())?;
        let ledger_db = server
            .clone_database(bench::LEDGER_TEMPLATE)
            .await
            .map_err(|e| e.to_string())?;
        outcomes.push(run_strategy(&args, strategy, &orders.dsn, &ledger_db.dsn).await?);
    }
    let limit = crate::pg_limit::single_row_update_limit(server, args.db_pool).await?;
    println!();
    println!(
        "| strategy | opens | shares taken | errors | elapsed s | opens/s | shares/s | p50 ms | p99 ms | p999 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for outcome in &outcomes {
        let seconds = outcome.opens.elapsed.as_secs_f64();
        let ms = |quantile| outcome.opens.latency.ms(quantile);
        println!(
            "| {:?} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
            outcome.strategy,
            outcome.opens.calls,
            outcome.shares_taken,
            outcome.opens.errors,
            seconds,
            outcome.opens.rate(),
            outcome.shares_taken as f64 / seconds,
            ms(0.5),
            ms(0.99),
            ms(0.999)
        );
    }
    println!(
        "| pgbench: one hot row, `UPDATE .. SET v = v + 1`, {} clients | {:.0} tps |",
        args.db_pool, limit
    );
    Ok(())
}

async fn run_strategy(
    args: &Args,
    strategy: OpenStrategy,
    orders_dsn: &str,
    ledger_dsn: &str,
) -> Result<Outcome, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let topology = Topology::parse(&format!(
        "version: 1\nregions: [north]\ncells:\n  - name: n1\n    region: north\n    status: active\n    servers: [\"{address}\"]\n    db: \"{orders_dsn}\"\nepochs:\n  - id: 0\n    ranges:\n      north: {{ n1: \"000-999\" }}\nminting:\n  epoch: 0\n"
    ))
    .map_err(|errors| errors.to_string())?;
    let mut config = CellConfig::new("n1", Arc::new(topology.clone()))?;
    config.open_strategy = strategy;
    config.internal_token = Some(BENCH_INTERNAL_TOKEN.to_owned());
    config.db_pool = args.db_pool;
    let ledger = PgLedger::connect(ledger_dsn, 8).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(redcell_cell::run(listener, config, ledger.clone(), async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_lazy();

    let total_per_envelope = i64::from(args.shares) * 200;
    let deposit = total_per_envelope * i64::from(args.envelopes);
    ledger
        .deposit("bench:deposit", "sender", deposit)
        .await
        .map_err(|e| e.to_string())?;
    let mut envelopes = Vec::new();
    for index in 0..args.envelopes {
        let request = pb::SendRequest {
            total_cents: total_per_envelope,
            count: args.shares,
            kind: pb::EnvelopeKind::Lucky.into(),
            greeting: "bench".into(),
            recipients: Vec::new(),
            idempotency_key: format!("bench-{index}"),
        };
        let response = client(&channel, "sender")?
            .send(request)
            .await
            .map_err(|status| format!("send: {status}"))?;
        envelopes.push(
            response
                .into_inner()
                .envelope
                .map(|e| e.id)
                .unwrap_or_default(),
        );
    }

    let mut opens = Vec::new();
    for user in 0..args.users {
        let client = client(&channel, &format!("user{user}"))?;
        for envelope in &envelopes {
            let mut client = client.clone();
            let request = pb::OpenRequest {
                envelope_id: envelope.clone(),
            };
            let call: Call<pb::ShareStatus> =
                Box::pin(async move { Ok(client.open(request).await?.into_inner().status()) });
            opens.push(call);
        }
    }
    let (opens, statuses) = timed(args.concurrency, opens).await?;
    let shares_taken = statuses
        .iter()
        .filter(|status| **status == pb::ShareStatus::Available)
        .count() as u64;

    // A benchmark that loses money is a failed benchmark.
    let (mut orders, connection) = tokio_postgres_connect(orders_dsn).await?;
    let report = reconcile::check_cell(&mut orders, &ledger, &topology, "n1")
        .await
        .map_err(|e| e.to_string())?;
    drop(orders);
    connection.abort();
    if !report.discrepancies.is_empty() {
        return Err(format!(
            "{strategy:?}: money discrepancies: {:?}",
            report.discrepancies
        ));
    }
    let expected = u64::from(args.shares) * u64::from(args.envelopes);
    if shares_taken != expected {
        return Err(format!(
            "{strategy:?}: {shares_taken} shares taken, expected {expected}"
        ));
    }
    let _ = stop.send(());
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(Outcome {
        strategy,
        opens,
        shares_taken,
    })
}

type CellClient = RedEnvelopeClient<InterceptedService<Channel, AsUser>>;

fn client(channel: &Channel, user: &str) -> Result<CellClient, String> {
    let identity = AsUser::new(user)
        .and_then(|identity| identity.with_internal(BENCH_INTERNAL_TOKEN))
        .ok_or_else(|| format!("bad user {user}"))?;
    Ok(RedEnvelopeClient::with_interceptor(
        channel.clone(),
        identity,
    ))
}

async fn tokio_postgres_connect(
    dsn: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), String> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let handle = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, handle))
}

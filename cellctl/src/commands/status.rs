//! `cellctl status [--watch [SECS]] [--json]`: every cell of the topology
//! (region, the suffix ranges it mints with in the minting epoch, status),
//! each logic server (gRPC health, lanes open, the topology it serves), the
//! cell's order DB (reachable, outbox backlog, settlement lag, pending
//! Sends), and the routers (health, the topology they serve).
//!
//! Every probe runs concurrently under its own deadline (`--probe-ms`), so an
//! unreachable part shows as such and the command never hangs. "The topology
//! a process serves" is [`redcell_topology::Topology::fingerprint`], asked of
//! the live process (`CellOps.CellStatus`, `RouterOps.RouterStatus`, both
//! behind the internal credential) and compared with the file's: `current`
//! or `STALE`. Exit 1 when any part is down, unhealthy or stale (not with
//! `--watch`, which refreshes until Ctrl-C).

use std::{io::Write, path::PathBuf, time::Duration};

use clap::Args;
use redcell_migrations::display_dsn;
use redcell_proto::{
    internal::INTERNAL_METADATA,
    v1::{
        CellStatusRequest, RouterStatusRequest, TopologyServed, cell_ops_client::CellOpsClient,
        router_ops_client::RouterOpsClient,
    },
};
use redcell_topology::Topology;
use serde::Serialize;
use tonic::{Request, metadata::AsciiMetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{reconcile::connect, state_dir::StateDir};
use crate::{CommandError, load};

/// The service a logic server's and a router's health is asked for.
const HEALTH_SERVICE: &str = "redcell.v1.RedEnvelope";

/// The order DB's numbers, in one statement: outbox backlog, settlement lag
/// (age of the oldest *due* pending transfer: one waiting out its backoff is
/// not late yet), pending Sends.
const DB_NUMBERS: &str = "SELECT \
       (SELECT count(*) FROM transfers WHERE status = 1), \
       (SELECT COALESCE(extract(epoch FROM now() - min(created_at)), 0)::bigint \
          FROM transfers WHERE status = 1 AND next_attempt_at <= now()), \
       (SELECT count(*) FROM envelopes WHERE status = 1)";

/// Arguments of `cellctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Refresh every SECS seconds (default 2) until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Deadline of each probe (connect and answer), in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub probe_ms: u64,
    /// Routers to ask (default: the ones the `up` on --state-dir runs).
    #[arg(long = "router", value_name = "HOST:PORT")]
    pub routers: Vec<String>,
    /// The internal credential (default: the state directory's
    /// `internal-token`); without it lanes and topologies are not shown.
    #[arg(long, env = "REDCELL_INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<PathBuf>,
    #[arg(long, env = "REDCELL_STATE_DIR", default_value = super::state_dir::DEFAULT)]
    pub state_dir: PathBuf,
}

/// The whole report (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct FleetStatus {
    /// Fingerprint of the topology file read.
    pub topology: String,
    pub minting_epoch: u8,
    /// True when every part is up, serving and on the file's topology.
    pub healthy: bool,
    /// One line per problem found.
    pub problems: Vec<String>,
    pub cells: Vec<CellStatus>,
    pub routers: Vec<PartStatus>,
}

#[derive(Debug, Serialize)]
pub struct CellStatus {
    pub name: String,
    pub region: String,
    /// `active`, `failed` or `draining` (from the topology).
    pub status: String,
    /// Suffix ranges the cell mints new IDs with (minting epoch).
    pub mints: Vec<String>,
    pub db: DbStatus,
    pub servers: Vec<PartStatus>,
}

#[derive(Debug, Serialize)]
pub struct DbStatus {
    /// The DSN without its password.
    pub dsn: String,
    pub reachable: bool,
    /// Pending settlement transfers.
    pub outbox_backlog: Option<i64>,
    /// Seconds since the oldest due pending transfer was written.
    pub settlement_lag_secs: Option<i64>,
    /// Envelopes still `PENDING_PAYMENT`.
    pub pending_sends: Option<i64>,
    pub error: Option<String>,
}

/// A logic server or a router, as probed.
#[derive(Debug, Serialize)]
pub struct PartStatus {
    pub address: String,
    /// `SERVING`, `NOT_SERVING`, ... or `DOWN`.
    pub health: String,
    /// Lanes open (logic servers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lanes_open: Option<u64>,
    pub topology: Option<ServedTopology>,
    pub error: Option<String>,
}

/// Which kind of part a probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Server,
    Router,
}

/// The topology a live process serves.
#[derive(Debug, Serialize)]
pub struct ServedTopology {
    pub fingerprint: String,
    /// Its fingerprint is the file's.
    pub current: bool,
    pub minting_epoch: u32,
    pub reloads: u64,
    pub refused_reloads: u64,
}

/// `cellctl status`.
pub fn run(
    topology_path: &std::path::Path,
    args: StatusArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    if args.probe_ms == 0 || args.watch == Some(0) {
        return Err(CommandError::Input(
            "--probe-ms and --watch: must be at least 1".to_owned(),
        ));
    }
    let state = StateDir::at(&args.state_dir)?;
    let routers = if args.routers.is_empty() {
        state.routers().unwrap_or_default()
    } else {
        args.routers.clone()
    };
    let token_file = args
        .internal_token_file
        .clone()
        .unwrap_or_else(|| state.internal_token_file());
    let token = std::fs::read_to_string(&token_file)
        .ok()
        .map(|text| text.trim().to_owned());
    let runtime = super::reconcile::runtime()?;
    let probe = Duration::from_millis(args.probe_ms);
    loop {
        // Re-read every round: `--watch` follows edits of cells.yaml.
        let topology = load::topology(topology_path)?;
        let status = runtime.block_on(gather(&topology, &routers, token.as_deref(), probe));
        if args.json {
            let text = serde_json::to_string_pretty(&status).map_err(|error| {
                CommandError::Input(format!("cannot render the status as JSON: {error}"))
            })?;
            writeln!(out, "{text}")?;
        } else {
            if args.watch.is_some() {
                // Clear the screen between refreshes, like watch(1).
                write!(out, "\x1b[2J\x1b[H")?;
            }
            print_table(&status, token.is_some(), out)?;
        }
        out.flush()?;
        match args.watch {
            Some(seconds) => std::thread::sleep(Duration::from_secs(seconds)),
            None if status.healthy => return Ok(()),
            None => {
                return Err(CommandError::Input(format!(
                    "{} problems: {}",
                    status.problems.len(),
                    status.problems.join("; ")
                )));
            }
        }
    }
}

/// Probes every part concurrently, each under `probe`.
pub async fn gather(
    topology: &Topology,
    routers: &[String],
    token: Option<&str>,
    probe: Duration,
) -> FleetStatus {
    let fingerprint = topology.fingerprint();
    let token: Option<AsciiMetadataValue> = token.and_then(|token| token.parse().ok());
    let mut cells = tokio::task::JoinSet::new();
    for (index, cell) in topology.cells().iter().enumerate() {
        let mints = topology
            .minted_by(&cell.name)
            .map(|mint| mint.ranges.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let region = topology.region_name(cell.region).unwrap_or("?").to_owned();
        let cell = cell.clone();
        let token = token.clone();
        let fingerprint = fingerprint.clone();
        cells.spawn(async move {
            let db = db_status(cell.db.clone(), probe);
            let servers = cell.servers.iter().map(|address| {
                part_status(
                    Part::Server,
                    address.clone(),
                    token.clone(),
                    fingerprint.clone(),
                    probe,
                )
            });
            let (db, servers) = tokio::join!(db, join_all(servers));
            (
                index,
                CellStatus {
                    name: cell.name.clone(),
                    region,
                    status: cell.status.as_str().to_owned(),
                    mints,
                    db,
                    servers,
                },
            )
        });
    }
    let router_probes = routers.iter().map(|address| {
        part_status(
            Part::Router,
            address.clone(),
            token.clone(),
            fingerprint.clone(),
            probe,
        )
    });
    let routers = join_all(router_probes).await;
    let mut found = Vec::new();
    while let Some(joined) = cells.join_next().await {
        if let Ok(cell) = joined {
            found.push(cell);
        }
    }
    found.sort_by_key(|(index, _)| *index);
    let cells: Vec<CellStatus> = found.into_iter().map(|(_, cell)| cell).collect();
    let problems = problems(&cells, &routers, token.is_some());
    FleetStatus {
        topology: fingerprint,
        minting_epoch: topology.minting_epoch().get(),
        healthy: problems.is_empty(),
        problems,
        cells,
        routers,
    }
}

/// Runs the futures concurrently (one task each); their outputs in order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        // A probe never panics; a task that did is left out.
        if let Ok(output) = handle.await {
            outputs.push(output);
        }
    }
    outputs
}

fn problems(cells: &[CellStatus], routers: &[PartStatus], with_token: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if routers.is_empty() {
        problems.push("no router known (pass --router or run `cellctl up`)".to_owned());
    }
    if !with_token {
        problems.push("no internal token: lanes and served topologies unknown".to_owned());
    }
    for cell in cells {
        if !cell.db.reachable {
            problems.push(format!(
                "cell {} order DB {} unreachable",
                cell.name, cell.db.dsn
            ));
        }
        for server in &cell.servers {
            part_problem(&format!("cell {} server", cell.name), server, &mut problems);
        }
    }
    for router in routers {
        part_problem("router", router, &mut problems);
    }
    problems
}

/// The problem of one part, if it has one: down or not serving, its status
/// call refused, or a stale topology.
fn part_problem(what: &str, part: &PartStatus, problems: &mut Vec<String>) {
    let address = &part.address;
    if part.health != "SERVING" {
        problems.push(format!("{what} {address} {}", part.health));
    } else if let Some(error) = &part.error {
        problems.push(format!("{what} {address} {error}"));
    } else if part.topology.as_ref().is_some_and(|served| !served.current) {
        problems.push(format!("{what} {address} serves a stale topology"));
    }
}

async fn channel(address: &str, probe: Duration) -> Result<Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| format!("bad address: {error}"))?
        .connect_timeout(probe)
        .timeout(probe);
    match tokio::time::timeout(probe, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(format!("cannot connect: {}", source_text(&error))),
        Err(_) => Err(format!("no connection within {probe:?}")),
    }
}

/// The innermost cause of an error (tonic's Display says only "transport error").
fn source_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Health of `address` (DOWN if it does not answer within `probe`).
async fn health(channel: Channel, probe: Duration) -> Result<String, String> {
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: HEALTH_SERVICE.to_owned(),
    };
    match tokio::time::timeout(probe, client.check(request)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner().status().as_str_name().to_owned()),
        Ok(Err(status)) => Err(format!("health: {}", status.message())),
        Err(_) => Err(format!("no health answer within {probe:?}")),
    }
}

fn with_token<T>(message: T, token: &AsciiMetadataValue) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(INTERNAL_METADATA, token.clone());
    request
}

fn served(topology: Option<TopologyServed>, fingerprint: &str) -> Option<ServedTopology> {
    topology.map(|served| ServedTopology {
        current: served.fingerprint == fingerprint,
        fingerprint: served.fingerprint,
        minting_epoch: served.minting_epoch,
        reloads: served.reloads,
        refused_reloads: served.refused_reloads,
    })
}

pub(crate) async fn part_status(
    part: Part,
    address: String,
    token: Option<AsciiMetadataValue>,
    fingerprint: String,
    probe: Duration,
) -> PartStatus {
    let mut status = PartStatus {
        address,
        health: "DOWN".to_owned(),
        lanes_open: None,
        topology: None,
        error: None,
    };
    let channel = match channel(&status.address, probe).await {
        Ok(channel) => channel,
        Err(error) => {
            status.error = Some(error);
            return status;
        }
    };
    match health(channel.clone(), probe).await {
        Ok(health) => status.health = health,
        Err(error) => {
            status.error = Some(error);
            return status;
        }
    }
    let Some(token) = token else {
        return status;
    };
    let answer = async {
        match part {
            Part::Server => CellOpsClient::new(channel)
                .cell_status(with_token(CellStatusRequest {}, &token))
                .await
                .map(|reply| {
                    let reply = reply.into_inner();
                    (Some(reply.lanes_open), reply.topology)
                }),
            Part::Router => RouterOpsClient::new(channel)
                .router_status(with_token(RouterStatusRequest {}, &token))
                .await
                .map(|reply| (None, reply.into_inner().topology)),
        }
    };
    match tokio::time::timeout(probe, answer).await {
        Ok(Ok((lanes, topology))) => {
            status.lanes_open = lanes;
            status.topology = served(topology, &fingerprint);
        }
        Ok(Err(error)) => status.error = Some(format!("status: {}", error.message())),
        Err(_) => status.error = Some(format!("no status answer within {probe:?}")),
    }
    status
}

pub(crate) async fn db_status(dsn: String, probe: Duration) -> DbStatus {
    let mut status = DbStatus {
        dsn: display_dsn(&dsn),
        reachable: false,
        outbox_backlog: None,
        settlement_lag_secs: None,
        pending_sends: None,
        error: None,
    };
    let numbers = async {
        let client = connect(&dsn).await?;
        let row = client
            .query_one(DB_NUMBERS, &[])
            .await
            .map_err(|error| format!("query: {error}"))?;
        let get = |index: usize| {
            row.try_get::<_, i64>(index)
                .map_err(|error| format!("column {index}: {error}"))
        };
        Ok::<_, String>((get(0)?, get(1)?, get(2)?))
    };
    match tokio::time::timeout(probe, numbers).await {
        Ok(Ok((backlog, lag, pending))) => {
            status.reachable = true;
            status.outbox_backlog = Some(backlog);
            status.settlement_lag_secs = Some(lag);
            status.pending_sends = Some(pending);
        }
        Ok(Err(error)) => status.error = Some(error),
        Err(_) => status.error = Some(format!("no answer within {probe:?}")),
    }
    status
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

fn print_table(
    status: &FleetStatus,
    with_token: bool,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    writeln!(
        out,
        "topology {} (minting epoch {})",
        status.topology, status.minting_epoch
    )?;
    writeln!(
        out,
        "{:<8} {:<8} {:<10} {:<16} {:<11} {:>7} {:>7} {:>8}",
        "CELL", "REGION", "STATUS", "MINTS", "DB", "BACKLOG", "LAG", "PENDING"
    )?;
    for cell in &status.cells {
        let mints = if cell.mints.is_empty() {
            "-".to_owned()
        } else {
            cell.mints.join(",")
        };
        writeln!(
            out,
            "{:<8} {:<8} {:<10} {:<16} {:<11} {:>7} {:>7} {:>8}",
            cell.name,
            cell.region,
            cell.status,
            mints,
            if cell.db.reachable {
                "up"
            } else {
                "UNREACHABLE"
            },
            or_dash(cell.db.outbox_backlog),
            cell.db
                .settlement_lag_secs
                .map_or_else(|| "-".to_owned(), |lag| format!("{lag}s")),
            or_dash(cell.db.pending_sends)
        )?;
        if let Some(error) = &cell.db.error {
            writeln!(out, "    db {}: {error}", cell.db.dsn)?;
        }
        for server in &cell.servers {
            let topology = topology_text(server.topology.as_ref(), with_token);
            writeln!(
                out,
                "    server {:<21} {:<11} lanes {:<5} {topology}{}",
                server.address,
                server.health,
                or_dash(server.lanes_open),
                server
                    .error
                    .as_ref()
                    .map_or_else(String::new, |error| format!("  ({error})"))
            )?;
        }
    }
    for router in &status.routers {
        let topology = topology_text(router.topology.as_ref(), with_token);
        writeln!(
            out,
            "router {:<23} {:<11} {topology}{}",
            router.address,
            router.health,
            router
                .error
                .as_ref()
                .map_or_else(String::new, |error| format!("  ({error})"))
        )?;
    }
    if status.healthy {
        writeln!(out, "healthy")?;
    } else {
        writeln!(out, "{} problems:", status.problems.len())?;
        for problem in &status.problems {
            writeln!(out, "  {problem}")?;
        }
    }
    Ok(())
}

fn topology_text(served: Option<&ServedTopology>, with_token: bool) -> String {
    match served {
        Some(served) => format!(
            "topology {} {} (epoch {}, {} reloads, {} refused)",
            served.fingerprint,
            if served.current { "current" } else { "STALE" },
            served.minting_epoch,
            served.reloads,
            served.refused_reloads
        ),
        None if with_token => "topology -".to_owned(),
        None => "topology ? (no internal token)".to_owned(),
    }
}

//! `cellctl expand --split OLD:NEW,... | --add N` (issue 12 item 1): parallel
//! expansion (平行扩容) planned and applied through the change module. New
//! cells and a new epoch whose tables give each split cell's upper half to
//! its new cell ([`redcell_topology::plan::expand`]); minting stays on the
//! current epoch until `cellctl switch`, and no data is copied.
//!
//! What the operator does not give is derived by one convention, printed in
//! the plan so nothing is implicit:
//! - `--add N` splits the N active cells owning the most suffixes in the
//!   minting epoch (ties by name), and names each new cell after its
//!   region's initial and the next free number (`n4`, `s3`, ...);
//! - a new cell's logic servers (unless `--servers NEW=ADDR,...`): as many as
//!   the split cell has, on its first server's host, on the next ports after
//!   the highest server port of the file, skipping every port in use;
//! - its order DB (unless `--db NEW=DSN`): a PostgreSQL server of its own
//!   (every cell owns its database server) on the highest DB port of the
//!   file plus one (skipping ports in use), database `cell_<name>`, the split
//!   cell's DSN otherwise (user, host, parameters).
//!
//! "In use" is more than the file: a running fleet also listens where the
//! file does not say (standbys, the ledger's server, routers), and a port
//! taken there would make `up` refuse the new cell. So the derivation skips
//! every port the file names, every port the state directory (`--state-dir`)
//! holds (recorded standbys and their primaries, data directories, the
//! ledger's DSN, the routers), and, while a fleet runs there (its routers
//! file exists) on 127.0.0.1/localhost, every port that cannot be bound
//! right now. Without a running fleet the derivation does not probe, so a
//! plan of a file does not depend on unrelated processes of this machine
//! (`up` names a taken port when it starts). When the fleet runs `up
//! --standby` (its offset recorded), a derived DB port is taken only if its
//! port + offset is free too, since `up` gives the new server a standby
//! there.
//!
//! With `--apply` on a fleet from `cellctl up`, that `up` notices the new
//! cells in the file and starts their PostgreSQL (initdb, migrations) and
//! logic servers; the change module waits for those servers while they
//! start (at least `fleet::STARTING_WAIT`).

use std::{collections::BTreeSet, io::Write, net::TcpListener, path::Path};

use redcell_topology::{
    CellStatus, Topology, UtcTimestamp,
    plan::{self, NewCell, Split},
    suffix,
};

use super::{
    change::{self, ChangeArgs},
    mint_pool,
    state_dir::StateDir,
    up::standby,
};
use crate::{CommandError, load};

/// `cellctl expand`'s flags.
#[derive(Debug, clap::Args)]
pub struct ExpandArgs {
    /// Cells to split and the new cell taking each one's upper half:
    /// OLD:NEW[,OLD:NEW...].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "OLD:NEW",
        required_unless_present = "add",
        conflicts_with = "add"
    )]
    pub split: Vec<String>,
    /// Add N cells: split the N active cells owning the most suffixes.
    #[arg(long, value_name = "N")]
    pub add: Option<usize>,
    /// A new cell's logic servers instead of the derived ones:
    /// NEW=HOST:PORT[,HOST:PORT...] (repeat per cell).
    #[arg(long = "servers", value_name = "NEW=ADDRS")]
    pub servers: Vec<String>,
    /// A new cell's order DB instead of the derived one: NEW=DSN (repeat per
    /// cell).
    #[arg(long = "db", value_name = "NEW=DSN")]
    pub db: Vec<String>,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// One planned new cell, and whether its endpoints were given or derived.
#[derive(Debug)]
struct Planned {
    split: Split,
    servers_given: bool,
    db_given: bool,
    /// The port kept free for a derived DB's standby (a fleet with standbys).
    standby: Option<u16>,
}

/// What a running fleet uses beyond cells.yaml, from its state directory
/// (empty when no `up` ran there).
#[derive(Debug, Default)]
struct FleetPorts {
    /// Recorded standbys and their primaries, data directories, the
    /// ledger's server, the routers.
    held: BTreeSet<u16>,
    /// `up --standby`'s offset, when the fleet runs with standbys.
    standby_offset: Option<u16>,
    /// A fleet runs on the state directory: ports of this machine are probed.
    live: bool,
}

impl FleetPorts {
    fn read(state_dir: &Path) -> Result<FleetPorts, CommandError> {
        let state = StateDir::at(state_dir)?;
        let mut held = standby::held_ports(&state)?;
        if let Ok(dsn) = std::fs::read_to_string(state.ledger_dsn_file()) {
            held.extend(dsn_port(dsn.trim()));
        }
        let routers = std::fs::read_to_string(state.routers_file()).ok();
        if let Some(routers) = &routers {
            held.extend(
                routers
                    .lines()
                    .filter_map(|line| port_of_address(line.trim())),
            );
        }
        Ok(FleetPorts {
            held,
            standby_offset: standby::recorded_offset(&state),
            live: routers.is_some(),
        })
    }
}

/// `cellctl expand ... [--apply]`.
pub fn run(path: &Path, args: &ExpandArgs, out: &mut impl Write) -> Result<(), CommandError> {
    let topology = load::topology(path)?;
    let pairs = match args.add {
        Some(count) => added_cells(&topology, count)?,
        None => parse_splits(&args.split)?,
    };
    let servers = parse_assignments("--servers", &args.servers, &pairs)?;
    let dbs = parse_assignments("--db", &args.db, &pairs)?;
    let fleet = FleetPorts::read(&args.change.state_dir)?;
    let planned = derive(&topology, &pairs, &servers, &dbs, &fleet)?;
    let splits: Vec<Split> = planned.iter().map(|p| p.split.clone()).collect();
    let what = format!(
        "expand --split {}",
        pairs
            .iter()
            .map(|(from, into)| format!("{from}:{into}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    // The plan itself is made (and refused) by the change module; this
    // preview only explains it, so a refusal is left for it to report.
    if let Ok(after) = plan::expand(&topology, &splits) {
        describe(&topology, &after, &planned, out)?;
    }
    change::run(
        path,
        &what,
        &args.change,
        |topology| plan::expand(topology, &splits),
        out,
    )
}

/// The new cells, the new epoch's tables, and the pool once switched.
fn describe(
    before: &Topology,
    after: &Topology,
    planned: &[Planned],
    out: &mut impl Write,
) -> Result<(), CommandError> {
    writeln!(out, "new cells:")?;
    for new in planned {
        let cell = &new.split.into;
        let region = before
            .cell(&new.split.from)
            .and_then(|from| before.region_name(from.region))
            .unwrap_or("?");
        let how = |given: bool| if given { "given" } else { "derived" };
        writeln!(
            out,
            "  {:<8} region {region}, split from {}",
            cell.name, new.split.from
        )?;
        writeln!(
            out,
            "           servers {} ({})",
            cell.servers.join(", "),
            how(new.servers_given)
        )?;
        writeln!(
            out,
            "           db      {} ({})",
            redcell_migrations::display_dsn(&cell.db),
            how(new.db_given)
        )?;
        if let Some(port) = new.standby {
            writeln!(
                out,
                "           standby port {port} kept free (the fleet runs `up --standby`)"
            )?;
        }
    }
    if let Some(epoch) = after.epochs().last() {
        writeln!(
            out,
            "epoch {} (new; minting stays on epoch {} until `cellctl switch`):",
            epoch.id,
            after.minting_epoch()
        )?;
        for (position, region) in after.regions().iter().enumerate() {
            let Some(table) = u8::try_from(position + 1)
                .ok()
                .and_then(redcell_topology::RegionDigit::new)
                .and_then(|digit| epoch.table(digit))
            else {
                continue;
            };
            let cells: Vec<String> = table
                .assignments()
                .iter()
                .map(|(cell, ranges)| {
                    let name = after.cells().get(*cell).map_or("?", |c| c.name.as_str());
                    format!("{name} {}", suffix::format_ranges(ranges))
                })
                .collect();
            writeln!(out, "  {region}: {}", cells.join(", "))?;
        }
    }
    writeln!(
        out,
        "mint pool: unchanged by expand (shown after the diff); once `cellctl switch` is applied:"
    )?;
    // Any instant will do: the pool does not depend on when.
    let preview = UtcTimestamp::from_unix_secs(0).map(|now| plan::switch(after, now));
    match preview {
        Some(Ok(switched)) => mint_pool::run(&switched, None, out)?,
        Some(Err(error)) => writeln!(out, "  (no switch possible: {error})")?,
        None => {}
    }
    Ok(())
}

/// `OLD:NEW` pairs of `--split`.
fn parse_splits(items: &[String]) -> Result<Vec<(String, String)>, CommandError> {
    items
        .iter()
        .map(|item| match item.split_once(':') {
            Some((from, into)) if !from.trim().is_empty() && !into.trim().is_empty() => {
                Ok((from.trim().to_owned(), into.trim().to_owned()))
            }
            _ => Err(CommandError::Input(format!(
                "--split: {item:?} is not OLD:NEW (e.g. --split n1:n4,s2:s3)"
            ))),
        })
        .collect()
}

/// `--add N`: the N active cells owning the most suffixes in the minting
/// epoch (ties by name), each with a new name `<region initial><next free
/// number>`.
fn added_cells(topology: &Topology, count: usize) -> Result<Vec<(String, String)>, CommandError> {
    if count == 0 {
        return Err(CommandError::Input("--add: must be at least 1".into()));
    }
    let minting = topology.epoch(topology.minting_epoch());
    let owned = |index: usize| -> u32 {
        let Some(cell) = topology.cells().get(index) else {
            return 0;
        };
        minting
            .and_then(|epoch| epoch.table(cell.region))
            .map_or(0, |table| {
                table
                    .assignments()
                    .iter()
                    .filter(|(owner, _)| *owner == index)
                    .flat_map(|(_, ranges)| ranges.iter())
                    .map(|range| u32::from(range.len()))
                    .sum()
            })
    };
    let mut candidates: Vec<(u32, &str, usize)> = topology
        .cells()
        .iter()
        .enumerate()
        .filter(|(_, cell)| cell.status == CellStatus::Active)
        .map(|(index, cell)| (owned(index), cell.name.as_str(), index))
        .filter(|(suffixes, _, _)| *suffixes >= 2)
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    if candidates.len() < count {
        return Err(CommandError::Input(format!(
            "--add {count}: only {} active cell(s) own 2 or more suffixes to split",
            candidates.len()
        )));
    }
    let mut taken: BTreeSet<String> = topology.cells().iter().map(|c| c.name.clone()).collect();
    let mut pairs = Vec::new();
    for (_, name, index) in candidates.into_iter().take(count) {
        let region = topology
            .cells()
            .get(index)
            .and_then(|cell| topology.region_name(cell.region))
            .unwrap_or("c");
        let new = next_name(region, &taken);
        taken.insert(new.clone());
        pairs.push((name.to_owned(), new));
    }
    Ok(pairs)
}

/// `<initial><n>` with n one past the highest number any cell named
/// `<initial><digits>` has (and free).
fn next_name(region: &str, taken: &BTreeSet<String>) -> String {
    let initial: String = region.chars().take(1).collect();
    let highest = taken
        .iter()
        .filter_map(|name| name.strip_prefix(&initial))
        .filter_map(|digits| digits.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    (highest + 1..)
        .map(|n| format!("{initial}{n}"))
        .find(|name| !taken.contains(name))
        .unwrap_or_else(|| format!("{initial}x"))
}

/// `NEW=VALUE` items of `flag`, each naming a new cell of the plan.
fn parse_assignments(
    flag: &str,
    items: &[String],
    pairs: &[(String, String)],
) -> Result<Vec<(String, String)>, CommandError> {
    let mut parsed: Vec<(String, String)> = Vec::new();
    for item in items {
        let Some((cell, value)) = item.split_once('=') else {
            return Err(CommandError::Input(format!(
                "{flag}: {item:?} is not NEW=VALUE"
            )));
        };
        let cell = cell.trim();
        if !pairs.iter().any(|(_, new)| new == cell) {
            return Err(CommandError::Input(format!(
                "{flag}: {cell:?} is not a new cell of this expansion (new: {})",
                pairs
                    .iter()
                    .map(|(_, new)| new.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if parsed.iter().any(|(known, _)| known == cell) {
            return Err(CommandError::Input(format!(
                "{flag}: {cell:?} is given twice"
            )));
        }
        parsed.push((cell.to_owned(), value.trim().to_owned()));
    }
    Ok(parsed)
}

/// The splits with every new cell's servers and DB, given or derived.
fn derive(
    topology: &Topology,
    pairs: &[(String, String)],
    servers: &[(String, String)],
    dbs: &[(String, String)],
    fleet: &FleetPorts,
) -> Result<Vec<Planned>, CommandError> {
    let mut used = used_ports(topology);
    used.extend(fleet.held.iter().copied());
    for (_, value) in servers {
        used.extend(value.split(',').filter_map(|a| port_of_address(a.trim())));
    }
    for (_, dsn) in dbs {
        used.extend(dsn_port(dsn));
    }
    let mut next_server = topology
        .cells()
        .iter()
        .flat_map(|cell| cell.servers.iter())
        .filter_map(|address| port_of_address(address))
        .max()
        .unwrap_or(7100);
    let mut next_db = topology
        .cells()
        .iter()
        .filter_map(|cell| dsn_port(&cell.db))
        .max()
        .unwrap_or(6100);

    let mut planned = Vec::new();
    for (from, into) in pairs {
        let source = topology
            .cell(from)
            .ok_or_else(|| CommandError::Input(format!("cannot expand: unknown cell {from:?}")))?;
        let given_servers = servers.iter().find(|(cell, _)| cell == into);
        let servers_list = match given_servers {
            Some((_, value)) => value.split(',').map(|a| a.trim().to_owned()).collect(),
            None => {
                let host = source
                    .servers
                    .first()
                    .and_then(|address| address.rsplit_once(':'))
                    .map_or("127.0.0.1", |(host, _)| host);
                let local = fleet.live && is_local(host);
                let mut list = Vec::new();
                for _ in 0..source.servers.len().max(1) {
                    let port = free_after(&mut next_server, &mut used, local, None).ok_or_else(|| {
                        CommandError::Input(format!(
                            "no free port left for a server of {into}; give --servers {into}=HOST:PORT"
                        ))
                    })?;
                    list.push(format!("{host}:{port}"));
                }
                list
            }
        };
        let given_db = dbs.iter().find(|(cell, _)| cell == into);
        let mut standby = None;
        let db = match given_db {
            Some((_, dsn)) => dsn.clone(),
            None => {
                let local = fleet.live && dsn_host(&source.db).is_some_and(|host| is_local(&host));
                let offset = fleet.standby_offset;
                let port = free_after(&mut next_db, &mut used, local, offset).ok_or_else(|| {
                    CommandError::Input(format!(
                        "no free port left for the DB of {into}; give --db {into}=DSN"
                    ))
                })?;
                standby = offset.and_then(|offset| port.checked_add(offset));
                derived_dsn(&source.db, port, &format!("cell_{into}")).ok_or_else(|| {
                    CommandError::Input(format!(
                        "cannot derive a DSN for {into} from {from}'s {} (not a postgres:// URL); \
                         give --db {into}=DSN",
                        redcell_migrations::display_dsn(&source.db)
                    ))
                })?
            }
        };
        planned.push(Planned {
            split: Split {
                from: from.clone(),
                into: NewCell {
                    name: into.clone(),
                    servers: servers_list,
                    db,
                },
            },
            servers_given: given_servers.is_some(),
            db_given: given_db.is_some(),
            standby,
        });
    }
    Ok(planned)
}

/// The first port after `start` that is free (not `used`, and bindable on
/// 127.0.0.1 now when `local`: a running fleet's host), with its port + `standby` free
/// too when given; both are marked used and `start` moves to it.
fn free_after(
    start: &mut u16,
    used: &mut BTreeSet<u16>,
    local: bool,
    standby: Option<u16>,
) -> Option<u16> {
    let free = |port: u16| {
        !used.contains(&port) && (!local || TcpListener::bind(("127.0.0.1", port)).is_ok())
    };
    let port = (start.checked_add(1)?..=u16::MAX).find(|port| {
        free(*port) && standby.is_none_or(|offset| port.checked_add(offset).is_some_and(&free))
    })?;
    used.insert(port);
    used.extend(standby.and_then(|offset| port.checked_add(offset)));
    *start = port;
    Some(port)
}

/// A host `up` runs parts on: this machine's loopback.
fn is_local(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost")
}

/// The (single TCP) host of a DSN.
fn dsn_host(dsn: &str) -> Option<String> {
    let config: tokio_postgres::Config = dsn.parse().ok()?;
    match config.get_hosts() {
        [tokio_postgres::config::Host::Tcp(host)] => Some(host.clone()),
        _ => None,
    }
}

/// Every port the file names: logic servers and database servers.
fn used_ports(topology: &Topology) -> BTreeSet<u16> {
    topology
        .cells()
        .iter()
        .flat_map(|cell| {
            cell.servers
                .iter()
                .filter_map(|address| port_of_address(address))
                .chain(dsn_port(&cell.db))
        })
        .collect()
}

fn port_of_address(address: &str) -> Option<u16> {
    address.rsplit_once(':')?.1.parse().ok()
}

/// The (first) port of a DSN, 5432 when it names none.
fn dsn_port(dsn: &str) -> Option<u16> {
    let config: tokio_postgres::Config = dsn.parse().ok()?;
    Some(config.get_ports().first().copied().unwrap_or(5432))
}

/// `dsn` (a `postgres://` or `postgresql://` URL) with its port and
/// database replaced; user, password, host and parameters kept.
fn derived_dsn(dsn: &str, port: u16, database: &str) -> Option<String> {
    let (scheme, rest) = dsn.split_once("://")?;
    if scheme != "postgres" && scheme != "postgresql" {
        return None;
    }
    let (authority, tail) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, ""),
    };
    let params = tail.find('?').map_or("", |at| &tail[at..]);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    if hostport.contains(',') {
        return None; // several hosts: no single server to derive from
    }
    let host = match hostport.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next()?),
        None => hostport.split(':').next()?.to_owned(),
    };
    let userinfo = userinfo.map_or_else(String::new, |info| format!("{info}@"));
    Some(format!(
        "{scheme}://{userinfo}{host}:{port}/{database}{params}"
    ))
}

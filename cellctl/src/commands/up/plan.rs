//! What `cellctl up` starts, decided from the topology and the flags before
//! anything runs (pure: no I/O), so that every problem is reported at once and
//! every port can be checked before the first process starts.
//!
//! - One PostgreSQL server per distinct port among the cells' `db` DSNs and
//!   the ledger DSN; each holds the databases its DSNs name. The DSNs must
//!   name this machine (`127.0.0.1` or `localhost`; the servers listen on 127.0.0.1): `up` cannot start
//!   a server elsewhere.
//! - With `--standby` (or a standby recorded by an earlier `up --standby`),
//!   each of those servers gets a synchronous streaming standby: on its
//!   recorded port if it has one, else on `port + --standby-port-offset`
//!   when no other part of the plan and no port of the state directory
//!   ([`StandbyChoice::avoid`]) has that port, else on the next port up that
//!   is free. A promoted standby (`cellctl failover`) is such a server: its
//!   port + offset can be a logic server's, and a plan that gave it there
//!   would refuse the whole fleet. Once started, a standby's port is
//!   recorded, so the choice is made once: see [`super::standby`].
//! - One `cell` process per address in each cell's `servers`.
//! - `--routers N` routers on consecutive ports from `--router-listen`, each
//!   in a region of the topology in turn (the region new envelopes of its
//!   clients are minted in unless they ask for another).

use std::{collections::BTreeSet, net::SocketAddr};

use redcell_migrations::Schema;
use redcell_topology::Topology;

/// Everything one `up` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub postgres: Vec<PgPlan>,
    pub cells: Vec<CellPlan>,
    pub routers: Vec<RouterPlan>,
}

/// One PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgPlan {
    pub port: u16,
    /// The superuser `initdb` creates: the user of the first DSN on this
    /// port (trust authentication on loopback, as the DSNs carry no password).
    pub superuser: String,
    pub databases: Vec<PgDatabase>,
    /// Its synchronous standby, if it has one.
    pub standby: Option<StandbyPlan>,
}

/// The synchronous streaming standby of a [`PgPlan`] server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyPlan {
    pub port: u16,
}

/// Which servers get a standby, and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandbyChoice {
    /// `--standby`: every server without a recorded standby gets one on its
    /// port plus this offset, or the next free port above.
    pub offset: Option<u16>,
    /// `(primary port, standby port)` pairs recorded by earlier runs. A
    /// recorded standby is planned whatever the flags: a server that has a
    /// standby stays synchronous with it, or the standby would silently fall
    /// behind and a later failover would lose what it missed.
    pub recorded: Vec<(u16, u16)>,
    /// Ports a new standby must not take besides the plan's own: what the
    /// state directory holds (every recorded pair, every data directory,
    /// fenced ones too: a standby on that port would start their data) and
    /// ports the caller found taken now.
    pub avoid: BTreeSet<u16>,
    /// Servers that run already (a running `up` adding cells): one without a
    /// recorded standby gets none in this plan, so that its would-be port
    /// cannot push a new server's standby off its own; the next `up
    /// --standby` gives it one.
    pub running: BTreeSet<u16>,
}

/// One database on a [`PgPlan`] server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgDatabase {
    /// `cell n1` or `ledger`, for progress and errors.
    pub label: String,
    pub name: String,
    /// The DSN's user: created (LOGIN) if it is not the superuser, and the
    /// database's owner.
    pub owner: String,
    pub schema: Schema,
}

/// One logic server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellPlan {
    pub cell: String,
    pub listen: SocketAddr,
}

/// One router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterPlan {
    pub listen: SocketAddr,
    pub region: String,
}

impl PgPlan {
    pub fn part(&self) -> String {
        format!("postgres-{}", self.port)
    }
}

impl StandbyPlan {
    pub fn part(&self) -> String {
        format!("postgres-{}", self.port)
    }

    /// Its `application_name` on the primary (what `synchronous_standby_names`
    /// names) and its physical replication slot's name: lower-case letters,
    /// digits and `_` only, so neither needs quoting.
    pub fn name(&self) -> String {
        format!("standby_{}", self.port)
    }
}

impl CellPlan {
    pub fn part(&self) -> String {
        format!("cell-{}-{}", self.cell, self.listen.port())
    }
}

impl RouterPlan {
    pub fn part(&self) -> String {
        format!("router-{}", self.listen.port())
    }
}

impl Plan {
    /// The plan, or every reason there is none (each naming its source),
    /// two parts on one port among them.
    pub fn new(
        topology: &Topology,
        ledger_dsn: &str,
        routers: u16,
        router_listen: SocketAddr,
        standbys: &StandbyChoice,
    ) -> Result<Plan, Vec<String>> {
        let (plan, mut errors) =
            Plan::build(topology, ledger_dsn, routers, router_listen, standbys);
        errors.extend(plan.collisions(|_| true));
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(errors)
        }
    }

    /// The plan without checking that its parts' ports differ: for a running
    /// `up` that adds parts ([`super::grow`]), where a collision among parts
    /// that run already is not the new parts' to refuse.
    pub fn unchecked(
        topology: &Topology,
        ledger_dsn: &str,
        routers: u16,
        router_listen: SocketAddr,
        standbys: &StandbyChoice,
    ) -> Result<Plan, Vec<String>> {
        let (plan, errors) = Plan::build(topology, ledger_dsn, routers, router_listen, standbys);
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(errors)
        }
    }

    /// The plan and every problem but a port collision.
    fn build(
        topology: &Topology,
        ledger_dsn: &str,
        routers: u16,
        router_listen: SocketAddr,
        standbys: &StandbyChoice,
    ) -> (Plan, Vec<String>) {
        let mut errors = Vec::new();
        let mut postgres: Vec<PgPlan> = Vec::new();
        let mut add_database =
            |source: String, dsn: &str, label: String, schema: Schema| match local_database(dsn) {
                Ok((port, user, name)) => {
                    let database = PgDatabase {
                        label,
                        name,
                        owner: user.clone(),
                        schema,
                    };
                    match postgres.iter_mut().find(|server| server.port == port) {
                        Some(server) => {
                            if server
                                .databases
                                .iter()
                                .any(|known| known.name == database.name)
                            {
                                errors.push(format!(
                                    "{source}: database {} on port {port} is already used by {}",
                                    database.name,
                                    server
                                        .databases
                                        .iter()
                                        .find(|known| known.name == database.name)
                                        .map_or("another part", |known| known.label.as_str())
                                ));
                            } else {
                                server.databases.push(database);
                            }
                        }
                        None => postgres.push(PgPlan {
                            port,
                            superuser: user,
                            databases: vec![database],
                            standby: None,
                        }),
                    }
                }
                Err(reason) => errors.push(format!("{source}: {reason}")),
            };
        for (index, cell) in topology.cells().iter().enumerate() {
            add_database(
                format!("cells[{index}].db ({})", cell.name),
                &cell.db,
                format!("cell {}", cell.name),
                Schema::Orders,
            );
        }
        add_database(
            "--ledger-dsn".to_owned(),
            ledger_dsn,
            "ledger".to_owned(),
            Schema::Ledger,
        );
        let mut cells = Vec::new();
        for (index, cell) in topology.cells().iter().enumerate() {
            for (server, address) in cell.servers.iter().enumerate() {
                match address.parse::<SocketAddr>() {
                    Ok(listen) => cells.push(CellPlan {
                        cell: cell.name.clone(),
                        listen,
                    }),
                    Err(_) => errors.push(format!(
                        "cells[{index}].servers[{server}] ({}): {address:?} is not IP:port; \
                         `up` starts logic servers on this machine's addresses",
                        cell.name
                    )),
                }
            }
        }

        let mut planned_routers = Vec::new();
        if routers == 0 {
            errors.push("--routers: must be at least 1".to_owned());
        }
        let regions = topology.regions();
        for index in 0..routers {
            let Some(port) = router_listen.port().checked_add(index) else {
                errors.push(format!(
                    "--routers {routers} from --router-listen {router_listen}: ports run past 65535"
                ));
                break;
            };
            let Some(region) = regions.get(usize::from(index) % regions.len().max(1)) else {
                errors.push("the topology has no region for a router".to_owned());
                break;
            };
            planned_routers.push(RouterPlan {
                listen: SocketAddr::new(router_listen.ip(), port),
                region: region.clone(),
            });
        }

        let mut taken: BTreeSet<u16> = postgres
            .iter()
            .map(|server| server.port)
            .chain(cells.iter().map(|cell| cell.listen.port()))
            .chain(planned_routers.iter().map(|router| router.listen.port()))
            .chain(standbys.recorded.iter().map(|(_, standby)| *standby))
            .chain(standbys.avoid.iter().copied())
            .collect();
        for server in &mut postgres {
            let recorded = standbys
                .recorded
                .iter()
                .find(|(primary, _)| *primary == server.port)
                .map(|(_, standby)| *standby);
            let port = match (recorded, standbys.offset) {
                (Some(port), _) => Some(port),
                (None, Some(_)) if standbys.running.contains(&server.port) => None,
                (None, Some(offset)) => {
                    let free = server
                        .port
                        .checked_add(offset)
                        .and_then(|first| (first..=u16::MAX).find(|port| !taken.contains(port)));
                    if free.is_none() {
                        errors.push(format!(
                            "--standby-port-offset {offset}: no free port for the standby of {} \
                             at or above {} (65535 at most)",
                            server.part(),
                            u32::from(server.port) + u32::from(offset)
                        ));
                    }
                    taken.extend(free);
                    free
                }
                (None, None) => None,
            };
            server.standby = port.map(|port| StandbyPlan { port });
        }

        let plan = Plan {
            postgres,
            cells,
            routers: planned_routers,
        };
        (plan, errors)
    }

    /// `up --listen-offset N`: every PostgreSQL server and logic server
    /// listens at its port plus N (routers stay: no link to them is
    /// proxied); the DSNs and cells.yaml still name the unshifted ports,
    /// where a fault-injection proxy forwards to the shifted ones. Ports
    /// shifted onto another part's are the caller's to check
    /// ([`Plan::collisions`]).
    pub fn with_listen_offset(mut self, offset: Option<u16>) -> Result<Plan, Vec<String>> {
        let Some(offset) = offset else {
            return Ok(self);
        };
        let mut errors = Vec::new();
        let mut shift = |port: u16, part: &str| {
            port.checked_add(offset).unwrap_or_else(|| {
                errors.push(format!(
                    "--listen-offset {offset}: the port of {part} would be past 65535"
                ));
                port
            })
        };
        for pg in &mut self.postgres {
            if pg.standby.is_some() {
                return Err(vec![
                    "--listen-offset cannot be combined with a standby (--standby, or one recorded)"
                        .to_owned(),
                ]);
            }
            pg.port = shift(pg.port, &pg.part());
        }
        for cell in &mut self.cells {
            let port = shift(cell.listen.port(), &cell.part());
            cell.listen.set_port(port);
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors)
        }
    }

    /// Every port given to two parts where one of them is `of` interest
    /// (`|_| true`: every collision of the plan).
    pub fn collisions(&self, of: impl Fn(u16) -> bool) -> Vec<String> {
        let mut errors = Vec::new();
        let mut seen: Vec<(u16, String)> = Vec::new();
        for (port, part) in self.ports() {
            if let Some((_, first)) = seen.iter().find(|(known, _)| *known == port) {
                if of(port) {
                    errors.push(format!("port {port} is given to both {first} and {part}"));
                }
            } else {
                seen.push((port, part));
            }
        }
        errors
    }

    /// Every port the fleet listens on, with the part that will.
    pub fn ports(&self) -> Vec<(u16, String)> {
        let postgres = self.postgres.iter().flat_map(|pg| {
            let labels: Vec<&str> = pg.databases.iter().map(|db| db.label.as_str()).collect();
            let primary = (pg.port, format!("PostgreSQL for {}", labels.join(", ")));
            let standby = pg
                .standby
                .as_ref()
                .map(|standby| (standby.port, format!("PostgreSQL standby of {}", pg.part())));
            std::iter::once(primary).chain(standby)
        });
        let cells = self.cells.iter().map(|cell| {
            (
                cell.listen.port(),
                format!("logic server of cell {}", cell.cell),
            )
        });
        let routers = self
            .routers
            .iter()
            .map(|router| (router.listen.port(), format!("router ({})", router.region)));
        postgres.chain(cells).chain(routers).collect()
    }
}

/// `(port, user, database)` of a DSN that names a server on this machine.
pub fn local_database(dsn: &str) -> Result<(u16, String, String), String> {
    let config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|error| format!("malformed DSN: {error}"))?;
    let shown = redcell_migrations::display_dsn(dsn);
    let local = match config.get_hosts() {
        [tokio_postgres::config::Host::Tcp(host)] => {
            matches!(host.as_str(), "127.0.0.1" | "localhost")
        }
        _ => false,
    };
    if !local {
        return Err(format!(
            "{shown} is not one server on 127.0.0.1/localhost; `up` starts PostgreSQL on this machine only"
        ));
    }
    let port = match config.get_ports() {
        [port] => *port,
        [] => 5432,
        _ => return Err(format!("{shown} names several ports")),
    };
    let user = config
        .get_user()
        .ok_or_else(|| format!("{shown} names no user"))?
        .to_owned();
    let database = config
        .get_dbname()
        .ok_or_else(|| format!("{shown} names no database"))?
        .to_owned();
    Ok((port, user, database))
}

//! A running `up` follows cells.yaml: the PostgreSQL server and logic
//! servers of a cell that appears in the file are started, so that `cellctl
//! expand --apply` on a local fleet ends with its new cells serving (issue 12
//! item 1).
//!
//! The serve loop calls [`Growth::follow`] every second; it rereads the file
//! and acts only when the bytes changed and the new text is valid, and only
//! on cells whose *names* are new. Everything else a change does (status,
//! epochs, minting, a DB moved by `cellctl failover`) is the running
//! processes' own reload, never a start here: starting a server for a
//! changed DSN could start a second writer.
//!
//! For the new cells the start sequence is `up`'s own ([`super::Launch`]):
//! the plan of the new topology (same flags, same standby choice) gives
//! their PostgreSQL servers (initdb, start, create and migrate the
//! databases, with a standby under `--standby` on a free port, recorded)
//! and their logic servers, which must answer SERVING within
//! `--start-timeout`. Only the ports of these new parts are checked (against
//! every other part of the plan and against what is bound now): a
//! collision among parts that run already (say a promoted standby whose
//! port + offset is a logic server's) is not the new cell's to refuse, and
//! no standby is started here for a server that runs already. Each part is a child
//! of `up` with its pid recorded, so `down` and Ctrl-C stop it like the
//! rest. A failed start is reported in `up`'s log once and not retried every
//! second (the cell stays known); `cellctl status` shows it down, and
//! restarting `up` starts it. A new cell whose database is on a PostgreSQL
//! server that already runs is not supported here (the note says how to
//! create it by hand): by the `expand` convention every cell gets a server
//! of its own.

use std::{
    collections::BTreeSet,
    net::{IpAddr, TcpListener},
    path::PathBuf,
};

use redcell_topology::Topology;

use super::{
    Launch,
    fleet::{Fleet, Kind},
    plan::Plan,
    postgres, progress, standby,
};

/// What this `up` already runs, to tell new cells from known ones.
#[derive(Debug)]
pub struct Growth {
    path: PathBuf,
    /// The file's bytes when last read (empty before the first read).
    seen: Vec<u8>,
    /// Every cell name started (or tried).
    cells: BTreeSet<String>,
    /// Every PostgreSQL port this `up` runs (primaries and standbys).
    postgres: BTreeSet<u16>,
}

impl Growth {
    pub fn new(launch: &Launch<'_>) -> Growth {
        let plan = launch.plan;
        Growth {
            path: launch.topology.to_owned(),
            // Nothing seen yet: the first call compares the file with the
            // plan, so a cell written while `up` was starting is not missed.
            seen: Vec::new(),
            cells: plan.cells.iter().map(|cell| cell.cell.clone()).collect(),
            postgres: plan
                .postgres
                .iter()
                .flat_map(|pg| std::iter::once(pg.port).chain(pg.standby.as_ref().map(|s| s.port)))
                .collect(),
        }
    }

    /// Starts the parts of cells new in the file since the last call.
    pub async fn follow(&mut self, launch: &Launch<'_>, fleet: &mut Fleet) {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return; // mid-rename or removed: the next tick reads it again
        };
        if bytes == self.seen {
            return;
        }
        self.seen = bytes;
        let Ok(topology) = Topology::parse(&String::from_utf8_lossy(&self.seen)) else {
            return; // the servers refuse it too, and log why
        };
        let new: Vec<String> = topology
            .cells()
            .iter()
            .map(|cell| cell.name.clone())
            .filter(|name| !self.cells.contains(name))
            .collect();
        if new.is_empty() {
            return;
        }
        self.cells.extend(new.iter().cloned());
        progress::note(&format!(
            "{} adds cell(s) {}: starting their PostgreSQL and logic servers",
            self.path.display(),
            new.join(", ")
        ));
        if let Err(why) = self.start(&topology, &new, launch, fleet).await {
            progress::note(&format!(
                "cell(s) {} not started: {why}; the rest keeps running",
                new.join(", ")
            ));
        }
    }

    /// The ports of the parts this start adds (the new cells' logic
    /// servers, the PostgreSQL servers of their databases that do not run
    /// yet, and those servers' standbys) must be given to no other part of
    /// the plan and be free on this machine now. A collision among parts
    /// that run already is not theirs to refuse.
    fn check_ports(
        &self,
        plan: &Plan,
        new: &[String],
        is_new: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        let mut added: Vec<(IpAddr, u16, String)> = Vec::new();
        for pg in &plan.postgres {
            if self.postgres.contains(&pg.port) || !pg.databases.iter().any(|db| is_new(&db.label))
            {
                continue;
            }
            let local = IpAddr::from([127, 0, 0, 1]);
            added.push((local, pg.port, pg.part()));
            if let Some(standby) = &pg.standby {
                added.push((local, standby.port, standby.part()));
            }
        }
        for cell in plan.cells.iter().filter(|cell| new.contains(&cell.cell)) {
            added.push((cell.listen.ip(), cell.listen.port(), cell.part()));
        }
        let ports: BTreeSet<u16> = added.iter().map(|(_, port, _)| *port).collect();
        let mut problems = plan.collisions(|port| ports.contains(&port));
        problems.extend(added.iter().filter_map(|(ip, port, part)| {
            TcpListener::bind((*ip, *port))
                .err()
                .map(|error| format!("port {port} ({part}) is already in use: {error}"))
        }));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    async fn start(
        &mut self,
        topology: &Topology,
        new: &[String],
        launch: &Launch<'_>,
        fleet: &mut Fleet,
    ) -> Result<(), String> {
        let args = launch.args;
        let mut standbys = standby::choice(
            launch.state,
            args.standby.then_some(args.standby_port_offset),
        )
        .map_err(|error| error.to_string())?;
        standbys.running = self.postgres.clone();
        let plan = standby::plan_free(standbys, |standbys| {
            Plan::unchecked(
                topology,
                &args.ledger_dsn,
                args.routers,
                args.router_listen,
                standbys,
            )
        })
        .and_then(|plan| plan.with_listen_offset(args.listen_offset))
        .map_err(|errors| errors.join("; "))?;
        let is_new = |label: &str| new.iter().any(|name| label == format!("cell {name}"));
        self.check_ports(&plan, new, &is_new)?;
        for pg in &plan.postgres {
            let databases: Vec<_> = pg
                .databases
                .iter()
                .filter(|database| is_new(&database.label))
                .cloned()
                .collect();
            if databases.is_empty() {
                continue;
            }
            if self.postgres.contains(&pg.port) {
                return Err(format!(
                    "{} runs already; create database(s) {} on it and `cellctl migrate --cell` \
                     them, then restart `up`",
                    pg.part(),
                    databases
                        .iter()
                        .map(|database| database.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            self.postgres.insert(pg.port);
            self.postgres
                .extend(pg.standby.as_ref().map(|standby| standby.port));
            let pg = super::plan::PgPlan {
                databases,
                ..pg.clone()
            };
            postgres::start(
                &pg,
                launch.pg_binaries,
                launch.pg_user,
                args.fast,
                launch.state,
                fleet,
            )
            .await
            .map_err(|error| error.to_string())?;
        }
        let servers: Vec<_> = plan
            .cells
            .iter()
            .filter(|cell| new.contains(&cell.cell))
            .collect();
        let step = progress::step(format!(
            "starting {} logic server(s) of {}",
            servers.len(),
            new.join(", ")
        ));
        let mut parts = Vec::new();
        for cell in servers {
            if let Err(error) = fleet.spawn(&cell.part(), Kind::Cell, launch.cell_command(cell)) {
                step.failed();
                return Err(error.to_string());
            }
            parts.push((cell.part(), cell.listen));
        }
        launch
            .healthy(fleet, step, &parts)
            .await
            .map_err(|error| error.to_string())
    }
}

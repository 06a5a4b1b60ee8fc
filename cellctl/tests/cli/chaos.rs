//! The chaos bank test (issue 16 item 1): Jepsen's bank test on a whole
//! `cellctl up` fleet — the `up` test's site (north n1 with two logic
//! servers and n2, south s1; four PostgreSQL servers with the ledger's; one
//! router) — while a nemesis injects faults from a schedule generated from
//! a printed seed ([`nemesis`]).
//!
//! The fleet runs with `up --listen-offset N --restart-crashed`: every
//! logic server and PostgreSQL server listens at its cells.yaml port + N,
//! and the test's own TCP fault proxy ([`proxy`]) listens on the cells.yaml
//! ports, so every router → logic server, logic server → order DB and logic
//! server → ledger connection crosses a link the nemesis can cut or delay;
//! a part killed (kill -9, or `pg_ctl stop -m immediate`) is started again
//! by `up`, as a supervisor would.
//!
//! The client ([`client`]) sends and opens through the router throughout,
//! logs every acknowledgement, retries every retryable failure with the
//! same request and replays some acknowledged requests 2–5 times. When the
//! schedule is done every link is healed, every part must serve again, the
//! load stops, and the fleet is held to the log: the live scenarios' checks
//! ([`checks`]: no acknowledged Send or Open lost, none duplicated, the
//! ledger settled to the log and conserved exactly), every replay answered
//! as the first time, `cellctl reconcile` clean. One summary line says what
//! was injected, run, acknowledged, lost and duplicated, and how to replay
//! the run.
//!
//! Bounded: `REDCELL_CHAOS_SECS` (default [`DEFAULT_SECS`]) of faults; a
//! longer run by hand sets it (and `REDCELL_CHAOS_SEED` to replay one).

#[path = "chaos/client.rs"]
mod client;
#[path = "chaos/nemesis.rs"]
mod nemesis;
#[path = "chaos/proxy.rs"]
mod proxy;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redcell_payments::PgLedger;
use redcell_pgsys::sys::{Signal, send_signal};
use redcell_topology::Topology;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use self::{
    client::Replays,
    nemesis::{Fault, Step, Targets},
    proxy::{Mode, Proxy},
};
use crate::{
    live::{
        checks,
        load::{self, Router, Sender},
    },
    up::{Site, Up},
};

/// Seconds of faults in the CI run.
const DEFAULT_SECS: u64 = 45;
/// What each load user is funded with: far more than a run sends.
const FUNDS_CENTS: i64 = 10_000_000;
/// How long a killed part may take to serve again, or the load to show
/// its first acknowledgements (bounded; running out fails the test).
const WAIT: Duration = Duration::from_secs(90);
/// The cell `expand` adds, splitting n2.
const NEW_CELL: &str = "n3";

fn senders() -> Vec<Sender> {
    [
        ("chaos-n0", "north"),
        ("chaos-n1", "north"),
        ("chaos-s0", "south"),
        ("chaos-s1", "south"),
    ]
    .into_iter()
    .map(|(user, region)| Sender {
        user: user.to_owned(),
        region: region.to_owned(),
    })
    .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

fn port_of(dsn: &str) -> u16 {
    let config: tokio_postgres::Config = dsn.parse().unwrap();
    config.get_ports()[0]
}

/// The fleet under the proxy, and what the nemesis aims at.
struct Chaos {
    /// Dropped first: `down` needs the site's state directory.
    up: Option<Up>,
    site: Site,
    runtime: tokio::runtime::Runtime,
    proxy: Proxy,
    offset: u16,
    router: SocketAddr,
    /// Every address a part really listens on (port + offset), to wait for.
    shifted: Vec<SocketAddr>,
    /// Each logic server's cells.yaml address by role (`n1/2`).
    roles: BTreeMap<String, SocketAddr>,
    /// The new cell's logic server and DSN (cells.yaml side).
    new_server: String,
    new_dsn: String,
    expanded: bool,
}

impl Chaos {
    /// The site, its proxy links and `up` behind them.
    fn start() -> (Chaos, Targets) {
        let site = Site::new();
        let topology = Topology::parse(&std::fs::read_to_string(site.topology()).unwrap()).unwrap();
        let (pg, mut all) = site.ports();
        // The new cell's ports, chosen free with the rest held.
        let held: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let new_ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        all.extend(&new_ports);
        let offset = listen_offset(&all);
        drop(held);
        let new_server = format!("127.0.0.1:{}", new_ports[0]);
        let new_dsn = format!(
            "postgres://redcell@127.0.0.1:{}/cell_{NEW_CELL}",
            new_ports[1]
        );

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shift = |address: SocketAddr| SocketAddr::new(address.ip(), address.port() + offset);
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut proxy = Proxy::default();
        let mut targets = Targets {
            servers: Vec::new(),
            cell_dbs: Vec::new(),
            ledger: pg[3],
            to_servers: Vec::new(),
            to_dbs: Vec::new(),
            to_ledger: "cells->ledger".to_owned(),
            failable: Vec::new(),
        };
        let mut shifted = Vec::new();
        let mut roles = BTreeMap::new();
        runtime.block_on(async {
            for cell in topology.cells() {
                for (index, server) in cell.servers.iter().enumerate() {
                    let address: SocketAddr = server.parse().unwrap();
                    let role = format!("{}/{}", cell.name, index + 1);
                    let link = format!("router->{role}");
                    proxy.add(&link, address, shift(address)).await;
                    eprintln!(
                        "chaos: {role} is {server} (listening on {})",
                        shift(address)
                    );
                    targets.to_servers.push(link);
                    targets.servers.push((cell.name.clone(), role.clone()));
                    roles.insert(role, address);
                    shifted.push(shift(address));
                }
                let db = port_of(&cell.db);
                let link = format!("{}->db", cell.name);
                eprintln!(
                    "chaos: {}'s order DB is port {db} (listening on {})",
                    cell.name,
                    db + offset
                );
                proxy.add(&link, local(db), local(db + offset)).await;
                targets.to_dbs.push(link);
                targets.cell_dbs.push((cell.name.clone(), db));
                // `fail` refuses to take a region's last active cell.
                let region = topology.cells().iter().filter(|c| c.region == cell.region);
                if region.count() > 1 {
                    targets.failable.push(cell.name.clone());
                }
                shifted.push(local(db + offset));
            }
            proxy
                .add("cells->ledger", local(pg[3]), local(pg[3] + offset))
                .await;
            shifted.push(local(pg[3] + offset));
            for (link, port) in [
                (format!("router->{NEW_CELL}/1"), new_ports[0]),
                (format!("{NEW_CELL}->db"), new_ports[1]),
            ] {
                proxy.add(&link, local(port), local(port + offset)).await;
            }
        });

        let offset_text = offset.to_string();
        let starting = Instant::now();
        let up = site.up_with(
            "chaos",
            &["--listen-offset", &offset_text, "--restart-crashed"],
        );
        eprintln!(
            "chaos: the fleet was up after {} ms (listen offset {offset})",
            starting.elapsed().as_millis()
        );
        let routers = std::fs::read_to_string(site.state().join("routers")).unwrap();
        let router: SocketAddr = routers.lines().next().unwrap().parse().unwrap();
        shifted.push(router);
        let chaos = Chaos {
            up: Some(up),
            site,
            runtime,
            proxy,
            offset,
            router,
            shifted,
            roles,
            new_server,
            new_dsn,
            expanded: false,
        };
        (chaos, targets)
    }

    fn state(&self) -> String {
        self.site.state().to_str().unwrap().to_owned()
    }

    fn pid_file(&self, part: &str) -> PathBuf {
        self.site.state().join("pids").join(format!("{part}.pid"))
    }

    fn pid(&self, part: &str) -> Option<u32> {
        std::fs::read_to_string(self.pid_file(part))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `cellctl ARGS --state-dir S`, which must succeed.
    fn cellctl(&self, args: &[&str]) -> String {
        let state = self.state();
        let mut all = args.to_vec();
        all.extend(["--state-dir", &state]);
        let (code, out, errors) = self.site.run(&all);
        assert_eq!(code, 0, "cellctl {all:?}:\n{out}{errors}");
        out
    }

    /// `cellctl ARGS --apply`, waiting for the fleet to serve it.
    fn apply(&self, args: &[&str]) {
        let mut all = args.to_vec();
        all.extend(["--apply", "--wait-secs", "60"]);
        let started = Instant::now();
        self.cellctl(&all);
        eprintln!(
            "chaos:   `cellctl {}` applied in {} ms",
            args.join(" "),
            started.elapsed().as_millis()
        );
    }

    /// kill -9 (or SIGQUIT for PostgreSQL) of `part`, then waits until
    /// `up` has started it again and it accepts connections on `address`.
    fn crash(&self, part: &str, signal: Signal, address: SocketAddr) {
        let pid = self
            .pid(part)
            .unwrap_or_else(|| panic!("no pid file for {part}"));
        send_signal(pid, signal).unwrap();
        let killed = Instant::now();
        self.wait(&format!("{part} started again"), || {
            self.pid(part).is_some_and(|again| again != pid)
        });
        self.wait(&format!("{part} serving on {address}"), || {
            self.accepts(address)
        });
        eprintln!(
            "chaos:   {part} (pid {pid}) back after {} ms",
            killed.elapsed().as_millis()
        );
    }

    fn accepts(&self, address: SocketAddr) -> bool {
        std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
    }

    fn wait(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Carries out one step of the schedule.
    fn inject(&mut self, fault: &Fault) {
        let shift = |port: u16| SocketAddr::from(([127, 0, 0, 1], port + self.offset));
        match fault {
            Fault::KillServer { cell, server } => {
                let port = self.roles[server].port();
                let part = format!("cell-{cell}-{}", port + self.offset);
                self.crash(&part, Signal::Kill, shift(port));
                let address = shift(port);
                self.wait(&format!("{part} SERVING"), || {
                    self.runtime.block_on(serving(address))
                });
            }
            Fault::KillRouter => {
                let part = format!("router-{}", self.router.port());
                self.crash(&part, Signal::Kill, self.router);
                let address = self.router;
                self.wait(&format!("{part} SERVING"), || {
                    self.runtime.block_on(serving(address))
                });
            }
            Fault::CrashPostgres { port, .. } => {
                // What `pg_ctl stop -m immediate` sends the postmaster.
                let part = format!("postgres-{}", port + self.offset);
                self.crash(&part, Signal::Quit, shift(*port));
            }
            Fault::Cut { link, hold } => self.hold(link, Mode::Cut, *hold),
            Fault::Delay { link, by, hold } => self.hold(link, Mode::Delay(*by), *hold),
            Fault::Blackhole { link, hold } => self.hold(link, Mode::Blackhole, *hold),
            Fault::FailRestore { cell, hold } => {
                self.apply(&["fail", cell]);
                std::thread::sleep(*hold);
                self.apply(&["restore", cell]);
            }
            Fault::ExpandSwitch { hold } => {
                assert!(!self.expanded, "one expansion a run");
                let servers = format!("{NEW_CELL}={}", self.new_server);
                let db = format!("{NEW_CELL}={}", self.new_dsn);
                let split = format!("n2:{NEW_CELL}");
                self.apply(&[
                    "expand",
                    "--split",
                    &split,
                    "--servers",
                    &servers,
                    "--db",
                    &db,
                ]);
                let server: SocketAddr = self.new_server.parse().unwrap();
                self.shifted
                    .push(SocketAddr::new(server.ip(), server.port() + self.offset));
                self.shifted.push(shift(port_of(&self.new_dsn)));
                self.expanded = true;
                std::thread::sleep(*hold);
                self.apply(&["switch"]);
            }
        }
    }

    fn hold(&self, link: &str, mode: Mode, hold: Duration) {
        let link = self.proxy.link(link);
        link.set(mode);
        std::thread::sleep(hold);
        link.set(Mode::Pass);
    }

    /// Every link healed and every part accepting again.
    fn heal(&self) {
        self.proxy.heal_all();
        for address in &self.shifted {
            self.wait(&format!("{address} accepting"), || self.accepts(*address));
        }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        // `down` before the proxy goes (with the runtime).
        drop(self.up.take());
    }
}

/// An offset whose shifted ports are all free now and none of `ports`.
fn listen_offset(ports: &[u16]) -> u16 {
    (1..4000u16)
        .map(|step| step * 11)
        .find(|offset| {
            ports.iter().all(|port| {
                port.checked_add(*offset).is_some_and(|shifted| {
                    !ports.contains(&shifted) && TcpListener::bind(("127.0.0.1", shifted)).is_ok()
                })
            })
        })
        .expect("free ports for the listen offset")
}

/// True when the gRPC health service at `address` answers SERVING.
async fn serving(address: SocketAddr) -> bool {
    let probe = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(reply.into_inner().status() == ServingStatus::Serving)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// Lost or duplicated, by what the checks said (see RELIABILITY.md).
fn duplicated(problem: &str) -> bool {
    [
        "two Sends",
        "holds two claims",
        "never acknowledged",
        "exceed its",
    ]
    .iter()
    .any(|sign| problem.contains(sign))
}

/// A run of the bank test: the seed's schedule under load, then the checks.
#[test]
fn chaos_bank_test_loses_and_duplicates_nothing() {
    let seed = env_u64("REDCELL_CHAOS_SEED").unwrap_or_else(rand::random);
    let secs = env_u64("REDCELL_CHAOS_SECS").unwrap_or(DEFAULT_SECS);
    let reproduce = format!(
        "REDCELL_CHAOS_SEED={seed} REDCELL_CHAOS_SECS={secs} \
         cargo test -p redcell-cellctl --test cli chaos_bank -- --nocapture"
    );
    eprintln!("chaos: seed {seed}, {secs} s of faults; to replay: {reproduce}");
    let (mut chaos, targets) = Chaos::start();
    let steps: Vec<Step> = nemesis::schedule(seed, Duration::from_secs(secs), &targets);
    eprintln!("chaos: the schedule ({} faults):", steps.len());
    for (index, step) in steps.iter().enumerate() {
        eprintln!(
            "chaos:   {:>2}. {}, then {} ms quiet",
            index + 1,
            step.fault,
            step.quiet.as_millis()
        );
    }

    let state = chaos.state();
    let mut funded = BTreeMap::new();
    for sender in senders() {
        chaos.cellctl(&["fund", &sender.user, &FUNDS_CENTS.to_string()]);
        funded.insert(sender.user.clone(), FUNDS_CENTS);
    }
    let router = chaos
        .runtime
        .block_on(Router::connect(std::path::Path::new(&state)));
    let log: load::SharedLog = Arc::new(Mutex::new(load::Log::default()));
    let replays = Arc::new(Replays::default());
    let load = client::start(&chaos.runtime, &router, &senders(), &log, &replays, seed);
    chaos.wait("the load's first 10 Sends acknowledged", || {
        log.lock().unwrap().sends.len() >= 10
    });

    let started = Instant::now();
    let mut injected: BTreeMap<&'static str, u32> = BTreeMap::new();
    for (index, step) in steps.iter().enumerate() {
        eprintln!(
            "chaos: +{:.1}s {:>2}. {}",
            started.elapsed().as_secs_f64(),
            index + 1,
            step.fault
        );
        let retried = || log.lock().unwrap().retried.values().sum::<u64>();
        let before = retried();
        chaos.inject(&step.fault);
        *injected.entry(step.fault.kind()).or_default() += 1;
        std::thread::sleep(step.quiet);
        // Evidence the fault reached the client (a fault the fleet absorbs
        // without a refusal shows 0).
        eprintln!(
            "chaos:   {} attempts refused and retried during it",
            retried() - before
        );
    }
    let faulted = started.elapsed();
    chaos.heal();
    for link in &chaos.proxy.links {
        eprintln!(
            "chaos: link {} carried {} connections",
            link.name,
            link.accepted()
        );
    }
    let before = log.lock().unwrap().sends.len();
    chaos.wait("10 Sends acknowledged after the heal", || {
        log.lock().unwrap().sends.len() >= before + 10
    });
    load.stop(&chaos.runtime);

    let ledger_dsn = std::fs::read_to_string(chaos.site.state().join("ledger-dsn")).unwrap();
    let ledger = PgLedger::connect(ledger_dsn.trim(), 2).unwrap();
    let log = log.lock().unwrap().clone();
    let findings = chaos
        .runtime
        .block_on(checks::against_the_fleet(&router, &log));
    let dups = findings.problems.iter().filter(|p| duplicated(p)).count();
    let lost = findings.problems.len() - dups;
    let mismatches = replays.mismatches.lock().unwrap().clone();
    for problem in findings.problems.iter().take(30) {
        eprintln!("chaos PROBLEM: {problem}");
    }
    // The checks with the ledger (they wait for settlement and panic on a
    // problem), then reconcile; the summary is printed either way.
    let audit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        chaos
            .runtime
            .block_on(checks::verify(&router, &log, &funded, &ledger))
    }));
    let (code, out, errors) = chaos.site.run(&["reconcile", "--state-dir", &state]);
    let reconciled = out
        .lines()
        .find(|line| line.contains("discrepanc"))
        .unwrap_or("no summary line")
        .to_owned();
    let ledger_said = match &audit {
        Ok(audit) => format!(
            "{} envelopes, {} claims, settled after {} ms: balances {} + held {} = funded {}",
            audit.envelopes,
            audit.claims,
            audit.settled_after.as_millis(),
            audit.balances_cents,
            audit.held_cents,
            audit.funded_cents
        ),
        Err(_) => "FAILED (see the panic above)".to_owned(),
    };
    let no_share: u64 = log.no_share.values().sum();
    let retried: u64 = log.retried.values().sum();
    eprintln!(
        "chaos SUMMARY: seed {seed}; {} faults in {:.0} s ({}); operations run {} \
         (acknowledged {}: {} Sends, {} Opens; {} Opens answered without a share; {} \
         unanswered), {retried} attempts retried ({:?}); replays {} Sends + {} Opens, \
         {} not identical; lost {lost}, duplicated {dups}; ledger: {ledger_said}; \
         reconcile: {reconciled}; reproduce: {reproduce}",
        steps.len(),
        faulted.as_secs_f64(),
        injected
            .iter()
            .map(|(kind, n)| format!("{kind} x{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        log.sends.len() + log.opens.len() + no_share as usize + log.unresolved.len(),
        log.sends.len() + log.opens.len(),
        log.sends.len(),
        log.opens.len(),
        no_share,
        log.unresolved.len(),
        log.retried,
        replays.sends.load(std::sync::atomic::Ordering::Relaxed),
        replays.opens.load(std::sync::atomic::Ordering::Relaxed),
        mismatches.len(),
    );
    if let Err(panic) = audit {
        std::panic::resume_unwind(panic);
    }
    assert!(
        mismatches.is_empty(),
        "replays not identical: {mismatches:#?}"
    );
    assert_eq!(code, 0, "reconcile:\n{out}{errors}");
    assert!(
        out.contains(" 0 discrepancies") && out.contains("(holds)"),
        "{out}"
    );
    drop(chaos);
}

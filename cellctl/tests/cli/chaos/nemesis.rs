//! The nemesis's schedule: every fault of a run, generated up front from one
//! seed (rand's `StdRng`, ChaCha12), printed before the load starts, then
//! carried out in order by the scenario. Pure: the same seed and targets
//! give the same schedule, so a failing run is replayed with
//! `REDCELL_CHAOS_SEED=<seed>` (what the fleet does meanwhile is not
//! deterministic — processes and the network are real — but the faults,
//! their targets, order and lengths are).
//!
//! Every schedule holds each kind of fault at least once, in an order the
//! seed shuffles (so even the short CI run crosses every path: both
//! process kills, both PostgreSQL crashes, a cut of each kind of link, a
//! delay, a blackhole, fail/restore and expand/switch); a longer run (`secs`) adds
//! faults drawn at random until its length is filled. Faults run one at a
//! time: each is injected, held, healed, then the fleet gets a quiet pause.

use std::{fmt, time::Duration};

use rand::{RngExt, SeedableRng, rngs::StdRng, seq::SliceRandom};

/// What the nemesis can aim at: the fleet's parts and proxy links.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Logic servers, by (cell, role): the role (`n1/2`: n1's second
    /// server) rather than the address, so that a seed's printed schedule is
    /// the same in every run, whatever ports the run was given.
    pub servers: Vec<(String, String)>,
    /// PostgreSQL servers of the cells, by (cell, cells.yaml port).
    pub cell_dbs: Vec<(String, u16)>,
    /// The ledger's cells.yaml/DSN port.
    pub ledger: u16,
    /// Proxy links router → logic server.
    pub to_servers: Vec<String>,
    /// Proxy links logic server → order DB.
    pub to_dbs: Vec<String>,
    /// The proxy link logic servers → ledger.
    pub to_ledger: String,
    /// Cells `fail`/`restore` may take out of the mint pool.
    pub failable: Vec<String>,
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a logic server (by role, `n1/2`); `up --restart-crashed`
    /// starts it again.
    KillServer { cell: String, server: String },
    /// kill -9 of the router.
    KillRouter,
    /// `pg_ctl stop -m immediate` (SIGQUIT to the postmaster) of a cell's
    /// order DB or of the ledger; `up` starts it again.
    CrashPostgres { what: String, port: u16 },
    /// Every connection through the link dropped, new ones refused.
    Cut { link: String, hold: Duration },
    /// Nothing through the link either way, nothing closed: a silent
    /// partition, healed after `hold`.
    Blackhole { link: String, hold: Duration },
    /// Every chunk through the link held back `by`.
    Delay {
        link: String,
        by: Duration,
        hold: Duration,
    },
    /// `cellctl fail CELL --apply`, `hold`, `cellctl restore CELL --apply`.
    FailRestore { cell: String, hold: Duration },
    /// `cellctl expand --apply` of the scenario's new cell, `hold`, then
    /// `cellctl switch --apply` (at most once a run).
    ExpandSwitch { hold: Duration },
}

/// One step: the fault, then a quiet pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub quiet: Duration,
}

impl Fault {
    /// A rough length, to fill a run's seconds (a kill is healed when the
    /// part serves again, about a second after `up` notices).
    fn expected(&self) -> Duration {
        match self {
            Fault::KillServer { .. } | Fault::KillRouter => Duration::from_secs(3),
            Fault::CrashPostgres { .. } => Duration::from_secs(3),
            Fault::Cut { hold, .. } | Fault::Delay { hold, .. } | Fault::Blackhole { hold, .. } => {
                *hold
            }
            Fault::FailRestore { hold, .. } => *hold + Duration::from_secs(4),
            Fault::ExpandSwitch { hold } => *hold + Duration::from_secs(15),
        }
    }

    /// The kind's name, for the summary's counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillServer { .. } => "kill -9 logic server",
            Fault::KillRouter => "kill -9 router",
            Fault::CrashPostgres { what, .. } if what == "ledger" => "crash ledger PostgreSQL",
            Fault::CrashPostgres { .. } => "crash cell PostgreSQL",
            Fault::Cut { link, .. } if link.starts_with("router") => "cut router->cell",
            Fault::Cut { link, .. } if link.ends_with("ledger") => "cut cell->ledger",
            Fault::Cut { .. } => "cut cell->db",
            Fault::Delay { .. } => "delay link",
            Fault::Blackhole { .. } => "blackhole link",
            Fault::FailRestore { .. } => "fail/restore",
            Fault::ExpandSwitch { .. } => "expand/switch",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillServer { server, .. } => write!(f, "kill -9 logic server {server}"),
            Fault::KillRouter => write!(f, "kill -9 the router"),
            Fault::CrashPostgres { what, .. } => write!(f, "pg_ctl stop -m immediate: {what}"),
            Fault::Cut { link, hold } => write!(f, "cut {link} for {} ms", hold.as_millis()),
            Fault::Blackhole { link, hold } => {
                write!(f, "blackhole {link} for {} ms", hold.as_millis())
            }
            Fault::Delay { link, by, hold } => write!(
                f,
                "delay {link} by {} ms for {} ms",
                by.as_millis(),
                hold.as_millis()
            ),
            Fault::FailRestore { cell, hold } => {
                write!(f, "fail {cell}, {} ms, restore {cell}", hold.as_millis())
            }
            Fault::ExpandSwitch { hold } => {
                write!(f, "expand --apply, {} ms, switch --apply", hold.as_millis())
            }
        }
    }
}

fn ms(rng: &mut StdRng, from: u64, to: u64) -> Duration {
    Duration::from_millis(rng.random_range(from..=to))
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Every kind at least once (shuffled), then random faults until the
/// expected length reaches `run`.
pub fn schedule(seed: u64, run: Duration, targets: &Targets) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults: Vec<Fault> = (0..KINDS)
        .map(|kind| fault(&mut rng, kind, targets))
        .collect();
    faults.shuffle(&mut rng);
    let mut steps: Vec<Step> = Vec::new();
    let mut length = Duration::ZERO;
    for fault in faults {
        length += fault.expected();
        let quiet = ms(&mut rng, 1_000, 3_000);
        length += quiet;
        steps.push(Step { fault, quiet });
    }
    while length < run {
        // Any kind but expand/switch (once a run: one new cell).
        let kind = rng.random_range(0..KINDS - 1);
        let fault = fault(&mut rng, kind, targets);
        length += fault.expected();
        let quiet = ms(&mut rng, 1_000, 3_000);
        length += quiet;
        steps.push(Step { fault, quiet });
    }
    steps
}

/// How many kinds [`fault`] makes; the last is expand/switch.
const KINDS: usize = 11;

fn fault(rng: &mut StdRng, kind: usize, targets: &Targets) -> Fault {
    match kind {
        0 => {
            let (cell, server) = pick(rng, &targets.servers).clone();
            Fault::KillServer { cell, server }
        }
        1 => Fault::KillRouter,
        2 => {
            let (cell, port) = pick(rng, &targets.cell_dbs).clone();
            Fault::CrashPostgres {
                what: format!("cell {cell}"),
                port,
            }
        }
        3 => Fault::CrashPostgres {
            what: "ledger".to_owned(),
            port: targets.ledger,
        },
        4 => Fault::Cut {
            link: pick(rng, &targets.to_servers).clone(),
            hold: ms(rng, 1_000, 5_000),
        },
        5 => Fault::Cut {
            link: pick(rng, &targets.to_dbs).clone(),
            hold: ms(rng, 1_000, 5_000),
        },
        6 => Fault::Cut {
            link: targets.to_ledger.clone(),
            hold: ms(rng, 1_000, 5_000),
        },
        7 => {
            let mut links: Vec<String> = targets.to_servers.clone();
            links.extend(targets.to_dbs.iter().cloned());
            links.push(targets.to_ledger.clone());
            Fault::Delay {
                link: pick(rng, &links).clone(),
                by: ms(rng, 20, 400),
                hold: ms(rng, 2_000, 5_000),
            }
        }
        8 => Fault::FailRestore {
            cell: pick(rng, &targets.failable).clone(),
            hold: ms(rng, 1_000, 3_000),
        },
        9 => {
            let mut links: Vec<String> = targets.to_servers.clone();
            links.extend(targets.to_dbs.iter().cloned());
            links.push(targets.to_ledger.clone());
            Fault::Blackhole {
                link: pick(rng, &links).clone(),
                hold: ms(rng, 2_000, 8_000),
            }
        }
        10 => Fault::ExpandSwitch {
            hold: ms(rng, 1_000, 3_000),
        },
        _ => unreachable!("kind {kind} of {KINDS}"),
    }
}

/// The same seed gives the same schedule, another seed another; every kind
/// is in the shortest one, expand/switch exactly once in a long one.
#[test]
fn chaos_schedule_is_a_function_of_the_seed() {
    let targets = Targets {
        servers: vec![
            ("n1".to_owned(), "n1/1".to_owned()),
            ("s1".to_owned(), "s1/1".to_owned()),
        ],
        cell_dbs: vec![("n1".to_owned(), 3), ("s1".to_owned(), 4)],
        ledger: 5,
        to_servers: vec!["router->n1/1".to_owned(), "router->s1/1".to_owned()],
        to_dbs: vec!["n1->db".to_owned(), "s1->db".to_owned()],
        to_ledger: "cells->ledger".to_owned(),
        failable: vec!["n1".to_owned(), "s1".to_owned()],
    };
    let short = schedule(7, Duration::ZERO, &targets);
    assert_eq!(short, schedule(7, Duration::ZERO, &targets));
    assert_ne!(short, schedule(8, Duration::ZERO, &targets));
    let kinds: std::collections::BTreeSet<&str> =
        short.iter().map(|step| step.fault.kind()).collect();
    assert_eq!(kinds.len(), KINDS, "{kinds:?}");
    let long = schedule(7, Duration::from_secs(600), &targets);
    assert_eq!(long[..short.len()], short[..]);
    assert!(long.len() > 3 * short.len(), "{}", long.len());
    let expansions = long
        .iter()
        .filter(|step| matches!(step.fault, Fault::ExpandSwitch { .. }))
        .count();
    assert_eq!(expansions, 1);
}

//! End-to-end scenarios on a live fleet under load (issue 11 item 6): one
//! `cellctl up` (the `up` test's site: north n1 with two logic servers and
//! n2, south s1; envelopes that stay open for the cells' own TTL), a load
//! client sending and opening through the router throughout each scenario
//! ([`load`]), and after each scenario the same checks against what the
//! client was acknowledged ([`checks`]) plus `cellctl reconcile`.
//!
//! The scenarios share the fleet (started with `--standby`: every
//! PostgreSQL server has a synchronous standby) and run in one test, in
//! order; each is a function of [`Live`] built from the same steps (start
//! the load, a witness envelope with shares to spare in a chosen cell, apply
//! a change and time it, wait until the log shows something, stop and
//! verify). The failover scenario — kill -9 of a cell's primary under Opens,
//! `fail`, `failover`, the old envelopes open again, `restore` — is in
//! [`failover`].
//!
//! Timings (apply to the fleet line, apply to the last envelope minted on a
//! failed cell, a primary's death to the first Open after its failover) are
//! printed (`--nocapture`), never asserted against a bound.

// The load client and the checks are `pub(crate)` so the other live-fleet
// tests can use them (`crate::live::{load, checks}`) instead of compiling a
// second copy.
#[path = "live/checks.rs"]
pub(crate) mod checks;
#[path = "live/failover.rs"]
mod failover;
#[path = "live/load.rs"]
pub(crate) mod load;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redcell_payments::PgLedger;
use redcell_topology::{EnvelopeId, Topology};

use self::load::{Load, Log, Opened, Sender, Sent, SharedLog};
use crate::up::{Site, Up};

/// What each load user is funded with at the start: far more than a
/// scenario sends, so no Send is refused for want of money.
const FUNDS_CENTS: i64 = 1_000_000;
/// How long a scenario waits for the load to show something (bounded; a
/// wait that runs out fails the test with what was seen).
const WAIT: Duration = Duration::from_secs(60);

/// Two senders per region.
fn senders() -> Vec<Sender> {
    [
        ("live-n0", "north"),
        ("live-n1", "north"),
        ("live-s0", "south"),
        ("live-s1", "south"),
    ]
    .into_iter()
    .map(|(user, region)| Sender {
        user: user.to_owned(),
        region: region.to_owned(),
    })
    .collect()
}

/// The sender of witness envelopes (shares to spare, opened by the test).
const WITNESS: &str = "live-witness";
/// Shares of a witness: enough for the test's openers (five in the
/// failover scenario) and every load user besides.
const WITNESS_SHARES: u32 = 12;

/// One topology change as applied: when it started and returned, what it
/// printed, and its `fleet:` lines.
struct Applied {
    started: Instant,
    returned: Instant,
    out: String,
    fleet: Vec<String>,
}

impl Applied {
    /// The figure of the first `fleet:` line, "(N ms after the write ...)".
    fn fleet_ms(&self) -> Option<u64> {
        let line = self.fleet.first()?;
        let before = line.split(" ms").next()?;
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

/// The fleet, the client and everything acknowledged so far.
struct Live {
    /// Dropped first: `down` needs the site's state directory.
    _up: Up,
    site: Site,
    runtime: tokio::runtime::Runtime,
    router: load::Router,
    log: SharedLog,
    funded: BTreeMap<String, i64>,
    ledger: PgLedger,
    /// The topology as started: routes existing IDs, which no change here
    /// alters (a change edits statuses and overrides, never epochs).
    topology: Topology,
}

impl Live {
    /// `cellctl up --standby` (besides `--fast`; the cells' own envelope
    /// TTL), the client connected, every load user funded. Every scenario
    /// runs with synchronous standbys, as the failover scenario needs them:
    /// one fleet for all (CI time).
    fn start() -> Live {
        let site = Site::new();
        let offset = standby_offset(&site).to_string();
        let starting = Instant::now();
        let up = site.up_with("live", &["--standby", "--standby-port-offset", &offset]);
        eprintln!(
            "live: the fleet was up after {} ms",
            starting.elapsed().as_millis()
        );
        let state = site.state();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let router = runtime.block_on(load::Router::connect(&state));
        let dsn = std::fs::read_to_string(state.join("ledger-dsn")).unwrap();
        let ledger = PgLedger::connect(dsn.trim(), 2).unwrap();
        let topology = Topology::parse(&std::fs::read_to_string(site.topology()).unwrap()).unwrap();
        let mut live = Live {
            _up: up,
            site,
            runtime,
            router,
            log: Arc::new(Mutex::new(load::Log::default())),
            funded: BTreeMap::new(),
            ledger,
            topology,
        };
        for sender in senders() {
            live.fund(&sender.user);
        }
        live.fund(WITNESS);
        live
    }

    fn state(&self) -> String {
        self.site.state().to_str().unwrap().to_owned()
    }

    /// `cellctl fund USER` with [`FUNDS_CENTS`], remembered for the checks.
    fn fund(&mut self, user: &str) {
        let cents = FUNDS_CENTS.to_string();
        let (code, out, errors) =
            self.site
                .run(&["fund", user, &cents, "--state-dir", &self.state()]);
        assert_eq!(code, 0, "{out}{errors}");
        *self.funded.entry(user.to_owned()).or_default() += FUNDS_CENTS;
    }

    fn load(&self, tag: &str) -> Load {
        Load::start(&self.runtime, &self.router, &senders(), &self.log, tag)
    }

    /// The cell an envelope ID routes to.
    fn cell_of(&self, id: &str) -> String {
        let id: EnvelopeId = id.parse().unwrap();
        self.topology.route(&id).unwrap().name.clone()
    }

    /// The region an envelope ID was minted in.
    fn region_of(&self, id: &str) -> String {
        let id: EnvelopeId = id.parse().unwrap();
        self.topology.region_name(id.region()).unwrap().to_owned()
    }

    /// `cellctl ARGS --apply --state-dir S`, which must succeed; timed from
    /// the start of the command to its exit (it exits right after its
    /// `fleet:` lines, once every part serves the new topology).
    fn apply(&self, args: &[&str]) -> Applied {
        let state = self.state();
        let mut all = args.to_vec();
        // A generous wait: on a busy machine a reload may be slow, and the
        // time it took is what is printed, not judged.
        all.extend(["--apply", "--wait-secs", "60", "--state-dir", &state]);
        let started = Instant::now();
        let (code, out, errors) = self.site.run(&all);
        let returned = Instant::now();
        assert_eq!(code, 0, "cellctl {all:?}:\n{out}{errors}");
        let fleet: Vec<String> = out
            .lines()
            .filter(|line| line.starts_with("fleet:"))
            .map(str::to_owned)
            .collect();
        assert!(!fleet.is_empty(), "no fleet: line from {all:?}:\n{out}");
        let applied = Applied {
            started,
            returned,
            out,
            fleet,
        };
        eprintln!(
            "live: `cellctl {}`: {} ms from --apply to its exit; it says: {} (figure: {} ms)",
            args.join(" "),
            (applied.returned - applied.started).as_millis(),
            applied.fleet.join(" | "),
            applied
                .fleet_ms()
                .map_or_else(|| "?".to_owned(), |ms| ms.to_string())
        );
        applied
    }

    /// An envelope of [`WITNESS`] from `region` that landed where `wanted`
    /// says (by its ID), with [`WITNESS_SHARES`] shares, so the test can
    /// open it later whatever the load took. The router draws the cell from
    /// the Send's key, so keys are tried until one lands there; every Send is
    /// logged.
    fn witness(&self, tag: &str, region: &str, wanted: impl Fn(&Sent) -> bool) -> Sent {
        let sender = Sender {
            user: WITNESS.to_owned(),
            region: region.to_owned(),
        };
        let mut client = self.router.client(WITNESS);
        for attempt in 0..40 {
            let request = redcell_proto::v1::SendRequest {
                total_cents: i64::from(WITNESS_SHARES) * 100,
                count: WITNESS_SHARES,
                kind: redcell_proto::v1::EnvelopeKind::Equal.into(),
                greeting: "witness".to_owned(),
                recipients: Vec::new(),
                idempotency_key: format!("{tag}-witness-{attempt}"),
            };
            let sent = self
                .runtime
                .block_on(load::send(&mut client, &self.log, &sender, request))
                .expect("a witness Send is answered");
            if wanted(&sent) {
                return sent;
            }
        }
        panic!("no witness envelope landed where wanted in 40 Sends");
    }

    /// `user` opens `envelope`, which must give a share.
    fn open(&self, user: &str, envelope: &str) -> Opened {
        let mut client = self.router.client(user);
        self.runtime
            .block_on(load::open(&mut client, &self.log, user, envelope))
            .unwrap_or_else(|| panic!("{user} got no share of {envelope}: {:?}", self.log_tail()))
    }

    fn log_tail(&self) -> (Vec<String>, BTreeMap<String, u64>) {
        let log = self.log.lock().unwrap();
        (log.unresolved.clone(), log.no_share.clone())
    }

    /// Waits (bounded by [`WAIT`]) until the acknowledged Sends satisfy
    /// `done`; fails naming `what` otherwise.
    fn wait_for_sends(&self, what: &str, done: impl Fn(&[Sent]) -> bool) {
        self.wait_for_log(what, |log| done(&log.sends));
    }

    /// Waits (bounded by [`WAIT`]) until the load's log satisfies `done`;
    /// fails naming `what`, with what the load did show, otherwise.
    fn wait_for_log(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if done(&self.log.lock().unwrap()) {
                return;
            }
            if Instant::now() >= deadline {
                let log = self.log.lock().unwrap();
                panic!(
                    "the load never showed {what} within {WAIT:?}: {} Sends acknowledged, the \
                     last ten in {:?}; retried {:?}; unresolved {:?}",
                    log.sends.len(),
                    log.sends
                        .iter()
                        .rev()
                        .take(10)
                        .map(|sent| self.cell_of(&sent.id))
                        .collect::<Vec<_>>(),
                    log.retried,
                    log.unresolved
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends acknowledged so far whose first attempt started after `after`.
    fn sends_issued_after(&self, after: Instant) -> Vec<Sent> {
        let log = self.log.lock().unwrap();
        log.sends
            .iter()
            .filter(|sent| sent.issued > after)
            .cloned()
            .collect()
    }

    /// Stops the load and checks everything acknowledged so far, then
    /// `cellctl reconcile`; prints what was seen.
    fn stop_and_verify(&self, scenario: &str, load: Load) {
        load.stop(&self.runtime);
        let log = self.log.lock().unwrap();
        let audit = self.runtime.block_on(checks::verify(
            &self.router,
            &log,
            &self.funded,
            &self.ledger,
        ));
        eprintln!(
            "live: {scenario}: {} Sends and {} Opens acknowledged so far ({} distinct shares: \
             opening a share again answers it again); retried attempts {:?}; Opens without a share {:?}; checked {} \
             envelopes, {} claims; ledger settled after {} ms: balances {} + held {} = funded {}",
            log.sends.len(),
            log.opens.len(),
            log.opens
                .iter()
                .map(|opened| (&opened.envelope, &opened.user))
                .collect::<std::collections::HashSet<_>>()
                .len(),
            log.retried,
            log.no_share,
            audit.envelopes,
            audit.claims,
            audit.settled_after.as_millis(),
            audit.balances_cents,
            audit.held_cents,
            audit.funded_cents
        );
        drop(log);
        let (code, out, errors) = self.site.run(&["reconcile", "--state-dir", &self.state()]);
        assert_eq!(code, 0, "reconcile after {scenario}:\n{out}{errors}");
        assert!(
            out.contains(" 0 discrepancies") && out.contains("(holds)"),
            "{out}"
        );
    }

    /// `fail CELL`: new envelopes stop landing in it (none issued after the
    /// apply returned), its old ones still open, and `restore CELL` brings
    /// it back into the pool.
    fn fail_and_restore(&self, cell: &str) {
        let tag = format!("fail-{cell}");
        let load = self.load(&tag);
        let in_cell = |sent: &Sent| self.cell_of(&sent.id) == cell;
        self.wait_for_sends(&format!("5 envelopes in {cell}"), |sends| {
            sends.iter().filter(|sent| in_cell(sent)).count() >= 5
        });
        let digit = self.topology.cell(cell).unwrap().region;
        let region = self.topology.region_name(digit).unwrap().to_owned();
        let witness = self.witness(&tag, &region, in_cell);

        let failed = self.apply(&["fail", cell]);
        self.wait_for_sends(
            &format!("20 {region} envelopes after `fail {cell}`"),
            |sends| {
                sends
                    .iter()
                    .filter(|sent| sent.issued > failed.returned && sent.region == region)
                    .count()
                    >= 20
            },
        );
        // Old envelopes still open: the witness, and whatever the load opened.
        self.open(&format!("{tag}-opener"), &witness.id);
        let landed: Vec<Sent> = self
            .sends_issued_after(failed.returned)
            .into_iter()
            .filter(|sent| in_cell(sent))
            .collect();
        assert!(
            landed.is_empty(),
            "{} envelopes issued after `fail {cell}` returned landed in {cell}: {:?}",
            landed.len(),
            landed.iter().map(|sent| &sent.id).collect::<Vec<_>>()
        );
        let (last_minted, opened_after) = {
            let log = self.log.lock().unwrap();
            let last = log
                .sends
                .iter()
                .filter(|sent| sent.sender != WITNESS && in_cell(sent))
                .map(|sent| sent.acked)
                .max();
            let opened: Vec<Instant> = log
                .opens
                .iter()
                .filter(|opened| opened.issued > failed.returned)
                .filter(|opened| self.cell_of(&opened.envelope) == cell)
                .map(|opened| opened.acked)
                .collect();
            (last, opened)
        };
        eprintln!(
            "live: fail {cell}: the load's last envelope minted in {cell} was acknowledged {} ms \
             after --apply started (the apply returned after {} ms); {} shares of {cell}'s \
             envelopes opened after it returned, the first acknowledged {} ms after it",
            signed_ms(last_minted, failed.started),
            (failed.returned - failed.started).as_millis(),
            opened_after.len(),
            signed_ms(opened_after.iter().min().copied(), failed.returned),
        );

        let restored = self.apply(&["restore", cell]);
        self.wait_for_sends(&format!("an envelope in {cell} after `restore`"), |sends| {
            sends
                .iter()
                .any(|sent| sent.issued > restored.returned && in_cell(sent))
        });
        self.stop_and_verify(&format!("fail/restore {cell}"), load);
    }

    /// `drain-region FROM --to TO`: new envelopes of FROM's senders are
    /// minted in TO (every one issued after the apply returned), FROM's old
    /// envelopes still open, and `undrain FROM` mints them at home again.
    fn drain_and_undrain(&self, from: &str, to: &str) {
        let tag = format!("drain-{from}");
        let load = self.load(&tag);
        let witness = self.witness(&tag, from, |sent| self.region_of(&sent.id) == from);
        let of_from = |sent: &Sent| sent.region == from;

        let drained = self.apply(&["drain-region", from, "--to", to]);
        self.wait_for_sends(&format!("10 {from} envelopes after the drain"), |sends| {
            sends
                .iter()
                .filter(|sent| sent.issued > drained.returned && of_from(sent))
                .count()
                >= 10
        });
        self.open(&format!("{tag}-opener"), &witness.id);
        let during: Vec<Sent> = self
            .sends_issued_after(drained.returned)
            .into_iter()
            .filter(|sent| of_from(sent))
            .collect();
        let astray: Vec<String> = during
            .iter()
            .filter(|sent| self.region_of(&sent.id) != to)
            .map(|sent| format!("{} ({})", sent.id, self.cell_of(&sent.id)))
            .collect();
        assert!(
            astray.is_empty(),
            "{from} envelopes issued while drained to {to} were minted elsewhere: {astray:?}"
        );
        let last_at_home = self
            .log
            .lock()
            .unwrap()
            .sends
            .iter()
            .filter(|sent| sent.sender != WITNESS && of_from(sent))
            .filter(|sent| self.region_of(&sent.id) == from)
            .map(|sent| sent.acked)
            .max();
        eprintln!(
            "live: drain {from} -> {to}: {} {from} envelopes minted in {to} after the apply \
             returned; the load's last minted in {from} was acknowledged {} ms after --apply started",
            during.len(),
            signed_ms(last_at_home, drained.started)
        );

        let undrained = self.apply(&["undrain", from]);
        self.wait_for_sends(&format!("10 {from} envelopes after the undrain"), |sends| {
            sends
                .iter()
                .filter(|sent| sent.issued > undrained.returned && of_from(sent))
                .count()
                >= 10
        });
        let astray: Vec<String> = self
            .sends_issued_after(undrained.returned)
            .into_iter()
            .filter(|sent| of_from(sent) && self.region_of(&sent.id) != from)
            .map(|sent| sent.id)
            .collect();
        assert!(
            astray.is_empty(),
            "{from} envelopes issued after the undrain were minted outside {from}: {astray:?}"
        );
        self.stop_and_verify(&format!("drain {from} -> {to} and back"), load);
    }

    /// `degrade claims=off`: Get answers the envelope without its claims,
    /// marked degraded; `degrade history=off`: History answers UNAVAILABLE
    /// saying it is switched off; both back on, both answer in full again —
    /// under load, which must lose nothing meanwhile.
    fn degrade_and_back(&self) {
        let load = self.load("degrade");
        // An envelope with at least one acknowledged claim to look at.
        let deadline = Instant::now() + WAIT;
        let (envelope, claimed) = loop {
            let found = {
                let log = self.log.lock().unwrap();
                log.opens
                    .last()
                    .map(|opened| (opened.envelope.clone(), opened.user.clone()))
            };
            if let Some(found) = found {
                break found;
            }
            assert!(
                Instant::now() < deadline,
                "no Open acknowledged in {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let viewer = "live-viewer";
        let get = || {
            let mut client = self.router.client(viewer);
            self.runtime
                .block_on(client.get(redcell_proto::v1::GetRequest {
                    envelope_id: envelope.clone(),
                    page_token: String::new(),
                    page_size: 0,
                }))
                .map(tonic::Response::into_inner)
        };
        let history = || {
            let mut client = self.router.client(&claimed);
            self.runtime
                .block_on(client.history(redcell_proto::v1::HistoryRequest {
                    direction: redcell_proto::v1::HistoryDirection::Received.into(),
                    page_token: String::new(),
                    page_size: 0,
                }))
                .map(tonic::Response::into_inner)
        };
        let full = get().unwrap();
        assert!(!full.degraded && !full.claims.is_empty(), "{full:?}");
        assert!(!history().unwrap().entries.is_empty());

        self.apply(&["degrade", "claims=off"]);
        let shed = get().unwrap();
        assert!(shed.degraded, "{shed:?}");
        assert!(
            shed.claims.is_empty() && shed.next_page_token.is_empty(),
            "{shed:?}"
        );
        assert_eq!(
            shed.envelope.as_ref().map(|e| e.total_cents),
            full.envelope.as_ref().map(|e| e.total_cents)
        );
        self.apply(&["degrade", "history=off"]);
        let refused = history().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("switched off"), "{refused:?}");

        self.apply(&["degrade", "claims=on"]);
        let back = get().unwrap();
        assert!(
            !back.degraded && back.claims.len() >= full.claims.len(),
            "{back:?}"
        );
        self.apply(&["degrade", "history=on"]);
        assert!(!history().unwrap().entries.is_empty());
        self.stop_and_verify("degrade claims and history off and on", load);
    }

    /// The checks are not vacuous: the real log forged three ways — an
    /// acknowledged amount changed, an acknowledged Open left out, a Send
    /// acknowledged with an envelope no cell has — is caught each way, and
    /// only so.
    fn checks_catch_a_forged_log(&self) {
        let mut forged = self.log.lock().unwrap().clone();
        assert!(forged.opens.len() >= 2, "too few Opens to forge");
        forged.opens[0].amount_cents += 1;
        let changed = forged.opens[0].clone();
        // Every acknowledgement of the last share (its user may have opened
        // it more than once).
        let left_out = forged
            .opens
            .iter()
            .rev()
            .find(|opened| (&opened.envelope, &opened.user) != (&changed.envelope, &changed.user))
            .cloned()
            .expect("two shares to forge");
        forged.opens.retain(|opened| {
            (&opened.envelope, &opened.user) != (&left_out.envelope, &left_out.user)
        });
        let mut phantom = forged.sends[0].clone();
        // Same day, region, epoch and suffix; a sequence no cell minted.
        phantom.id = format!("{}9999999999{}", &phantom.id[..9], &phantom.id[19..]);
        forged.sends.push(phantom.clone());
        let found = self
            .runtime
            .block_on(checks::against_the_fleet(&self.router, &forged))
            .problems;
        let expected = [
            format!(
                "envelope {}: {} was acknowledged {} cents",
                changed.envelope, changed.user, changed.amount_cents
            ),
            format!(
                "envelope {}: claim of {} ({} cents) was never acknowledged",
                left_out.envelope, left_out.user, left_out.amount_cents
            ),
            format!("acknowledged Send lost: Get {}: ", phantom.id),
        ];
        for problem in &expected {
            assert!(
                found
                    .iter()
                    .any(|found| found.starts_with(problem.as_str())),
                "the checks missed {problem:?}; they found {found:#?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
    }
}

/// An offset for `--standby-port-offset` whose standby ports (each
/// PostgreSQL port of the site plus the offset) are free now and none of the
/// fleet's own ports.
fn standby_offset(site: &Site) -> u16 {
    let (pg, all) = site.ports();
    (1..4000u16)
        .map(|step| step * 7)
        .find(|offset| {
            pg.iter().all(|port| {
                port.checked_add(*offset).is_some_and(|standby| {
                    !all.contains(&standby)
                        && std::net::TcpListener::bind(("127.0.0.1", standby)).is_ok()
                })
            })
        })
        .expect("free standby ports")
}

/// `at - since` in milliseconds, negative when `at` is earlier; `?` when
/// there is no `at`.
fn signed_ms(at: Option<Instant>, since: Instant) -> String {
    let Some(at) = at else {
        return "?".to_owned();
    };
    let ms = |d: Duration| i128::try_from(d.as_millis()).unwrap_or(i128::MAX);
    let signed = if at >= since {
        ms(at - since)
    } else {
        -ms(since - at)
    };
    signed.to_string()
}

/// Every scenario on one fleet, in order: fail/restore, the failover of a
/// killed primary (issue 11 item 6 (a)), drain/undrain, degrade, then the
/// checks against a forged log.
#[test]
fn changes_under_load_lose_and_duplicate_nothing() {
    let live = Live::start();
    live.fail_and_restore("n1");
    live.kill_fail_failover_restore("n1");
    live.drain_and_undrain("north", "south");
    live.degrade_and_back();
    live.checks_catch_a_forged_log();
    drop(live);
}

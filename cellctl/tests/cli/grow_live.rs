//! Parallel expansion and the archive of a cold day, end to end on a live
//! fleet under load (issue 12 item 4): five cells grown to seven
//! (`expand --split n1:n4,s1:s3`), `switch`, `reverse`, `switch`,
//! `complete`, then `archive` of a back-dated day — each step applied while
//! the live scenarios' load client ([`load`]) sends from both regions and
//! opens old and new envelopes, logging every acknowledgement.
//!
//! After each step the fleet is held to that log by the live scenarios'
//! checks ([`checks`]: no acknowledged Send or Open lost or duplicated, the
//! ledger settled to the log and conserved), `cellctl reconcile` must be
//! clean, and witness envelopes (sixteen shares each, one in every old cell
//! placed before the expansion, one in each new cell while switched) are
//! opened by a user of their own, so every old envelope is seen to open
//! after every step. While switched, where new envelopes land is judged
//! statistically ([`chi`]): a chi-square fit of at least 300 Sends over the
//! cells against the new epoch's range shares, below the 0.999 quantile.
//!
//! Timings (expand's apply until its new cells serve, switch's apply and its
//! `fleet:` figure, the first envelope on a new cell) are printed
//! (`--nocapture`), never asserted.

#[path = "grow_live/chi.rs"]
mod chi;
#[path = "grow_live/fleet.rs"]
mod fleet;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redcell_payments::PgLedger;
use redcell_proto::v1 as pb;
use redcell_topology::{EnvelopeId, Topology};
use sha2::{Digest, Sha256};

use crate::{
    archive::seed,
    live::{checks, load},
};

use self::{
    fleet::GrowSite,
    load::{Load, Log, Sender, Sent, SharedLog},
};

/// What each user of the scenario is funded with: far more than it sends.
const FUNDS_CENTS: i64 = 1_000_000;
/// How long a step waits for the load to show something (bounded; a wait
/// that runs out fails the test with what was seen).
const WAIT: Duration = Duration::from_secs(90);
/// The sender of witness envelopes, and their shares: one opener per step
/// (six) and every load user (four) may take one.
const WITNESS: &str = "grow-witness";
const WITNESS_SHARES: u32 = 16;
/// The burst after the first switch: users per region, Sends each. With the
/// load's Sends, the chi-square sample is well over 300; the smallest
/// expected count (n4's 167 of 1000 suffixes) is then above 30.
const BURST_USERS: usize = 3;
const BURST_SENDS: usize = 70;
/// The least sample of the chi-square fit.
const MIN_SAMPLE: usize = 300;
/// The back-dated day seeded into n2 (epoch 0, suffix 400 is n2's) and the
/// `--before` that archives it.
const COLD_DAY: &str = "260122";
const COLD_BEFORE: &str = "2026-01-23";
const COLD_SUFFIX: u16 = 400;

/// Two load senders per region.
fn senders() -> Vec<Sender> {
    [
        ("grow-n0", "north"),
        ("grow-n1", "north"),
        ("grow-s0", "south"),
        ("grow-s1", "south"),
    ]
    .into_iter()
    .map(|(user, region)| sender(user, region))
    .collect()
}

fn sender(user: &str, region: &str) -> Sender {
    Sender {
        user: user.to_owned(),
        region: region.to_owned(),
    }
}

/// The burst's senders: [`BURST_USERS`] per region.
fn burst_senders() -> Vec<Sender> {
    ["north", "south"]
        .into_iter()
        .flat_map(|region| {
            (0..BURST_USERS).map(move |n| sender(&format!("grow-burst-{region}{n}"), region))
        })
        .collect()
}

/// The cell an envelope ID routes to in `topology`.
fn cell_of(topology: &Topology, id: &str) -> String {
    let id: EnvelopeId = id.parse().unwrap();
    topology.route(&id).unwrap().name.clone()
}

/// One topology change as applied: when it started and returned, what it
/// printed.
struct Applied {
    started: Instant,
    returned: Instant,
    out: String,
}

impl Applied {
    /// The figure of the `fleet:` line, "(N ms after the write ...)".
    fn fleet_ms(&self) -> String {
        self.out
            .lines()
            .find(|line| line.starts_with("fleet: signalled"))
            .and_then(|line| line.split(" ms after the write").next())
            .and_then(|before| before.rsplit(|c: char| !c.is_ascii_digit()).next())
            .map_or_else(|| "?".to_owned(), str::to_owned)
    }

    fn took_ms(&self) -> u128 {
        (self.returned - self.started).as_millis()
    }
}

/// The fleet, the client, everything acknowledged so far, and the witnesses.
struct Grow {
    /// Dropped first: `down` needs the site's state directory.
    _up: fleet::Running,
    site: GrowSite,
    runtime: tokio::runtime::Runtime,
    router: load::Router,
    log: SharedLog,
    funded: BTreeMap<String, i64>,
    ledger: PgLedger,
    /// Witness envelopes: (cell, ID), opened after every step.
    witnesses: Vec<(String, String)>,
}

impl Grow {
    fn start() -> Grow {
        let site = GrowSite::new();
        let starting = Instant::now();
        let up = site.up();
        eprintln!(
            "grow: the five-cell fleet was up after {} ms",
            starting.elapsed().as_millis()
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let router = runtime.block_on(load::Router::connect(&site.state()));
        let dsn = std::fs::read_to_string(site.state().join("ledger-dsn")).unwrap();
        let ledger = PgLedger::connect(dsn.trim(), 2).unwrap();
        let mut grow = Grow {
            _up: up,
            site,
            runtime,
            router,
            log: Arc::new(Mutex::new(Log::default())),
            funded: BTreeMap::new(),
            ledger,
            witnesses: Vec::new(),
        };
        let users: Vec<String> = senders()
            .into_iter()
            .chain(burst_senders())
            .map(|sender| sender.user)
            .chain([WITNESS.to_owned()])
            .collect();
        for user in users {
            grow.fund(&user);
        }
        grow
    }

    /// `cellctl fund USER` with [`FUNDS_CENTS`], remembered for the checks.
    fn fund(&mut self, user: &str) {
        let cents = FUNDS_CENTS.to_string();
        let state = self.site.state_arg();
        let (code, out, errors) = self
            .site
            .run(&["fund", user, &cents, "--state-dir", &state]);
        assert_eq!(code, 0, "{out}{errors}");
        *self.funded.entry(user.to_owned()).or_default() += FUNDS_CENTS;
    }

    fn load(&self, tag: &str) -> Load {
        Load::start(&self.runtime, &self.router, &senders(), &self.log, tag)
    }

    /// cells.yaml as it is now (it only gains epochs and cells here).
    fn topology(&self) -> Topology {
        Topology::parse(&std::fs::read_to_string(self.site.topology()).unwrap()).unwrap()
    }

    /// `cellctl ARGS --apply --wait-secs 60 --state-dir S`, which must
    /// succeed and print its `fleet:` line.
    fn apply(&self, args: &[&str]) -> Applied {
        let state = self.site.state_arg();
        let mut all = args.to_vec();
        all.extend(["--apply", "--wait-secs", "60", "--state-dir", &state]);
        let started = Instant::now();
        let (code, out, errors) = self.site.run(&all);
        let returned = Instant::now();
        assert_eq!(code, 0, "cellctl {all:?}:\n{out}{errors}");
        let applied = Applied {
            started,
            returned,
            out,
        };
        assert!(
            applied.fleet_ms() != "?",
            "no fleet: line from {all:?}:\n{}",
            applied.out
        );
        eprintln!(
            "grow: `cellctl {}`: {} ms from --apply to its exit; the last part served the new \
             file {} ms after the write",
            args.join(" "),
            applied.took_ms(),
            applied.fleet_ms()
        );
        applied
    }

    /// A witness envelope of [`WITNESS_SHARES`] shares from `region` that
    /// landed in `cell`: the router draws the cell from the Send's key, so
    /// keys are tried until one lands there (every Send is logged; the
    /// witness's Sends are left out of the chi-square sample).
    fn witness(&mut self, tag: &str, region: &str, cell: &str) {
        let topology = self.topology();
        let witness = sender(WITNESS, region);
        let mut client = self.router.client(WITNESS);
        for attempt in 0..100 {
            let request = pb::SendRequest {
                total_cents: i64::from(WITNESS_SHARES) * 10,
                count: WITNESS_SHARES,
                kind: pb::EnvelopeKind::Equal.into(),
                greeting: "witness".to_owned(),
                recipients: Vec::new(),
                idempotency_key: format!("{tag}-witness-{cell}-{attempt}"),
            };
            let sent = self
                .runtime
                .block_on(load::send(&mut client, &self.log, &witness, request))
                .expect("a witness Send is answered");
            if cell_of(&topology, &sent.id) == cell {
                self.witnesses.push((cell.to_owned(), sent.id));
                return;
            }
        }
        panic!("no witness envelope landed in {cell} in 100 Sends");
    }

    /// Every witness opened by a user of `step`'s own: each gives a share.
    fn open_witnesses(&self, step: &str) {
        let opener = format!("grow-{step}-opener");
        let mut client = self.router.client(&opener);
        for (cell, id) in &self.witnesses {
            let opened = self
                .runtime
                .block_on(load::open(&mut client, &self.log, &opener, id));
            assert!(
                opened.is_some(),
                "after {step}: the witness {id} in {cell} gave {opener} no share: {:?}",
                self.log.lock().unwrap().no_share
            );
        }
        eprintln!(
            "grow: after {step}: all {} witnesses opened ({})",
            self.witnesses.len(),
            self.witnesses
                .iter()
                .map(|(cell, _)| cell.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    /// Waits (bounded by [`WAIT`]) until the log satisfies `done`; fails
    /// naming `what` otherwise.
    fn wait_for(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if done(&self.log.lock().unwrap()) {
                return;
            }
            if Instant::now() >= deadline {
                let log = self.log.lock().unwrap();
                panic!(
                    "the load never showed {what} within {WAIT:?}: {} Sends acknowledged; \
                     retried {:?}; unresolved {:?}",
                    log.sends.len(),
                    log.retried,
                    log.unresolved
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until each region has `count` Sends issued after `after`.
    fn wait_for_sends_after(&self, what: &str, after: Instant, count: usize) {
        self.wait_for(
            &format!("{count} Sends per region issued after {what}"),
            |log| {
                ["north", "south"].iter().all(|region| {
                    log.sends
                        .iter()
                        .filter(|sent| sent.issued > after && sent.region == *region)
                        .count()
                        >= count
                })
            },
        );
    }

    /// Acknowledged Sends of the load and bursts (not the witnesses') whose
    /// first attempt started after `after`.
    fn sends_after(&self, after: Instant) -> Vec<Sent> {
        let log = self.log.lock().unwrap();
        log.sends
            .iter()
            .filter(|sent| sent.issued > after && sent.sender != WITNESS)
            .cloned()
            .collect()
    }

    /// [`BURST_SENDS`] Sends by each burst user, all at once.
    fn burst(&self, tag: &str) {
        let tasks: Vec<_> = burst_senders()
            .into_iter()
            .map(|sender| {
                let mut client = self.router.client(&sender.user);
                let log = self.log.clone();
                let tag = tag.to_owned();
                self.runtime.spawn(async move {
                    for n in 0..BURST_SENDS {
                        let request = pb::SendRequest {
                            total_cents: 10,
                            count: 1,
                            kind: pb::EnvelopeKind::Equal.into(),
                            greeting: "burst".to_owned(),
                            recipients: Vec::new(),
                            idempotency_key: format!("{tag}-{}-{n}", sender.user),
                        };
                        load::send(&mut client, &log, &sender, request).await;
                    }
                })
            })
            .collect();
        self.runtime.block_on(async {
            for task in tasks {
                task.await.unwrap();
            }
        });
    }

    /// Stops the load and holds the fleet to everything acknowledged so
    /// far, then `cellctl reconcile` must be clean; its output.
    fn stop_and_verify(&self, step: &str, load: Load) -> String {
        load.stop(&self.runtime);
        let checking = Instant::now();
        let log = self.log.lock().unwrap();
        let audit = self.runtime.block_on(checks::verify(
            &self.router,
            &log,
            &self.funded,
            &self.ledger,
        ));
        eprintln!(
            "grow: {step}: {} Sends and {} Opens acknowledged so far; retried {:?}; Opens \
             without a share {:?}; checked {} envelopes, {} claims; ledger settled after {} ms: \
             balances {} + held {} = funded {}",
            log.sends.len(),
            log.opens.len(),
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
        let out = self.reconcile(step);
        eprintln!(
            "grow: {step}: the checks and reconcile took {} ms",
            checking.elapsed().as_millis()
        );
        out
    }

    /// `cellctl reconcile`, which must find no discrepancy and conservation
    /// holding; its output.
    fn reconcile(&self, step: &str) -> String {
        let (code, out, errors) =
            self.site
                .run(&["reconcile", "--state-dir", &self.site.state_arg()]);
        assert_eq!(code, 0, "reconcile after {step}:\n{out}{errors}");
        assert!(
            out.contains(" 0 discrepancies") && out.contains("(holds)"),
            "reconcile after {step}:\n{out}"
        );
        out
    }

    /// `expand --split n1:n4,s1:s3 --apply`: seven cells, the new ones'
    /// PostgreSQL and logic servers started by `up`, minting unchanged.
    fn expand(&mut self) {
        let load = self.load("expand");
        for (region, cell) in [
            ("north", "n1"),
            ("north", "n2"),
            ("north", "n3"),
            ("south", "s1"),
            ("south", "s2"),
        ] {
            self.witness("old", region, cell);
        }
        let split = self
            .site
            .new_cells
            .iter()
            .map(|new| format!("{}:{}", new.split_from, new.name))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec!["expand".to_owned(), "--split".to_owned(), split];
        for new in &self.site.new_cells {
            args.extend([
                "--servers".to_owned(),
                format!("{}={}", new.name, new.server),
                "--db".to_owned(),
                format!("{}={}", new.name, new.dsn),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let expanded = self.apply(&args);
        eprintln!(
            "grow: TIMING expand: the new cells n4 and s3 served {} ms after `expand --apply` \
             started (it returns once their servers answer SERVING: initdb, migrations, start)",
            expanded.took_ms()
        );
        let topology = self.topology();
        assert_eq!(topology.cells().len(), 7);
        assert_eq!(topology.minting_epoch().get(), 0, "expand must not switch");
        self.wait_for_sends_after("expand returned", expanded.returned, 10);
        let on_new: Vec<String> = self
            .sends_after(expanded.started)
            .into_iter()
            .map(|sent| cell_of(&topology, &sent.id))
            .filter(|cell| cell == "n4" || cell == "s3")
            .collect();
        assert!(
            on_new.is_empty(),
            "minted on new cells before the switch: {on_new:?}"
        );
        self.open_witnesses("expand");
        self.stop_and_verify("expand 5 -> 7 cells", load);
    }

    /// `switch --apply`, then a stretch of load and a burst: the Sends
    /// issued after it returned land on the cells in proportion to their
    /// ranges in the new epoch (chi-square); witnesses placed in n4 and s3.
    fn switch(&mut self) {
        let load = self.load("switch");
        let switched = self.apply(&["switch"]);
        let topology = self.topology();
        assert_eq!(topology.minting_epoch().get(), 1);
        self.burst("burst");
        self.wait_for_sends_after("switch returned", switched.returned, 20);
        let sample = self.sends_after(switched.returned);
        let first_on_new = {
            let log = self.log.lock().unwrap();
            log.sends
                .iter()
                .filter(|sent| sent.sender != WITNESS && sent.issued > switched.started)
                .filter(|sent| matches!(cell_of(&topology, &sent.id).as_str(), "n4" | "s3"))
                .map(|sent| sent.acked)
                .min()
        };
        eprintln!(
            "grow: TIMING switch: {} ms from `switch --apply` to its exit; its fleet: line says \
             the last part (the router among them) minted on epoch 1 {} ms after the write; the \
             first Send on n4/s3 was acknowledged {} ms after --apply started",
            switched.took_ms(),
            switched.fleet_ms(),
            first_on_new.map_or_else(
                || "?".to_owned(),
                |at| at
                    .saturating_duration_since(switched.started)
                    .as_millis()
                    .to_string()
            )
        );
        self.judge_distribution(&topology, &sample);
        self.witness("new", "north", "n4");
        self.witness("new", "south", "s3");
        self.open_witnesses("switch");
        self.stop_and_verify("switch to epoch 1", load);
    }

    /// The chi-square fit of `sample` against `topology`'s mint pools.
    fn judge_distribution(&self, topology: &Topology, sample: &[Sent]) {
        assert!(
            sample.len() >= MIN_SAMPLE,
            "only {} Sends after the switch",
            sample.len()
        );
        let mut astray = Vec::new();
        let mut regions = Vec::new();
        for pool in topology.mint_pools() {
            let region = topology.region_name(pool.sender).unwrap().to_owned();
            let mut cells: Vec<chi::Cell> = pool
                .cells
                .iter()
                .map(|pool_cell| chi::Cell {
                    name: topology.cells()[pool_cell.cell].name.clone(),
                    observed: 0,
                    suffixes: pool_cell.suffixes,
                })
                .collect();
            for sent in sample.iter().filter(|sent| sent.region == region) {
                let cell = cell_of(topology, &sent.id);
                match cells.iter_mut().find(|c| c.name == cell) {
                    Some(found) => found.observed += 1,
                    None => astray.push(format!("{} ({region} -> {cell})", sent.id)),
                }
            }
            regions.push((region, cells));
        }
        assert!(
            astray.is_empty(),
            "Sends outside their region's pool: {astray:?}"
        );
        let fit = chi::fit(&regions);
        let critical = chi::critical_999(fit.degrees_of_freedom);
        eprintln!(
            "grow: distribution of {} Sends after the switch over epoch 1's cells:\n  {}\n\
             grow: chi-square {:.3} with {} degrees of freedom (0.999 critical value {critical})",
            sample.len(),
            fit.lines.join("\n  "),
            fit.statistic,
            fit.degrees_of_freedom
        );
        // Not vacuous: the same sample against equal shares per cell (what a
        // router ignoring the range tables would give) is rejected.
        let equal: Vec<(String, Vec<chi::Cell>)> = regions
            .iter()
            .map(|(region, cells)| {
                let cells = cells
                    .iter()
                    .map(|cell| chi::Cell {
                        suffixes: 1,
                        ..cell.clone()
                    })
                    .collect();
                (region.clone(), cells)
            })
            .collect();
        let wrong = chi::fit(&equal);
        eprintln!(
            "grow: the same sample against equal shares per cell: chi-square {:.3}",
            wrong.statistic
        );
        assert!(
            wrong.statistic >= critical,
            "the fit cannot tell the ranges from equal shares: {:.3} < {critical}",
            wrong.statistic
        );
        assert!(
            fit.statistic < critical,
            "chi-square {:.3} >= {critical} ({} df): new envelopes do not follow the ranges:\n{}",
            fit.statistic,
            fit.degrees_of_freedom,
            fit.lines.join("\n")
        );
    }

    /// `reverse --apply`: no Send issued after it returned lands on n4/s3;
    /// what was minted there still opens.
    fn reverse(&self) {
        let load = self.load("reverse");
        let reversed = self.apply(&["reverse"]);
        let topology = self.topology();
        assert_eq!(topology.minting_epoch().get(), 0);
        self.wait_for_sends_after("reverse returned", reversed.returned, 20);
        let on_new: Vec<String> = self
            .sends_after(reversed.returned)
            .into_iter()
            .filter(|sent| matches!(cell_of(&topology, &sent.id).as_str(), "n4" | "s3"))
            .map(|sent| sent.id)
            .collect();
        assert!(
            on_new.is_empty(),
            "Sends issued after the reverse returned landed on n4/s3: {on_new:?}"
        );
        let minted_new = self
            .log
            .lock()
            .unwrap()
            .sends
            .iter()
            .filter(|sent| matches!(cell_of(&topology, &sent.id).as_str(), "n4" | "s3"))
            .count();
        eprintln!("grow: after the reverse: {minted_new} envelopes minted on n4/s3 so far");
        self.open_witnesses("reverse");
        self.stop_and_verify("reverse to epoch 0", load);
    }

    /// `switch --apply` again, `complete --soak-secs 0 --apply`; a reverse
    /// is refused from then on and new envelopes stay on epoch 1.
    fn switch_and_complete(&self) {
        let load = self.load("complete");
        let switched = self.apply(&["switch"]);
        let topology = self.topology();
        for cell in ["n4", "s3"] {
            self.wait_for(
                &format!("a Send on {cell} after the second switch"),
                |log| {
                    log.sends.iter().any(|sent| {
                        sent.issued > switched.returned
                            && sent.sender != WITNESS
                            && cell_of(&topology, &sent.id) == cell
                    })
                },
            );
        }
        let completed = self.apply(&["complete", "--soak-secs", "0"]);
        let topology = self.topology();
        assert_eq!(topology.minting_epoch().get(), 1);
        assert!(topology.switch().is_none());
        let state = self.site.state_arg();
        let (code, out, errors) = self
            .site
            .run(&["reverse", "--state-dir", &state, "--apply"]);
        assert_eq!(code, 1, "reverse after complete:\n{out}{errors}");
        assert!(errors.contains("nothing to reverse"), "{errors}");
        self.wait_for_sends_after("complete returned", completed.returned, 10);
        let old_epoch: Vec<String> = self
            .sends_after(completed.returned)
            .into_iter()
            .filter(|sent| sent.id.parse::<EnvelopeId>().unwrap().epoch().get() != 1)
            .map(|sent| sent.id)
            .collect();
        assert!(
            old_epoch.is_empty(),
            "minted off epoch 1 after complete: {old_epoch:?}"
        );
        self.open_witnesses("complete");
        self.stop_and_verify("switch again and complete", load);
    }

    /// A settled cold day seeded into n2 and the ledger, then `archive
    /// --before` the next day under load: files and manifest as it says, Get
    /// of an archived ID NOT_FOUND naming the archive, reconcile clean with
    /// the archived totals carried, the cold users' balances untouched.
    fn archive(&self) {
        let topology = self.topology();
        let orders_dsn = topology.cell("n2").unwrap().db.clone();
        let seeds = cold_day();
        let expected = self.runtime.block_on(async {
            let (orders, connection) = tokio_postgres::connect(&orders_dsn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for cold in &seeds {
                seed::write(&orders, &self.ledger, cold).await;
            }
            cold_balances(&seeds)
        });
        assert!(
            seeds
                .iter()
                .all(|cold| cell_of(&topology, &cold.id) == "n2"),
            "the cold day must be n2's"
        );
        let before = self.reconcile("the cold day seeded");
        eprintln!("grow: reconcile of the seeded fleet:\n{before}");

        let load = self.load("archive");
        let dir = self.site.dir("archive");
        let dir_arg = dir.to_str().unwrap().to_owned();
        let started = Instant::now();
        let (code, out, errors) = self.site.run(&[
            "archive",
            "--before",
            COLD_BEFORE,
            "--to",
            &dir_arg,
            "--apply",
        ]);
        eprintln!(
            "grow: TIMING archive --apply under load: {} ms\n{out}",
            started.elapsed().as_millis()
        );
        assert_eq!(code, 0, "{out}{errors}");
        let manifest_name = format!("n2-before-{COLD_BEFORE}-1-manifest.json");
        assert!(
            out.contains(&format!(
                "cell n2       archived {} envelopes, 4 claims, 5 transfers, {} send requests -> {}",
                seeds.len(),
                seeds.len(),
                dir.join(&manifest_name).display()
            )),
            "{out}"
        );
        check_archive_files(&dir, &manifest_name, seeds.len());

        let mut client = self.router.client("grow-archive-reader");
        for cold in &seeds {
            let status = self
                .runtime
                .block_on(client.get(pb::GetRequest {
                    envelope_id: cold.id.clone(),
                    ..Default::default()
                }))
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with(&format!("envelope {} was archived on ", cold.id))
                    && status.message().ends_with(&format!(" to {manifest_name}")),
                "{status:?}"
            );
        }
        self.wait_for_sends_after("the archive returned", Instant::now(), 10);
        self.open_witnesses("archive");
        let after = self.stop_and_verify("archive of the cold day", load);
        eprintln!("grow: reconcile after the archive:\n{after}");
        assert!(
            after.contains(&format!(
                "{} archived envelopes matched by their carried totals",
                seeds.len()
            )),
            "{after}"
        );
        let balances = self.runtime.block_on(async {
            let mut balances = BTreeMap::new();
            for user in expected.keys() {
                balances.insert(user.clone(), self.ledger.balance(user).await.unwrap());
            }
            balances
        });
        assert_eq!(balances, expected, "the cold day's users after the archive");
    }
}

/// The cold day: an exhausted, an expired-and-refunded and a cancelled
/// envelope, every transfer done (4 claims, 5 transfers, 3 send requests).
fn cold_day() -> Vec<seed::Seed<'static>> {
    let id = |sequence| seed::north_id(COLD_DAY, sequence, COLD_SUFFIX);
    vec![
        seed::Seed {
            id: id(1),
            sender: "cold-alice",
            status: 3,
            total: 3_000,
            count: 3,
            claims: &[
                ("cold-bob", 1_000),
                ("cold-carol", 1_200),
                ("cold-dave", 800),
            ],
            refund: 0,
            settled: true,
        },
        seed::Seed {
            id: id(2),
            sender: "cold-alice",
            status: 4,
            total: 2_000,
            count: 3,
            claims: &[("cold-bob", 500)],
            refund: 1_500,
            settled: true,
        },
        seed::Seed {
            id: id(3),
            sender: "cold-erin",
            status: 5,
            total: 900,
            count: 1,
            claims: &[],
            refund: 0,
            settled: true,
        },
    ]
}

/// What the seed leaves each cold user with: a sender's deposit pays its
/// envelope, claims and refunds are credited; a cancelled envelope moves
/// nothing.
fn cold_balances(seeds: &[seed::Seed<'_>]) -> BTreeMap<String, i64> {
    let mut balances = BTreeMap::new();
    for cold in seeds {
        balances.entry(cold.sender.to_owned()).or_insert(0);
        if cold.status == 5 {
            continue;
        }
        *balances.entry(cold.sender.to_owned()).or_insert(0) += cold.refund;
        for (user, cents) in cold.claims {
            *balances.entry((*user).to_owned()).or_insert(0) += cents;
        }
    }
    balances
}

/// The manifest lists the four tables' files, each present with the rows
/// and SHA-256 it says; `envelopes` rows are the cold day's.
fn check_archive_files(dir: &std::path::Path, manifest_name: &str, envelopes: usize) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(manifest_name)).unwrap()).unwrap();
    assert_eq!(manifest["cell"], "n2", "{manifest}");
    assert_eq!(manifest["before"], COLD_BEFORE, "{manifest}");
    let files = manifest["files"].as_array().unwrap();
    let tables: Vec<&str> = files.iter().map(|f| f["table"].as_str().unwrap()).collect();
    assert_eq!(
        tables,
        ["envelopes", "claims", "transfers", "send_requests"]
    );
    for file in files {
        let name = file["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(file["sha256"], sha, "{name}");
        let rows = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(file["rows"], rows, "{name}");
    }
    assert_eq!(files[0]["rows"], envelopes, "{manifest}");
}

/// The operator's story on one fleet, in order: grow 5 -> 7 cells, switch,
/// reverse, switch and complete, then archive a cold day — under load, the
/// fleet held to the client's log after every step.
#[test]
fn expand_switch_reverse_complete_and_archive_under_load() {
    let mut grow = Grow::start();
    grow.expand();
    grow.switch();
    grow.reverse();
    grow.switch_and_complete();
    grow.archive();
    drop(grow);
}

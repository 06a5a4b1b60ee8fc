//! Scenario (a) of issue 11 item 6 on the live fleet: a cell's primary
//! PostgreSQL dies (kill -9 of its postmaster) while the load sends and opens,
//! the operator runs `fail CELL`, `failover CELL` (a dry run, then
//! `--apply`), and `restore CELL`.
//!
//! What must hold, and why:
//! - while the primary is dead, an Open of the cell's old envelope answers
//!   `UNAVAILABLE` (the client's cue to retry the same request: one asked
//!   during the outage is retried until the failover lets it through), and
//!   new envelopes avoid the cell once `fail` returned;
//! - the dry run of `failover` changes nothing (cells.yaml, the fence, the
//!   standby still in recovery);
//! - after `failover --apply` every part serves the repointed topology, and
//!   the old envelopes open again at once: a new user's *first* attempt
//!   takes a share of a witness (a cell still refusing after the fleet line
//!   would be a bug, not a pause to wait out), the users who took shares
//!   before the kill get the same shares back; the old primary stays down;
//! - after `restore`, new envelopes land in the cell again — on the promoted
//!   server;
//! - then the common checks: the standby was synchronous, so every Send and
//!   Open the fleet acknowledged before the kill is there, once.
//!
//! Printed, never asserted against a bound: `fail --apply` to its fleet line,
//! `failover --apply` to its return and its fleet line, and the primary's
//! death to the first new share of an old envelope of the cell after the
//! failover began (a new share needs a commit; a repeated Open is answered
//! from the lane's memory even while the DB is down).

use std::{
    collections::HashSet,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use redcell_pgsys::sys::{Signal, send_signal};

use super::{
    Applied, Live, WAIT,
    load::{self, Opened, Sent},
    signed_ms,
};

/// Shares of the witness taken before the kill (by users who open it again
/// after the failover: the standby must have their claims).
const EARLY_OPENERS: usize = 3;

/// The primary's death, as the test caused it.
struct Outage {
    cell: String,
    primary: u16,
    standby: u16,
    killed: Instant,
    /// The cell's envelopes acknowledged before the kill.
    old: HashSet<String>,
}

/// An Open asked during the outage and retried (as the load retries) until
/// the failover let it through: its user, and every refusal (when, code,
/// message).
struct Waiting {
    user: String,
    task: tokio::task::JoinHandle<(Option<Opened>, Vec<Refusal>)>,
}

type Refusal = (Instant, tonic::Code, String);

impl Live {
    /// kill -9 of `cell`'s primary under load, `fail`, `failover` (dry run,
    /// then `--apply`), the old envelopes open again, `restore`; then the
    /// checks.
    pub(super) fn kill_fail_failover_restore(&self, cell: &str) {
        let tag = format!("failover-{cell}");
        let load = self.load(&tag);
        let in_cell = |sent: &Sent| self.cell_of(&sent.id) == cell;
        let digit = self.topology.cell(cell).unwrap().region;
        let region = self.topology.region_name(digit).unwrap().to_owned();

        // The load sends into the cell and opens its envelopes; a witness
        // there has shares taken before the kill.
        self.wait_for_log(
            &format!("5 envelopes in {cell} and 3 of their Opens"),
            |log| {
                let ids: HashSet<&str> = log
                    .sends
                    .iter()
                    .filter(|sent| in_cell(sent))
                    .map(|sent| sent.id.as_str())
                    .collect();
                let opens = log.opens.iter();
                ids.len() >= 5
                    && opens
                        .filter(|opened| ids.contains(opened.envelope.as_str()))
                        .count()
                        >= 3
            },
        );
        let witness = self.witness(&tag, &region, in_cell);
        let early: Vec<Opened> = (0..EARLY_OPENERS)
            .map(|n| self.open(&format!("{tag}-early{n}"), &witness.id))
            .collect();

        let outage = self.kill_primary(cell);
        let waiting = self.open_through_the_outage(&format!("{tag}-waiting"), &witness.id);

        // fail: new envelopes avoid the cell.
        let failed = self.apply(&["fail", cell]);
        assert_all_serve(&failed);

        self.failover_dry_run_changes_nothing(&outage);
        let failed_over = self.apply(&["failover", cell]);
        assert_all_serve(&failed_over);
        for said in [
            format!("fenced postgres-{}", outage.primary),
            format!("promoted postgres-{}", outage.standby),
        ] {
            assert!(
                failed_over.out.contains(&said),
                "missing {said:?} in\n{}",
                failed_over.out
            );
        }
        assert!(
            !self.in_recovery(outage.standby),
            "postgres-{} not promoted",
            outage.standby
        );

        // The old envelopes open again: at a new user's first attempt, the
        // early takers get their shares back, the Open asked during the
        // outage goes through.
        self.opens_at_first_attempt(&format!("{tag}-after"), &witness.id);
        for taken in &early {
            let again = self.open(&taken.user, &witness.id);
            assert_eq!(
                (again.amount_cents, again.sequence),
                (taken.amount_cents, taken.sequence),
                "{} got another share of {} after the failover",
                taken.user,
                witness.id
            );
        }
        let (waited, refusals) = self.runtime.block_on(waiting.task).unwrap();
        let user = &waiting.user;
        assert!(
            waited.is_some(),
            "{user}'s Open of {} asked during the outage got no share: {:?}",
            witness.id,
            self.log_tail()
        );
        assert!(
            !refusals.is_empty(),
            "{user}'s Open went through while the DB was down"
        );
        let codes: Vec<tonic::Code> = refusals.iter().map(|(_, code, _)| *code).collect();
        assert!(
            codes.iter().all(|code| *code == tonic::Code::Unavailable),
            "{user}'s Open was refused with other codes than UNAVAILABLE: {codes:?}"
        );
        self.report_recovery(&outage, &failed, &failed_over, user, &refusals);

        // restore: new envelopes land in the cell again, on the promoted
        // server; none did while it was failed (enough were sent meanwhile).
        // Waited for only here, so the failover follows `fail` at an
        // operator's pace and its timings are not the load's.
        self.wait_for_sends(
            &format!("10 {region} envelopes after `fail {cell}`"),
            |sends| {
                sends
                    .iter()
                    .filter(|sent| sent.issued > failed.returned && sent.region == region)
                    .count()
                    >= 10
            },
        );
        let restored = self.apply(&["restore", cell]);
        assert_all_serve(&restored);
        self.wait_for_sends(&format!("an envelope in {cell} after `restore`"), |sends| {
            sends
                .iter()
                .any(|sent| sent.issued > restored.returned && in_cell(sent))
        });
        let landed: Vec<String> = self
            .sends_issued_after(failed.returned)
            .into_iter()
            .filter(|sent| sent.acked < restored.started && in_cell(sent))
            .map(|sent| sent.id)
            .collect();
        assert!(
            landed.is_empty(),
            "envelopes issued after `fail {cell}` returned landed in {cell} before `restore`: \
             {landed:?}"
        );
        assert!(
            !port_answers(outage.primary),
            "the fenced postgres-{} answers again",
            outage.primary
        );
        self.stop_and_verify(&format!("kill -9, fail, failover, restore {cell}"), load);
    }

    /// kill -9 of the postmaster of `cell`'s database server (by the pid
    /// `up` recorded), once it no longer answers.
    fn kill_primary(&self, cell: &str) -> Outage {
        let db = &self.topology.cell(cell).unwrap().db;
        let config: tokio_postgres::Config = db.parse().unwrap();
        let primary = config.get_ports()[0];
        let state = self.site.state();
        let record = state.join("standbys").join(primary.to_string());
        let text = std::fs::read_to_string(&record).unwrap();
        let standby = text
            .lines()
            .find_map(|line| line.strip_prefix("standby="))
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("no standby= in {}:\n{text}", record.display()));
        let pid_file = state.join("pids").join(format!("postgres-{primary}.pid"));
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let killed = Instant::now();
        send_signal(pid, Signal::Kill).unwrap();
        let old = self
            .log
            .lock()
            .unwrap()
            .sends
            .iter()
            .filter(|sent| self.cell_of(&sent.id) == cell)
            .map(|sent| sent.id.clone())
            .collect();
        while port_answers(primary) {
            assert!(killed.elapsed() < WAIT, "postgres-{primary} still answers");
            std::thread::sleep(Duration::from_millis(20));
        }
        Outage {
            cell: cell.to_owned(),
            primary,
            standby,
            killed,
            old,
        }
    }

    /// `user` opens `envelope` in the background, retrying with the same
    /// request as the load does, every refusal noted.
    fn open_through_the_outage(&self, user: &str, envelope: &str) -> Waiting {
        let mut client = self.router.client(user);
        let (log, who, id) = (self.log.clone(), user.to_owned(), envelope.to_owned());
        let task = self.runtime.spawn(async move {
            let mut refusals = Vec::new();
            let opened = load::open_watched(&mut client, &log, &who, &id, |status| {
                refusals.push((Instant::now(), status.code(), status.message().to_owned()));
                true
            })
            .await;
            (opened, refusals)
        });
        Waiting {
            user: user.to_owned(),
            task,
        }
    }

    /// `cellctl failover CELL` without `--apply` shows the plan and changes
    /// nothing: cells.yaml, the fence, the standby still in recovery.
    fn failover_dry_run_changes_nothing(&self, outage: &Outage) {
        let (cell, primary, standby) = (&outage.cell, outage.primary, outage.standby);
        let yaml = std::fs::read_to_string(self.site.topology()).unwrap();
        let (code, out, errors) = self
            .site
            .run(&["failover", cell, "--state-dir", &self.state()]);
        assert_eq!(code, 0, "failover dry run:\n{out}{errors}");
        for said in [
            format!("primary  postgres-{primary}: down ("),
            format!("standby  postgres-{standby}: "),
            ": caught up".to_owned(),
            "dry run: nothing written".to_owned(),
        ] {
            assert!(out.contains(&said), "missing {said:?} in\n{out}");
        }
        assert_eq!(std::fs::read_to_string(self.site.topology()).unwrap(), yaml);
        let fence = self.site.state().join(format!("postgres-{primary}/fenced"));
        assert!(!fence.exists(), "the dry run fenced postgres-{primary}");
        assert!(
            self.in_recovery(standby),
            "the dry run promoted the standby"
        );
    }

    /// `user` (holding no share of `envelope`) takes a share at the first
    /// attempt: once `failover` returned, every part serves the new `db`, so
    /// a refusal now would be a bug, not a pause to wait out.
    fn opens_at_first_attempt(&self, user: &str, envelope: &str) {
        let mut refused = None;
        let mut client = self.router.client(user);
        let opened = self.runtime.block_on(load::open_watched(
            &mut client,
            &self.log,
            user,
            envelope,
            |status| {
                refused = Some(status.clone());
                false
            },
        ));
        assert!(
            opened.is_some(),
            "{user}'s Open of {envelope} right after `failover --apply` returned: {refused:?} \
             (no share: {:?})",
            self.log_tail()
        );
    }

    /// Prints how long the cell's old envelopes did not open: from the kill
    /// to the first new share of one after the failover began (a new share
    /// needs a commit; a repeated Open is answered from the lane's memory
    /// even while the DB is down), with the steps between.
    fn report_recovery(
        &self,
        outage: &Outage,
        failed: &Applied,
        failed_over: &Applied,
        waiter: &str,
        refusals: &[Refusal],
    ) {
        let (cell, killed) = (&outage.cell, outage.killed);
        let log = self.log.lock().unwrap();
        let of_old: Vec<&Opened> = log
            .opens
            .iter()
            .filter(|opened| outage.old.contains(&opened.envelope))
            .collect();
        let mut seen = HashSet::new();
        let first = of_old
            .iter()
            .filter(|opened| seen.insert((&opened.envelope, &opened.user)))
            .filter(|opened| opened.acked > failed_over.started)
            .map(|opened| opened.acked)
            .min();
        let during = of_old
            .iter()
            .filter(|opened| opened.acked > killed && opened.acked < failed_over.started)
            .count();
        let across = of_old
            .iter()
            .filter(|opened| opened.issued < failed_over.started)
            .filter(|opened| opened.acked > failed_over.started)
            .count();
        let since = |at: Instant, from: Instant| signed_ms(Some(at), from);
        eprintln!(
            "live: failover {cell}: kill -9 of postgres-{} to the first new share of an old {cell} \
             envelope: {} ms (`fail` returned {} ms after the kill; `failover --apply` started \
             {} ms after it and returned {} ms later; the first new share came {} ms after that \
             return); {across} Opens of old {cell} envelopes asked before the failover were \
             answered after it began; {during} were answered during the outage (shares taken \
             before, from the lane's memory)",
            outage.primary,
            signed_ms(first, killed),
            since(failed.returned, killed),
            since(failed_over.started, killed),
            since(failed_over.returned, failed_over.started),
            signed_ms(first, failed_over.returned),
        );
        let refusal = |at: Option<&Refusal>| {
            at.map_or_else(
                || "none".to_owned(),
                |(when, code, message)| {
                    format!(
                        "{code:?} ({message}) {} ms after the kill, {} ms after `failover \
                         --apply` returned",
                        since(*when, killed),
                        since(*when, failed_over.returned)
                    )
                },
            )
        };
        eprintln!(
            "live: failover {cell}: {waiter}'s Open, asked during the outage, was refused {} \
             times; first {}; last {}",
            refusals.len(),
            refusal(refusals.first()),
            refusal(refusals.last())
        );
    }

    /// Whether the server on `port` is in recovery (a standby).
    fn in_recovery(&self, port: u16) -> bool {
        self.runtime.block_on(async {
            let (client, connection) = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user("redcell")
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(5))
                .connect(tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|error| panic!("cannot connect to postgres-{port}: {error}"));
            tokio::spawn(connection);
            client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .unwrap()
                .get(0)
        })
    }
}

/// Every part serves the new topology ("N of N parts serve").
fn assert_all_serve(applied: &Applied) {
    let line = &applied.fleet[0];
    let counts: Option<(&str, &str)> = line
        .split_once(" parts serve")
        .and_then(|(before, _)| before.rsplit_once("; ")?.1.split_once(" of "));
    assert!(
        counts.is_some_and(|(serving, all)| serving == all),
        "not every part serves the new topology:\n{}",
        applied.out
    );
}

fn port_answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

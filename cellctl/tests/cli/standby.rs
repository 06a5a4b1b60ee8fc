//! `cellctl up --standby` and `cellctl failover` as an operator runs them
//! (issue 11 item 3): the real binaries, real PostgreSQL primaries and
//! synchronous standbys, one small fleet — north's n1 alone on one server,
//! south's n2 with the ledger on another, one logic server each, one router
//! in north (so every Send mints in n1).
//!
//! The story, in one test (one fleet): the standbys stream synchronously; a
//! standby killed -9 is started again by `up` and its primary commits again;
//! a standby whose replay is paused is refused as behind; an envelope is sent,
//! its cell's primary is killed -9 right after the acknowledgement; the dry
//! run shows the plan and changes nothing; `--apply` fences, promotes and
//! repoints; the envelope opens again through the router; the fenced data
//! directory, started by hand, takes no writes; a second failover (no
//! standby left) and a failover of the ledger's server are refused; after
//! `down`, an `up` on the old file is refused and one on the new file starts
//! the promoted server, never the fenced one, with a new standby of its own;
//! a switchover (primary running) then stops it and promotes that standby.
//! Then, on that same fleet, `expand --split n1:n3 --apply` (issues 11/12):
//! the ports are laid out so that the convention of HEAD collided twice —
//! the promoted server's port + offset is the router's, and the file's
//! highest DB port + 1 is a recorded standby's — and the new cell must still
//! start, its server get a standby on a free port, and a Send land on it
//! after `switch --apply`.
//!
//! Timings (kill to first successful Open, the failover command, expand and
//! switch) are printed, never asserted against a bound.

use std::{
    net::TcpListener,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redcell_pgsys::{
    BinarySearch, PgBinaries, ServerUser,
    sys::{Signal, send_signal},
};
use redcell_proto::{
    token::{BearerToken, mint_hs256},
    v1::{self as pb, red_envelope_client::RedEnvelopeClient},
};

/// How long an `up` may take to be ready (initdb, two base backups), a
/// command to finish, or the fleet to exit.
const WAIT: Duration = Duration::from_secs(240);

/// Ports of the fleet, laid out relative to n1's first server `b` and the
/// standby offset `o` so that the story's later servers meet what a
/// collision needs: n1 moves b -> b+o -> b+2o by two failovers; n2's server
/// is b+o+1, so its standby b+2o+1 is the DB port right after n1's final
/// one (what `expand` once derived for a new cell); the router is b+3o, the
/// final n1 server's port + offset (where `up` once planned its standby).
struct Ports {
    /// n1's server, and n2's (with the ledger).
    n1_db: u16,
    n2_db: u16,
    n1: u16,
    n2: u16,
    router: u16,
    offset: u16,
}

impl Ports {
    fn free() -> Ports {
        let held: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let chosen: Vec<u16> = held
            .iter()
            .map(|listener| listener.local_addr().unwrap().port())
            .collect();
        let (n1, n2, base) = (chosen[0], chosen[1], chosen[2]);
        // Every port the story uses from base: standbys, n2's server, the
        // router, and the new cell's server and standby.
        let offset = (1..4000u16)
            .map(|step| step * 7)
            .find(|o| {
                let derived = [
                    Some(*o),
                    o.checked_mul(2),
                    o.checked_add(1),
                    o.checked_mul(2).and_then(|v| v.checked_add(1)),
                    o.checked_mul(3),
                    o.checked_mul(2).and_then(|v| v.checked_add(2)),
                    o.checked_mul(3).and_then(|v| v.checked_add(2)),
                ];
                derived.iter().all(|delta| {
                    delta.and_then(|d| base.checked_add(d)).is_some_and(|port| {
                        !chosen.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok()
                    })
                })
            })
            .expect("free standby ports");
        Ports {
            n1_db: base,
            n2_db: base + offset + 1,
            n1,
            n2,
            router: base + 3 * offset,
            offset,
        }
    }

    fn n1_standby(&self) -> u16 {
        self.n1_db + self.offset
    }

    fn n2_standby(&self) -> u16 {
        self.n2_db + self.offset
    }

    /// n1's server after two failovers.
    fn n1_third(&self) -> u16 {
        self.n1_db + 2 * self.offset
    }

    /// The server `expand` derives for n3: the file's highest DB port (n1's
    /// third) + 1 is n2's standby, so the one after.
    fn n3_db(&self) -> u16 {
        self.n1_third() + 2
    }

    fn ledger_dsn(&self) -> String {
        format!("postgres://redcell@127.0.0.1:{}/ledger", self.n2_db)
    }
}

struct Site {
    dir: tempfile::TempDir,
    ports: Ports,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ports = Ports::free();
        let Ports {
            n1_db,
            n2_db,
            n1,
            n2,
            ..
        } = ports;
        std::fs::write(
            dir.path().join("cells.yaml"),
            format!(
                "version: 1
regions: [north, south]
cells:
  - name: n1
    region: north
    status: active
    servers: [\"127.0.0.1:{n1}\"]
    db: \"postgres://redcell@127.0.0.1:{n1_db}/cell_n1\"
  - name: n2
    region: south
    status: active
    servers: [\"127.0.0.1:{n2}\"]
    db: \"postgres://redcell@127.0.0.1:{n2_db}/cell_n2\"
epochs:
  - id: 0
    ranges:
      north: {{ n1: \"000-999\" }}
      south: {{ n2: \"000-999\" }}
minting:
  epoch: 0
"
            ),
        )
        .unwrap();
        Site { dir, ports }
    }

    fn topology(&self) -> PathBuf {
        self.dir.path().join("cells.yaml")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn state_arg(&self) -> String {
        self.state().to_str().unwrap().to_owned()
    }

    fn cellctl(&self, topology: &std::path::Path) -> Command {
        crate::fleet_cellctl(topology)
    }

    /// A cellctl command on this site's cells.yaml, to its end.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        crate::finish(self.cellctl(&self.topology()).args(args))
    }

    fn up_command(&self, topology: &std::path::Path, extra: &[&str]) -> Command {
        let router = format!("127.0.0.1:{}", self.ports.router);
        let mut command = self.cellctl(topology);
        command
            .arg("up")
            .args(["--state-dir", &self.state_arg(), "--fast"])
            .args(["--ledger-dsn", &self.ports.ledger_dsn()])
            .args(["--router-listen", &router])
            .args(extra);
        command
    }

    /// `up` in the background; returns once it is ready.
    fn up(&self, run: &str, extra: &[&str]) -> Up {
        let stderr = self.dir.path().join(format!("{run}.err"));
        let child = self
            .up_command(&self.topology(), extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let up = Up {
            child,
            stderr,
            state: self.state(),
        };
        let ready = self.state().join("routers");
        let deadline = Instant::now() + WAIT;
        let mut up = up;
        while !ready.is_file() {
            if let Some(status) = up.child.try_wait().unwrap() {
                panic!("up exited ({status}) before it was ready:\n{}", up.stderr());
            }
            assert!(Instant::now() < deadline, "up not ready:\n{}", up.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    }
}

struct Up {
    child: Child,
    stderr: PathBuf,
    state: PathBuf,
}

impl Up {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn pid_of(&self, part: &str) -> Option<u32> {
        std::fs::read_to_string(self.state.join("pids").join(format!("{part}.pid")))
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }

    fn parts(&self) -> Vec<String> {
        let mut parts: Vec<String> = std::fs::read_dir(self.state.join("pids"))
            .unwrap()
            .map(|entry| {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                name.trim_end_matches(".pid").to_owned()
            })
            .collect();
        parts.sort();
        parts
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        crate::stop_fleet(&self.state, &mut self.child);
    }
}

/// One SQL client to a server of the fleet, as its superuser.
async fn sql(port: u16, database: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("redcell")
        .dbname(database)
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {port}/{database}: {error}"));
    tokio::spawn(connection);
    client
}

/// A client of the router as `user`.
async fn router_client(
    site: &Site,
    user: &str,
) -> RedEnvelopeClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
> {
    let key = std::fs::read(site.state().join("hs256.key")).unwrap();
    let token = mint_hs256(&key, user, 3600).unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", site.ports.router))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
    RedEnvelopeClient::with_interceptor(channel, BearerToken::new(&token).unwrap())
}

/// alice sends a LUCKY envelope through the router (minted in north: n1).
async fn send(site: &Site, key: &str) -> String {
    let mut alice = router_client(site, "alice").await;
    alice
        .send(pb::SendRequest {
            total_cents: 1_000,
            count: 3,
            kind: pb::EnvelopeKind::Lucky.into(),
            greeting: "before the failover".to_owned(),
            recipients: Vec::new(),
            idempotency_key: key.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("Send {key}: {status}"))
        .into_inner()
        .envelope
        .unwrap()
        .id
}

fn port_answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

#[test]
fn standby_failover_fences_promotes_and_repoints_a_live_fleet() {
    let site = Site::new();
    let state = site.state_arg();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (n1_db, n1_standby) = (site.ports.n1_db, site.ports.n1_standby());
    let offset = site.ports.offset.to_string();

    // 1. up --standby: two primaries, each with a synchronous standby.
    let up = site.up("up1", &["--standby", "--standby-port-offset", &offset]);
    let parts = up.parts();
    for port in [n1_db, n1_standby, site.ports.n2_db, site.ports.n2_standby()] {
        assert!(
            parts.contains(&format!("postgres-{port}")),
            "postgres-{port} not started: {parts:?}"
        );
    }
    let record =
        std::fs::read_to_string(site.state().join("standbys").join(n1_db.to_string())).unwrap();
    assert!(
        record.contains(&format!("standby={n1_standby}")),
        "{record}"
    );
    let (names, sync) = runtime.block_on(async {
        let primary = sql(n1_db, "postgres").await;
        let names: String = primary
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .unwrap()
            .get(0);
        let sync: String = primary
            .query_one(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                &[&format!("standby_{n1_standby}")],
            )
            .await
            .unwrap()
            .get(0);
        (names, sync)
    });
    assert_eq!(names, format!("standby_{n1_standby}"));
    assert_eq!(sync, "sync");

    // A standby that dies is started again by up (its primary's commits
    // wait meanwhile); then a commit on that primary (fund: the ledger)
    // goes through.
    let n2_standby = site.ports.n2_standby();
    let standby_pid = up.pid_of(&format!("postgres-{n2_standby}")).unwrap();
    send_signal(standby_pid, Signal::Kill).unwrap();
    let restarted = format!("postgres-{n2_standby} started again");
    let deadline = Instant::now() + WAIT;
    while !up.stderr().contains(&restarted) {
        assert!(
            Instant::now() < deadline,
            "up did not restart the standby:\n{}",
            up.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = site.run(&["fund", "alice", "10000", "--state-dir", &state]);
    assert_eq!(code, 0, "{out}{err}");
    let yaml_before = std::fs::read_to_string(site.topology()).unwrap();

    // 2. A standby whose replay is paused is behind once the primary commits
    //    more: refused, nothing changed.
    runtime.block_on(async {
        sql(n1_standby, "postgres")
            .await
            .execute("SELECT pg_wal_replay_pause()", &[])
            .await
            .unwrap();
        send(&site, "standby-test-paused").await;
    });
    let (code, out, err) = site.run(&[
        "failover",
        "n1",
        "--apply",
        "--catch-up-secs",
        "1",
        "--state-dir",
        &state,
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("BEHIND"), "{out}");
    assert!(
        err.contains(&format!("postgres-{n1_standby} is behind: it replayed"))
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(site.topology()).unwrap(),
        yaml_before
    );
    assert!(port_answers(n1_db), "the primary was touched");
    runtime.block_on(async {
        sql(n1_standby, "postgres")
            .await
            .execute("SELECT pg_wal_replay_resume()", &[])
            .await
            .unwrap();
    });

    // 3. An envelope is acknowledged, then its cell's primary dies at once.
    let envelope = runtime.block_on(send(&site, "standby-test-witness"));
    let primary_pid = up.pid_of(&format!("postgres-{n1_db}")).unwrap();
    send_signal(primary_pid, Signal::Kill).unwrap();
    let killed = Instant::now();
    let deadline = Instant::now() + WAIT;
    while port_answers(n1_db) {
        assert!(
            Instant::now() < deadline,
            "the killed primary still answers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // up notices (and reaps) it, and keeps the rest running.
    let noticed = format!("postgres-{n1_db} exited (signal: 9");
    while !up.stderr().contains(&noticed) {
        assert!(
            Instant::now() < deadline,
            "up did not notice:\n{}",
            up.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 4. The dry run shows the plan and changes nothing.
    let (code, out, err) = site.run(&["failover", "n1", "--state-dir", &state]);
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        format!("failover n1: postgres-{n1_db} -> its synchronous standby postgres-{n1_standby}"),
        format!("  primary  postgres-{n1_db}: down ("),
        "  moves    cell n1 (cell_n1)".to_owned(),
        format!("plan: failover n1: promote postgres-{n1_standby}, fence postgres-{n1_db}"),
        format!("-  db: postgres://redcell@127.0.0.1:{n1_db}/cell_n1"),
        format!("+  db: postgres://redcell@127.0.0.1:{n1_standby}/cell_n1"),
        "dry run: nothing written".to_owned(),
    ] {
        assert!(out.contains(&line), "missing {line:?} in\n{out}");
    }
    assert!(out.contains(": caught up"), "{out}");
    assert_eq!(
        std::fs::read_to_string(site.topology()).unwrap(),
        yaml_before
    );
    assert!(
        !site
            .state()
            .join(format!("postgres-{n1_db}/fenced"))
            .exists()
    );
    let in_recovery: bool = runtime.block_on(async {
        sql(n1_standby, "postgres")
            .await
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert!(in_recovery, "the dry run promoted the standby");

    // The ledger's server is not failed over (its DSN cannot follow live).
    let (code, out, err) = site.run(&["failover", "n2", "--state-dir", &state]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("also holds the ledger"), "{err}");

    // 5. --apply: fenced, promoted, cells.yaml repointed, the fleet follows.
    let applying = Instant::now();
    let (code, out, err) = site.run(&["failover", "n1", "--apply", "--state-dir", &state]);
    let failover_took = applying.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    for said in [
        format!("fenced postgres-{n1_db}"),
        format!("promoted postgres-{n1_standby}"),
        "applied: wrote".to_owned(),
        "failover n1 done in".to_owned(),
    ] {
        assert!(out.contains(&said), "missing {said:?} in\n{out}");
    }
    let yaml_after = std::fs::read_to_string(site.topology()).unwrap();
    assert!(
        yaml_after.contains(&format!("127.0.0.1:{n1_standby}/cell_n1")),
        "{yaml_after}"
    );

    // 6. The acknowledged envelope opens through the router again.
    let opened = runtime.block_on(open(&site, "bob", &envelope));
    assert_eq!(opened.status(), pb::ShareStatus::Available, "{opened:?}");
    assert!(opened.amount_cents > 0, "{opened:?}");
    eprintln!(
        "standby test: failover --apply took {} ms; kill -9 to the first successful Open {} ms",
        failover_took.as_millis(),
        killed.elapsed().as_millis()
    );
    let rows: i64 = runtime.block_on(async {
        sql(n1_standby, "cell_n1")
            .await
            .query_one("SELECT count(*) FROM envelopes WHERE id = $1", &[&envelope])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 1);

    // 7. The fenced data directory, started by hand, takes no writes.
    let old_data = site.state().join(format!("postgres-{n1_db}/data"));
    assert!(old_data.join("standby.signal").is_file());
    assert!(
        std::fs::read_to_string(site.state().join(format!("postgres-{n1_db}/fenced")))
            .unwrap()
            .contains(&format!("failed over to postgres-{n1_standby}"))
    );
    fenced_server_is_read_only(&site, n1_db, &runtime);

    // 8. n1's server now has no standby: a second failover is refused.
    let (code, out, err) = site.run(&["failover", "n1", "--state-dir", &state]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "its database server postgres-{n1_standby} has no standby"
        )),
        "{err}"
    );

    // 9. down stops every server, the standbys too.
    let servers: Vec<u32> = up
        .parts()
        .iter()
        .filter(|part| part.starts_with("postgres-"))
        .filter_map(|part| up.pid_of(part))
        .collect();
    let (code, out, err) = site.run(&["down", "--state-dir", &state]);
    assert_eq!(code, 0, "{out}{err}");
    for pid in servers {
        assert!(
            !redcell_pgsys::process_tree::is_alive(pid),
            "pid {pid} runs"
        );
    }
    drop(up);

    // 10. up on the old file is refused (its server is fenced); on the new
    //     file (with --standby again) it starts the promoted server as a
    //     primary with a standby of its own, and n2's (recorded).
    let prev = site.dir.path().join("cells.yaml.prev");
    let output = site.up_command(&prev, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("postgres-{n1_db} is fenced")),
        "{stderr}"
    );
    let again = site.up("up2", &["--standby", "--standby-port-offset", &offset]);
    let n1_third = site.ports.n1_third();
    let parts = again.parts();
    assert!(
        parts.contains(&format!("postgres-{n1_standby}")),
        "{parts:?}"
    );
    assert!(
        parts.contains(&format!("postgres-{}", site.ports.n2_standby())),
        "{parts:?}"
    );
    assert!(parts.contains(&format!("postgres-{n1_third}")), "{parts:?}");
    assert!(!parts.contains(&format!("postgres-{n1_db}")), "{parts:?}");
    assert!(!port_answers(n1_db), "the fenced server was started");
    let rows: i64 = runtime.block_on(async {
        sql(n1_standby, "cell_n1")
            .await
            .query_one("SELECT count(*) FROM envelopes WHERE id = $1", &[&envelope])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 1);

    // 11. A switchover: the primary runs and commits while failover runs;
    //     it is caught up to, stopped (fenced), and its standby promoted.
    let second = runtime.block_on(send(&site, "standby-test-switchover"));
    let switching = Instant::now();
    let (code, out, err) = site.run(&["failover", "n1", "--apply", "--state-dir", &state]);
    eprintln!(
        "standby test: switchover (primary running) took {} ms",
        switching.elapsed().as_millis()
    );
    assert_eq!(code, 0, "{out}{err}");
    for said in [
        format!("  primary  postgres-{n1_standby}: running, flushed "),
        format!("fenced postgres-{n1_standby}: stopped its postmaster (pid "),
        format!("promoted postgres-{n1_third}"),
    ] {
        assert!(out.contains(&said), "missing {said:?} in\n{out}");
    }
    assert!(!port_answers(n1_standby), "the old primary still answers");
    for id in [&envelope, &second] {
        let opened = runtime.block_on(open(&site, "carol", id));
        assert_eq!(opened.status(), pb::ShareStatus::Available, "{opened:?}");
    }

    expand_after_failovers(&site, &again, &runtime);
}

/// Step 12: `expand --split n1:n3 --apply` on the fleet after both failovers:
/// n1 runs on its third server, which has no standby and whose port +
/// offset is the router's; the file's highest DB port + 1 is n2's standby.
/// The derivation skips what the fleet uses, `up` starts n3's server with a
/// standby on a free port and its logic server, and after `switch --apply`
/// a Send lands on n3.
fn expand_after_failovers(site: &Site, up: &Up, runtime: &tokio::runtime::Runtime) {
    let state = site.state_arg();
    // The first port the derivation may give n3 (n2's standby, the file's
    // highest DB port + 1, is skipped); a later one when another process on
    // this machine holds that one right now, which expand also skips.
    let first_candidate = site.ports.n3_db();
    let expanding = Instant::now();
    let (code, out, err) = site.run(&[
        "expand",
        "--split",
        "n1:n3",
        "--state-dir",
        &state,
        "--apply",
    ]);
    let expand_took = expanding.elapsed();
    assert_eq!(code, 0, "{out}{err}\nup:\n{}", up.stderr());
    let port_after = |before: &str, after: &str| -> u16 {
        out.lines()
            .find_map(|line| {
                let rest = line.trim().strip_prefix(before)?;
                rest.strip_suffix(after)?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no {before:?}...{after:?} line in\n{out}"))
    };
    let n3_db = port_after(
        "db      postgres://redcell@127.0.0.1:",
        "/cell_n3 (derived)",
    );
    let n3_standby = port_after(
        "standby port ",
        " kept free (the fleet runs `up --standby`)",
    );
    assert!(
        n3_db >= first_candidate,
        "n3's DB on {n3_db}: a port below {first_candidate} is n2's standby or n1's"
    );
    assert!(!out.contains("is down"), "{out}");
    assert!(!up.stderr().contains("not started"), "{}", up.stderr());

    // n3's server and its standby run, recorded and synchronous; its
    // logic server answers; no two parts share a port.
    let topology =
        redcell_topology::Topology::parse(&std::fs::read_to_string(site.topology()).unwrap())
            .unwrap();
    let n3_server = topology.cell("n3").unwrap().servers[0].clone();
    let parts = up.parts();
    for part in [
        format!("postgres-{n3_db}"),
        format!("postgres-{n3_standby}"),
        format!("cell-n3-{}", n3_server.rsplit_once(':').unwrap().1),
    ] {
        assert!(parts.contains(&part), "{part} not in {parts:?}");
    }
    let record =
        std::fs::read_to_string(site.state().join("standbys").join(n3_db.to_string())).unwrap();
    assert!(
        record.contains(&format!("standby={n3_standby}")),
        "{record}"
    );
    let sync: String = runtime.block_on(async {
        sql(n3_db, "postgres")
            .await
            .query_one(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                &[&format!("standby_{n3_standby}")],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(sync, "sync");
    let mut ports: Vec<u16> = parts
        .iter()
        .filter(|part| {
            // Fenced servers were stopped; their pid files stay.
            ![site.ports.n1_db, site.ports.n1_standby()]
                .iter()
                .any(|fenced| **part == format!("postgres-{fenced}"))
        })
        .filter_map(|part| part.rsplit_once('-')?.1.parse().ok())
        .collect();
    let count = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), count, "two parts on one port: {parts:?}");
    for port in &ports {
        assert!(
            port_answers(*port),
            "port {port} of {parts:?} does not answer"
        );
    }

    // After the switch, n3 takes n1's upper half: a Send lands there.
    let switching = Instant::now();
    let (code, out, err) = site.run(&["switch", "--state-dir", &state, "--apply"]);
    let switch_took = switching.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = site.run(&["fund", "alice", "5000000", "--state-dir", &state]);
    assert_eq!(code, 0, "{out}{err}");
    let switched =
        redcell_topology::Topology::parse(&std::fs::read_to_string(site.topology()).unwrap())
            .unwrap();
    // A router mints on a new cell once its own health check has seen the
    // cell serve (the switch waits for the routers' topology, not for that
    // check): Sends until one lands on n3, for at most 30 s.
    let admitting = Instant::now();
    let on_n3 = (0..)
        .take_while(|index| *index < 40 || admitting.elapsed() < Duration::from_secs(30))
        .map(|index| runtime.block_on(send(site, &format!("standby-test-expand-{index}"))))
        .find(|id| {
            let parsed: redcell_topology::EnvelopeId = id.parse().unwrap();
            switched.route(&parsed).unwrap().name == "n3"
        })
        .expect("30 s of sends after the switch, none on n3");
    let rows: i64 = runtime.block_on(async {
        sql(n3_db, "cell_n3")
            .await
            .query_one("SELECT count(*) FROM envelopes WHERE id = $1", &[&on_n3])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 1);
    let opened = runtime.block_on(open(site, "dave", &on_n3));
    assert_eq!(opened.status(), pb::ShareStatus::Available, "{opened:?}");
    eprintln!(
        "standby test: expand --apply (n3 started with its standby) took {} ms; switch --apply {} ms",
        expand_took.as_millis(),
        switch_took.as_millis()
    );
}

/// `user` opens `id` through the router, retrying (bounded) while the
/// router or cell answers an error, as a client retries UNAVAILABLE.
async fn open(site: &Site, user: &str, id: &str) -> pb::OpenResponse {
    let mut client = router_client(site, user).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match client
            .open(pb::OpenRequest {
                envelope_id: id.to_owned(),
            })
            .await
        {
            Ok(reply) => return reply.into_inner(),
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "{id} does not open for {user}: {status}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Starts the fenced data directory of `port` by hand (as `up` would, minus
/// `up`'s refusal): it comes up in recovery and refuses a write.
fn fenced_server_is_read_only(site: &Site, port: u16, runtime: &tokio::runtime::Runtime) {
    let binaries = PgBinaries::locate(&BinarySearch::from_env()).unwrap();
    let user = ServerUser::for_this_process().unwrap();
    let dir = site.state().join(format!("postgres-{port}"));
    let mut command = Command::new(binaries.postgres());
    command
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string()])
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
        ])
        // A hot standby needs at least the primary's max_connections (`up`'s).
        .args(["-c", "max_connections=300"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(site.dir.path().join("fenced.log")).unwrap());
    if let Some(user) = &user {
        command.uid(user.uid).gid(user.gid);
    }
    let mut postmaster = command.spawn().unwrap();
    let outcome = runtime.block_on(async {
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let attempt = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user("redcell")
                .dbname("cell_n1")
                .connect(tokio_postgres::NoTls)
                .await;
            if let Ok((client, connection)) = attempt {
                tokio::spawn(connection);
                break client;
            }
            let exited = postmaster.try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                let lock = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap_or_default();
                let holder = lock.lines().next().unwrap_or_default().to_owned();
                panic!(
                    "the fenced server did not start ({exited:?}):\n{}\nlock holder {holder}: {:?} {:?}\nup: {}",
                    std::fs::read_to_string(site.dir.path().join("fenced.log")).unwrap_or_default(),
                    std::fs::read_to_string(format!("/proc/{holder}/stat")),
                    std::fs::read_to_string(format!("/proc/{holder}/cmdline")),
                    std::fs::read_to_string(site.dir.path().join("up1.err")).unwrap_or_default(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        let write = client
            .batch_execute("CREATE TABLE second_writer (x int)")
            .await;
        let refused = write.err().and_then(|error| error.code().cloned());
        (in_recovery, refused)
    });
    send_signal(postmaster.id(), Signal::Interrupt).unwrap();
    let _ = postmaster.wait();
    assert!(outcome.0, "the fenced server is not in recovery");
    assert_eq!(
        outcome.1,
        Some(tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "the fenced server took a write (or failed otherwise)"
    );
}

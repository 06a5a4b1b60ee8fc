//! The growth scenario's own fleet: five cells (north n1 n2 n3, south s1
//! s2), one logic server each, under one `cellctl up` on free ports, and
//! the ports the two cells `expand` adds (n4, s3) will take.
//!
//! The `up` test's `Site` is fixed at three cells, so this is its shape for
//! five: every port chosen free at once (listeners held until all are
//! picked, so no two are equal), a temporary directory PostgreSQL can enter,
//! `cellctl` run with the site's topology and nothing from the environment.
//! To keep it light the five old cells' order DBs share one PostgreSQL
//! server and the ledger has another; the new cells get a server each, as
//! `expand`'s convention (and `up`'s growth) wants.

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long `up` may take to report ready (two initdb's on a busy machine).
const UP_WAIT: Duration = Duration::from_secs(180);

/// A new cell `expand --split` adds, on ports chosen free with the rest.
pub struct NewCell {
    pub name: &'static str,
    pub split_from: &'static str,
    pub server: String,
    pub dsn: String,
}

/// The site: topology, state directory, the new cells' endpoints.
pub struct GrowSite {
    dir: tempfile::TempDir,
    router: u16,
    ledger_port: u16,
    pub new_cells: [NewCell; 2],
}

impl GrowSite {
    pub fn new() -> GrowSite {
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL runs as `postgres` when the tests run as root: it must
        // be able to enter the directory above its data.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let listeners: Vec<TcpListener> = (0..12)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let port = |index: usize| listeners[index].local_addr().unwrap().port();
        let (cells_db, ledger_port, router) = (port(0), port(1), port(2));
        let server = |index: usize| format!("127.0.0.1:{}", port(index));
        let dsn =
            |port: u16, cell: &str| format!("postgres://redcell@127.0.0.1:{port}/cell_{cell}");
        let mut cells = String::new();
        for (index, (name, region)) in [
            ("n1", "north"),
            ("n2", "north"),
            ("n3", "north"),
            ("s1", "south"),
            ("s2", "south"),
        ]
        .into_iter()
        .enumerate()
        {
            cells.push_str(&format!(
                "  - name: {name}\n    region: {region}\n    status: active\n    \
                 servers: [\"{}\"]\n    db: \"{}\"\n",
                server(3 + index),
                dsn(cells_db, name)
            ));
        }
        let topology = format!(
            "version: 1
regions: [north, south]
cells:
{cells}epochs:
  - id: 0
    ranges:
      north: {{ n1: \"000-332\", n2: \"333-665\", n3: \"666-999\" }}
      south: {{ s1: \"000-499\", s2: \"500-999\" }}
minting:
  epoch: 0
"
        );
        std::fs::write(dir.path().join("cells.yaml"), topology).unwrap();
        let new_cells = [
            NewCell {
                name: "n4",
                split_from: "n1",
                server: server(8),
                dsn: dsn(port(9), "n4"),
            },
            NewCell {
                name: "s3",
                split_from: "s1",
                server: server(10),
                dsn: dsn(port(11), "s3"),
            },
        ];
        drop(listeners);
        GrowSite {
            dir,
            router,
            ledger_port,
            new_cells,
        }
    }

    pub fn topology(&self) -> PathBuf {
        self.dir.path().join("cells.yaml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn state_arg(&self) -> String {
        self.state().to_str().unwrap().to_owned()
    }

    /// A directory of the site for files a command writes (the archive).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cellctl(&self) -> Command {
        crate::fleet_cellctl(&self.topology())
    }

    /// Runs a cellctl command to its end: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        crate::finish(self.cellctl().args(args))
    }

    /// `cellctl up --fast` (the cells' own envelope TTL, a day: envelopes
    /// stay open for the whole scenario) in the background; returns once
    /// its routers are recorded, i.e. every part answered SERVING.
    pub fn up(&self) -> Running {
        let stderr = self.dir.path().join("up.err");
        let child = self
            .cellctl()
            .arg("up")
            .arg("--state-dir")
            .arg(self.state())
            .arg("--fast")
            .args([
                "--ledger-dsn",
                &format!("postgres://redcell@127.0.0.1:{}/ledger", self.ledger_port),
            ])
            .args(["--router-listen", &format!("127.0.0.1:{}", self.router)])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("up.out")).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut running = Running {
            child,
            state: self.state(),
        };
        let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
        let deadline = Instant::now() + UP_WAIT;
        while !self.state().join("routers").is_file() {
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!("up exited ({status}) before it was ready:\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "up not ready within {UP_WAIT:?}:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        running
    }
}

/// A running `up`; dropping it (say, when an assertion failed) runs `down`,
/// which stops every part `up` started, the grown cells' too.
pub struct Running {
    child: Child,
    state: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        crate::stop_fleet(&self.state, &mut self.child);
    }
}

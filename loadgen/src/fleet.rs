//! The fleet under test, started and stopped the way an operator does it:
//! `cellctl up --detach` on a cells.yaml loadgen writes (N cells of one
//! region, `--servers-per-cell` logic servers and one PostgreSQL server each, the ledger a
//! database on the first cell's server; every port free when chosen), then
//! `cellctl fund`, `cellctl reconcile` and `cellctl down`. loadgen links no
//! server: the processes measured are the ones that ship.
//!
//! `cellctl` is looked for next to loadgen's own executable (as `cellctl`
//! finds `cell` and `router`). Env of loadgen reaches the fleet's processes
//! (children of `up` inherit it): that is how a variant picks the cells'
//! `REDCELL_OPEN_STRATEGY` / `REDCELL_COMMITTER`, and how loadgen lifts the
//! router's per-user rate limit (it measures the service, not its flow
//! control) unless the caller set one.
//!
//! A fleet loadgen started is brought down when the [`Fleet`] is dropped,
//! also on an error path. With `--fleet STATE_DIR` a running fleet is
//! reused and left running.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use redcell_topology::Topology;

/// Env set on `cellctl up` unless the caller's environment has it.
const FLEET_ENV_DEFAULTS: &[(&str, &str)] = &[
    // The benchmark measures the service, not the router's per-user limit.
    ("REDCELL_ROUTER_RATE_PER_USER", "1000000"),
    ("REDCELL_ROUTER_RATE_BURST", "1000000"),
    // The burst workload's one envelope outlives a 10x step.
    ("REDCELL_MAX_COUNT", "1000000"),
    ("REDCELL_MAX_TOTAL_CENTS", "100000000"),
];

/// The cells' order-DB pool when `REDCELL_DB_POOL` does not say (the cell's
/// own default); the baselines run with this many pgbench clients.
const DEFAULT_DB_POOL: usize = 16;

/// How to start a fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub cells: u32,
    /// Logic servers per cell (`cellctl up` starts one per address in a
    /// cell's `servers`; the router fails over between them).
    pub servers_per_cell: u16,
    /// `cellctl up --restart-crashed`: a killed part is started again.
    pub restart_crashed: bool,
    pub routers: u16,
    pub fast: bool,
    pub admin_port_offset: u16,
    /// Env for this variant (`REDCELL_OPEN_STRATEGY=rowlock`, ...).
    pub env: Vec<(String, String)>,
    pub keep_state: bool,
}

/// A running fleet: where it is and how to reach it.
#[derive(Debug)]
pub struct Fleet {
    pub state_dir: PathBuf,
    pub topology_path: PathBuf,
    pub topology: Topology,
    pub routers: Vec<SocketAddr>,
    pub hs256_key: Vec<u8>,
    /// Each cell's logic servers' `/metrics` addresses (with an admin offset).
    pub cell_metrics: Vec<SocketAddr>,
    /// The first cell's PostgreSQL (host port, superuser): the baselines' server.
    pub pg_port: u16,
    pub pg_user: String,
    pub db_pool: usize,
    /// True when this run started the fleet (so it stops it).
    owned: bool,
    down: bool,
    cellctl: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// What `cellctl reconcile` said.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reconciled {
    pub discrepancies: u64,
    /// Claims over every cell (from its per-cell lines).
    pub claims: u64,
    pub envelopes: u64,
    pub conservation_holds: bool,
    pub output: String,
}

/// `cellctl` next to this executable.
pub fn cellctl_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|error| format!("cannot find loadgen: {error}"))?;
    let dir = exe
        .parent()
        .ok_or("loadgen's executable has no directory")?;
    let cellctl = dir.join("cellctl");
    if cellctl.is_file() {
        Ok(cellctl)
    } else {
        Err(format!(
            "{} is missing: loadgen runs the fleet with the cellctl next to it \
             (cargo build -p redcell-cellctl -p redcell-cell -p redcell-router)",
            cellctl.display()
        ))
    }
}

impl Fleet {
    /// `cellctl up --detach` of a fresh fleet in a temporary state directory.
    pub fn start(spec: &FleetSpec) -> Result<Fleet, String> {
        if spec.cells == 0 || spec.cells > 64 {
            return Err(format!("--cells: must be 1 to 64, got {}", spec.cells));
        }
        if spec.routers == 0 {
            return Err("--routers: must be at least 1".into());
        }
        if !(1..=8).contains(&spec.servers_per_cell) {
            return Err(format!(
                "--servers-per-cell: must be 1 to 8, got {}",
                spec.servers_per_cell
            ));
        }
        let cellctl = cellctl_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("loadgen-")
            .tempdir()
            .map_err(|error| format!("cannot make a state directory: {error}"))?;
        // PostgreSQL runs as `postgres` when loadgen runs as root: it must
        // be able to enter the directory above its data.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|error| format!("chmod {}: {error}", dir.path().display()))?;
        let ports = Ports::free(spec)?;
        let text = topology_text(&ports);
        let topology = Topology::parse(&text).map_err(|errors| errors.to_string())?;
        let topology_path = dir.path().join("cells.yaml");
        std::fs::write(&topology_path, &text)
            .map_err(|error| format!("write {}: {error}", topology_path.display()))?;
        let state_dir = dir.path().join("state");
        let router = SocketAddr::from(([127, 0, 0, 1], ports.router));
        let mut up = Command::new(&cellctl);
        up.env_remove("REDCELL_TOPOLOGY")
            .env_remove("REDCELL_STATE_DIR")
            .env_remove("REDCELL_LEDGER_DSN")
            .arg("--topology")
            .arg(&topology_path)
            .args(["up", "--detach", "--state-dir"])
            .arg(&state_dir)
            .args(["--ledger-dsn", &ports.ledger_dsn()])
            .args(["--router-listen", &router.to_string()])
            .args(["--routers", &spec.routers.to_string()])
            .args(["--admin-port-offset", &spec.admin_port_offset.to_string()]);
        if spec.fast {
            up.arg("--fast");
        }
        if spec.restart_crashed {
            up.arg("--restart-crashed");
        }
        for (name, value) in FLEET_ENV_DEFAULTS {
            if std::env::var_os(name).is_none() {
                up.env(name, value);
            }
        }
        for (name, value) in &spec.env {
            up.env(name, value);
        }
        let mut fleet = Fleet {
            state_dir: state_dir.clone(),
            topology_path,
            topology,
            routers: (0..spec.routers)
                .map(|index| SocketAddr::from(([127, 0, 0, 1], ports.router + index)))
                .collect(),
            hs256_key: Vec::new(),
            cell_metrics: ports
                .cells
                .iter()
                .flat_map(|&first| (0..ports.servers_per_cell).map(move |index| first + index))
                .map(|port| SocketAddr::from(([127, 0, 0, 1], port + spec.admin_port_offset)))
                .collect(),
            pg_port: ports.pg[0],
            pg_user: "redcell".into(),
            db_pool: db_pool(),
            owned: true,
            down: false,
            cellctl,
            _dir: if spec.keep_state {
                eprintln!("loadgen: state kept in {}", dir.keep().display());
                None
            } else {
                Some(dir)
            },
        };
        let started = fleet.cellctl_output(&mut up, "up")?;
        drop(started);
        fleet.hs256_key = read_key(&state_dir)?;
        Ok(fleet)
    }

    /// A fleet `cellctl up` already runs on `state_dir` (left running).
    pub fn attach(state_dir: &Path, admin_port_offset: Option<u16>) -> Result<Fleet, String> {
        let cellctl = cellctl_binary()?;
        let state_dir = std::path::absolute(state_dir)
            .map_err(|error| format!("--fleet {}: {error}", state_dir.display()))?;
        let read = |name: &str| {
            std::fs::read_to_string(state_dir.join(name)).map_err(|error| {
                format!(
                    "--fleet {}: cannot read {name} (is a fleet up there?): {error}",
                    state_dir.display()
                )
            })
        };
        let topology_path = PathBuf::from(read("topology")?.trim());
        let text = std::fs::read_to_string(&topology_path)
            .map_err(|error| format!("{}: {error}", topology_path.display()))?;
        let topology = Topology::parse(&text).map_err(|errors| errors.to_string())?;
        let routers = read("routers")?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                line.trim()
                    .parse::<SocketAddr>()
                    .map_err(|error| format!("--fleet: routers file: {line:?}: {error}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = topology
            .cells()
            .first()
            .ok_or("the fleet's topology has no cell")?;
        let (pg_user, pg_port) = dsn_user_port(&first.db)?;
        let cell_metrics = match admin_port_offset {
            None => Vec::new(),
            Some(offset) => topology
                .cells()
                .iter()
                .flat_map(|cell| &cell.servers)
                .filter_map(|server| server.parse::<SocketAddr>().ok())
                .map(|address| SocketAddr::new(address.ip(), address.port() + offset))
                .collect(),
        };
        Ok(Fleet {
            hs256_key: read_key(&state_dir)?,
            state_dir,
            topology_path,
            topology,
            routers,
            cell_metrics,
            pg_port,
            pg_user,
            db_pool: db_pool(),
            owned: false,
            down: false,
            cellctl,
            _dir: None,
        })
    }

    /// `cellctl fund USER CENTS`.
    pub fn fund(&self, user: &str, cents: i64) -> Result<(), String> {
        let mut fund = self.cellctl();
        fund.args(["fund", user, &cents.to_string(), "--state-dir"])
            .arg(&self.state_dir);
        self.cellctl_output(&mut fund, "fund").map(drop)
    }

    /// `cellctl reconcile` over every cell and the ledger.
    pub fn reconcile(&self) -> Result<Reconciled, String> {
        let mut reconcile = self.cellctl();
        reconcile
            .args(["reconcile", "--state-dir"])
            .arg(&self.state_dir);
        let output = reconcile
            .output()
            .map_err(|error| format!("cellctl reconcile: {error}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut reconciled = parse_reconcile(&stdout)?;
        if !output.status.success() && reconciled.discrepancies == 0 {
            return Err(format!(
                "cellctl reconcile failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        reconciled.output = stdout;
        Ok(reconciled)
    }

    /// `cellctl down` of a fleet this run started (a reused one is left).
    pub fn down(&mut self) -> Result<(), String> {
        if !self.owned || self.down {
            return Ok(());
        }
        self.down = true;
        let mut down = self.cellctl();
        down.args(["down", "--state-dir"]).arg(&self.state_dir);
        self.cellctl_output(&mut down, "down").map(drop)
    }

    /// The PIDs `up` recorded, by part name (`cell-n1-7101`, `router-7000`,
    /// `postgres-6101`).
    pub fn part_pids(&self) -> Vec<(String, u32)> {
        let Ok(entries) = std::fs::read_dir(self.state_dir.join("pids")) else {
            return Vec::new();
        };
        let mut parts: Vec<(String, u32)> = entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let part = path.file_stem()?.to_str()?.to_owned();
                let pid = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
                Some((part, pid))
            })
            .collect();
        parts.sort();
        parts
    }

    fn cellctl(&self) -> Command {
        let mut command = Command::new(&self.cellctl);
        command
            .env_remove("REDCELL_TOPOLOGY")
            .env_remove("REDCELL_STATE_DIR")
            .env_remove("REDCELL_LEDGER_DSN")
            .arg("--topology")
            .arg(&self.topology_path);
        command
    }

    fn cellctl_output(&self, command: &mut Command, what: &str) -> Result<String, String> {
        let output = command
            .output()
            .map_err(|error| format!("cellctl {what}: {error}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "cellctl {what} failed ({}); logs in {}:\n{}{}",
                output.status,
                self.state_dir.join("logs").display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Err(error) = self.down() {
            eprintln!("loadgen: {error}");
        }
    }
}

fn db_pool() -> usize {
    std::env::var("REDCELL_DB_POOL")
        .ok()
        .and_then(|pool| pool.parse().ok())
        .unwrap_or(DEFAULT_DB_POOL)
}

fn read_key(state_dir: &Path) -> Result<Vec<u8>, String> {
    let path = state_dir.join("hs256.key");
    std::fs::read(&path)
        .map_err(|error| format!("the fleet's HS256 key {}: {error}", path.display()))
}

/// `postgres://USER@HOST:PORT/DB` -> (USER, PORT).
fn dsn_user_port(dsn: &str) -> Result<(String, u16), String> {
    let config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|error| format!("cell DSN {dsn:?}: {error}"))?;
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    Ok((user, port))
}

/// Sums the per-cell lines and reads the totals of `cellctl reconcile`.
fn parse_reconcile(stdout: &str) -> Result<Reconciled, String> {
    let mut reconciled = Reconciled {
        discrepancies: 0,
        claims: 0,
        envelopes: 0,
        conservation_holds: false,
        output: String::new(),
    };
    let mut headline = false;
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("reconcile: ") {
            headline = true;
            reconciled.discrepancies = number_before(rest, " discrepancies").unwrap_or(u64::MAX);
        } else if line.starts_with("cell ") {
            reconciled.envelopes += number_before(line, " envelopes").unwrap_or(0);
            reconciled.claims += number_before(line, " claims").unwrap_or(0);
        } else if line.starts_with("conservation:") {
            reconciled.conservation_holds = line.ends_with("(holds)");
        }
    }
    if headline {
        Ok(reconciled)
    } else {
        Err(format!("cellctl reconcile printed no summary: {stdout}"))
    }
}

/// The number right before `suffix` in `text` (`"3 cells, 0 discrepancies"`).
fn number_before(text: &str, suffix: &str) -> Option<u64> {
    let before = &text[..text.find(suffix)?];
    before.rsplit([' ', ',']).next()?.parse().ok()
}

/// Ports chosen free for one fleet.
#[derive(Debug)]
struct Ports {
    pg: Vec<u16>,
    /// Each cell's first logic server; its others on the ports after it.
    cells: Vec<u16>,
    servers_per_cell: u16,
    router: u16,
}

impl Ports {
    /// Free ports (each also free at + the admin offset for logic servers
    /// and routers); `routers` consecutive ones for the routers.
    fn free(spec: &FleetSpec) -> Result<Ports, String> {
        let mut held = Vec::new();
        let mut take = |count: u16, admin: bool| -> Result<u16, String> {
            for _ in 0..200 {
                let probe = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                let base = probe.local_addr().map_err(|e| e.to_string())?.port();
                let mut group = vec![probe];
                let ok = (1..count).all(|step| {
                    base.checked_add(step)
                        .and_then(|port| TcpListener::bind(("127.0.0.1", port)).ok())
                        .map(|listener| group.push(listener))
                        .is_some()
                }) && (!admin
                    || (0..count).all(|step| {
                        base.checked_add(step)
                            .and_then(|port| port.checked_add(spec.admin_port_offset))
                            .and_then(|port| TcpListener::bind(("127.0.0.1", port)).ok())
                            .map(|listener| group.push(listener))
                            .is_some()
                    }));
                if ok {
                    held.extend(group);
                    return Ok(base);
                }
            }
            Err("cannot find free ports on 127.0.0.1".into())
        };
        let mut pg = Vec::new();
        let mut cells = Vec::new();
        for _ in 0..spec.cells {
            pg.push(take(1, false)?);
            cells.push(take(spec.servers_per_cell, true)?);
        }
        let router = take(spec.routers, true)?;
        Ok(Ports {
            pg,
            cells,
            servers_per_cell: spec.servers_per_cell,
            router,
        })
    }

    fn ledger_dsn(&self) -> String {
        format!("postgres://redcell@127.0.0.1:{}/ledger", self.pg[0])
    }
}

/// Region north only; cell i owns an even slice of 000-999.
fn topology_text(ports: &Ports) -> String {
    let count = ports.cells.len();
    let mut text = String::from("version: 1\nregions: [north]\ncells:\n");
    for (index, (cell, pg)) in ports.cells.iter().zip(&ports.pg).enumerate() {
        let name = index + 1;
        let servers: Vec<String> = (0..ports.servers_per_cell)
            .map(|server| format!("\"127.0.0.1:{}\"", cell + server))
            .collect();
        let servers = servers.join(", ");
        text.push_str(&format!(
            "  - name: n{name}\n    region: north\n    status: active\n    servers: [{servers}]\n    db: \"postgres://redcell@127.0.0.1:{pg}/cell_n{name}\"\n"
        ));
    }
    let ranges: Vec<String> = (0..count)
        .map(|index| {
            let low = index * 1000 / count;
            let high = (index + 1) * 1000 / count - 1;
            format!("n{}: \"{low:03}-{high:03}\"", index + 1)
        })
        .collect();
    text.push_str(&format!(
        "epochs:\n  - id: 0\n    ranges:\n      north: {{ {} }}\nminting:\n  epoch: 0\n",
        ranges.join(", ")
    ));
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reconcile_output_is_read() {
        let text = "reconcile: 2 cells, 0 discrepancies\n  cell n1       3 envelopes, 40 claims, 0 pending sends, 0 pending transfers, held 1.00, settled 2.00\n  cell n2       1 envelopes, 2 claims, 0 pending sends, 0 pending transfers, held 0.00, settled 0.00\nconservation: ledger balances 1.00 + held 1.00 + orphaned 0.00 = deposited 2.00 (holds)\n";
        let reconciled = parse_reconcile(text).unwrap();
        assert_eq!(reconciled.discrepancies, 0);
        assert_eq!(reconciled.claims, 42);
        assert_eq!(reconciled.envelopes, 4);
        assert!(reconciled.conservation_holds);
    }

    #[test]
    fn written_topology_is_valid() {
        let ports = Ports {
            pg: vec![6001, 6002, 6003],
            cells: vec![7001, 7011, 7021],
            servers_per_cell: 2,
            router: 7000,
        };
        let topology = Topology::parse(&topology_text(&ports)).unwrap();
        assert_eq!(topology.cells().len(), 3);
        assert_eq!(
            topology.cells()[1].servers,
            ["127.0.0.1:7011", "127.0.0.1:7012"]
        );
    }
}

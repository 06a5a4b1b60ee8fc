//! `cellctl` as an operator runs it: the real binary, real files, exit codes and
//! output checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Command};

use redcell_migrations::{LEDGER, ORDER_DB, Schema};

#[path = "cli/archive.rs"]
mod archive;
#[path = "cli/change.rs"]
mod change;
#[path = "cli/chaos.rs"]
mod chaos;
#[path = "cli/expand.rs"]
mod expand;
#[path = "cli/grow_live.rs"]
mod grow_live;
#[path = "cli/live.rs"]
mod live;
#[path = "cli/ops.rs"]
mod ops;
#[path = "cli/render.rs"]
mod render;
#[path = "cli/standby.rs"]
mod standby;
#[path = "cli/up.rs"]
mod up;

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cells.yaml")
}

fn cellctl(args: &[&str], topology: Option<&std::path::Path>) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cellctl"));
    command
        .args(args)
        .env_remove("REDCELL_TOPOLOGY")
        .env_remove("REDCELL_LEDGER_DSN");
    if let Some(path) = topology {
        command.env("REDCELL_TOPOLOGY", path);
    }
    let (code, stdout, stderr) = finish(&mut command);
    Outcome {
        code,
        stdout,
        stderr,
    }
}

/// Runs a command to its end: (exit code, stdout, stderr).
fn finish(command: &mut Command) -> (i32, String, String) {
    let output = command.output().expect("the command runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `cellctl --topology TOPOLOGY` for a live-fleet test: nothing of the
/// operator's environment leaks in, and the `cell` and `router` binaries
/// `up` starts must be built beside it.
fn fleet_cellctl(topology: &std::path::Path) -> Command {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_cellctl"));
    if let Some(dir) = binary.parent() {
        for fleet_binary in ["cell", "router"] {
            assert!(
                dir.join(fleet_binary).is_file(),
                "{} is missing: build every binary first (cargo build --bins)",
                dir.join(fleet_binary).display()
            );
        }
    }
    let mut command = Command::new(binary);
    command
        .env_remove("REDCELL_TOPOLOGY")
        .env_remove("REDCELL_STATE_DIR")
        .env_remove("REDCELL_LEDGER_DSN")
        .arg("--topology")
        .arg(topology);
    command
}

/// Stops what a test's `cellctl up` started: `cellctl down` on its state
/// directory, then the `up` process itself if it is still there.
fn stop_fleet(state: &std::path::Path, up: &mut std::process::Child) {
    let _ = Command::new(env!("CARGO_BIN_EXE_cellctl"))
        .arg("down")
        .arg("--state-dir")
        .arg(state)
        .output();
    if matches!(up.try_wait(), Ok(None)) {
        let _ = up.kill();
    }
    let _ = up.wait();
}

/// `1, 2, ...`: every version of a list, as `migrate` reports a first run.
fn all_versions(migrations: &[redcell_migrations::Migration]) -> String {
    let versions: Vec<String> = migrations.iter().map(|m| m.version.to_string()).collect();
    versions.join(", ")
}

fn write_temp(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn validate_accepts_the_bundled_topology() {
    let bundled = bundled();
    let out = cellctl(&["validate", bundled.to_str().unwrap()], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("valid — 2 regions, 5 cells (5 active), 1 epochs, minting epoch 0"),
        "{}",
        out.stdout
    );
}

#[test]
fn validate_lists_every_error_and_fails() {
    let text = std::fs::read_to_string(bundled())
        .unwrap()
        .replace(r#"n2: "333-665""#, r#"n2: "333-600""#)
        .replace("status: active", "status: dead");
    let (_dir, path) = write_temp("broken.yaml", &text);
    let out = cellctl(&["--topology", path.to_str().unwrap(), "validate"], None);
    assert_eq!(out.code, 1);
    let shown = path.display();
    let expected = [
        format!("cellctl: {shown} is invalid (5 errors):"),
        format!(
            r#"  {shown}: cells[0].status: unknown status "dead" (expected active, failed or draining)"#
        ),
        format!(
            r#"  {shown}: cells[1].status: unknown status "dead" (expected active, failed or draining)"#
        ),
        format!(
            r#"  {shown}: cells[2].status: unknown status "dead" (expected active, failed or draining)"#
        ),
        format!(
            r#"  {shown}: cells[3].status: unknown status "dead" (expected active, failed or draining)"#
        ),
        format!(
            r#"  {shown}: cells[4].status: unknown status "dead" (expected active, failed or draining)"#
        ),
    ];
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn validate_reports_a_missing_file() {
    let out = cellctl(&["validate", "/nonexistent/cells.yaml"], None);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with("cellctl: cannot read /nonexistent/cells.yaml:"),
        "{}",
        out.stderr
    );
}

#[test]
fn route_prints_the_cell_and_its_servers() {
    let bundled = bundled();
    let out = cellctl(&["route", "2601221000000481516742"], Some(&bundled));
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in [
        "envelope  2601221000000481516742",
        "minted    2026-01-22 (partition day 22)",
        "region    1 (north)",
        "epoch     00",
        "sequence  481516",
        "suffix    742",
        "cell      n3 (active)",
        "servers   127.0.0.1:7121, 127.0.0.1:7122",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            out.stdout
        );
    }
}

#[test]
fn route_refuses_malformed_and_unroutable_ids() {
    let bundled = bundled();
    for (id, message) in [
        (
            "12345",
            r#"cellctl: "12345": envelope id must be 22 digits, got 5 characters"#,
        ),
        (
            "2601221000000481516x42",
            r#"cellctl: "2601221000000481516x42": envelope id has 'x' at position 20; only digits 0-9 are allowed"#,
        ),
        (
            "2601225000000481516742",
            r#"cellctl: "2601225000000481516742": envelope id region digit 5 is not a region of this topology"#,
        ),
        (
            "2601221040000481516742",
            r#"cellctl: "2601221040000481516742": envelope id epoch 04 does not exist in this topology"#,
        ),
    ] {
        let out = cellctl(&["route", id], Some(&bundled));
        assert_eq!(out.code, 1, "{id}");
        assert_eq!(out.stderr.trim_end(), message);
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn mint_pool_shows_shares_per_cell() {
    let bundled = bundled();
    let out = cellctl(&["mint-pool"], Some(&bundled));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "region north: epoch 0, 1000 suffixes\n\
         \x20 n1        33.30%  000-332\n\
         \x20 n2        33.30%  333-665\n\
         \x20 n3        33.40%  666-999\n\
         region south: epoch 0, 1000 suffixes\n\
         \x20 s1        50.00%  000-499\n\
         \x20 s2        50.00%  500-999\n"
    );
}

#[test]
fn mint_pool_follows_status_and_override() {
    let text = std::fs::read_to_string(bundled())
        .unwrap()
        .replacen("status: active", "status: failed", 1)
        .replace("region_override: {}", "region_override: {south: north}");
    let (_dir, path) = write_temp("cells.yaml", &text);
    let out = cellctl(&["mint-pool", "--region", "south"], Some(&path));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "region south: epoch 0, 667 suffixes, minted in north (region_override)\n\
         \x20 n2        49.92%  333-665\n\
         \x20 n3        50.07%  666-999\n"
    );
    let unknown = cellctl(&["mint-pool", "--region", "west"], Some(&path));
    assert_eq!(unknown.code, 1);
    assert_eq!(
        unknown.stderr.trim_end(),
        r#"cellctl: unknown region "west" (regions: north, south)"#
    );
}

#[test]
fn bad_usage_exits_2() {
    let out = cellctl(&["route"], None);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("ENVELOPE_ID"), "{}", out.stderr);
}

/// `cellctl migrate` against real PostgreSQL: applies, then is a no-op.
#[test]
fn migrate_applies_once_and_is_idempotent() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(redcell_harness::shared()).unwrap();
    runtime
        .block_on(server.create_database("cellctl_migrate_n1"))
        .unwrap();
    runtime
        .block_on(server.create_database("cellctl_migrate_ledger"))
        .unwrap();
    let order_dsn = server.dsn("cellctl_migrate_n1");
    let ledger_dsn = server.dsn("cellctl_migrate_ledger");
    let bundled = bundled();

    let first = cellctl(
        &["migrate", "--cell", "n1", "--dsn", &order_dsn],
        Some(&bundled),
    );
    assert_eq!(first.code, 0, "{}", first.stderr);
    let orders = Schema::Orders.expected_version();
    assert_eq!(
        first.stdout,
        format!(
            "cell n1: applied {} -> version {orders}\n",
            all_versions(ORDER_DB)
        )
    );
    let again = cellctl(
        &["migrate", "--cell", "n1", "--dsn", &order_dsn],
        Some(&bundled),
    );
    assert_eq!(
        again.stdout,
        format!("cell n1: up to date (version {orders})\n")
    );

    let ledger = cellctl(&["migrate", "--ledger", "--dsn", &ledger_dsn], None);
    assert_eq!(ledger.code, 0, "{}", ledger.stderr);
    assert_eq!(
        ledger.stdout,
        format!(
            "ledger: applied {} -> version {}\n",
            all_versions(LEDGER),
            Schema::Ledger.expected_version()
        )
    );

    let tables = runtime.block_on(async {
        let client = server.connect("cellctl_migrate_n1").await.unwrap();
        let rows = client
            .query(
                "SELECT count(*) FROM pg_tables WHERE tablename IN ('envelopes_01', 'claims_31', 'transfers', 'send_requests')",
                &[],
            )
            .await
            .unwrap();
        rows[0].get::<_, i64>(0)
    });
    assert_eq!(tables, 4);
}

#[test]
fn migrate_refuses_unknown_cells_and_unreachable_databases() {
    let bundled = bundled();
    let unknown = cellctl(&["migrate", "--cell", "n9"], Some(&bundled));
    assert_eq!(unknown.code, 1);
    assert_eq!(
        unknown.stderr.trim_end(),
        r#"cellctl: --cell: unknown cell "n9" (cells: n1, n2, n3, s1, s2)"#
    );
    let nothing = cellctl(&["migrate"], Some(&bundled));
    assert_eq!(nothing.code, 1);
    assert_eq!(
        nothing.stderr.trim_end(),
        "cellctl: say what to migrate: --cell NAME, --all-cells or --ledger"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dsn = format!("postgres://redcell:s3cret@127.0.0.1:{port}/nowhere");
    let down = cellctl(&["migrate", "--cell", "n1", "--dsn", &dsn], Some(&bundled));
    assert_eq!(down.code, 1);
    // The database by its DSN without the password, and the cause itself.
    assert_eq!(
        down.stderr.trim_end(),
        format!(
            "cellctl: cell n1 (postgres://redcell@127.0.0.1:{port}/nowhere): cannot connect: \
             error connecting to server: Connection refused (os error 111)"
        )
    );
    assert!(!down.stderr.contains("s3cret"), "{}", down.stderr);
}

/// `--all-cells` tries every cell even when one fails: the reachable cell is
/// migrated, the unreachable one is named by its DSN (without its password)
/// with the cause, and the command exits 1 after a summary.
#[test]
fn migrate_all_cells_tries_every_cell_and_names_each_failure() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(redcell_harness::shared()).unwrap();
    runtime
        .block_on(server.create_database("cellctl_all_cells_n2"))
        .unwrap();
    let good = server.dsn("cellctl_all_cells_n2");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The first cell's database is down: the second must still be migrated.
    let bad = format!("postgres://redcell:s3cret@127.0.0.1:{port}/cell_n1");
    let topology = format!(
        r#"version: 1
regions: [north]
cells:
  - name: n1
    region: north
    status: active
    servers: ["127.0.0.1:7101"]
    db: "{bad}"
  - name: n2
    region: north
    status: active
    servers: ["127.0.0.1:7111"]
    db: "{good}"
epochs:
  - id: 0
    ranges:
      north: {{ n1: "000-499", n2: "500-999" }}
minting:
  epoch: 0
"#
    );
    let (_dir, path) = write_temp("cells.yaml", &topology);
    let out = cellctl(&["migrate", "--all-cells"], Some(&path));
    assert_eq!(out.code, 1, "{}", out.stderr);
    let shown_bad = format!("postgres://redcell@127.0.0.1:{port}/cell_n1");
    assert_eq!(
        out.stdout,
        format!(
            "cell n1: FAILED ({shown_bad})\ncell n2: applied {} -> version {}\n",
            all_versions(ORDER_DB),
            Schema::Orders.expected_version()
        )
    );
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "cellctl: 1 of 2 databases failed (1 migrated):\n  cell n1 ({shown_bad}): cannot connect: \
             error connecting to server: Connection refused (os error 111)"
        )
    );
    assert!(!out.stderr.contains("s3cret") && !out.stdout.contains("s3cret"));
    let current = runtime.block_on(async {
        let client = server.connect("cellctl_all_cells_n2").await.unwrap();
        redcell_migrations::check_current(&client, Schema::Orders).await
    });
    assert_eq!(current.unwrap(), Schema::Orders.expected_version());

    // Once the other database is reachable too, a re-run succeeds for both.
    runtime
        .block_on(server.create_database("cellctl_all_cells_n1"))
        .unwrap();
    let fixed = topology.replace(&bad, &server.dsn("cellctl_all_cells_n1"));
    let (_dir, path) = write_temp("cells.yaml", &fixed);
    let again = cellctl(&["migrate", "--all-cells"], Some(&path));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.ends_with(&format!(
            "cell n2: up to date (version {})\nall 2 databases migrated\n",
            Schema::Orders.expected_version()
        )),
        "{}",
        again.stdout
    );
}

/// The token verifies as HS256 with the key and names the user. That the
/// router accepts exactly this (`redcell_proto::token::mint_hs256`) is the
/// router's own test (`auth::tests::minted_token_is_accepted`): cellctl links
/// no router, not even in its tests.
#[test]
fn dev_token_is_an_hs256_token_for_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hs256.key");
    std::fs::write(&key, b"a-development-key-of-32-bytes-or-more!!").unwrap();
    let out = cellctl(
        &[
            "dev-token",
            "--user",
            "alice",
            "--hs256-key-file",
            key.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out.stdout.trim();
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims = ["exp", "sub"].map(String::from).into();
    let claims = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&std::fs::read(&key).unwrap()),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims.sub, "alice");
    assert!(claims.exp > jsonwebtoken::get_current_timestamp());

    let bad = cellctl(
        &[
            "dev-token",
            "--user",
            "bad user",
            "--hs256-key-file",
            key.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.starts_with("cellctl: cannot mint a token:"),
        "{}",
        bad.stderr
    );
}

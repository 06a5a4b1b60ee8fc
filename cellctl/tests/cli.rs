//! `cellctl` as an operator runs it: the real binary, real files, exit codes and
//! output checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Command};

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
    command.args(args).env_remove("REDCELL_TOPOLOGY");
    if let Some(path) = topology {
        command.env("REDCELL_TOPOLOGY", path);
    }
    let output = command.output().expect("cellctl runs");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
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
    assert_eq!(first.stdout, "cell n1: applied 1 -> version 1\n");
    let again = cellctl(
        &["migrate", "--cell", "n1", "--dsn", &order_dsn],
        Some(&bundled),
    );
    assert_eq!(again.stdout, "cell n1: up to date (version 1)\n");

    let ledger = cellctl(&["migrate", "--ledger", "--dsn", &ledger_dsn], None);
    assert_eq!(ledger.code, 0, "{}", ledger.stderr);
    assert_eq!(ledger.stdout, "ledger: applied 1, 2 -> version 2\n");

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
    let dsn = format!("postgres://redcell@127.0.0.1:{port}/nowhere");
    let down = cellctl(&["migrate", "--cell", "n1", "--dsn", &dsn], Some(&bundled));
    assert_eq!(down.code, 1);
    assert!(
        down.stderr.starts_with("cellctl: cell n1: cannot connect:"),
        "{}",
        down.stderr
    );
}

#[test]
fn dev_token_is_accepted_by_the_routers_verifier() {
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
    let verifier = redcell_router::auth::Authenticator::new(
        redcell_router::auth::VerifierKey::Hs256(std::fs::read(&key).unwrap()),
    )
    .unwrap();
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(verifier.authenticate(&metadata).unwrap().as_str(), "alice");

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

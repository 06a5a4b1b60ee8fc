//! loadgen's smoke mode, so it never rots: the real binary against real
//! fleets it starts with `cellctl up --fast` (tiny sizes, a few seconds
//! each), then the checks a benchmark run ends with — `cellctl reconcile`
//! clean, conservation holding, the claims the cells hold equal to the
//! Opens answered AVAILABLE and to every share of every envelope. Timings
//! are printed, never asserted.
//!
//! Needs `cellctl`, `cell` and `router` next to `loadgen` (as `cargo test
//! --workspace` leaves them; alone: `cargo build --bins` first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Command};

use serde_json::Value;

fn loadgen() -> Command {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let dir = binary.parent().unwrap();
    for fleet_binary in ["cellctl", "cell", "router"] {
        assert!(
            dir.join(fleet_binary).is_file(),
            "{} is missing: build every binary first (cargo build --bins)",
            dir.join(fleet_binary).display()
        );
    }
    let mut command = Command::new(binary);
    for name in [
        "REDCELL_TOPOLOGY",
        "REDCELL_STATE_DIR",
        "REDCELL_LEDGER_DSN",
        "REDCELL_OPEN_STRATEGY",
        "REDCELL_COMMITTER",
        "REDCELL_DB_POOL",
    ] {
        command.env_remove(name);
    }
    command
}

/// Runs loadgen with `args` and `--json`; the report, after asserting success.
fn run(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let started = std::time::Instant::now();
    let output = loadgen()
        .args(args)
        .args(["--fast", "--cells", "2", "--senders", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "loadgen {} took {:?}\n{stdout}",
        args.join(" "),
        started.elapsed()
    );
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{stderr}"
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

/// The checks of one variant, spelled out (loadgen makes them too, and
/// fails the run on any; this guards against a loadgen that stops checking).
fn assert_counts_add_up(report: &Value, expected_shares: u64) {
    let variant = &report["variants"][0];
    assert_eq!(
        variant["failures"].as_array().unwrap().len(),
        0,
        "{variant}"
    );
    assert_eq!(variant["reconcile"]["discrepancies"], 0, "{variant}");
    assert_eq!(
        variant["reconcile"]["conservation_holds"], true,
        "{variant}"
    );
    let workload = &variant["workload"];
    let acknowledged = workload["acknowledged_shares"].as_u64().unwrap();
    assert_eq!(acknowledged, expected_shares, "{workload}");
    assert_eq!(
        variant["claims_added"].as_u64(),
        Some(acknowledged),
        "{variant}"
    );
    let taken_cents: i64 = workload["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|phase| phase["shares_taken_cents"].as_i64().unwrap())
        .sum();
    assert!(
        taken_cents >= acknowledged as i64,
        "every share is at least a cent"
    );
    assert!(variant["cost"]["calls"].as_u64().unwrap() > 0, "{variant}");
}

#[test]
fn hot_closed_loop_then_uniform_open_loop_reconcile_and_add_up() {
    // Hot: 2 envelopes x 20 shares, 30 users each: 40 shares taken, 20
    // EXHAUSTED answers; the pgbench baselines for a second each.
    let hot = run(&[
        "hot",
        "--envelopes",
        "2",
        "--shares",
        "20",
        "--users",
        "30",
        "--concurrency",
        "16",
        "--baseline-secs",
        "1",
    ]);
    assert_counts_add_up(&hot, 40);
    let variant = &hot["variants"][0];
    let baselines: Vec<&str> = variant["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    for name in ["hot_claim", "hot_claim32", "random_update", "tiny_commit"] {
        assert!(baselines.contains(&name), "{baselines:?}");
    }
    assert!(
        variant["ratios"].as_object().unwrap().len() >= 2,
        "{variant}"
    );
    let opens = &variant["workload"]["phases"][1]["ops"]["open"];
    assert_eq!(opens["calls"], 60, "{opens}");
    assert_eq!(opens["ok"], 60, "{opens}");

    // Uniform, open loop: 20 envelopes x 3 shares, 3 users each, offered at
    // 100 Opens/s (latency from the intended start).
    let uniform = run(&[
        "uniform",
        "--envelopes",
        "20",
        "--shares",
        "3",
        "--users",
        "3",
        "--rate",
        "100",
        "--no-baseline",
    ]);
    assert_counts_add_up(&uniform, 60);
    assert_eq!(
        uniform["postgres"].as_str().unwrap().split(' ').next(),
        Some("fast")
    );
}

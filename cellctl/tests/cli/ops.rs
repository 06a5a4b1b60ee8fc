//! The operator's eyes against real PostgreSQL (the harness's shared server):
//! `cellctl reconcile` and `cellctl transfers`, the real binary, exit codes
//! and output checked. The live-fleet parts (status of every part, reconcile
//! of the demo's fleet, a killed server shown as down) run in `up`'s test on
//! the fleet it starts.

use redcell_migrations::{LEDGER, ORDER_DB};
use redcell_payments::{Debit, DebitOutcome, Payments, PgLedger};

use super::{cellctl, write_temp};

/// An envelope ID of region 1 (north), epoch 0, suffix 742: routes to `n1`
/// of [`topology`].
pub const NORTH_ID: &str = "2601221000000481516742";

/// One cell `n1` owning every north suffix, its order DB at `db`.
pub fn topology(db: &str) -> String {
    format!(
        r#"version: 1
regions: [north]
cells:
  - name: n1
    region: north
    status: active
    servers: ["127.0.0.1:7101"]
    db: "{db}"
epochs:
  - id: 0
    ranges:
      north: {{ n1: "000-999" }}
minting:
  epoch: 0
"#
    )
}

/// Fresh, migrated order DB and ledger on the shared server: their DSNs.
pub fn databases(
    runtime: &tokio::runtime::Runtime,
    prefix: &str,
) -> (&'static redcell_harness::PgServer, String, String) {
    let server = runtime.block_on(redcell_harness::shared()).unwrap();
    for (name, migrations) in [("orders", ORDER_DB), ("ledger", LEDGER)] {
        let database = format!("{prefix}_{name}");
        runtime.block_on(async {
            server.create_database(&database).await.unwrap();
            let mut client = server.connect(&database).await.unwrap();
            redcell_migrations::apply(&mut client, migrations)
                .await
                .unwrap();
        });
    }
    (
        server,
        server.dsn(&format!("{prefix}_orders")),
        server.dsn(&format!("{prefix}_ledger")),
    )
}

/// Reconcile passes on a consistent fleet, prints conservation, and fails
/// naming the kind, envelope and key of an injected orphan debit (a `send:`
/// debit no cell holds), in the fleet check and the per-cell one.
#[test]
fn reconcile_passes_then_lists_an_injected_orphan_debit() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_server, orders, ledger_dsn) = databases(&runtime, "cellctl_reconcile");
    let (_dir, path) = write_temp("cells.yaml", &topology(&orders));
    let ledger = PgLedger::connect(&ledger_dsn, 1).unwrap();
    runtime
        .block_on(ledger.deposit("fund:alice:1", "alice", 10_000))
        .unwrap();
    let args = ["reconcile", "--ledger-dsn", &ledger_dsn];

    let clean = cellctl(&args, Some(&path));
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);
    assert!(
        clean
            .stdout
            .starts_with("reconcile: 1 cells, 0 discrepancies\n"),
        "{}",
        clean.stdout
    );
    assert!(
        clean.stdout.contains(
            "conservation: ledger balances 100.00 + held 0.00 + orphaned 0.00 = deposited 100.00 (holds)"
        ),
        "{}",
        clean.stdout
    );

    // Corruption: alice is debited under a send: key of n1 that n1 never
    // minted.
    let key = format!("send:{NORTH_ID}");
    let outcome = runtime
        .block_on(ledger.debit(Debit {
            key: &key,
            order: "injected-order",
            account: "alice",
            cents: 2_500,
        }))
        .unwrap();
    assert_eq!(outcome, DebitOutcome::Debited);

    let broken = cellctl(&args, Some(&path));
    assert_eq!(broken.code, 1, "{}{}", broken.stdout, broken.stderr);
    assert!(
        broken
            .stdout
            .starts_with("reconcile: 1 cells, 1 discrepancies\n"),
        "{}",
        broken.stdout
    );
    let listed: Vec<&str> = broken
        .stdout
        .lines()
        .filter(|line| line.starts_with("  OrphanDebit"))
        .collect();
    assert_eq!(listed.len(), 1, "{}", broken.stdout);
    assert!(
        listed[0].contains(&format!("envelope {NORTH_ID}")) && listed[0].contains(&key),
        "{}",
        listed[0]
    );
    assert!(
        broken.stdout.contains(
            "conservation: ledger balances 75.00 + held 0.00 + orphaned 25.00 = deposited 100.00 (holds)"
        ),
        "{}",
        broken.stdout
    );
    assert_eq!(
        broken.stderr.trim_end(),
        "cellctl: reconcile found 1 discrepancies"
    );

    let one = cellctl(
        &["reconcile", "--cell", "n1", "--ledger-dsn", &ledger_dsn],
        Some(&path),
    );
    assert_eq!(one.code, 1, "{}{}", one.stdout, one.stderr);
    assert!(
        one.stdout
            .starts_with("reconcile: cell n1, 1 discrepancies\n")
            && one.stdout.contains("  OrphanDebit"),
        "{}",
        one.stdout
    );
}

/// An unreachable order DB or ledger is named by its DSN without the
/// password, with the cause, and exits 1 (bounded: a refused connection); an
/// unknown `--cell` is refused naming the cells.
#[test]
fn reconcile_names_unreachable_databases_and_unknown_cells() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_server, orders, ledger_dsn) = databases(&runtime, "cellctl_reconcile_down");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("postgres://redcell:s3cret@127.0.0.1:{port}/gone");
    let shown = format!("postgres://redcell@127.0.0.1:{port}/gone");

    let (_dir, path) = write_temp("cells.yaml", &topology(&dead));
    let out = cellctl(&["reconcile", "--ledger-dsn", &ledger_dsn], Some(&path));
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "cellctl: 1 of 1 order DBs unreachable:\n  cell n1 order DB {shown}: cannot connect:"
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);

    let (_dir, path) = write_temp("cells.yaml", &topology(&orders));
    let out = cellctl(&["reconcile", "--ledger-dsn", &dead], Some(&path));
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("cellctl: ledger {shown}: ")),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);

    let out = cellctl(
        &["reconcile", "--cell", "n9", "--ledger-dsn", &ledger_dsn],
        Some(&path),
    );
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        r#"cellctl: --cell: unknown cell "n9" (cells: n1)"#
    );
}

//! `cellctl archive` as an operator runs it (issue 12 item 3): the real
//! binary against real PostgreSQL (the harness's shared server), a logic
//! server of the cell in-process on a real socket for Get.
//!
//! Back-dating: the cell mints IDs with today's date, so the cold day
//! (2026-01-22) is seeded as the cell writes it (`archive/seed.rs`), the way
//! `cli/ops.rs` seeds a stuck transfer; reconcile passes on the seed before
//! anything is archived.
#[path = "archive/seed.rs"]
pub(crate) mod seed;

use std::{path::Path, sync::Arc, time::Instant};

use redcell_migrations::{LEDGER, ORDER_DB};
use redcell_payments::{LedgerKey, PgLedger};
use redcell_proto::{
    internal::AsUser,
    v1::{self as pb, red_envelope_client::RedEnvelopeClient},
};
use redcell_topology::Topology;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use seed::{Seed, key, write};

/// A north ID of the cold day's test topology (suffix 742, owned by n1).
fn id(yymmdd: &str, sequence: u64) -> String {
    seed::north_id(yymmdd, sequence, 742)
}

const INTERNAL_TOKEN: &str = "archive-test-internal-token-0123456789";

fn cellctl(args: &[&str], topology: &Path) -> crate::Outcome {
    crate::cellctl(args, Some(topology))
}

/// One cell `n1` owning every north suffix, served at `server`.
fn topology(server: &str, db: &str) -> String {
    format!(
        r#"version: 1
regions: [north]
cells:
  - name: n1
    region: north
    status: active
    servers: ["{server}"]
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

async fn count(orders: &Client, query: &str) -> i64 {
    orders.query_one(query, &[]).await.unwrap().get(0)
}

/// Rows per table: equal before and after a run that must change nothing.
async fn rows(orders: &Client) -> [i64; 6] {
    let mut rows = [0; 6];
    for (slot, table) in rows.iter_mut().zip([
        "envelopes",
        "claims",
        "transfers",
        "send_requests",
        "archives",
        "archived_envelopes",
    ]) {
        *slot = count(orders, &format!("SELECT count(*) FROM {table}")).await;
    }
    rows
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The line of `out` containing `needle`, or a panic showing `out`.
fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

/// The operator's story: a cold day (2026-01-22) with an exhausted, an
/// expired-and-refunded and a cancelled envelope and one whose last transfer
/// is stuck, next to a later month's envelope in the same day partition. The
/// stuck one refuses the archive (dry run and --apply, nothing changed);
/// settled by `transfers --retry`, the dry run counts and changes nothing;
/// --apply writes the files (rows and checksums as the manifest says, the
/// manifest's checksum in the archives row), deletes exactly those rows
/// (the partition and the later envelope stay), reconcile balances with
/// conservation exact, Get names the archive; a re-run is a no-op; tampered
/// carried totals, and lost ones, are caught by reconcile.
#[test]
fn archive_exports_settled_cold_envelopes_and_reconcile_still_balances() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(redcell_harness::shared()).unwrap();
    let prefix = "cellctl_archive";
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
    let orders_dsn = server.dsn(&format!("{prefix}_orders"));
    let ledger_dsn = server.dsn(&format!("{prefix}_ledger"));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cells_yaml = dir.path().join("cells.yaml");
    let text = topology(&address.to_string(), &orders_dsn);
    std::fs::write(&cells_yaml, &text).unwrap();
    let archive_dir = dir.path().join("archive");
    let archive_arg = archive_dir.to_str().unwrap();
    let ledger = PgLedger::connect(&ledger_dsn, 2).unwrap();
    let orders = runtime
        .block_on(server.connect(&format!("{prefix}_orders")))
        .unwrap();

    let exhausted = id("260122", 1);
    let expired = id("260122", 2);
    let cancelled = id("260122", 3);
    let stuck = id("260122", 4);
    let later = id("260222", 1);
    let seeds = [
        Seed {
            id: exhausted.clone(),
            sender: "alice",
            status: 3,
            total: 3_000,
            count: 3,
            claims: &[("bob", 1_000), ("carol", 1_200), ("dave", 800)],
            refund: 0,
            settled: true,
        },
        Seed {
            id: expired.clone(),
            sender: "alice",
            status: 4,
            total: 2_000,
            count: 3,
            claims: &[("bob", 500)],
            refund: 1_500,
            settled: true,
        },
        Seed {
            id: cancelled.clone(),
            sender: "erin",
            status: 5,
            total: 900,
            count: 1,
            claims: &[],
            refund: 0,
            settled: true,
        },
        Seed {
            id: stuck.clone(),
            sender: "frank",
            status: 3,
            total: 700,
            count: 1,
            claims: &[("grace", 700)],
            refund: 0,
            settled: false,
        },
        // A later month's day 22: same partition, not before the date.
        Seed {
            id: later.clone(),
            sender: "alice",
            status: 3,
            total: 1_000,
            count: 1,
            claims: &[("bob", 1_000)],
            refund: 0,
            settled: true,
        },
    ];
    let mut deposited = 0;
    for seed in &seeds {
        deposited += runtime.block_on(write(&orders, &ledger, seed));
    }
    assert_eq!(deposited, 6_700);

    let reconcile = ["reconcile", "--ledger-dsn", &ledger_dsn];
    let clean = cellctl(&reconcile, &cells_yaml);
    assert_eq!(
        clean.code, 0,
        "the seed is what the cell writes:\n{}{}",
        clean.stdout, clean.stderr
    );
    assert!(
        clean.stdout.contains(
            "conservation: ledger balances 60.00 + held 7.00 + orphaned 0.00 = deposited 67.00 (holds)"
        ),
        "{}",
        clean.stdout
    );

    // A day that is not over yet, or no date, is refused naming --before.
    for (before, why) in [
        ("2099-12-31", "\"2099-12-31\" is after today ("),
        (
            "2026-02-30",
            "\"2026-02-30\" is not a calendar date in 2000-2099",
        ),
        ("26-01-23", "\"26-01-23\" is not a date (YYYY-MM-DD)"),
    ] {
        let out = cellctl(
            &["archive", "--before", before, "--to", archive_arg],
            &cells_yaml,
        );
        assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.starts_with(&format!("cellctl: --before: {why}")),
            "{}",
            out.stderr
        );
    }

    // The stuck transfer refuses the day, dry run or not; nothing changes.
    let before_rows = runtime.block_on(rows(&orders));
    let dry = ["archive", "--before", "2026-01-23", "--to", archive_arg];
    let apply = [&dry[..], &["--apply"]].concat();
    for args in [&dry[..], &apply[..]] {
        let refused = cellctl(args, &cells_yaml);
        assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
        assert_eq!(
            refused.stderr.trim_end(),
            format!(
                "cellctl: archive refused, nothing changed: cell n1: 1 unsettled envelope(s) \
                 minted before 2026-01-23 (e.g. {stuck}); settle them first (cellctl transfers \
                 --stuck) or archive an earlier day"
            )
        );
        assert!(
            line_with(&refused.stdout, "cell n1").contains(&format!("1 unsettled (e.g. {stuck})")),
            "{}",
            refused.stdout
        );
    }
    assert_eq!(runtime.block_on(rows(&orders)), before_rows);
    assert!(!archive_dir.exists(), "a refused archive writes no file");

    // The operator settles it; the dry run then counts and changes nothing.
    let transfer = key(LedgerKey::Claim {
        envelope: stuck.parse().unwrap(),
        sequence: 1,
    });
    let retried = cellctl(
        &[
            "transfers",
            "--retry",
            &transfer,
            "--ledger-dsn",
            &ledger_dsn,
        ],
        &cells_yaml,
    );
    assert_eq!(retried.code, 0, "{}{}", retried.stdout, retried.stderr);
    let planned = cellctl(&dry, &cells_yaml);
    assert_eq!(planned.code, 0, "{}{}", planned.stdout, planned.stderr);
    assert_eq!(
        planned.stdout,
        format!(
            "archive (dry run): settled envelopes minted before 2026-01-23 (by their ID's date), 1 cells\n  \
             cell n1       would archive 4 envelopes, 5 claims, 6 transfers, 4 send requests\n\
             nothing changed; run again with --apply to archive into {archive_arg}\n"
        )
    );
    assert_eq!(runtime.block_on(rows(&orders)), before_rows);
    assert!(!archive_dir.exists());

    // --apply: files, then deletes.
    let started = Instant::now();
    let applied = cellctl(&apply, &cells_yaml);
    let took = started.elapsed();
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    println!("archive --apply of 4 envelopes took {took:?} (the whole cellctl run)");
    println!("{}", applied.stdout);
    let manifest_path = archive_dir.join("n1-before-2026-01-23-1-manifest.json");
    assert_eq!(
        applied.stdout,
        format!(
            "archive: settled envelopes minted before 2026-01-23 (by their ID's date), 1 cells\n  \
             cell n1       to archive: 4 envelopes, 5 claims, 6 transfers, 4 send requests\n  \
             cell n1       archived 4 envelopes, 5 claims, 6 transfers, 4 send requests -> {}\n",
            manifest_path.display()
        )
    );
    let manifest_bytes = std::fs::read(&manifest_path).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["cell"], "n1");
    assert_eq!(manifest["before"], "2026-01-23");
    let expected_rows = [
        ("envelopes", 4),
        ("claims", 5),
        ("transfers", 6),
        ("send_requests", 4),
    ];
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files.len(), expected_rows.len(), "{manifest}");
    for (file, (table, rows)) in files.iter().zip(expected_rows) {
        assert_eq!(file["table"], table, "{manifest}");
        assert_eq!(file["rows"], rows, "{manifest}");
        let name = file["file"].as_str().unwrap();
        assert_eq!(name, format!("n1-before-2026-01-23-1-{table}.jsonl"));
        let bytes = std::fs::read(archive_dir.join(name)).unwrap();
        assert_eq!(file["sha256"], sha256(&bytes), "{name}");
        let lines: Vec<serde_json::Value> = bytes
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect();
        assert_eq!(lines.len(), rows, "{name}");
        if table == "envelopes" {
            let ids: Vec<&str> = lines
                .iter()
                .map(|row| row["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, [&exhausted, &expired, &cancelled, &stuck]);
            assert_eq!(lines[0]["total_cents"], 3_000);
            assert_eq!(lines[0]["status"], 3);
        }
    }
    let (directory, manifest_name, checksum): (String, String, String) = runtime.block_on(async {
        let row = orders
            .query_one(
                "SELECT directory, manifest, manifest_sha256 FROM archives WHERE id = 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    });
    assert_eq!(Path::new(&directory).join(&manifest_name), manifest_path);
    assert_eq!(checksum, sha256(&manifest_bytes));

    // Exactly those rows went; the partition and the later month's row stay.
    runtime.block_on(async {
        for (query, expected) in [
            ("SELECT count(*) FROM envelopes WHERE left(id, 6) < '260123'", 0),
            ("SELECT count(*) FROM claims WHERE left(envelope_id, 6) < '260123'", 0),
            ("SELECT count(*) FROM transfers WHERE left(envelope_id, 6) < '260123'", 0),
            ("SELECT count(*) FROM send_requests WHERE left(envelope_id, 6) < '260123'", 0),
            ("SELECT count(*) FROM envelopes_22", 1),
            ("SELECT count(*) FROM claims_22", 1),
            ("SELECT count(*) FROM archived_envelopes WHERE archive_id = 1", 4),
        ] {
            assert_eq!(count(&orders, query).await, expected, "{query}");
        }
        let carried: (i16, i64, i32, i64, i64, Option<String>) = {
            let row = orders
                .query_one(
                    "SELECT status, total_cents, claim_count, claimed_cents, refunded_cents, send_key \
                     FROM archived_envelopes WHERE envelope_id = $1",
                    &[&expired],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5))
        };
        assert_eq!(carried, (4, 2_000, 1, 500, 1_500, Some(format!("send-{expired}"))));
    });

    // Reconcile balances: every archived entry matched, conservation exact.
    let balanced = cellctl(&reconcile, &cells_yaml);
    assert_eq!(balanced.code, 0, "{}{}", balanced.stdout, balanced.stderr);
    println!("{}", balanced.stdout);
    assert!(
        balanced.stdout.starts_with("reconcile: 1 cells, 0 discrepancies\n")
            && balanced
                .stdout
                .contains("           4 archived envelopes matched by their carried totals\n")
            && balanced.stdout.contains(
                "conservation: ledger balances 67.00 + held 0.00 + orphaned 0.00 = deposited 67.00 (holds)"
            ),
        "{}",
        balanced.stdout
    );
    assert!(
        line_with(&balanced.stdout, "cell n1").contains("1 envelopes, 1 claims"),
        "{}",
        balanced.stdout
    );

    // A re-run is a no-op.
    let again = cellctl(&apply, &cells_yaml);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        again
            .stdout
            .ends_with("  cell n1       nothing to archive\nnothing to archive\n"),
        "{}",
        again.stdout
    );
    assert_eq!(std::fs::read_dir(&archive_dir).unwrap().count(), 5);
    assert_eq!(
        runtime.block_on(count(&orders, "SELECT count(*) FROM archives")),
        1
    );

    // Get: an archived ID is NOT_FOUND naming the archive; the rest as ever.
    let topology = Arc::new(Topology::parse(&text).unwrap());
    let mut config = redcell_cell::CellConfig::new("n1", topology).unwrap();
    config.internal_token = Some(INTERNAL_TOKEN.to_owned());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cell = runtime.spawn(redcell_cell::run(listener, config, ledger.clone(), async {
        let _ = stopped.await;
    }));
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let user = AsUser::new("bob")
            .unwrap()
            .with_internal(INTERNAL_TOKEN)
            .unwrap();
        let mut client = RedEnvelopeClient::with_interceptor(channel, user);
        let get = |envelope_id: &str| pb::GetRequest {
            envelope_id: envelope_id.to_owned(),
            ..Default::default()
        };
        let today: String = orders
            .query_one(
                "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM archives WHERE id = 1",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        for archived in [&exhausted, &expired, &cancelled, &stuck] {
            let status = client.get(get(archived)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
            assert_eq!(
                status.message(),
                format!(
                    "envelope {archived} was archived on {today} to \
                     n1-before-2026-01-23-1-manifest.json"
                )
            );
        }
        let live = client.get(get(&later)).await.unwrap().into_inner();
        assert_eq!(live.envelope.unwrap().id, later);
        assert_eq!(live.claims.len(), 1);
        let never = id("260122", 99);
        let status = client.get(get(&never)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), format!("envelope {never} not found"));
    });
    let _ = stop.send(());
    runtime.block_on(cell).unwrap().unwrap();

    // A tampered carried total is caught: 100 moved from claims to refund
    // keeps the row's own sums (its CHECK) but not the ledger's.
    let tamper = |sql: &str| {
        runtime.block_on(orders.execute(sql, &[&expired])).unwrap();
    };
    tamper(
        "UPDATE archived_envelopes SET claimed_cents = claimed_cents - 100, \
         refunded_cents = refunded_cents + 100 WHERE envelope_id = $1",
    );
    let caught = cellctl(&reconcile, &cells_yaml);
    assert_eq!(caught.code, 1, "{}{}", caught.stdout, caught.stderr);
    println!("{}", caught.stdout);
    assert!(
        caught
            .stdout
            .starts_with("reconcile: 1 cells, 2 discrepancies\n"),
        "{}",
        caught.stdout
    );
    assert!(
        line_with(&caught.stdout, "  ArchivedTotals cell n1 envelope").contains(&expired)
            && caught
                .stdout
                .contains("carried 1 claims of 400 but the ledger credited 1 claims of 500")
            && caught.stdout.contains(
                "carried a refund of 1600 but the ledger credited 1 refunds of 1500 to the sender"
            ),
        "{}",
        caught.stdout
    );
    tamper(
        "UPDATE archived_envelopes SET claimed_cents = claimed_cents + 100, \
         refunded_cents = refunded_cents - 100 WHERE envelope_id = $1",
    );
    let restored = cellctl(&reconcile, &cells_yaml);
    assert_eq!(restored.code, 0, "{}{}", restored.stdout, restored.stderr);

    // Lost carried totals leave the ledger's entries orphaned, and say so.
    tamper("DELETE FROM archived_envelopes WHERE envelope_id = $1");
    let orphaned = cellctl(&reconcile, &cells_yaml);
    assert_eq!(orphaned.code, 1, "{}{}", orphaned.stdout, orphaned.stderr);
    assert!(
        line_with(&orphaned.stdout, "  OrphanDebit").contains(&expired)
            && orphaned
                .stdout
                .lines()
                .filter(|line| line.starts_with("  OrphanCredit"))
                .count()
                == 2,
        "{}",
        orphaned.stdout
    );
}

/// Not a check: seeds a settled back-dated day into a running fleet (the
/// order DB of the cell owning `REDCELL_SEED_SUFFIX` in the north region,
/// `REDCELL_SEED_ORDERS_DSN`, and its ledger, `REDCELL_SEED_LEDGER_DSN`), so
/// that `cellctl archive` has a cold day to archive in the walk-through: an
/// exhausted, an expired-and-refunded and a cancelled envelope minted on
/// `REDCELL_SEED_DAY` (YYMMDD, default 260122), IDs from sequence 1.
/// `cargo test -p redcell-cellctl --test cli -- --ignored archive::seed_a_back_dated_day`
#[test]
#[ignore = "a walk-through aid: writes into the fleet named by REDCELL_SEED_*"]
fn seed_a_back_dated_day_into_a_running_fleet() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("set {name}"));
    let orders_dsn = var("REDCELL_SEED_ORDERS_DSN");
    let ledger_dsn = var("REDCELL_SEED_LEDGER_DSN");
    let suffix: u16 =
        std::env::var("REDCELL_SEED_SUFFIX").map_or(742, |suffix| suffix.parse().unwrap());
    let day = std::env::var("REDCELL_SEED_DAY").unwrap_or_else(|_| "260122".to_owned());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = PgLedger::connect(&ledger_dsn, 1).unwrap();
    let orders = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&orders_dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    });
    let id = |sequence| seed::north_id(&day, sequence, suffix);
    let seeds = [
        Seed {
            id: id(1),
            sender: "alice",
            status: 3,
            total: 3_000,
            count: 3,
            claims: &[("bob", 1_000), ("carol", 1_200), ("dave", 800)],
            refund: 0,
            settled: true,
        },
        Seed {
            id: id(2),
            sender: "alice",
            status: 4,
            total: 2_000,
            count: 3,
            claims: &[("bob", 500)],
            refund: 1_500,
            settled: true,
        },
        Seed {
            id: id(3),
            sender: "erin",
            status: 5,
            total: 900,
            count: 1,
            claims: &[],
            refund: 0,
            settled: true,
        },
    ];
    for seed in &seeds {
        runtime.block_on(write(&orders, &ledger, seed));
        println!("seeded {}", seed.id);
    }
}

/// Two cells, each its own order DB, one ledger: `n1` (suffixes 000-499)
/// holds a settled cold envelope, `n2` (500-999) one whose transfer is stuck.
/// The fleet run is refused as a whole (n1 unchanged too); `--cell n1`
/// archives n1 alone; once n2's transfer is settled, the fleet run archives
/// n2 and finds nothing left in n1; the fleet reconciles throughout.
#[test]
fn a_fleet_archive_is_refused_whole_and_runs_one_transaction_per_cell() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(redcell_harness::shared()).unwrap();
    let prefix = "cellctl_archive_fleet";
    for (name, migrations) in [("n1", ORDER_DB), ("n2", ORDER_DB), ("ledger", LEDGER)] {
        runtime.block_on(async {
            let database = format!("{prefix}_{name}");
            server.create_database(&database).await.unwrap();
            let mut client = server.connect(&database).await.unwrap();
            redcell_migrations::apply(&mut client, migrations)
                .await
                .unwrap();
        });
    }
    let dsn = |name: &str| server.dsn(&format!("{prefix}_{name}"));
    let ledger_dsn = dsn("ledger");
    let text = format!(
        r#"version: 1
regions: [north]
cells:
  - name: n1
    region: north
    status: active
    servers: ["127.0.0.1:9"]
    db: "{n1}"
  - name: n2
    region: north
    status: active
    servers: ["127.0.0.1:10"]
    db: "{n2}"
epochs:
  - id: 0
    ranges:
      north: {{ n1: "000-499", n2: "500-999" }}
minting:
  epoch: 0
"#,
        n1 = dsn("n1"),
        n2 = dsn("n2"),
    );
    let dir = tempfile::tempdir().unwrap();
    let cells_yaml = dir.path().join("cells.yaml");
    std::fs::write(&cells_yaml, text).unwrap();
    let archive_dir = dir.path().join("archive");
    let archive_arg = archive_dir.to_str().unwrap();
    let ledger = PgLedger::connect(&ledger_dsn, 1).unwrap();
    let n1 = runtime
        .block_on(server.connect(&format!("{prefix}_n1")))
        .unwrap();
    let n2 = runtime
        .block_on(server.connect(&format!("{prefix}_n2")))
        .unwrap();
    let settled = seed::north_id("260122", 1, 100);
    let stuck = seed::north_id("260122", 1, 900);
    runtime.block_on(async {
        let seed = |id: &str, settled| Seed {
            id: id.to_owned(),
            sender: "alice",
            status: 3,
            total: 500,
            count: 1,
            claims: &[("bob", 500)],
            refund: 0,
            settled,
        };
        write(&n1, &ledger, &seed(&settled, true)).await;
        write(&n2, &ledger, &seed(&stuck, false)).await;
    });
    let reconcile = ["reconcile", "--ledger-dsn", &ledger_dsn];
    let clean = cellctl(&reconcile, &cells_yaml);
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);

    let fleet = [
        "archive",
        "--before",
        "2026-01-23",
        "--to",
        archive_arg,
        "--apply",
    ];
    let n1_rows = runtime.block_on(rows(&n1));
    let refused = cellctl(&fleet, &cells_yaml);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        line_with(&refused.stdout, "cell n1")
            .ends_with("to archive: 1 envelopes, 1 claims, 1 transfers, 1 send requests")
            && line_with(&refused.stdout, "cell n2")
                .ends_with(&format!("nothing to archive; 1 unsettled (e.g. {stuck})")),
        "{}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains(&format!(
            "cell n2: 1 unsettled envelope(s) minted before 2026-01-23 (e.g. {stuck})"
        )),
        "{}",
        refused.stderr
    );
    assert_eq!(runtime.block_on(rows(&n1)), n1_rows, "n1 changed");
    assert!(!archive_dir.exists());

    let one = cellctl(&[&fleet[..], &["--cell", "n1"]].concat(), &cells_yaml);
    assert_eq!(one.code, 0, "{}{}", one.stdout, one.stderr);
    assert!(
        one.stdout.ends_with(&format!(
            "  cell n1       archived 1 envelopes, 1 claims, 1 transfers, 1 send requests -> {}\n",
            archive_dir
                .join("n1-before-2026-01-23-1-manifest.json")
                .display()
        )),
        "{}",
        one.stdout
    );
    let balanced = cellctl(&reconcile, &cells_yaml);
    assert_eq!(balanced.code, 0, "{}{}", balanced.stdout, balanced.stderr);

    let transfer = key(LedgerKey::Claim {
        envelope: stuck.parse().unwrap(),
        sequence: 1,
    });
    let retried = cellctl(
        &[
            "transfers",
            "--retry",
            &transfer,
            "--ledger-dsn",
            &ledger_dsn,
        ],
        &cells_yaml,
    );
    assert_eq!(retried.code, 0, "{}{}", retried.stdout, retried.stderr);
    let rest = cellctl(&fleet, &cells_yaml);
    assert_eq!(rest.code, 0, "{}{}", rest.stdout, rest.stderr);
    assert!(
        rest.stdout.contains("  cell n1       nothing to archive\n")
            && rest.stdout.contains(&format!(
                "  cell n2       archived 1 envelopes, 1 claims, 1 transfers, 1 send requests -> {}\n",
                archive_dir
                    .join("n2-before-2026-01-23-1-manifest.json")
                    .display()
            )),
        "{}",
        rest.stdout
    );
    let all = cellctl(&reconcile, &cells_yaml);
    assert_eq!(all.code, 0, "{}{}", all.stdout, all.stderr);
    assert!(
        all.stdout.contains(
            "conservation: ledger balances 10.00 + held 0.00 + orphaned 0.00 = deposited 10.00 (holds)"
        ) && all
            .stdout
            .matches("           1 archived envelopes matched by their carried totals\n")
            .count()
            == 2,
        "{}",
        all.stdout
    );
}

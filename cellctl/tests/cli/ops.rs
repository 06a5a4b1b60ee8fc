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

/// A paid envelope of alice's in n1 with one share opened by bob whose
/// credit failed `attempts` times (the rows and ledger entries the cell and
/// its settlement worker write: debit committed, claim and pending transfer
/// with the worker's attempts and last error). Returns the transfer's key.
fn seed_stuck_transfer(
    runtime: &tokio::runtime::Runtime,
    orders_dsn: &str,
    ledger: &PgLedger,
    attempts: i32,
) -> String {
    let key = format!("claim:{NORTH_ID}:1");
    runtime.block_on(async {
        ledger.deposit("fund:alice:1", "alice", 3_000).await.unwrap();
        let debited = ledger
            .debit(Debit {
                key: &format!("send:{NORTH_ID}"),
                order: "send-1",
                account: "alice",
                cents: 3_000,
            })
            .await
            .unwrap();
        assert_eq!(debited, DebitOutcome::Debited);
        let (client, connection) = tokio_postgres::connect(orders_dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "INSERT INTO envelopes (day, id, sender, kind, status, total_cents, count, \
                   remaining_cents, remaining_count, greeting, recipients, seed, expires_at, split_rule) \
                 VALUES (22, '{NORTH_ID}', 'alice', 2, 2, 3000, 3, 2000, 2, 'hi', '{{}}', \
                   decode(repeat('ab', 32), 'hex'), now() + interval '1 day', 1); \
                 INSERT INTO send_requests (sender, idempotency_key, envelope_id) \
                 VALUES ('alice', 'send-1', '{NORTH_ID}'); \
                 INSERT INTO claims (day, envelope_id, user_id, seq, amount_cents) \
                 VALUES (22, '{NORTH_ID}', 'bob', 1, 1000); \
                 INSERT INTO transfers (key, kind, envelope_id, user_id, amount_cents, attempts, \
                   next_attempt_at, last_error) \
                 VALUES ('{key}', 1, '{NORTH_ID}', 'bob', 1000, {attempts}, \
                   now() + interval '60 seconds', 'payment system unavailable: relation \"accounts\" does not exist');"
            ))
            .await
            .unwrap();
    });
    key
}

/// `--stuck` lists a transfer whose credit kept failing (and not one below
/// the threshold); `--retry` fails while the ledger fails, then pays it once
/// and marks it done, and a second `--retry` pays nothing. Reconcile passes
/// before and after: the hand-made settlement keeps every invariant.
#[test]
fn transfers_lists_a_stuck_transfer_and_retry_pays_it_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, orders, ledger_dsn) = databases(&runtime, "cellctl_transfers");
    let (_dir, path) = write_temp("cells.yaml", &topology(&orders));
    let ledger = PgLedger::connect(&ledger_dsn, 1).unwrap();
    let key = seed_stuck_transfer(&runtime, &orders, &ledger, 12);
    let reconcile = ["reconcile", "--ledger-dsn", &ledger_dsn];
    let before = cellctl(&reconcile, Some(&path));
    assert_eq!(before.code, 0, "{}{}", before.stdout, before.stderr);
    assert!(before.stdout.contains("held 30.00"), "{}", before.stdout);

    let listed = cellctl(&["transfers", "--stuck"], Some(&path));
    assert_eq!(listed.code, 0, "{}{}", listed.stdout, listed.stderr);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(
        lines[0], "stuck transfers (pending after >= 10 failed credits): 1",
        "{}",
        listed.stdout
    );
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["n1", key.as_str(), "bob", "10.00", "12"],
        "{}",
        lines[2]
    );
    assert!(
        lines[2].ends_with("payment system unavailable: relation \"accounts\" does not exist"),
        "{}",
        lines[2]
    );
    let higher = cellctl(&["transfers", "--stuck", "--attempts", "13"], Some(&path));
    assert_eq!(higher.code, 0, "{}", higher.stderr);
    assert_eq!(
        higher.stdout,
        "stuck transfers (pending after >= 13 failed credits): 0\n"
    );

    // While the ledger cannot credit (its accounts table is gone), a retry
    // fails, says so, and leaves the transfer pending.
    let ledger_db = runtime
        .block_on(server.connect("cellctl_transfers_ledger"))
        .unwrap();
    runtime
        .block_on(ledger_db.batch_execute("ALTER TABLE accounts RENAME TO accounts_away"))
        .unwrap();
    let retry = ["transfers", "--retry", &key, "--ledger-dsn", &ledger_dsn];
    let failed = cellctl(&retry, Some(&path));
    assert_eq!(failed.code, 1, "{}{}", failed.stdout, failed.stderr);
    assert!(
        failed.stderr.contains(&format!("crediting {key}:"))
            && failed.stderr.contains("the transfer stays pending"),
        "{}",
        failed.stderr
    );
    runtime
        .block_on(ledger_db.batch_execute("ALTER TABLE accounts_away RENAME TO accounts"))
        .unwrap();
    assert_eq!(runtime.block_on(ledger.balance("bob")).unwrap(), 0);

    let paid = cellctl(&retry, Some(&path));
    assert_eq!(paid.code, 0, "{}{}", paid.stdout, paid.stderr);
    assert_eq!(
        paid.stdout,
        format!("{key}: credited bob 10.00 and marked done (cell n1)\n")
    );
    let again = cellctl(&retry, Some(&path));
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(
        again.stdout,
        format!("{key}: already settled (bob 10.00); nothing credited\n")
    );
    assert_eq!(runtime.block_on(ledger.balance("bob")).unwrap(), 1_000);
    let none = cellctl(&["transfers", "--stuck"], Some(&path));
    assert_eq!(
        none.stdout,
        "stuck transfers (pending after >= 10 failed credits): 0\n"
    );
    let after = cellctl(&reconcile, Some(&path));
    assert_eq!(after.code, 0, "{}{}", after.stdout, after.stderr);
    assert!(
        after.stdout.contains(
            "conservation: ledger balances 10.00 + held 20.00 + orphaned 0.00 = deposited 30.00 (holds)"
        ),
        "{}",
        after.stdout
    );

    // Bad input is refused naming the argument, and changes nothing.
    for (args, message) in [
        (
            vec!["transfers", "--stuck", "--attempts", "0"],
            "cellctl: --attempts: must be at least 1, got 0".to_owned(),
        ),
        (
            vec!["transfers", "--retry", "send:2601221000000481516742", "--ledger-dsn", &ledger_dsn],
            r#"cellctl: --retry: "send:2601221000000481516742" is a Send's debit, not a settlement transfer (claim:… or refund:…)"#.to_owned(),
        ),
        (
            vec!["transfers", "--retry", "claim:2601221000000481516742:2", "--ledger-dsn", &ledger_dsn],
            "cellctl: --retry: cell n1 has no transfer claim:2601221000000481516742:2".to_owned(),
        ),
    ] {
        let out = cellctl(&args, Some(&path));
        assert_eq!(out.code, 1, "{args:?}");
        assert_eq!(out.stderr.trim_end(), message);
    }
    let bad_key = cellctl(
        &[
            "transfers",
            "--retry",
            "fund:alice:1",
            "--ledger-dsn",
            &ledger_dsn,
        ],
        Some(&path),
    );
    assert_eq!(bad_key.code, 1);
    assert!(
        bad_key
            .stderr
            .starts_with("cellctl: --retry: \"fund:alice:1\":"),
        "{}",
        bad_key.stderr
    );
    assert_eq!(runtime.block_on(ledger.balance("bob")).unwrap(), 1_000);
    let neither = cellctl(&["transfers"], Some(&path));
    assert_eq!(neither.code, 2, "{}", neither.stderr);
}

/// A finished cellctl run: exit code, stdout, stderr.
pub type Run = (i32, String, String);

/// Step 3 of `up`'s test, on the fleet it started (after the demo):
/// `status --json` shows every part healthy, the table says so, and a wrong
/// internal credential is refused by every status RPC. Each status run is
/// bounded by its probe deadline, so the command returns.
pub fn status_of_the_live_fleet(run: &dyn Fn(&[&str]) -> Run, state: &str) {
    let (code, json, errors) = run(&["status", "--json", "--state-dir", state]);
    assert_eq!(code, 0, "status failed:\n{json}\n{errors}");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["healthy"], true, "{json}");
    let cells = status["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3, "{json}");
    for cell in cells {
        assert_eq!(cell["db"]["reachable"], true, "{json}");
        assert_eq!(cell["db"]["outbox_backlog"], 0, "{json}");
        assert_eq!(cell["db"]["pending_sends"], 0, "{json}");
        assert!(!cell["mints"].as_array().unwrap().is_empty(), "{json}");
        for server in cell["servers"].as_array().unwrap() {
            assert_eq!(server["health"], "SERVING", "{json}");
            assert!(server["lanes_open"].is_u64(), "{json}");
            assert_eq!(server["topology"]["current"], true, "{json}");
        }
    }
    assert_eq!(cells[0]["mints"], serde_json::json!(["000-499"]), "{json}");
    let routers = status["routers"].as_array().unwrap();
    assert_eq!(routers.len(), 1, "{json}");
    assert_eq!(routers[0]["health"], "SERVING", "{json}");
    assert_eq!(routers[0]["topology"]["current"], true, "{json}");
    assert_eq!(
        routers[0]["topology"]["fingerprint"], status["topology"],
        "{json}"
    );

    let (code, table, errors) = run(&["status", "--state-dir", state]);
    assert_eq!(code, 0, "{table}{errors}");
    assert!(table.ends_with("healthy\n"), "{table}");

    // The status RPCs are behind the internal credential: a wrong one is
    // refused by every server and the router, and status says so.
    let (_dir, wrong) = write_temp("internal-token", "not-the-fleet-token-0123456789");
    let wrong = wrong.to_str().unwrap();
    let args = [
        "status",
        "--json",
        "--state-dir",
        state,
        "--internal-token-file",
        wrong,
    ];
    let (code, json, _) = run(&args);
    assert_eq!(code, 1, "{json}");
    let refused: serde_json::Value = serde_json::from_str(&json).unwrap();
    let problems: Vec<&str> = refused["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|problem| problem.as_str())
        .collect();
    assert_eq!(problems.len(), 4 + 1, "{json}");
    assert!(
        problems.iter().all(|problem| problem.contains("status: ")),
        "{json}"
    );
    assert!(refused["routers"][0]["topology"].is_null(), "{json}");
}

/// Then a logic server (`victim`, one of n1's two) SIGKILLed shows as DOWN
/// while every other part stays healthy, and status exits 1 naming it.
pub fn killed_server_shows_down(
    run: &dyn Fn(&[&str]) -> Run,
    state: &str,
    parts: &[(String, u32)],
    victim: u16,
) {
    let address = format!("127.0.0.1:{victim}");
    let part = format!("cell-n1-{victim}.pid");
    let pid = parts
        .iter()
        .find(|(name, _)| *name == part)
        .map(|(_, pid)| *pid)
        .unwrap_or_else(|| panic!("no {part} in {parts:?}"));
    redcell_pgsys::sys::send_signal(pid, redcell_pgsys::sys::Signal::Kill).unwrap();
    // The kill lands asynchronously; bounded: the first status run that
    // starts after the process is gone must show it down.
    let mut seen = None;
    for _ in 0..100 {
        let (code, json, errors) = run(&["status", "--json", "--state-dir", state]);
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        let down = status["cells"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|server| server["address"] == address.as_str() && server["health"] == "DOWN");
        if down {
            seen = Some((code, status, errors));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, status, errors) = seen.expect("the killed server never showed as DOWN");
    assert_eq!(code, 1, "{status}");
    assert_eq!(status["healthy"], false);
    assert_eq!(
        status["problems"],
        serde_json::json!([format!("cell n1 server {address} DOWN")]),
        "{status}"
    );
    assert_eq!(
        errors.trim_end(),
        format!("cellctl: 1 problems: cell n1 server {address} DOWN")
    );
    for cell in status["cells"].as_array().unwrap() {
        assert_eq!(cell["db"]["reachable"], true, "{status}");
        for server in cell["servers"].as_array().unwrap() {
            if server["address"] != address.as_str() {
                assert_eq!(server["health"], "SERVING", "{status}");
            }
        }
    }
}

/// On the live fleet: a share whose credit keeps failing (the ledger's
/// `accounts` table renamed after the Send was paid, before the Open) is
/// listed by `transfers --stuck` with the settlement worker's own error once
/// it failed `--attempts 3` times; with the ledger back, `--retry` twice pays
/// it exactly once (whoever of the retry and the worker gets there first:
/// the deterministic credit-then-mark path is
/// `transfers_lists_a_stuck_transfer_and_retry_pays_it_once`), and the fleet
/// reconciles. Users `frank` and `grace` are outside the demo's.
pub fn stuck_transfer_on_the_live_fleet(
    run: &dyn Fn(&[&str]) -> Run,
    state: &std::path::Path,
    ledger_dsn: &str,
) {
    use redcell_proto::{
        token::{BearerToken, mint_hs256},
        v1::{self as pb, red_envelope_client::RedEnvelopeClient},
    };
    let state_arg = state.to_str().unwrap();
    let (code, funded, errors) = run(&["fund", "frank", "700", "--state-dir", state_arg]);
    assert_eq!(code, 0, "{funded}{errors}");
    let router = std::fs::read_to_string(state.join("routers")).unwrap();
    let router = router.lines().next().unwrap().to_owned();
    let key = std::fs::read(state.join("hs256.key")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let channel = runtime
        .block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{router}"))
                .unwrap()
                .connect(),
        )
        .unwrap();
    let client = |user: &str| {
        let token = mint_hs256(&key, user, 600).unwrap();
        RedEnvelopeClient::with_interceptor(channel.clone(), BearerToken::new(&token).unwrap())
    };
    let envelope = runtime
        .block_on(client("frank").send(pb::SendRequest {
            total_cents: 700,
            count: 1,
            kind: pb::EnvelopeKind::Exclusive.into(),
            greeting: "stuck".to_owned(),
            recipients: vec!["grace".to_owned()],
            idempotency_key: "ops-stuck-1".to_owned(),
        }))
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();

    let ledger_db = runtime
        .block_on(async {
            let (client, connection) =
                tokio_postgres::connect(ledger_dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute("ALTER TABLE accounts RENAME TO accounts_away")
                .await?;
            Ok::<_, tokio_postgres::Error>(client)
        })
        .unwrap();
    let opened = runtime
        .block_on(client("grace").open(pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(opened.amount_cents, 700, "{opened:?}");
    let transfer = format!("claim:{}:1", envelope.id);

    // Bounded: settlement retries at 0.2 s, 0.4 s, 0.8 s, ...
    let args = ["transfers", "--stuck", "--attempts", "3"];
    let mut listed = None;
    for _ in 0..300 {
        let (code, out, errors) = run(&args);
        assert_eq!(code, 0, "{out}{errors}");
        if out.contains(&transfer) {
            listed = Some(out);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let listed = listed.expect("the failing transfer was never listed as stuck");
    assert!(
        listed.starts_with("stuck transfers (pending after >= 3 failed credits): 1\n"),
        "{listed}"
    );
    let row = listed
        .lines()
        .find(|line| line.contains(&transfer))
        .unwrap();
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[1..4], [transfer.as_str(), "grace", "7.00"], "{row}");
    assert!(row.contains("accounts"), "the worker's error: {row}");

    runtime
        .block_on(ledger_db.batch_execute("ALTER TABLE accounts_away RENAME TO accounts"))
        .unwrap();
    let retry = ["transfers", "--retry", &transfer, "--state-dir", state_arg];
    let (first_code, first, first_errors) = run(&retry);
    assert_eq!(first_code, 0, "{first}{first_errors}");
    let (second_code, second, second_errors) = run(&retry);
    assert_eq!(second_code, 0, "{second}{second_errors}");
    assert_eq!(
        second,
        format!("{transfer}: already settled (grace 7.00); nothing credited\n")
    );
    let ledger = PgLedger::connect(ledger_dsn, 1).unwrap();
    assert_eq!(
        runtime.block_on(ledger.balance("grace")).unwrap(),
        700,
        "{first}"
    );
    assert_eq!(runtime.block_on(ledger.balance("frank")).unwrap(), 0);
    let (code, reconciled, errors) = run(&["reconcile", "--state-dir", state_arg]);
    assert_eq!(code, 0, "{reconciled}{errors}");
    assert!(
        reconciled.contains(" 0 discrepancies") && reconciled.contains("(holds)"),
        "{reconciled}"
    );
}

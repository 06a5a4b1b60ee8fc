//! A running cell follows its order DB to the DSN cells.yaml names, without
//! a restart (issue 11 item 3: `cellctl failover` promotes a cell DB's
//! standby, then rewrites the cell's `db:` and waits until every logic server
//! reports the new topology fingerprint in `CellOps.CellStatus`).
//!
//! DB A is on a PostgreSQL server of the test's own (to stop it); B, on the
//! shared server, gets A's rows copied in by the test once A is at rest: the
//! caught-up standby. From the moment the server reports the new fingerprint,
//! a new Send lands in B and not in A, an Open of an envelope sent before the
//! switch claims in B, and after A's server is stopped the cell keeps serving
//! from B. The money check then runs on B, which holds every envelope this
//! cell ever had.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redcell_cell::db::OrderDb;
use redcell_harness::{PgServer, TestDb};
use redcell_lifecycle::TopologyHandle;
use redcell_proto::v1::{self as pb, CellStatusRequest, cell_ops_client::CellOpsClient};
use redcell_topology::Topology;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::Channel;

use crate::{
    reload::{replace_file, send_on},
    stack::{self, Stack, StackBuilder},
};

/// Polls of a condition, 20 ms apart, before a test gives up (a hang guard,
/// never a performance threshold).
const POLLS: usize = 1500;
const POLL: Duration = Duration::from_millis(20);

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// The fingerprint of the topology the server at `channel` says it serves.
async fn served_fingerprint(channel: &Channel) -> Option<String> {
    let mut client = CellOpsClient::with_interceptor(channel.clone(), stack::as_user("operator"));
    let reply = client.cell_status(CellStatusRequest {}).await.ok()?;
    reply.into_inner().topology.map(|served| served.fingerprint)
}

/// Rows of `envelope` in `db`'s envelopes and claims.
async fn rows_of(db: &TestDb, envelope: &str) -> (i64, i64) {
    let client = db.connect().await.unwrap();
    let count = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {table} WHERE {column} = $1",
                        column = if table == "envelopes" {
                            "id"
                        } else {
                            "envelope_id"
                        }
                    ),
                    &[&envelope],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    (count("envelopes").await, count("claims").await)
}

/// Copies every row of `from` into `to` (same schema, `to` empty), from one
/// snapshot of `from`, sequences included: what a caught-up standby holds.
async fn copy_rows(from: &TestDb, to: &TestDb) {
    let mut source = from.connect().await.unwrap();
    let target = to.connect().await.unwrap();
    let snapshot = source
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .unwrap();
    let tables: Vec<String> = snapshot
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND c.relname <> 'schema_migrations' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(tables.contains(&"envelopes".to_owned()), "{tables:?}");
    for table in &tables {
        let rows: Option<String> = snapshot
            .query_one(&format!("SELECT json_agg(t)::text FROM {table} t"), &[])
            .await
            .unwrap()
            .get(0);
        if let Some(rows) = rows {
            target
                .execute(
                    &format!(
                        "INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1::text::json)"
                    ),
                    &[&rows],
                )
                .await
                .unwrap();
        }
    }
    let sequences = snapshot
        .query(
            "SELECT sequencename::text, last_value FROM pg_sequences \
             WHERE schemaname = 'public' AND last_value IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    for sequence in sequences {
        let (name, last): (String, i64) = (sequence.get(0), sequence.get(1));
        target
            .execute("SELECT setval($1::text::regclass, $2)", &[&name, &last])
            .await
            .unwrap();
    }
    snapshot.commit().await.unwrap();
}

/// Opens one share of `envelope` as `user` (retrying the retryable codes, as
/// a client does): its amount.
async fn open(channel: &Channel, envelope: &str, user: &str) -> i64 {
    let mut client = Stack::client_on(channel, user);
    let reply = stack::open_retrying(&mut client, envelope).await;
    assert_eq!(reply.status(), pb::ShareStatus::Available, "{reply:?}");
    reply.amount_cents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cell_follows_its_db_to_the_dsn_the_file_names() {
    // A on a server of this test's own; B and the ledger on the shared one.
    let mut pg = PgServer::start().await.unwrap();
    let orders_script = redcell_migrations::script(redcell_migrations::ORDER_DB);
    pg.ensure_template(stack::ORDERS_TEMPLATE, &[&orders_script])
        .await
        .unwrap();
    let a = pg.clone_database(stack::ORDERS_TEMPLATE).await.unwrap();
    let (b, ledger_db) = stack::databases().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut stack = StackBuilder::default().start_external_on(a, ledger_db, &[address]);

    let file: PathBuf = std::env::temp_dir().join(format!(
        "redcell-cell-repoint-{}-{}-cells.yaml",
        std::process::id(),
        NEXT_FILE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, &stack.topology_text).unwrap();
    let handle = Arc::new(TopologyHandle::new(file.clone(), stack.topology.clone()));
    let mut config = stack.config.clone();
    config.topology = handle.clone();
    config.topology_reload = POLL;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(redcell_cell::run(
        listener,
        config,
        stack.ledger.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let channel = Stack::channel_to(address);

    // On A: a Send and two of its four shares.
    stack.fund("before", 1_000).await;
    let old = send_on(&channel, "before", 1_000, None).await.unwrap();
    let mut opened = 0;
    for user in ["early1", "early2"] {
        opened += open(&channel, &old.id, user).await;
    }
    stack.drain_settlement().await;
    stack.check_money().await;
    assert_eq!(rows_of(&stack.orders, &old.id).await, (1, 2));

    // The standby, caught up: B holds A's rows.
    copy_rows(&stack.orders, &b).await;
    assert_eq!(rows_of(&b, &old.id).await, (1, 2));

    // The failover's rewrite: n1's db names B. Wait for what the change
    // module waits for.
    let moved_text = stack.topology_text.replace(&stack.orders.dsn, &b.dsn);
    assert_ne!(moved_text, stack.topology_text);
    let moved = Arc::new(Topology::parse(&moved_text).unwrap());
    let wanted = moved.fingerprint();
    assert_eq!(
        served_fingerprint(&channel).await.as_deref(),
        Some(stack.topology.fingerprint().as_str())
    );
    let rewritten = Instant::now();
    replace_file(&file, &moved_text);
    let mut reported = false;
    for _ in 0..POLLS {
        if served_fingerprint(&channel).await.as_deref() == Some(wanted.as_str()) {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(reported, "the server never reported the new fingerprint");
    println!(
        "repoint: CellStatus reported the new fingerprint {:?} after the rewrite (file poll {POLL:?})",
        rewritten.elapsed()
    );

    // Every connection of the server to A is closed, idle ones included
    // (polled: a backend leaves pg_stat_activity a moment after its socket
    // closes).
    let admin = pg.connect("postgres").await.unwrap();
    let mut sessions = -1;
    for _ in 0..POLLS {
        sessions = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&stack.orders.name],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if sessions == 0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(sessions, 0, "sessions left on A after the switch");
    drop(admin);

    // From that moment: a new Send lands in B, not in A; the old envelope's
    // next share is claimed in B.
    stack.fund("after", 2_000).await;
    let new = send_on(&channel, "after", 2_000, None).await.unwrap();
    assert_eq!(rows_of(&b, &new.id).await, (1, 0), "the new Send is in B");
    assert_eq!(
        rows_of(&stack.orders, &new.id).await,
        (0, 0),
        "and not in A"
    );
    opened += open(&channel, &old.id, "later").await;
    assert_eq!(rows_of(&b, &old.id).await, (1, 3));
    assert_eq!(rows_of(&stack.orders, &old.id).await, (1, 2));

    // A's server stops; the cell keeps serving from B.
    pg.stop().await.unwrap();
    let mut new_opened = 0;
    for user in ["n1", "n2", "n3", "n4"] {
        new_opened += open(&channel, &new.id, user).await;
    }
    assert_eq!(new_opened, 2_000);
    opened += open(&channel, &old.id, "last").await;
    assert_eq!(opened, 1_000);
    stack.fund("stopped", 500).await;
    let last = send_on(&channel, "stopped", 500, None).await.unwrap();
    assert_eq!(rows_of(&b, &last.id).await, (1, 0));
    assert_eq!(
        served_fingerprint(&channel).await.as_deref(),
        Some(wanted.as_str())
    );

    // B holds every envelope this cell ever had: the money check runs there.
    let a = std::mem::replace(&mut stack.orders, b);
    stack.topology = moved;
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.claims, 4 + 4);
    assert_eq!(report.pending_payments, 0);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_file(&file);
    drop(stack);
    drop(a);
    drop(pg);
}

/// The two topologies the refusals below are about: n1 on `from`, then on `to`.
fn moved_topologies(from: &str, to: &str) -> (Arc<Topology>, Arc<Topology>) {
    let address = "127.0.0.1:8".parse().unwrap();
    let text = stack::topology_text(&[address], from);
    let moved = text.replace(from, to);
    (
        Arc::new(Topology::parse(&text).unwrap()),
        Arc::new(Topology::parse(&moved).unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_dsn_or_an_unmigrated_db_is_not_followed_and_not_reported() {
    let (a, _ledger) = stack::databases().await;
    let shared = redcell_harness::shared().await.unwrap();
    let unmigrated = shared.clone_database("template0").await.unwrap();

    // --db-dsn pins the server: a rewrite of the cell's db is refused, the
    // old topology stays reported, the pool stays on A. (The refusal is
    // decided before any connection is made.)
    let (on_a, on_b) = moved_topologies(&a.dsn, "postgres://redcell@127.0.0.1:9/elsewhere");
    let pinned = OrderDb::new("n1", &a.dsn, true, on_a.clone()).unwrap();
    let pool = pinned.pool(2).unwrap();
    pinned.follow(on_b.clone(), &pool).await;
    assert!(Arc::ptr_eq(&pinned.served(), &on_a));
    assert_eq!(pinned.dsn(), a.dsn);
    // A rewrite that keeps the cell's db is served.
    let (_, same_db) = moved_topologies(&a.dsn, &a.dsn);
    pinned.follow(same_db.clone(), &pool).await;
    assert!(Arc::ptr_eq(&pinned.served(), &same_db));

    // Not pinned: a DB that answers with another schema (never migrated) is
    // not switched to, and not reported.
    let (on_a, on_unmigrated) = moved_topologies(&a.dsn, &unmigrated.dsn);
    let following = OrderDb::new("n1", &a.dsn, false, on_a.clone()).unwrap();
    let pool = following.pool(2).unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(pool.status().size, 1, "one idle connection to A");
    following.follow(on_unmigrated.clone(), &pool).await;
    assert!(Arc::ptr_eq(&following.served(), &on_a));
    assert_eq!(following.dsn(), a.dsn);
    assert_eq!(pool.status().size, 1, "A's connection was kept");
    let client = pool.get().await.unwrap();
    let database: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(database, a.name);
}

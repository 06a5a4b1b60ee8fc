//! The migration runner against real PostgreSQL: applies once, is a no-op on
//! re-run (also concurrently), refuses an applied migration whose text changed
//! and a database newer than the binary, and `script` equals `apply`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use redcell_migrations::{
    LEDGER, MigrateError, Migration, ORDER_DB, Schema, apply, check_current, current_version,
    script,
};

/// Every version of a list, in order (what a first `apply` applies).
fn versions(migrations: &[Migration]) -> Vec<i32> {
    migrations.iter().map(|m| m.version).collect()
}

const V1: Migration = Migration {
    version: 1,
    name: "one",
    sql: "CREATE TABLE one (x int);",
};
const V2: Migration = Migration {
    version: 2,
    name: "two",
    sql: "CREATE TABLE two (y int);",
};

async fn fresh_database(name: &str) -> tokio_postgres::Client {
    let server = redcell_harness::shared().await.unwrap();
    server.create_database(name).await.unwrap();
    server.connect(name).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_in_order_once() {
    let mut client = fresh_database("migrate_once").await;
    assert_eq!(current_version(&client).await.unwrap(), 0);
    assert_eq!(apply(&mut client, &[V1]).await.unwrap(), vec![1]);
    assert_eq!(apply(&mut client, &[V1, V2]).await.unwrap(), vec![2]);
    assert_eq!(
        apply(&mut client, &[V1, V2]).await.unwrap(),
        Vec::<i32>::new()
    );
    assert_eq!(current_version(&client).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runners_apply_each_migration_once() {
    let server = redcell_harness::shared().await.unwrap();
    server.create_database("migrate_concurrent").await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..4 {
        let mut client = server.connect("migrate_concurrent").await.unwrap();
        runs.push(tokio::spawn(async move {
            apply(&mut client, ORDER_DB).await.unwrap()
        }));
    }
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap());
    }
    applied.sort_unstable();
    assert_eq!(
        applied,
        versions(ORDER_DB),
        "each migration applied by exactly one runner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_changed_migration_and_a_newer_database() {
    let mut client = fresh_database("migrate_refuse").await;
    apply(&mut client, &[V1, V2]).await.unwrap();
    let edited = Migration {
        sql: "CREATE TABLE one (x bigint);",
        ..V1
    };
    match apply(&mut client, &[edited, V2]).await {
        Err(MigrateError::Changed { version: 1, .. }) => {}
        other => panic!("expected Changed, got {other:?}"),
    }
    match apply(&mut client, &[V1]).await {
        Err(MigrateError::Newer(2)) => {}
        other => panic!("expected Newer(2), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_matches_apply() {
    let server = redcell_harness::shared().await.unwrap();
    server.create_database("migrate_script").await.unwrap();
    let client = server.connect("migrate_script").await.unwrap();
    client.batch_execute(&script(ORDER_DB)).await.unwrap();
    let mut client = client;
    assert_eq!(
        current_version(&client).await.unwrap(),
        Schema::Orders.expected_version()
    );
    assert_eq!(
        apply(&mut client, ORDER_DB).await.unwrap(),
        Vec::<i32>::new(),
        "nothing left to apply"
    );
}

/// What a server checks at start: only a database holding exactly the embedded
/// migrations, each with its embedded text, is current; every other state is
/// refused by name, without changing the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_current_accepts_only_the_embedded_migrations() {
    let expected = Schema::Orders.expected_version();
    assert_eq!(expected, ORDER_DB.last().unwrap().version);
    assert_eq!(
        Schema::Ledger.expected_version(),
        LEDGER.last().unwrap().version
    );

    let mut client = fresh_database("check_current").await;
    match check_current(&client, Schema::Orders).await {
        Err(error @ MigrateError::NeverMigrated { .. }) => {
            assert!(error.is_mismatch());
            assert_eq!(
                error.to_string(),
                format!(
                    "the order DB schema was never migrated (this binary expects version {expected})"
                )
            );
        }
        other => panic!("expected NeverMigrated, got {other:?}"),
    }
    assert_eq!(
        current_version(&client).await.unwrap(),
        0,
        "checking wrote nothing"
    );

    // Behind: the first migration only.
    apply(&mut client, &ORDER_DB[..1]).await.unwrap();
    match check_current(&client, Schema::Orders).await {
        Err(error @ MigrateError::Behind { applied: 1, .. }) => {
            assert!(error.is_mismatch());
            assert_eq!(
                error.to_string(),
                format!(
                    "the order DB schema is at version 1, this binary expects version {expected}; migrate it"
                )
            );
        }
        other if expected > 1 => panic!("expected Behind, got {other:?}"),
        other => assert_eq!(other.unwrap(), 1),
    }

    apply(&mut client, ORDER_DB).await.unwrap();
    assert_eq!(
        check_current(&client, Schema::Orders).await.unwrap(),
        expected
    );
    // The wrong schema: an order DB is not a ledger (other texts).
    let ledger = check_current(&client, Schema::Ledger).await;
    assert!(
        ledger.as_ref().is_err_and(MigrateError::is_mismatch),
        "{ledger:?}"
    );

    // A migration this binary does not know.
    client
        .execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, 'future', 0)",
            &[&(expected + 1)],
        )
        .await
        .unwrap();
    match check_current(&client, Schema::Orders).await {
        Err(MigrateError::Newer(version)) => assert_eq!(version, expected + 1),
        other => panic!("expected Newer, got {other:?}"),
    }
    client
        .execute(
            "DELETE FROM schema_migrations WHERE version = $1",
            &[&(expected + 1)],
        )
        .await
        .unwrap();

    // An applied migration whose text differs from the embedded one.
    client
        .execute(
            "UPDATE schema_migrations SET checksum = checksum + 1 WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    match check_current(&client, Schema::Orders).await {
        Err(error @ MigrateError::Changed { version: 1, .. }) => assert!(error.is_mismatch()),
        other => panic!("expected Changed, got {other:?}"),
    }
}

/// A bookkeeping table whose columns drifted is an error naming the column,
/// not a panic of the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_bookkeeping_column_is_named_not_a_panic() {
    let mut client = fresh_database("migrate_drifted").await;
    apply(&mut client, &[V1]).await.unwrap();
    client
        .batch_execute("ALTER TABLE schema_migrations ALTER COLUMN checksum TYPE text")
        .await
        .unwrap();
    match apply(&mut client, &[V1, V2]).await {
        Err(
            error @ MigrateError::Column {
                column: "checksum", ..
            },
        ) => {
            assert!(
                error
                    .to_string()
                    .starts_with("schema_migrations.checksum is unreadable: "),
                "{error}"
            );
        }
        other => panic!("expected Column, got {other:?}"),
    }
    match check_current(&client, Schema::Orders).await {
        Err(MigrateError::Column {
            column: "checksum", ..
        }) => {}
        other => panic!("expected Column, got {other:?}"),
    }
}

#[test]
fn a_displayed_dsn_never_shows_the_password() {
    for (dsn, shown) in [
        (
            "postgres://alice:s3cret@db.example:5433/orders?sslmode=disable",
            "postgres://alice@db.example:5433/orders",
        ),
        (
            "host=10.0.0.1 port=6000 user=bob password=s3cret dbname=ledger",
            "postgres://bob@10.0.0.1:6000/ledger",
        ),
        (
            "postgresql://carol:s3cret@h1:1,h2:2/n1",
            "postgres://carol@h1:1,h2:2/n1",
        ),
        ("not a dsn", "(malformed DSN)"),
    ] {
        let displayed = redcell_migrations::display_dsn(dsn);
        assert_eq!(displayed, shown, "{dsn}");
        assert!(!displayed.contains("s3cret"));
    }
}

//! The migration runner against real PostgreSQL: applies once, is a no-op on
//! re-run (also concurrently), refuses an applied migration whose text changed
//! and a database newer than the binary, and `script` equals `apply`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use redcell_migrations::{MigrateError, Migration, ORDER_DB, apply, current_version, script};

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
    assert_eq!(applied, vec![1], "exactly one runner applied version 1");
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
    assert_eq!(current_version(&client).await.unwrap(), 1);
    assert_eq!(
        apply(&mut client, ORDER_DB).await.unwrap(),
        Vec::<i32>::new(),
        "nothing left to apply"
    );
}

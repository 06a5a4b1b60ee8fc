//! The harness against a real PostgreSQL: each test builds a server (or uses
//! the shared one), does what a redcell test would do, and checks the
//! outcome on the server itself or in `/proc`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use redcell_harness::{BinarySearch, HarnessError, PgBinaries, PgServer, PgSysError, shared};

// ---------------------------------------------------------------- helpers

/// `(state, ppid)` of a process, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

fn children(parent: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| matches!(stat(pid), Some((state, ppid)) if ppid == parent && state != 'Z'))
        .collect()
}

/// Real uid of a process, from `/proc/<pid>/status`.
fn uid_of(pid: &str) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn port_refuses(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_err()
}

async fn count_rows(server: &PgServer, database: &str, table: &str) -> i64 {
    let client = server.connect(database).await.unwrap();
    client
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Polls `check` for up to five seconds.
async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn fake_bindir(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for program in ["initdb", "postgres"] {
        let path = dir.join(program);
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn search_nowhere(root: &Path) -> BinarySearch {
    BinarySearch {
        override_dir: None,
        pg_config: None,
        versioned_root: root.join("missing"),
        path: Some("".into()),
    }
}

// ---------------------------------------------------------------- binaries

#[test]
fn missing_binaries_error_says_how_to_install() {
    let scratch = tempfile::tempdir().unwrap();
    let err = PgBinaries::locate(&search_nowhere(scratch.path())).unwrap_err();
    assert!(matches!(err, PgSysError::BinariesNotFound { .. }));
    let message = err.to_string();
    assert!(
        message.contains("apt-get install -y postgresql"),
        "{message}"
    );
    assert!(message.contains("REDCELL_PG_BINDIR"), "{message}");
}

#[test]
fn highest_numbered_version_wins_over_path() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("postgresql");
    for version in ["9.6", "15", "13", "not-a-version"] {
        fake_bindir(&root.join(version).join("bin"));
    }
    fake_bindir(&scratch.path().join("on-path"));
    let search = BinarySearch {
        versioned_root: root.clone(),
        path: Some(scratch.path().join("on-path").into_os_string()),
        ..search_nowhere(scratch.path())
    };
    let found = PgBinaries::locate(&search).unwrap();
    assert_eq!(found.bindir(), root.join("15").join("bin"));
    assert_eq!(found.initdb(), root.join("15/bin/initdb"));
}

#[test]
fn override_is_authoritative() {
    let scratch = tempfile::tempdir().unwrap();
    let chosen = scratch.path().join("chosen");
    fake_bindir(&chosen);
    fake_bindir(&scratch.path().join("postgresql/16/bin"));
    let search = BinarySearch {
        override_dir: Some(chosen.clone()),
        versioned_root: scratch.path().join("postgresql"),
        ..search_nowhere(scratch.path())
    };
    assert_eq!(PgBinaries::locate(&search).unwrap().bindir(), chosen);

    // A wrong override is an error, not a fall-through to another version.
    let wrong = BinarySearch {
        override_dir: Some(scratch.path().join("empty")),
        ..search
    };
    let message = PgBinaries::locate(&wrong).unwrap_err().to_string();
    assert!(message.contains("REDCELL_PG_BINDIR="), "{message}");
}

#[test]
fn falls_back_to_path() {
    let scratch = tempfile::tempdir().unwrap();
    let on_path = scratch.path().join("bin");
    fake_bindir(&on_path);
    let search = BinarySearch {
        path: Some(
            std::env::join_paths([scratch.path().join("nothing"), on_path.clone()]).unwrap(),
        ),
        ..search_nowhere(scratch.path())
    };
    assert_eq!(PgBinaries::locate(&search).unwrap().bindir(), on_path);
}

// ---------------------------------------------------------------- servers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_server_answers_select_one_with_test_settings() {
    let server = PgServer::start().await.unwrap();
    assert_eq!(server.host(), "127.0.0.1");
    assert_eq!(
        server.dsn("ledger"),
        format!("postgres://postgres@127.0.0.1:{}/ledger", server.port())
    );

    let client = server.connect("postgres").await.unwrap();
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    for (setting, expected) in [
        ("fsync", "off"),
        ("full_page_writes", "off"),
        ("synchronous_commit", "on"),
        ("max_connections", "200"),
        ("listen_addresses", "127.0.0.1"),
    ] {
        let value: String = client
            .query_one("select current_setting($1)", &[&setting])
            .await
            .unwrap()
            .get(0);
        assert_eq!(value, expected, "setting {setting}");
    }

    server.create_database("ledger").await.unwrap();
    let ledger = server.connect("ledger").await.unwrap();
    let name: String = ledger
        .query_one("select current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "ledger");

    let pid = server.pid().unwrap();
    if uid_of("self") == 0 {
        assert_ne!(uid_of(&pid.to_string()), 0, "postgres must not run as root");
    } else {
        assert_eq!(uid_of(&pid.to_string()), uid_of("self"));
    }
    assert!(server.log_tail(50).contains("ready to accept connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_survive_kill9_and_restart() {
    let mut server = PgServer::start().await.unwrap();
    let port = server.port();
    server.create_database("ledger").await.unwrap();
    {
        let mut client = server.connect("ledger").await.unwrap();
        client
            .batch_execute("create table payment (id bigint primary key, amount bigint not null)")
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        for id in 0..100_i64 {
            tx.execute("insert into payment values ($1, $2)", &[&id, &(id * 10)])
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    // Open sessions are part of the crash: their backends must die too.
    let _open = server.connect("ledger").await.unwrap();
    let postmaster = server.pid().unwrap();
    let backends = children(postmaster);
    assert!(!backends.is_empty(), "a running postmaster has children");

    server.kill9().unwrap();

    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!alive(postmaster));
    for backend in &backends {
        assert!(!alive(*backend), "child {backend} survived kill9");
    }
    assert!(server.connect("ledger").await.is_err());
    assert!(port_refuses(port));

    server.restart().await.unwrap();

    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(count_rows(&server, "ledger", "payment").await, 100);
    assert!(
        server.log_tail(200).contains("not properly shut down"),
        "restart ran crash recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_then_restart_keeps_port_and_data() {
    let mut server = PgServer::start().await.unwrap();
    let port = server.port();
    server.create_database("ledger").await.unwrap();
    let client = server.connect("ledger").await.unwrap();
    client
        .batch_execute("create table envelope (id int); insert into envelope values (1), (2), (3)")
        .await
        .unwrap();
    let postmaster = server.pid().unwrap();

    server.stop().await.unwrap();

    assert!(!server.is_running());
    assert!(!alive(postmaster));
    assert!(server.connect("ledger").await.is_err());
    assert!(client.is_closed() || client.simple_query("select 1").await.is_err());
    assert!(server.log_tail(20).contains("database system is shut down"));
    server.stop().await.unwrap(); // stopping a stopped server is a no-op

    server.restart().await.unwrap();

    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(postmaster));
    assert_eq!(count_rows(&server, "ledger", "envelope").await, 3);

    // Restarting a running server is a clean stop and start.
    server.restart().await.unwrap();
    assert_eq!(count_rows(&server, "ledger", "envelope").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_stops_every_process_and_removes_the_directory() {
    let server = PgServer::start().await.unwrap();
    let port = server.port();
    let dir = server.base_dir().to_path_buf();
    let _open = server.connect("postgres").await.unwrap();
    let postmaster = server.pid().unwrap();
    let backends = children(postmaster);
    assert!(dir.join("data").join("PG_VERSION").is_file());
    assert!(!backends.is_empty());

    drop(server);

    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!alive(postmaster));
    for backend in &backends {
        assert!(!alive(*backend), "child {backend} survived drop");
    }
    assert!(port_refuses(port));
}

// ---------------------------------------------------------------- shared server and databases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_is_one_server_across_runtimes() {
    let first = shared().await.unwrap();
    let second = shared().await.unwrap();
    assert!(std::ptr::eq(first, second));
    assert_eq!(first.port(), second.port());

    // Another runtime on another thread, as another #[tokio::test] would be.
    let port = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = shared().await.unwrap();
            let client = server.connect("postgres").await.unwrap();
            let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
            assert_eq!(one, 1);
            server.port()
        })
    })
    .join()
    .unwrap();
    assert_eq!(port, first.port());

    // The first runtime still works after the other one is gone.
    let client = first.connect("postgres").await.unwrap();
    client.simple_query("select 1").await.unwrap();
}

const ENVELOPE_MIGRATIONS: &[&str] = &[
    "create table envelope (id bigint primary key, amount bigint not null)",
    "insert into envelope values (1, 100); create index envelope_amount on envelope (amount)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_a_template_are_migrated_and_independent() {
    let server = shared().await.unwrap();
    server
        .create_template("tmpl_independent", ENVELOPE_MIGRATIONS)
        .await
        .unwrap();

    let a = server.clone_database("tmpl_independent").await.unwrap();
    let b = server.clone_database("tmpl_independent").await.unwrap();
    assert_ne!(a.name, b.name);
    assert_eq!(a.dsn, server.dsn(&a.name));

    let client_a = a.connect().await.unwrap();
    let client_b = b.connect().await.unwrap();
    client_a
        .execute("insert into envelope values (2, 5)", &[])
        .await
        .unwrap();
    client_b.execute("delete from envelope", &[]).await.unwrap();

    let in_a: i64 = client_a
        .query_one("select count(*) from envelope", &[])
        .await
        .unwrap()
        .get(0);
    let in_b: i64 = client_b
        .query_one("select count(*) from envelope", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((in_a, in_b), (2, 0));
    // The template itself is untouched.
    assert_eq!(count_rows(server, "tmpl_independent", "envelope").await, 1);

    // A broken migration leaves no half-made template behind.
    let err = server
        .create_template(
            "tmpl_broken",
            &["create table ok (id int)", "this is not sql"],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("migration 2 of 2"), "{err}");
    let admin = server.connect("postgres").await.unwrap();
    let left: i64 = admin
        .query_one(
            "select count(*) from pg_database where datname = 'tmpl_broken'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_template_creates_once_and_rejects_other_migrations() {
    let server = shared().await.unwrap();
    let (first, second) = tokio::join!(
        server.ensure_template("tmpl_ensure", ENVELOPE_MIGRATIONS),
        server.ensure_template("tmpl_ensure", ENVELOPE_MIGRATIONS),
    );
    first.unwrap();
    second.unwrap();
    let db = server.clone_database("tmpl_ensure").await.unwrap();
    let client = db.connect().await.unwrap();
    let amount: i64 = client
        .query_one("select amount from envelope", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(amount, 100);

    let err = server
        .ensure_template("tmpl_ensure", &["create table other (id int)"])
        .await
        .unwrap_err();
    assert!(
        matches!(err, HarnessError::TemplateMismatch { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_test_db_drops_the_database_even_with_open_sessions() {
    let server = shared().await.unwrap();
    server
        .create_template("tmpl_drop", ENVELOPE_MIGRATIONS)
        .await
        .unwrap();
    let db = server.clone_database("tmpl_drop").await.unwrap();
    let name = db.name.clone();
    let open = db.connect().await.unwrap();
    open.simple_query("select 1").await.unwrap();

    let admin = server.connect("postgres").await.unwrap();
    let exists = async || -> bool {
        admin
            .query_one(
                "select count(*) from pg_database where datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    };
    assert!(exists().await);

    drop(db);

    assert!(
        eventually(async || !exists().await).await,
        "{name} still exists"
    );
    // WITH (FORCE) ended the session that was still open.
    assert!(open.simple_query("select 1").await.is_err());
}

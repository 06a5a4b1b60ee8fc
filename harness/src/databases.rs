//! One database per test, cloned from a migrated template.
//!
//! Running migrations costs far more than `CREATE DATABASE x TEMPLATE t`
//! (a file-level copy), so a test suite migrates one template per server and
//! every test gets its own clone: tests share a server but never see each
//! other's rows, and may run in parallel.
//!
//! Invariants:
//! - A template is never in use when it is cloned: PostgreSQL refuses to copy
//!   a database that has sessions, so [`PgServer::create_template`] returns
//!   only after its migration session has left the server, and
//!   [`PgServer::clone_database`] retries for a few seconds if one lingers.
//! - Clone names are unique per server: template prefix, our pid and a
//!   process-wide counter.
//! - A [`TestDb`] is dropped with `DROP DATABASE .. WITH (FORCE)` when it goes
//!   out of scope, even while clients still hold connections to it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::error::HarnessError;
use crate::server::{PgServer, connect_dsn, quote_ident};

/// How long to wait for a template to have no sessions left.
const TEMPLATE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to keep retrying a clone whose template is momentarily in use.
const CLONE_RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on the blocking `DROP DATABASE` done by `TestDb::drop`.
const DROP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of the template name kept in a clone's name (identifiers are
/// limited to 63 bytes).
const CLONE_PREFIX_LEN: usize = 32;

static NEXT_CLONE: AtomicU64 = AtomicU64::new(0);

impl PgServer {
    /// Creates database `name` and runs `migrations` in it, in order, each
    /// with `batch_execute` (so a script may hold several statements). On a
    /// failed migration the half-built database is dropped again.
    pub async fn create_template(
        &self,
        name: &str,
        migrations: &[&str],
    ) -> Result<(), HarnessError> {
        self.make_template(name, migrations).await?;
        self.templates
            .lock()
            .await
            .insert(name.to_owned(), fingerprint(migrations));
        Ok(())
    }

    /// Like [`PgServer::create_template`], but once per server: later calls
    /// with the same name and migrations return at once (concurrent callers
    /// wait for the first), which suits many tests sharing
    /// [`crate::shared`]. The same name with different migrations is an
    /// error.
    pub async fn ensure_template(
        &self,
        name: &str,
        migrations: &[&str],
    ) -> Result<(), HarnessError> {
        let wanted = fingerprint(migrations);
        let mut made = self.templates.lock().await;
        match made.get(name) {
            Some(&existing) if existing == wanted => return Ok(()),
            Some(_) => {
                return Err(HarnessError::TemplateMismatch {
                    name: name.to_owned(),
                });
            }
            None => {}
        }
        self.make_template(name, migrations).await?;
        made.insert(name.to_owned(), wanted);
        Ok(())
    }

    /// Creates a new database from `template` under a unique name. It is
    /// dropped when the returned [`TestDb`] is.
    pub async fn clone_database(&self, template: &str) -> Result<TestDb, HarnessError> {
        let n = NEXT_CLONE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}_{}_{n}", clone_prefix(template), std::process::id());
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(&name),
            quote_ident(template)
        );
        let admin = self.connect("postgres").await?;
        let deadline = Instant::now() + CLONE_RETRY_TIMEOUT;
        loop {
            match admin.batch_execute(&sql).await {
                Ok(()) => break,
                // "source database is being accessed by other users"
                Err(err)
                    if err.code() == Some(&SqlState::OBJECT_IN_USE)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => {
                    return Err(HarnessError::pg(format!(
                        "cloning template {template} into {name}"
                    ))(err));
                }
            }
        }
        Ok(TestDb {
            dsn: self.dsn(&name),
            admin_dsn: self.dsn("postgres"),
            name,
        })
    }

    async fn make_template(&self, name: &str, migrations: &[&str]) -> Result<(), HarnessError> {
        let admin = self.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .map_err(HarnessError::pg(format!(
                "creating template database {name}"
            )))?;
        let migrated = self.migrate(name, migrations).await;
        if let Err(err) = migrated {
            let drop_sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
            if let Err(drop_err) = admin.batch_execute(&drop_sql).await {
                tracing::warn!(template = name, %drop_err, "could not drop a half-migrated template");
            }
            return Err(err);
        }
        wait_until_unused(&admin, name).await
    }

    async fn migrate(&self, name: &str, migrations: &[&str]) -> Result<(), HarnessError> {
        let client = self.connect(name).await?;
        for (index, migration) in migrations.iter().enumerate() {
            client
                .batch_execute(migration)
                .await
                .map_err(HarnessError::pg(format!(
                    "migration {} of {} on template {name}",
                    index + 1,
                    migrations.len()
                )))?;
        }
        Ok(())
    }
}

/// Waits until no session is connected to `database` (our migration
/// session's backend exits asynchronously after the client hangs up).
async fn wait_until_unused(admin: &Client, database: &str) -> Result<(), HarnessError> {
    let deadline = Instant::now() + TEMPLATE_IDLE_TIMEOUT;
    loop {
        let sessions: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity where datname = $1",
                &[&database],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(HarnessError::pg(format!("counting sessions on {database}")))?;
        if sessions == 0 || Instant::now() >= deadline {
            // Past the deadline, clone_database's retry is the last resort.
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fingerprint(migrations: &[&str]) -> u64 {
    let mut hasher = DefaultHasher::new();
    migrations.hash(&mut hasher);
    hasher.finish()
}

/// The template name cut to [`CLONE_PREFIX_LEN`] bytes of `[a-z0-9_]`, so
/// clone names need no quoting in a DSN.
fn clone_prefix(template: &str) -> String {
    template
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(CLONE_PREFIX_LEN)
        .collect()
}

/// A database of its own for one test, cloned from a template; dropped
/// (`WITH (FORCE)`, so open connections do not block it) when this value is.
///
/// The drop is synchronous: it runs on a short-lived thread with its own
/// current-thread runtime (so it works from any runtime, or none), and when
/// `drop` returns the database is gone. Failures are logged, not raised.
#[derive(Debug)]
pub struct TestDb {
    /// Database name, unique per server.
    pub name: String,
    /// `postgres://postgres@127.0.0.1:PORT/<name>`.
    pub dsn: String,
    /// DSN of the maintenance database, from which the drop is issued.
    admin_dsn: String,
}

impl TestDb {
    /// Connects to this database; the connection task runs on the caller's
    /// runtime.
    pub async fn connect(&self) -> Result<Client, HarnessError> {
        connect_dsn(&self.dsn).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_dsn = self.admin_dsn.clone();
        let name = self.name.clone();
        let dropper = std::thread::Builder::new()
            .name("redcell-harness-dropdb".to_owned())
            .spawn(move || drop_database(&admin_dsn, &name));
        let outcome = match dropper {
            Ok(thread) => thread.join().unwrap_or_else(|_| {
                Err(HarnessError::Io {
                    context: "dropping a test database".to_owned(),
                    source: io::Error::other("the drop thread panicked"),
                })
            }),
            Err(err) => Err(HarnessError::io("spawning the drop thread")(err)),
        };
        if let Err(err) = outcome {
            tracing::warn!(database = %self.name, %err, "could not drop a test database");
        }
    }
}

fn drop_database(admin_dsn: &str, name: &str) -> Result<(), HarnessError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HarnessError::io(
            "building a runtime to drop a test database",
        ))?;
    runtime.block_on(async {
        let dropped = tokio::time::timeout(DROP_TIMEOUT, async {
            let admin = connect_dsn(admin_dsn).await?;
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(name)
                ))
                .await
                .map_err(HarnessError::pg(format!("dropping test database {name}")))
        })
        .await;
        dropped.unwrap_or_else(|_elapsed| {
            Err(HarnessError::Io {
                context: format!("dropping test database {name}"),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {DROP_TIMEOUT:?}"),
                ),
            })
        })
    })
}

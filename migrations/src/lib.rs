//! Versioned schema migrations, embedded in every binary that needs them.
//!
//! Two schemas: a cell's order DB ([`ORDER_DB`]) and the ledger ([`LEDGER`]).
//! [`apply`] is safe to re-run and to run concurrently: it holds a
//! transaction-scoped advisory lock, skips applied versions, applies each missing
//! one in its own transaction together with its bookkeeping row, and refuses to
//! go on when an applied migration's text has changed since (a checksum), because
//! then the database no longer matches the code.
//!
//! [`script`] renders the same migrations as one SQL text, bookkeeping included,
//! for test templates: a test database is migrated exactly like a real one.
//!
//! [`check_current`] is the read-only side, for servers at start: a database
//! is current when it holds exactly the embedded migrations of its [`Schema`],
//! each with its embedded checksum. The version a binary expects is the last of
//! its embedded list, never a number typed elsewhere, so adding a migration
//! moves every check with it.
//!
//! **Owns**: the schemas (SQL files) of the order DB and the ledger, applying
//! them, and saying whether a database matches them. **Never**: reads or
//! writes application rows, or holds a query of the request path; a schema
//! change is a new migration, never an edit of an applied one.

use tokio_postgres::{Client, Row, types::FromSql};

/// One schema change; `version`s start at 1 and increase by one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// A cell's order database: envelopes, claims, the settlement outbox.
pub const ORDER_DB: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders",
        sql: include_str!("../sql/orders/0001_orders.sql"),
    },
    Migration {
        version: 2,
        name: "exact_split_and_recovery",
        sql: include_str!("../sql/orders/0002_exact_split_and_recovery.sql"),
    },
    Migration {
        version: 3,
        name: "archives",
        sql: include_str!("../sql/orders/0003_archives.sql"),
    },
];

/// The built-in ledger (the payment system's stand-in).
pub const LEDGER: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../sql/ledger/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "merchant_orders",
        sql: include_str!("../sql/ledger/0002_merchant_orders.sql"),
    },
];

/// The two kinds of database redcell migrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// A cell's order DB ([`ORDER_DB`]).
    Orders,
    /// The built-in ledger ([`LEDGER`]).
    Ledger,
}

impl Schema {
    pub fn migrations(self) -> &'static [Migration] {
        match self {
            Schema::Orders => ORDER_DB,
            Schema::Ledger => LEDGER,
        }
    }

    /// The version this binary expects: its newest embedded migration.
    pub fn expected_version(self) -> i32 {
        newest(self.migrations())
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schema::Orders => "order DB",
            Schema::Ledger => "ledger",
        })
    }
}

fn newest(migrations: &[Migration]) -> i32 {
    migrations.last().map_or(0, |m| m.version)
}

/// Why migrating failed, or why a database is not the one a binary expects.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {version} ({name}) was changed after it was applied (checksum {applied:016x}, now {now:016x})"
    )]
    Changed {
        version: i32,
        name: &'static str,
        applied: i64,
        now: i64,
    },
    #[error("the database has migration {0}, newer than this binary knows; upgrade the binary")]
    Newer(i32),
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    /// The database has none of these migrations (no `schema_migrations`).
    #[error("the {schema} schema was never migrated (this binary expects version {expected})")]
    NeverMigrated { schema: Schema, expected: i32 },
    /// The database lacks migrations this binary has.
    #[error(
        "the {schema} schema is at version {applied}, this binary expects version {expected}; migrate it"
    )]
    Behind {
        schema: Schema,
        applied: i32,
        expected: i32,
    },
    /// A bookkeeping row does not have the type the runner wrote.
    #[error("schema_migrations.{column} is unreadable: {source}")]
    Column {
        column: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("reading migration state failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl MigrateError {
    /// True when the database answered and is not the one the binary expects
    /// (as opposed to a database that could not be asked).
    pub fn is_mismatch(&self) -> bool {
        match self {
            MigrateError::Changed { .. }
            | MigrateError::Newer(_)
            | MigrateError::NeverMigrated { .. }
            | MigrateError::Behind { .. }
            | MigrateError::Column { .. } => true,
            MigrateError::Failed { .. } | MigrateError::Postgres(_) => false,
        }
    }
}

/// `row.try_get(column)`: a bookkeeping table that drifted is an error naming
/// the column, never a panic.
fn column<'a, T: FromSql<'a>>(row: &'a Row, column: &'static str) -> Result<T, MigrateError> {
    row.try_get(column)
        .map_err(|source| MigrateError::Column { column, source })
}

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   bigint      NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);";

/// Arbitrary constant key of the advisory lock serializing migration runners.
const LOCK_KEY: i64 = 0x0072_6564_6365_6c6c; // "redcell" in ASCII

/// FNV-1a of the SQL text: detects an applied migration edited afterwards.
pub fn checksum(sql: &str) -> i64 {
    let hash = sql.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Applies the missing migrations; returns the versions applied now.
pub async fn apply(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<i32>, MigrateError> {
    let mut applied_now = Vec::new();
    for migration in migrations {
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        transaction.batch_execute(BOOKKEEPING).await?;
        let newest: Option<i32> = column(
            &transaction
                .query_one("SELECT max(version) AS version FROM schema_migrations", &[])
                .await?,
            "version",
        )?;
        let known = self::newest(migrations);
        if let Some(newest) = newest.filter(|newest| *newest > known) {
            return Err(MigrateError::Newer(newest));
        }
        let existing = transaction
            .query_opt(
                "SELECT checksum FROM schema_migrations WHERE version = $1",
                &[&migration.version],
            )
            .await?;
        let now = checksum(migration.sql);
        match existing {
            Some(row) => {
                let applied: i64 = column(&row, "checksum")?;
                if applied != now {
                    return Err(MigrateError::Changed {
                        version: migration.version,
                        name: migration.name,
                        applied,
                        now,
                    });
                }
            }
            None => {
                let failed = |source| MigrateError::Failed {
                    version: migration.version,
                    name: migration.name,
                    source,
                };
                transaction
                    .batch_execute(migration.sql)
                    .await
                    .map_err(failed)?;
                transaction
                    .execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        &[&migration.version, &migration.name, &now],
                    )
                    .await?;
                applied_now.push(migration.version);
            }
        }
        transaction.commit().await?;
    }
    Ok(applied_now)
}

/// The newest version applied to a database (0 for none).
pub async fn current_version(client: &Client) -> Result<i32, MigrateError> {
    if !bookkeeping_exists(client).await? {
        return Ok(0);
    }
    let newest: Option<i32> = column(
        &client
            .query_one("SELECT max(version) AS version FROM schema_migrations", &[])
            .await?,
        "version",
    )?;
    Ok(newest.unwrap_or(0))
}

async fn bookkeeping_exists(client: &Client) -> Result<bool, MigrateError> {
    column(
        &client
            .query_one(
                "SELECT to_regclass('schema_migrations') IS NOT NULL AS exists",
                &[],
            )
            .await?,
        "exists",
    )
}

/// Checks, without changing anything, that the database holds exactly the
/// embedded migrations of `schema` with their embedded checksums; returns the
/// version. A database that never saw a migration, one that lacks some, one
/// with a migration this binary does not know, and one whose applied text
/// differs are each refused with what to do ([`MigrateError::is_mismatch`]).
pub async fn check_current(client: &Client, schema: Schema) -> Result<i32, MigrateError> {
    let expected = schema.expected_version();
    if !bookkeeping_exists(client).await? {
        return Err(MigrateError::NeverMigrated { schema, expected });
    }
    let rows = client
        .query(
            "SELECT version, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in &rows {
        let version: i32 = column(row, "version")?;
        let checksum: i64 = column(row, "checksum")?;
        applied.push((version, checksum));
    }
    let Some(&(newest, _)) = applied.last() else {
        return Err(MigrateError::NeverMigrated { schema, expected });
    };
    if newest > expected {
        return Err(MigrateError::Newer(newest));
    }
    for migration in schema.migrations() {
        let now = checksum(migration.sql);
        match applied
            .iter()
            .find(|(version, _)| *version == migration.version)
        {
            None => {
                return Err(MigrateError::Behind {
                    schema,
                    applied: newest,
                    expected,
                });
            }
            Some(&(_, was)) if was != now => {
                return Err(MigrateError::Changed {
                    version: migration.version,
                    name: migration.name,
                    applied: was,
                    now,
                });
            }
            Some(_) => {}
        }
    }
    Ok(newest)
}

/// All migrations as one SQL script with their bookkeeping rows, equivalent to
/// [`apply`] on an empty database (for test templates).
pub fn script(migrations: &[Migration]) -> String {
    let mut script = String::from(BOOKKEEPING);
    for migration in migrations {
        script.push('\n');
        script.push_str(migration.sql);
        script.push_str(&format!(
            "\nINSERT INTO schema_migrations (version, name, checksum) VALUES ({}, '{}', {});\n",
            migration.version,
            migration.name,
            checksum(migration.sql)
        ));
    }
    script
}

/// A PostgreSQL DSN as it may be shown to an operator: `postgres://user@host:port/db`
/// rebuilt from the parsed parts, so a password (and every other option) never
/// appears in a message or a log line, whichever syntax the DSN used.
pub fn display_dsn(dsn: &str) -> String {
    let Ok(config) = dsn.parse::<tokio_postgres::Config>() else {
        return "(malformed DSN)".to_owned();
    };
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one per host (libpq's rule).
            match ports.get(index).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|user| format!("{user}@"))
        .unwrap_or_default();
    let database = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{database}", hosts.join(","))
}

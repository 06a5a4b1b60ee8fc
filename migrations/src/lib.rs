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

use tokio_postgres::Client;

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

/// Why migrating failed.
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
    #[error("reading migration state failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
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
        let newest: Option<i32> = transaction
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        let known = migrations.last().map_or(0, |m| m.version);
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
                let applied: i64 = row.get(0);
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
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let newest: Option<i32> = client
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await?
        .get(0);
    Ok(newest.unwrap_or(0))
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

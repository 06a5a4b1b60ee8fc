//! Throwaway PostgreSQL servers for redcell's tests (dev-dependency only).
//!
//! Tests talk to a real PostgreSQL on a real socket: mocks would not show
//! locking, isolation, constraint or crash-recovery behaviour, which is what
//! a payment service's storage tests are about. This crate makes that cheap
//! and leak-free.
//!
//! # How it works, and why
//!
//! - **Real binaries, found, not assumed.** `REDCELL_PG_BINDIR`, then
//!   `pg_config --bindir`, then `/usr/lib/postgresql/<highest>/bin`, then
//!   `PATH` ([`PgBinaries`]). Missing binaries produce an error that says how
//!   to install them (`apt-get install -y postgresql`).
//! - **Never as root.** PostgreSQL refuses to run as root, and CI runs tests
//!   as root; then the server runs as the `postgres` user (or
//!   `REDCELL_PG_USER`), with its files chowned to it. As any other user, the
//!   server runs as that user.
//! - **One `initdb` per machine.** The initialized cluster is cached in the
//!   temp directory and copied for each server (tens of milliseconds instead
//!   of one or two seconds).
//! - **Fast but honest durability.** `fsync=off` and `full_page_writes=off`
//!   (only an OS crash could lose data, and tests never survive one) but
//!   `synchronous_commit=on`, so a committed transaction survives
//!   [`PgServer::kill9`] of every server process: crash tests mean something.
//! - **One server per test process, one database per test.** [`shared`]
//!   starts a single server lazily; each test clones its own database from a
//!   migrated template ([`PgServer::ensure_template`],
//!   [`PgServer::clone_database`]) and the clone is dropped `WITH (FORCE)`
//!   when its [`TestDb`] is. Tests that stop, crash or restart the server
//!   start their own with [`PgServer::start`].
//! - **Nothing leaks.** Dropping a [`PgServer`] stops it and removes its
//!   directory; the shared server is stopped by an `atexit` hook; servers of
//!   test processes that were killed outright are swept by the next run.
//!
//! # Example
//!
//! (The tests in `tests/harness.rs` are the compiled version of this.)
//!
//! ```rust,ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn a_test() {
//!     let server = redcell_harness::shared().await.unwrap();
//!     server.ensure_template("redcell", MIGRATIONS).await.unwrap();
//!     let db = server.clone_database("redcell").await.unwrap();
//!     let client = db.connect().await.unwrap();
//!     // ... or hand db.dsn to the code under test.
//! }
//! ```
//!
//! # Requirements and limits
//!
//! - Linux only (it reads `/proc` and uses POSIX signals); PostgreSQL 13 or
//!   newer (`DROP DATABASE .. WITH (FORCE)`).
//! - Server directories live in [`std::env::temp_dir`], which the server
//!   user must be able to enter (`/tmp` is fine). Where creating files is
//!   slow (copying the ~1000-file cluster takes ~0.7 s on this project's
//!   machines' ext4, ~0.06 s on tmpfs), `TMPDIR=/dev/shm cargo test` speeds
//!   every server start up, if `/dev/shm` is large (Docker's default 64 MB is
//!   not).
//!
//! **Owns**: starting, cloning and cleaning up PostgreSQL for tests and
//! benchmarks. **Never**: linked into a server binary (a dev-dependency
//! only; loadgen measures `cellctl up` fleets now), knows a redcell schema, or leaves a server running.

mod databases;
mod error;
mod pristine;
mod server;
mod server_dirs;
mod shared;

pub use databases::TestDb;
pub use error::HarnessError;
/// Finding the binaries and the account they run as is shared with
/// `cellctl up`, in `redcell-pgsys`.
pub use redcell_pgsys::{BINDIR_ENV, BinarySearch, PgBinaries, PgSysError, SERVER_USER_ENV};
pub use server::PgServer;
pub use shared::shared;

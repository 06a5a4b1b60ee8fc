//! Running PostgreSQL from the system's binaries on this machine: what the
//! test harness (`redcell-harness`) and the operator's `cellctl up` share.
//!
//! - [`PgBinaries`]: where `initdb` and `postgres` are (`REDCELL_PG_BINDIR`,
//!   `pg_config --bindir`, `/usr/lib/postgresql/<highest>/bin`, `PATH`); a
//!   miss says how to install them.
//! - [`ServerUser`]: PostgreSQL refuses to run as root, so a root process
//!   runs it as `postgres` (or `REDCELL_PG_USER`) and gives it its files.
//! - [`sys`] and [`process_tree`]: signals to one process at a time (never a
//!   group), liveness and command names from `/proc`, ending a postmaster and
//!   its children. The only `unsafe` is in [`sys`], four thin libc wrappers.
//!
//! Linux only. No async: every call here is a short blocking system call or
//! a bounded wait, for callers to run where blocking is fine.
//!
//! **Owns**: finding PostgreSQL's binaries, the user a server runs as, and
//! the process control around a postmaster. **Never**: knows a redcell
//! schema or a DSN's meaning, signals a process group, or holds `unsafe`
//! outside [`sys`].

mod binaries;
mod error;
pub mod process_tree;
mod server_user;
pub mod sys;

pub use binaries::{BINDIR_ENV, BinarySearch, PgBinaries};
pub use error::PgSysError;
pub use server_user::{SERVER_USER_ENV, ServerUser, copy_tree, make_private_dir};

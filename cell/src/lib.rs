//! The redcell cell logic server (DESIGN.md §4, §5, §8).
//!
//! A cell owns ranges of envelope-ID suffixes and keeps their envelopes in its
//! own PostgreSQL order DB. Requests arrive from routers over gRPC
//! ([`service`]); each operation has its own module ([`ops`]). Opens of one
//! envelope run through its [`lane`] and commit in batches ([`store`]); money
//! leaves the cell only through the settlement outbox ([`workers::settlement`])
//! into the [`redcell_payments::Payments`] boundary.
//!
//! **Owns**: its order DB (the only code that writes it), the lanes, the
//! allocation of shares, the outbox workers and reconciliation. **Never**:
//! calls the payment system inside an order-DB transaction, moves money
//! except through a ledger key of [`redcell_payments::keys`], serves an
//! envelope whose ID routes to another cell, or panics on client input.

pub mod allocation;
pub mod archive;
pub mod clock;
pub mod config;
pub(crate) mod context;
pub mod db;
pub(crate) mod envelope;
pub mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod health;
pub(crate) mod ids;
pub(crate) mod kind;
pub mod lane;
pub(crate) mod measured;
pub mod metrics;
pub(crate) mod ops;
pub mod reconcile;
// pub: the fuzz targets (fuzz/) drive the edge validation directly.
pub mod request;
pub(crate) mod rowlock;
pub(crate) mod server;
pub(crate) mod service;
pub mod share;
pub(crate) mod status;
pub mod store;
pub(crate) mod workers;

pub use config::{CellArgs, CellConfig};
pub use context::OpenStrategy;
pub use server::{RunError, run};

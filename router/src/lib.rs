//! The redcell router (DESIGN.md §6): the only thing clients talk to.
//!
//! Per request: authenticate the bearer token ([`auth`]), apply the per-user
//! rate limit and the global concurrency limit ([`limits`]), then route: a new
//! envelope gets a suffix from its region's mint pool (healthy cells only); an
//! existing ID resolves `(R, EE, SSS)` to its cell and, by rendezvous hashing, to
//! one logic server of it. The router is stateless: any number of replicas.
//!
//! **Owns**: authentication, rate limits, routing and failover between a
//! cell's servers, and merging History across cells. **Never**: opens a
//! database, holds money state, or links a cell crate to borrow its code
//! (it speaks to cells only through `proto`'s contract).

pub mod auth;
pub mod config;
pub mod connections;
pub mod deadline;
pub mod directory;
mod error;
pub mod failover;
pub mod history;
pub mod limits;
pub mod metrics;
pub mod route;
pub mod server;
pub mod service;
pub mod status;
pub mod topology;
pub mod traceparent;

pub use config::{RouterArgs, RouterConfig};
pub use server::{RouterHandle, run, start};

//! The router in front of real cells (in-process logic servers on real sockets,
//! each cell with its own order DB on real PostgreSQL) and a real ledger.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "router/stack.rs"]
mod stack;

#[path = "router/routing.rs"]
mod routing;

#[path = "router/binary.rs"]
mod binary;

#[path = "router/failures.rs"]
mod failures;

#[path = "router/access.rs"]
mod access;

#[path = "router/history.rs"]
mod history;

#[path = "router/failover.rs"]
mod failover;

#[path = "router/degrade.rs"]
mod degrade;

#[path = "router/observability.rs"]
mod observability;

#[path = "router/hostile.rs"]
mod hostile;

//! Integration tests of the topology crate: the file format and its errors, the
//! ID codec, routing, mint pools and plans, with property tests for the
//! invariants of DESIGN.md §3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "topology/common.rs"]
mod common;
#[path = "topology/hostile.rs"]
mod hostile;
#[path = "topology/ids.rs"]
mod ids;
#[path = "topology/invalid.rs"]
mod invalid;
#[path = "topology/plans.rs"]
mod plans;
#[path = "topology/properties.rs"]
mod properties;
#[path = "topology/routing.rs"]
mod routing;

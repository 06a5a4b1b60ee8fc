//! The cell against real PostgreSQL (harness) and real gRPC sockets: every test
//! that moves money ends by checking the invariants of DESIGN.md §5 through
//! `redcell_cell::reconcile` plus ledger conservation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "cell/stack.rs"]
mod stack;

#[path = "cell/lanes.rs"]
mod lanes;
#[path = "cell/merge.rs"]
mod merge;
#[path = "cell/opens.rs"]
mod opens;

#[path = "cell/money.rs"]
mod money;

#[path = "cell/process.rs"]
mod process;

#[path = "cell/bad_input.rs"]
mod bad_input;

#[path = "cell/reconcile.rs"]
mod reconcile;

#[path = "cell/storage.rs"]
mod storage;

#[path = "cell/reload.rs"]
mod reload;

#[path = "cell/repoint.rs"]
mod repoint;

#[path = "cell/failpoints.rs"]
mod failpoints;

#[path = "cell/clocks.rs"]
mod clocks;

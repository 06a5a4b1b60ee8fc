//! The router's topology: the live handle every server binary shares
//! ([`redcell_lifecycle::topology`]): an immutable snapshot per request,
//! swapped atomically when cells.yaml changes or on SIGHUP, a bad file refused
//! and counted while the old topology keeps serving (DESIGN.md §3 hot reload).

pub use redcell_lifecycle::topology::{Reload, TopologyHandle};

//! redcell's topology: everything about cells that is pure logic.
//!
//! * [`document`] — the cells.yaml file format and the one YAML parser call;
//! * [`Topology`] — the validated model ([`model`]), built by [`validate`]-ing a
//!   document and collecting every error;
//! * [`EnvelopeId`] — the 22-digit ID codec ([`id`]) and [`Topology::route`],
//!   `(R, EE, SSS) -> cell`;
//! * [`mint`] — the mint pool per region and the suffix draw for new envelopes;
//! * [`plan`] — fail / restore / expand / switch / reverse / complete / drain
//!   as pure functions.
//!
//! No I/O beyond parsing text handed in by the caller: binaries read files and
//! swap snapshots; this crate decides what they mean.
//!
//! **Owns**: cells.yaml's meaning, the envelope-ID codec and routing, minting
//! and topology plans. **Never**: reads files, opens sockets or databases,
//! keeps mutable state, or depends on another redcell crate.

pub mod document;
mod endpoint;
pub mod error;
mod fingerprint;
pub mod id;
pub mod mint;
pub mod model;
pub mod plan;
pub mod suffix;
pub mod timestamp;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use id::{EnvelopeId, EpochId, IdError, MintDate, RegionDigit};
pub use mint::{CellMint, PoolCell, RegionPool};
pub use model::{
    Cell, CellStatus, ClaimsMode, Epoch, HistoryMode, MintSwitch, RangeTable, RouteError, Topology,
};
pub use suffix::{Suffix, SuffixRange};
pub use timestamp::UtcTimestamp;

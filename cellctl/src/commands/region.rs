//! `cellctl drain-region FROM --to TO` / `cellctl undrain FROM` (issue 11 item
//! 4): new envelopes of senders in FROM are minted in TO's cells while FROM's
//! existing envelopes keep routing to (and opening in) FROM's own cells, since
//! routing an ID never depends on the minting policy.
//!
//! Thin: the plans are `redcell_topology::plan::{drain_region,
//! undrain_region}` and the workflow (diff, pool, `--apply`, fleet) is the
//! change module's. The plan refuses draining a region into itself (undrain
//! is the way back), draining to the target it already has, a target that
//! cannot mint or is itself drained (overrides do not chain), and undraining
//! a region with no active cell left; each refusal names the region.

use std::{io::Write, path::Path};

use super::change::{self, ChangeArgs};
use crate::CommandError;

/// `cellctl drain-region FROM --to TO [--apply]`.
pub fn drain(
    path: &Path,
    from: &str,
    to: &str,
    args: &ChangeArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    change::run(
        path,
        &format!("drain-region {from} --to {to}"),
        args,
        |topology| redcell_topology::plan::drain_region(topology, from, to),
        out,
    )
}

/// `cellctl undrain FROM [--apply]`.
pub fn undrain(
    path: &Path,
    from: &str,
    args: &ChangeArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    change::run(
        path,
        &format!("undrain {from}"),
        args,
        |topology| redcell_topology::plan::undrain_region(topology, from),
        out,
    )
}

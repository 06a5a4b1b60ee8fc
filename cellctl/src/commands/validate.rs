//! `cellctl validate [FILE]`: every error, or a one-screen summary of a good file.

use std::{io::Write, path::Path};

use crate::{CommandError, load};

pub fn run(path: &Path, out: &mut impl Write) -> Result<(), CommandError> {
    let topology = load::topology(path)?;
    let active = topology
        .cells()
        .iter()
        .filter(|cell| cell.status == redcell_topology::CellStatus::Active)
        .count();
    writeln!(
        out,
        "{}: valid — {} regions, {} cells ({} active), {} epochs, minting epoch {}",
        path.display(),
        topology.regions().len(),
        topology.cells().len(),
        active,
        topology.epochs().len(),
        topology.minting_epoch()
    )?;
    Ok(())
}

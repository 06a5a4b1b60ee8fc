//! `cellctl mint-pool [--region R]`: which suffixes new envelopes may get.

use std::io::Write;

use redcell_topology::{Topology, suffix};

use crate::CommandError;

pub fn run(
    topology: &Topology,
    only: Option<&str>,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    if let Some(name) = only
        && topology.region_digit(name).is_none()
    {
        return Err(CommandError::Input(format!(
            "unknown region {name:?} (regions: {})",
            topology.regions().join(", ")
        )));
    }
    for pool in topology.mint_pools() {
        let sender = topology.region_name(pool.sender).unwrap_or("?");
        if only.is_some_and(|name| name != sender) {
            continue;
        }
        let minter = topology.region_name(pool.minter).unwrap_or("?");
        let via = if pool.minter == pool.sender {
            String::new()
        } else {
            format!(", minted in {minter} (region_override)")
        };
        writeln!(
            out,
            "region {sender}: epoch {}, {} suffixes{via}",
            pool.epoch, pool.total
        )?;
        for pool_cell in &pool.cells {
            let name = topology
                .cells()
                .get(pool_cell.cell)
                .map_or("?", |cell| cell.name.as_str());
            let share = pool.share_basis_points(pool_cell);
            writeln!(
                out,
                "  {name:<8} {:>3}.{:02}%  {}",
                share / 100,
                share % 100,
                suffix::format_ranges(&pool_cell.ranges)
            )?;
        }
    }
    Ok(())
}

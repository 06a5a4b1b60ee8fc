//! The mint pool: which suffixes new envelopes may get (DESIGN.md §3).
//!
//! For each sender region, the pool is the minting epoch's range table of the
//! region that mints for it (itself, or its `region_override` target), restricted
//! to `active` cells. A draw is uniform over the pool's suffixes, so each cell
//! receives new envelopes in proportion to the size of its ranges: with equal
//! ranges, equal load. Failing a cell yields a new topology and so a new pool
//! without it; existing IDs keep routing through [`crate::Topology::route`].
//!
//! Draws take their randomness as an argument: the library stays pure, and tests
//! can replay a draw.

use crate::{
    id::{EpochId, RegionDigit},
    model::{CellStatus, Topology},
    suffix::{Suffix, SuffixRange},
};

/// One active cell's part of a region's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCell {
    /// Index into [`Topology::cells`].
    pub cell: usize,
    pub ranges: Vec<SuffixRange>,
    /// Number of suffixes in `ranges`.
    pub suffixes: u32,
}

/// The suffixes new envelopes of one sender region may be minted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionPool {
    /// The sender region this pool serves.
    pub sender: RegionDigit,
    /// The region whose cells mint (differs from `sender` under an override);
    /// it is the `R` digit of the minted IDs.
    pub minter: RegionDigit,
    pub epoch: EpochId,
    pub cells: Vec<PoolCell>,
    /// Sum of `cells[..].suffixes`; never 0 for a valid topology.
    pub total: u32,
}

impl RegionPool {
    /// The suffix for a uniformly random `random`. Modulo bias is below 1e-16
    /// for at most 1,000 suffixes. `None` only for an empty pool.
    pub fn draw(&self, random: u64) -> Option<(Suffix, usize)> {
        if self.total == 0 {
            return None;
        }
        let mut position = random % u64::from(self.total);
        for pool_cell in &self.cells {
            for range in &pool_cell.ranges {
                let len = u64::from(range.len());
                if position < len {
                    let suffix = Suffix::new(range.start().get() + u16::try_from(position).ok()?)?;
                    return Some((suffix, pool_cell.cell));
                }
                position -= len;
            }
        }
        None
    }

    /// Fraction of new envelopes a cell receives, in basis points (1/100 of a
    /// percent), for display.
    pub fn share_basis_points(&self, pool_cell: &PoolCell) -> u32 {
        if self.total == 0 {
            return 0;
        }
        pool_cell.suffixes * 10_000 / self.total
    }
}

impl Topology {
    /// The mint pool of every region, in region order.
    pub fn mint_pools(&self) -> Vec<RegionPool> {
        (1..=self.regions.len())
            .filter_map(|digit| RegionDigit::new(u8::try_from(digit).ok()?))
            .filter_map(|region| self.mint_pool(region))
            .collect()
    }

    /// The mint pool for senders of `sender`; `None` for an unknown region.
    pub fn mint_pool(&self, sender: RegionDigit) -> Option<RegionPool> {
        let minter = self.mint_region(sender)?;
        let epoch = self.epoch(self.minting_epoch)?;
        let table = epoch.table(minter)?;
        let cells: Vec<PoolCell> = table
            .assignments()
            .iter()
            .filter(|(cell, _)| {
                self.cells
                    .get(*cell)
                    .is_some_and(|cell| cell.status == CellStatus::Active)
            })
            .map(|(cell, ranges)| PoolCell {
                cell: *cell,
                ranges: ranges.clone(),
                suffixes: ranges.iter().map(|range| u32::from(range.len())).sum(),
            })
            .collect();
        let total = cells.iter().map(|cell| cell.suffixes).sum();
        Some(RegionPool {
            sender,
            minter,
            epoch: epoch.id,
            cells,
            total,
        })
    }
}

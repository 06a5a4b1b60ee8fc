//! The mint pool: which suffixes new envelopes may get (DESIGN.md §3).
//!
//! For each sender region, the pool is the minting epoch's range table of the
//! region that mints for it (itself, or its `region_override` target), restricted
//! to `active` cells. A draw is uniform over the pool's suffixes, so each cell
//! receives new envelopes in proportion to the size of its ranges: with equal
//! ranges, equal load. Failing a cell yields a new topology and so a new pool
//! without it; existing IDs keep routing through [`crate::Topology::route`].
//!
//! Two questions are answered here, so no binary scans range tables itself:
//!
//! * [`Topology::mint_pool_where`]: the pool of a sender region restricted to
//!   the cells a caller can use now (the router leaves out unhealthy cells);
//!   the pool's total is always the sum of its cells, whatever was left out.
//! * [`Topology::minted_by`]: the suffixes one cell mints new IDs with (its
//!   ranges in its own region's table of the minting epoch), which the cell
//!   checks a router's suffix against and draws from when none is given.
//!
//! Draws take their randomness as an argument: the library stays pure, and tests
//! can replay a draw.

use crate::{
    id::{EpochId, RegionDigit},
    model::{Cell, CellStatus, Topology},
    suffix::{Suffix, SuffixRange},
};

/// The suffix at `position` of `ranges` laid end to end, or the position left
/// over past their end.
fn nth_suffix(ranges: &[SuffixRange], mut position: u64) -> Result<Option<Suffix>, u64> {
    for range in ranges {
        let len = u64::from(range.len());
        if position < len {
            let offset = u16::try_from(position).ok();
            return Ok(offset.and_then(|offset| Suffix::new(range.start().get() + offset)));
        }
        position -= len;
    }
    Err(position)
}

fn count(ranges: &[SuffixRange]) -> u32 {
    ranges.iter().map(|range| u32::from(range.len())).sum()
}

/// The suffixes one cell mints new envelope IDs with: its ranges in its own
/// region's table of the minting epoch, whatever its status (a failed cell
/// receives no new Sends from routers, but one that reaches it still gets an
/// ID that routes back to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellMint {
    /// The cell's region: the `R` digit of the IDs it mints.
    pub region: RegionDigit,
    /// The minting epoch: the `EE` digits of the IDs it mints.
    pub epoch: EpochId,
    /// Empty when the cell owns nothing in the minting epoch (e.g. an expansion
    /// moved all of it away); it then mints nothing.
    pub ranges: Vec<SuffixRange>,
    /// Number of suffixes in `ranges`.
    pub suffixes: u32,
}

impl CellMint {
    /// Whether an ID with `suffix` minted now by this cell routes back to it.
    pub fn contains(&self, suffix: Suffix) -> bool {
        self.ranges.iter().any(|range| range.contains(suffix))
    }

    /// The suffix for a uniformly random `random` (modulo bias below 1e-16);
    /// `None` when the cell owns no suffix.
    pub fn draw(&self, random: u64) -> Option<Suffix> {
        if self.suffixes == 0 {
            return None;
        }
        nth_suffix(&self.ranges, random % u64::from(self.suffixes))
            .ok()
            .flatten()
    }
}

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
            match nth_suffix(&pool_cell.ranges, position) {
                Ok(suffix) => return Some((suffix?, pool_cell.cell)),
                Err(left) => position = left,
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
        self.mint_pool_where(sender, |_| true)
    }

    /// The mint pool for senders of `sender` without the cells for which
    /// `usable` is false (a router leaves out the cells it cannot reach now);
    /// `None` for an unknown region. The pool may be empty (its `total` is 0
    /// and [`RegionPool::draw`] answers `None`) when every cell is left out.
    pub fn mint_pool_where(
        &self,
        sender: RegionDigit,
        usable: impl Fn(&Cell) -> bool,
    ) -> Option<RegionPool> {
        let minter = self.mint_region(sender)?;
        let epoch = self.epoch(self.minting_epoch)?;
        let table = epoch.table(minter)?;
        let cells: Vec<PoolCell> = table
            .assignments()
            .iter()
            .filter(|(cell, _)| {
                self.cells
                    .get(*cell)
                    .is_some_and(|cell| cell.status == CellStatus::Active && usable(cell))
            })
            .map(|(cell, ranges)| PoolCell {
                cell: *cell,
                ranges: ranges.clone(),
                suffixes: count(ranges),
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

    /// The newest epoch in which cell `name` owns `suffix` of its region, if
    /// any. A router hands a cell a suffix drawn from *its* snapshot; while a
    /// switch or reverse reaches the fleet the two snapshots can mint under
    /// different epochs, and an ID minted under any epoch where this cell
    /// owns the suffix routes to this cell for good (epoch tables never
    /// change), so the cell can honour the router's draw.
    pub fn newest_epoch_owning(&self, name: &str, suffix: Suffix) -> Option<EpochId> {
        let index = self.cells.iter().position(|cell| cell.name == name)?;
        let region = self.cells.get(index)?.region;
        self.epochs
            .iter()
            .rev()
            .find(|epoch| {
                epoch
                    .table(region)
                    .is_some_and(|table| table.owner(suffix) == index)
            })
            .map(|epoch| epoch.id)
    }

    /// The suffixes cell `name` mints new IDs with; `None` for a cell not in
    /// this topology.
    pub fn minted_by(&self, name: &str) -> Option<CellMint> {
        let index = self.cells.iter().position(|cell| cell.name == name)?;
        let region = self.cells.get(index)?.region;
        let epoch = self.minting_epoch;
        let ranges = self
            .epoch(epoch)
            .and_then(|epoch| epoch.table(region))
            .and_then(|table| {
                table
                    .assignments()
                    .iter()
                    .find(|(owner, _)| *owner == index)
            })
            .map(|(_, ranges)| ranges.clone())
            .unwrap_or_default();
        Some(CellMint {
            region,
            epoch,
            suffixes: count(&ranges),
            ranges,
        })
    }
}

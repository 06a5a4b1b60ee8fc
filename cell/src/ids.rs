//! Minting envelope IDs in this cell (DESIGN.md §2).
//!
//! `YYMMDD R EE NNNNNNNNNN SSS`: today's UTC date, this cell's region, the
//! minting epoch, a sequence unique within (cell, date), and a suffix this cell
//! owns in the minting epoch. Sequences are reserved from the order DB in
//! blocks, so every server of the cell mints distinct IDs without a round trip
//! per envelope; a block abandoned by a restart only leaves a gap.

use deadpool_postgres::Pool;
use redcell_topology::{EnvelopeId, MintDate, Suffix, Topology};
use tokio::sync::Mutex;

use crate::{error::CellError, store};

/// Sequences reserved per DB round trip.
const BLOCK_SIZE: u32 = 1000;

#[derive(Debug)]
struct Block {
    date: MintDate,
    next: u64,
    end: u64,
}

/// Mints the IDs of new envelopes of one cell.
#[derive(Debug)]
pub struct IdMinter {
    pool: Pool,
    cell: String,
    block: Mutex<Option<Block>>,
}

impl IdMinter {
    pub fn new(pool: Pool, cell: String) -> IdMinter {
        IdMinter {
            pool,
            cell,
            block: Mutex::new(None),
        }
    }

    /// A new ID with `suffix` (chosen by the router from the mint pool), or with
    /// a suffix of this cell drawn at random when none is given. `topology` is
    /// the request's snapshot of the live topology: the suffixes this cell
    /// mints are asked of it ([`Topology::minted_by`]), so a reload that moves
    /// minting to a new epoch applies from the next Send.
    pub async fn mint(
        &self,
        topology: &Topology,
        suffix: Option<Suffix>,
    ) -> Result<EnvelopeId, CellError> {
        let mint = topology
            .minted_by(&self.cell)
            .ok_or_else(|| CellError::Internal(format!("cell {} left the topology", self.cell)))?;
        let (epoch, suffix) = match suffix {
            Some(suffix) if mint.contains(suffix) => (mint.epoch, suffix),
            // Only a router passes a suffix (behind the internal
            // credential), drawn from *its* snapshot of the topology; during
            // a switch or reverse it may mint under another epoch than this
            // server. If this cell owns the suffix in some epoch, an ID under
            // that epoch routes here for good: honour the draw. Otherwise the
            // snapshots differ more (a change not yet read here): nothing is
            // written, so UNAVAILABLE lets the router retry in another cell.
            Some(suffix) => match topology.newest_epoch_owning(&self.cell, suffix) {
                Some(epoch) => (epoch, suffix),
                None => {
                    return Err(CellError::Unavailable(format!(
                        "suffix {suffix} is not minted by cell {} in epoch {}: this server's \
                         topology differs from the router's (a change is reaching the fleet); retry",
                        self.cell, mint.epoch
                    )));
                }
            },
            None => (
                mint.epoch,
                mint.draw(rand::random::<u64>()).ok_or_else(|| {
                    CellError::FailedPrecondition(format!(
                        "cell {} mints no suffix in epoch {}",
                        self.cell, mint.epoch
                    ))
                })?,
            ),
        };
        let date = MintDate::from_system_time(crate::clock::wall())
            .ok_or_else(|| CellError::Internal("the clock is outside 2000-2099".into()))?;
        let sequence = self.next_sequence(date).await?;
        EnvelopeId::new(date, mint.region, epoch, sequence, suffix).ok_or_else(|| {
            CellError::Unavailable(format!("sequence space of {date:?} is exhausted"))
        })
    }

    async fn next_sequence(&self, date: MintDate) -> Result<u64, CellError> {
        let mut block = self.block.lock().await;
        match block.as_mut() {
            Some(current) if current.date == date && current.next < current.end => {
                let sequence = current.next;
                current.next += 1;
                Ok(sequence)
            }
            _ => {
                let range = store::allocate_sequences(&self.pool, date, BLOCK_SIZE).await?;
                let sequence = range.start;
                *block = Some(Block {
                    date,
                    next: range.start + 1,
                    end: range.end,
                });
                Ok(sequence)
            }
        }
    }
}

//! The validated topology: regions, cells, epochs with their range tables, the
//! minting policy and the degrade switches.
//!
//! A [`Topology`] only exists after [`Topology::from_document`] accepted its
//! document, so every accessor can rely on the invariants of DESIGN.md §3: names
//! are unique, every epoch's table of every region covers each suffix exactly once
//! with cells of that region, epoch ids strictly increase, the minting epoch
//! exists, and each region can mint (an active cell, or an override to a region
//! that has one). Topologies are immutable snapshots: a change is a new value
//! (see [`crate::plan`]), swapped in whole by the binaries that hold one.

use crate::{
    document::{self, Document},
    error::ConfigErrors,
    id::{EnvelopeId, EpochId, RegionDigit},
    suffix::{Suffix, SuffixRange},
    timestamp::UtcTimestamp,
};

/// Whether a cell takes new envelopes. Existing envelopes route to their cell
/// whatever its status: routing an ID never depends on today's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellStatus {
    /// In the mint pool.
    Active,
    /// Out of the mint pool after a failure; old envelopes still route here.
    Failed,
    /// Out of the mint pool on purpose (maintenance, region drain).
    Draining,
}

impl CellStatus {
    pub const NAMES: &'static str = "active, failed or draining";

    pub fn parse(text: &str) -> Option<CellStatus> {
        match text {
            "active" => Some(CellStatus::Active),
            "failed" => Some(CellStatus::Failed),
            "draining" => Some(CellStatus::Draining),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Active => "active",
            CellStatus::Failed => "failed",
            CellStatus::Draining => "draining",
        }
    }
}

/// A cell: logic servers plus one order database, owning suffix ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub name: String,
    pub region: RegionDigit,
    pub status: CellStatus,
    /// `host:port` of each logic server.
    pub servers: Vec<String>,
    /// DSN of the cell's order database.
    pub db: String,
}

/// One epoch: a range table per region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub id: EpochId,
    /// Indexed by region position (digit - 1).
    pub(crate) tables: Vec<RangeTable>,
}

impl Epoch {
    pub fn table(&self, region: RegionDigit) -> Option<&RangeTable> {
        self.tables.get(region.index())
    }
}

/// Which cell owns each of the 1,000 suffixes of one region in one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeTable {
    /// `owner[suffix]` is an index into [`Topology::cells`].
    pub(crate) owner: Vec<usize>,
    /// The table as the file writes it: (cell index, its ranges), in file order.
    pub(crate) assignments: Vec<(usize, Vec<SuffixRange>)>,
}

impl RangeTable {
    /// Index into [`Topology::cells`] of the suffix's owner.
    pub fn owner(&self, suffix: Suffix) -> usize {
        self.owner[suffix.index()]
    }

    /// (cell index, ranges) in file order.
    pub fn assignments(&self) -> &[(usize, Vec<SuffixRange>)] {
        &self.assignments
    }
}

/// How much of History is served (DESIGN.md §4: History is degradable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryMode {
    #[default]
    On,
    Off,
    /// Serve at most this many pages.
    Pages(u32),
}

/// Whether Get lists an envelope's claims (`degrade.claims`). A big group
/// envelope's claim list is the costly part of Get; during a peak an operator
/// can shed it and still answer the envelope itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClaimsMode {
    #[default]
    On,
    /// Get answers the envelope without its claims, marked degraded.
    Off,
}

/// A switch of minting to a newer epoch that is not completed yet
/// (`minting.switched_from` / `switched_at`): `cellctl reverse` may still
/// send minting back to `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintSwitch {
    /// The epoch minted before the switch (older than the minting epoch).
    pub from: EpochId,
    /// When the switch was applied.
    pub at: UtcTimestamp,
}

/// Why an existing envelope ID cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("envelope id region digit {0} is not a region of this topology")]
    UnknownRegion(u8),
    #[error("envelope id epoch {0:02} does not exist in this topology")]
    UnknownEpoch(u8),
}

/// A validated cells.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub(crate) document: Document,
    pub(crate) regions: Vec<String>,
    pub(crate) cells: Vec<Cell>,
    pub(crate) epochs: Vec<Epoch>,
    pub(crate) minting_epoch: EpochId,
    /// Per region position: the region position whose cells mint for it.
    pub(crate) mint_region: Vec<usize>,
    pub(crate) history: HistoryMode,
    pub(crate) claims: ClaimsMode,
    pub(crate) switch: Option<MintSwitch>,
}

impl Topology {
    /// Parses and validates cells.yaml text, reporting every error at once.
    pub fn parse(text: &str) -> Result<Topology, ConfigErrors> {
        let document = document::parse(text)?;
        Topology::from_document(document)
    }

    /// Validates a document into a topology, reporting every error at once.
    pub fn from_document(document: Document) -> Result<Topology, ConfigErrors> {
        crate::validate::validate(document)
    }

    /// The document this topology was validated from (for rewriting the file).
    pub fn document(&self) -> &Document {
        &self.document
    }

    /// cells.yaml text for this topology.
    pub fn to_yaml(&self) -> Result<String, ConfigErrors> {
        document::render(&self.document)
    }

    /// Region names; position + 1 is the region digit.
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    pub fn region_name(&self, region: RegionDigit) -> Option<&str> {
        self.regions.get(region.index()).map(String::as_str)
    }

    pub fn region_digit(&self, name: &str) -> Option<RegionDigit> {
        let position = self.regions.iter().position(|region| region == name)?;
        RegionDigit::new(u8::try_from(position + 1).ok()?)
    }

    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    pub fn cell(&self, name: &str) -> Option<&Cell> {
        self.cells.iter().find(|cell| cell.name == name)
    }

    /// Epochs in increasing id order.
    pub fn epochs(&self) -> &[Epoch] {
        &self.epochs
    }

    pub fn epoch(&self, id: EpochId) -> Option<&Epoch> {
        self.epochs.iter().find(|epoch| epoch.id == id)
    }

    /// The epoch new envelope IDs are minted under.
    pub fn minting_epoch(&self) -> EpochId {
        self.minting_epoch
    }

    /// The region whose cells mint for senders of `region` (itself, unless
    /// `minting.region_override` sends it elsewhere).
    pub fn mint_region(&self, region: RegionDigit) -> Option<RegionDigit> {
        let target = *self.mint_region.get(region.index())?;
        RegionDigit::new(u8::try_from(target + 1).ok()?)
    }

    /// The switch in progress, if minting moved to a new epoch and that was
    /// neither reversed nor completed.
    pub fn switch(&self) -> Option<MintSwitch> {
        self.switch
    }

    /// The cells an expansion added and that do not mint yet: they own
    /// suffixes in the latest epoch and none in the minting epoch. Empty
    /// once minting is on the latest epoch.
    pub fn pending_cells(&self) -> Vec<&Cell> {
        let (Some(latest), Some(minting)) = (self.epochs.last(), self.epoch(self.minting_epoch))
        else {
            return Vec::new();
        };
        let owns = |epoch: &Epoch, index: usize| {
            epoch.tables.iter().any(|table| {
                table
                    .assignments
                    .iter()
                    .any(|(owner, ranges)| *owner == index && !ranges.is_empty())
            })
        };
        self.cells
            .iter()
            .enumerate()
            .filter(|(index, _)| owns(latest, *index) && !owns(minting, *index))
            .map(|(_, cell)| cell)
            .collect()
    }

    pub fn history_mode(&self) -> HistoryMode {
        self.history
    }

    pub fn claims_mode(&self) -> ClaimsMode {
        self.claims
    }

    /// The cell owning an existing envelope: `(R, EE, SSS)` through epoch EE's
    /// table of region R. Independent of cell status and of the minting epoch.
    pub fn route(&self, id: &EnvelopeId) -> Result<&Cell, RouteError> {
        let region = id.region();
        if region.index() >= self.regions.len() {
            return Err(RouteError::UnknownRegion(region.get()));
        }
        let epoch = self
            .epoch(id.epoch())
            .ok_or(RouteError::UnknownEpoch(id.epoch().get()))?;
        let table = epoch
            .table(region)
            .ok_or(RouteError::UnknownRegion(region.get()))?;
        self.cells
            .get(table.owner(id.suffix()))
            .ok_or(RouteError::UnknownRegion(region.get()))
    }
}

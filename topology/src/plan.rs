//! Topology plans: the operator's changes as pure functions from one topology to
//! the next (DESIGN.md §3, §7).
//!
//! Every plan edits a copy of the validated [`Document`] and validates the result
//! again, so a plan can never produce a topology that a binary would refuse to
//! load; `cellctl` shows the diff and writes the file. Plans never touch the
//! range tables of existing epochs, which is why an existing envelope ID keeps
//! routing to the same cell through any sequence of plans.

use std::time::Duration;

use crate::{
    document::{CellDoc, Document, EpochDoc, HistoryDegradeDoc},
    error::ConfigErrors,
    model::{CellStatus, ClaimsMode, HistoryMode, Topology},
    suffix::{self, Suffix},
    timestamp::UtcTimestamp,
};

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown cell {0:?}")]
    UnknownCell(String),
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    #[error("cell {cell:?} is already {status}")]
    AlreadyInStatus { cell: String, status: &'static str },
    #[error(
        "epoch {pending} is not minting yet; promote it (or remove it) before planning another expansion"
    )]
    ExpansionPending { pending: u8 },
    #[error("no epoch id is left (epochs end at 99)")]
    EpochsExhausted,
    #[error("an expansion needs at least one split")]
    NothingToSplit,
    #[error("cell {0:?} already exists")]
    CellExists(String),
    #[error("cell {0:?} is split twice in one expansion")]
    SplitTwice(String),
    #[error(
        "cell {cell:?} owns {suffixes} suffix(es) in epoch {epoch}; at least 2 are needed to split"
    )]
    TooSmallToSplit {
        cell: String,
        suffixes: usize,
        epoch: u8,
    },
    #[error("epoch {0} does not exist")]
    UnknownEpoch(u32),
    #[error("epoch {epoch} is not newer than the minting epoch {minting}")]
    NotNewer { epoch: u32, minting: u8 },
    #[error("region {0:?} is not drained")]
    NotDrained(String),
    #[error("region {0:?} cannot be drained into itself (to stop a drain: undrain {0})")]
    DrainIntoItself(String),
    #[error("region {from:?} is already drained to {to:?}")]
    AlreadyDrained { from: String, to: String },
    #[error("no degrade switch given")]
    NoSwitch,
    #[error("degrade switch {0:?} is given twice")]
    SwitchTwice(&'static str),
    #[error("nothing to change: the degrade switches are already {0}")]
    SwitchesUnchanged(String),
    #[error(
        "minting was switched from epoch {from} to epoch {to} at {at} and not completed; \
         reverse or complete that switch first"
    )]
    SwitchInProgress { from: u8, to: u8, at: String },
    #[error(
        "nothing to switch to: the minting epoch {minting} is the latest (plan an expansion first)"
    )]
    NothingToSwitch { minting: u8 },
    #[error("nothing to {0}: minting is not switched (no switch, or it was reversed or completed)")]
    NotSwitched(&'static str),
    #[error(
        "the switch of {at} soaks for {soak_secs} s before it can be completed ({left_secs} s left; \
         until then it can be reversed)"
    )]
    Soaking {
        at: String,
        soak_secs: u64,
        left_secs: u64,
    },
    #[error("the planned topology is invalid:\n{0}")]
    Invalid(ConfigErrors),
}

/// A cell to create by an expansion. It starts `active` but receives nothing until
/// its epoch is promoted to minting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCell {
    pub name: String,
    pub servers: Vec<String>,
    pub db: String,
}

/// Split `from`'s suffixes in the new epoch: `from` keeps the lower half, the new
/// cell takes the upper half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub from: String,
    pub into: NewCell,
}

fn revalidate(document: Document) -> Result<Topology, PlanError> {
    Topology::from_document(document).map_err(PlanError::Invalid)
}

fn set_status(topology: &Topology, cell: &str, status: CellStatus) -> Result<Topology, PlanError> {
    let current = topology
        .cell(cell)
        .ok_or_else(|| PlanError::UnknownCell(cell.to_owned()))?;
    if current.status == status {
        return Err(PlanError::AlreadyInStatus {
            cell: cell.to_owned(),
            status: status.as_str(),
        });
    }
    let mut document = topology.document().clone();
    for doc in document.cells.iter_mut().filter(|doc| doc.name == cell) {
        doc.status = status.as_str().to_owned();
    }
    revalidate(document)
}

/// Takes a cell out of the mint pool: new envelopes stop landing there, old ones
/// still route to it. Refused when it would leave a region unable to mint.
pub fn fail(topology: &Topology, cell: &str) -> Result<Topology, PlanError> {
    set_status(topology, cell, CellStatus::Failed)
}

/// Puts a failed or draining cell back into the mint pool.
pub fn restore(topology: &Topology, cell: &str) -> Result<Topology, PlanError> {
    set_status(topology, cell, CellStatus::Active)
}

/// Parallel expansion (平行扩容): new cells and a new epoch whose tables split the
/// chosen cells' ranges, copying the latest epoch otherwise. The minting epoch
/// does not move (see [`promote`]), and no data is copied: IDs of earlier epochs
/// keep routing to their cells.
pub fn expand(topology: &Topology, splits: &[Split]) -> Result<Topology, PlanError> {
    if splits.is_empty() {
        return Err(PlanError::NothingToSplit);
    }
    refuse_switch_in_progress(topology)?;
    let latest = topology.epochs().last().ok_or(PlanError::EpochsExhausted)?;
    if latest.id != topology.minting_epoch() {
        return Err(PlanError::ExpansionPending {
            pending: latest.id.get(),
        });
    }
    let new_id = latest.id.get().checked_add(1).filter(|id| *id <= 99);
    let new_id = new_id.ok_or(PlanError::EpochsExhausted)?;

    let mut document = topology.document().clone();
    let base = document
        .epochs
        .last()
        .cloned()
        .ok_or(PlanError::EpochsExhausted)?;
    let mut epoch = EpochDoc {
        id: u32::from(new_id),
        ranges: base.ranges,
    };
    let mut seen = Vec::new();
    for split in splits {
        if seen.contains(&split.from.as_str()) {
            return Err(PlanError::SplitTwice(split.from.clone()));
        }
        seen.push(split.from.as_str());
        if topology.cell(&split.into.name).is_some()
            || splits
                .iter()
                .filter(|other| other.into.name == split.into.name)
                .count()
                > 1
        {
            return Err(PlanError::CellExists(split.into.name.clone()));
        }
        let cell = topology
            .cell(&split.from)
            .ok_or_else(|| PlanError::UnknownCell(split.from.clone()))?;
        let region = topology
            .region_name(cell.region)
            .ok_or_else(|| PlanError::UnknownCell(split.from.clone()))?
            .to_owned();
        let owned: Vec<Suffix> = latest
            .table(cell.region)
            .and_then(|table| {
                let index = topology.cells().iter().position(|c| c.name == cell.name)?;
                table
                    .assignments()
                    .iter()
                    .find(|(owner, _)| *owner == index)
                    .map(|(_, ranges)| ranges.iter().flat_map(|range| range.iter()).collect())
            })
            .unwrap_or_default();
        if owned.len() < 2 {
            return Err(PlanError::TooSmallToSplit {
                cell: split.from.clone(),
                suffixes: owned.len(),
                epoch: latest.id.get(),
            });
        }
        let (keep, give) = owned.split_at(owned.len().div_ceil(2));
        let table = epoch.ranges.entry(region.clone()).or_default();
        table.insert(
            split.from.clone(),
            suffix::format_ranges(&suffix::coalesce(keep.iter().copied())),
        );
        table.insert(
            split.into.name.clone(),
            suffix::format_ranges(&suffix::coalesce(give.iter().copied())),
        );
        document.cells.push(CellDoc {
            name: split.into.name.clone(),
            region,
            status: CellStatus::Active.as_str().to_owned(),
            servers: split.into.servers.clone(),
            db: split.into.db.clone(),
        });
    }
    document.epochs.push(epoch);
    revalidate(document)
}

/// Moves minting to a newer epoch (after its new cells are migrated and healthy).
pub fn promote(topology: &Topology, epoch: u32) -> Result<Topology, PlanError> {
    if !topology
        .epochs()
        .iter()
        .any(|e| u32::from(e.id.get()) == epoch)
    {
        return Err(PlanError::UnknownEpoch(epoch));
    }
    let minting = topology.minting_epoch().get();
    if epoch <= u32::from(minting) {
        return Err(PlanError::NotNewer { epoch, minting });
    }
    let mut document = topology.document().clone();
    document.minting.epoch = epoch;
    revalidate(document)
}

/// Refused while a switch is neither reversed nor completed: a reverse must
/// know the one epoch it returns to.
fn refuse_switch_in_progress(topology: &Topology) -> Result<(), PlanError> {
    match topology.switch() {
        Some(switch) => Err(PlanError::SwitchInProgress {
            from: switch.from.get(),
            to: topology.minting_epoch().get(),
            at: switch.at.to_string(),
        }),
        None => Ok(()),
    }
}

/// `cellctl switch`: moves minting to the latest epoch (the one an
/// expansion added) and records where it came from and when
/// (`minting.switched_from`, `switched_at`), so that [`reverse`] can move it
/// back and [`complete`] can tell how long it has soaked. Refused while
/// another switch is in progress or when there is no newer epoch. Whether
/// the new cells are healthy is the caller's check: it needs the network.
pub fn switch(topology: &Topology, now: UtcTimestamp) -> Result<Topology, PlanError> {
    refuse_switch_in_progress(topology)?;
    let minting = topology.minting_epoch();
    let latest = topology.epochs().last().map_or(minting, |epoch| epoch.id);
    if latest == minting {
        return Err(PlanError::NothingToSwitch {
            minting: minting.get(),
        });
    }
    let mut document = topology.document().clone();
    document.minting.epoch = u32::from(latest.get());
    document.minting.switched_from = Some(u32::from(minting.get()));
    document.minting.switched_at = Some(now.to_string());
    revalidate(document)
}

/// `cellctl reverse`: minting back to the epoch it was switched from, the
/// switch forgotten. The new epoch stays in the file: IDs minted under it
/// meanwhile keep routing to the new cells (and open there); the new cells
/// simply receive no new envelopes until the next [`switch`].
pub fn reverse(topology: &Topology) -> Result<Topology, PlanError> {
    let switch = topology.switch().ok_or(PlanError::NotSwitched("reverse"))?;
    let mut document = topology.document().clone();
    document.minting.epoch = u32::from(switch.from.get());
    document.minting.switched_from = None;
    document.minting.switched_at = None;
    revalidate(document)
}

/// `cellctl complete`: the switch becomes final (no reverse after it, and
/// the next expansion may be planned). Refused until `soak` has passed since
/// the switch: the policy that says how long a reverse may still be needed.
pub fn complete(
    topology: &Topology,
    now: UtcTimestamp,
    soak: Duration,
) -> Result<Topology, PlanError> {
    let switch = topology
        .switch()
        .ok_or(PlanError::NotSwitched("complete"))?;
    let soaked = now.since(switch.at);
    if soaked < soak {
        return Err(PlanError::Soaking {
            at: switch.at.to_string(),
            soak_secs: soak.as_secs(),
            left_secs: (soak - soaked).as_secs().max(1),
        });
    }
    let mut document = topology.document().clone();
    document.minting.switched_from = None;
    document.minting.switched_at = None;
    revalidate(document)
}

/// Sends new envelopes of region `from` to the cells of region `to`; `from`'s
/// existing envelopes still route to (and open in) its own cells. Refused when
/// `to` is `from`, when `to` cannot mint (no active cell in the minting epoch)
/// and when overrides would chain (`to` is itself drained, or another region
/// already drains into `from`): those last two by validation.
pub fn drain_region(topology: &Topology, from: &str, to: &str) -> Result<Topology, PlanError> {
    for region in [from, to] {
        if topology.region_digit(region).is_none() {
            return Err(PlanError::UnknownRegion(region.to_owned()));
        }
    }
    if from == to {
        return Err(PlanError::DrainIntoItself(from.to_owned()));
    }
    let overrides = &topology.document().minting.region_override;
    if overrides.get(from).map(String::as_str) == Some(to) {
        return Err(PlanError::AlreadyDrained {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }
    let mut document = topology.document().clone();
    document
        .minting
        .region_override
        .insert(from.to_owned(), to.to_owned());
    revalidate(document)
}

/// Lets region `from` mint in its own cells again (refused by validation when
/// it has no active cell left).
pub fn undrain_region(topology: &Topology, from: &str) -> Result<Topology, PlanError> {
    if topology.region_digit(from).is_none() {
        return Err(PlanError::UnknownRegion(from.to_owned()));
    }
    let mut document = topology.document().clone();
    if document
        .minting
        .region_override
        .shift_remove(from)
        .is_none()
    {
        return Err(PlanError::NotDrained(from.to_owned()));
    }
    revalidate(document)
}

/// One runtime switch of `degrade:` as an operator sets it. Setting a switch
/// to its default (`On`) removes it from the document, so cells.yaml lists
/// only what is degraded now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DegradeSwitch {
    History(HistoryMode),
    Claims(ClaimsMode),
}

impl DegradeSwitch {
    /// The key under `degrade:` this switch sets.
    pub fn key(self) -> &'static str {
        match self {
            DegradeSwitch::History(_) => "history",
            DegradeSwitch::Claims(_) => "claims",
        }
    }
}

impl std::fmt::Display for DegradeSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DegradeSwitch::History(HistoryMode::On) => f.write_str("history=on"),
            DegradeSwitch::History(HistoryMode::Off) => f.write_str("history=off"),
            DegradeSwitch::History(HistoryMode::Pages(pages)) => {
                write!(f, "history.pages={pages}")
            }
            DegradeSwitch::Claims(ClaimsMode::On) => f.write_str("claims=on"),
            DegradeSwitch::Claims(ClaimsMode::Off) => f.write_str("claims=off"),
        }
    }
}

/// Sets degrade switches (DESIGN.md §3 `degrade:`). Each key at most once per
/// plan; a plan that changes nothing is refused (as failing a failed cell
/// is), and the result is validated like every plan (`history.pages=0` is
/// refused there, naming `degrade.history.pages`).
pub fn degrade(topology: &Topology, switches: &[DegradeSwitch]) -> Result<Topology, PlanError> {
    if switches.is_empty() {
        return Err(PlanError::NoSwitch);
    }
    for (index, switch) in switches.iter().enumerate() {
        if switches[..index].iter().any(|s| s.key() == switch.key()) {
            return Err(PlanError::SwitchTwice(switch.key()));
        }
    }
    let mut document = topology.document().clone();
    for switch in switches {
        match *switch {
            DegradeSwitch::History(mode) => {
                document.degrade.history = match mode {
                    HistoryMode::On => None,
                    HistoryMode::Off => Some(HistoryDegradeDoc::Switch("off".to_owned())),
                    HistoryMode::Pages(pages) => Some(HistoryDegradeDoc::Pages { pages }),
                };
            }
            DegradeSwitch::Claims(mode) => {
                document.degrade.claims = match mode {
                    ClaimsMode::On => None,
                    ClaimsMode::Off => Some("off".to_owned()),
                };
            }
        }
    }
    // `history: on` written by hand and removed here is no change either.
    let next = revalidate(document)?;
    if next.history_mode() == topology.history_mode()
        && next.claims_mode() == topology.claims_mode()
    {
        let listed: Vec<String> = switches.iter().map(ToString::to_string).collect();
        return Err(PlanError::SwitchesUnchanged(listed.join(" ")));
    }
    Ok(next)
}

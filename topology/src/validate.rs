//! Document -> [`Topology`]: every rule of DESIGN.md §3, collecting *all* errors
//! (an operator fixing a file wants the whole list, not one error per run).
//!
//! Checks run in document order and later checks skip values an earlier check
//! already rejected (an unknown cell in a range table is reported once, not again
//! as a coverage gap), so each error points at a root cause.

use std::collections::HashMap;

use crate::{
    document::{Document, HistoryDegradeDoc},
    endpoint,
    error::{ConfigError, ConfigErrors},
    id::{EpochId, RegionDigit},
    model::{Cell, CellStatus, ClaimsMode, Epoch, HistoryMode, MintSwitch, RangeTable, Topology},
    suffix::{self, SUFFIX_COUNT, Suffix},
    timestamp::UtcTimestamp,
};

/// The only document version this build understands.
pub const DOCUMENT_VERSION: u32 = 1;

/// Longest region or cell name: names end up in DNS labels and metric labels.
const MAX_NAME_LEN: usize = 32;

pub(crate) fn validate(document: Document) -> Result<Topology, ConfigErrors> {
    let mut errors = Errors::default();
    if document.version != DOCUMENT_VERSION {
        errors.push(
            "version",
            format!(
                "unsupported version {} (expected {DOCUMENT_VERSION})",
                document.version
            ),
        );
    }
    let regions = check_regions(&document, &mut errors);
    let cells = check_cells(&document, &regions, &mut errors);
    let epochs = check_epochs(&document, &regions, &cells, &mut errors);
    let minting_epoch = check_minting_epoch(&document, &epochs, &mut errors);
    let switch = check_switch(&document, &epochs, &mut errors);
    let mint_region = check_mint_regions(
        &document,
        &regions,
        &cells,
        &epochs,
        minting_epoch,
        &mut errors,
    );
    let history = check_history(&document, &mut errors);
    let claims = check_claims(&document, &mut errors);

    match (errors.0.is_empty(), minting_epoch) {
        (true, Some(minting_epoch)) => Ok(Topology {
            regions: document.regions.clone(),
            document,
            cells: cells.into_iter().flatten().collect(),
            epochs,
            minting_epoch,
            mint_region,
            history,
            claims,
            switch,
        }),
        _ => Err(ConfigErrors(errors.0)),
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }
}

fn name_problem(name: &str) -> Option<&'static str> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
    if name.len() > MAX_NAME_LEN {
        Some("is longer than 32 characters")
    } else if !first_ok
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("must start with a-z and hold only a-z, 0-9 and -")
    } else {
        None
    }
}

/// Region name -> position, for the names that are valid and unique.
fn check_regions(document: &Document, errors: &mut Errors) -> HashMap<String, usize> {
    let mut positions = HashMap::new();
    if document.regions.is_empty() {
        errors.push("regions", "at least one region is required");
    }
    if document.regions.len() > 9 {
        errors.push(
            "regions",
            format!(
                "{} regions listed; at most 9 fit the region digit of an envelope id",
                document.regions.len()
            ),
        );
    }
    for (position, name) in document.regions.iter().enumerate() {
        let path = format!("regions[{position}]");
        if let Some(problem) = name_problem(name) {
            errors.push(path, format!("region name {name:?} {problem}"));
        } else if let Some(first) = positions.get(name) {
            errors.push(
                path,
                format!("duplicate region {name:?} (also regions[{first}])"),
            );
        } else {
            positions.insert(name.clone(), position);
        }
    }
    positions
}

/// One entry per document cell; `None` where the cell is invalid.
fn check_cells(
    document: &Document,
    regions: &HashMap<String, usize>,
    errors: &mut Errors,
) -> Vec<Option<Cell>> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut servers: HashMap<&str, &str> = HashMap::new();
    let mut databases: HashMap<&str, &str> = HashMap::new();
    let mut cells = Vec::with_capacity(document.cells.len());
    for (index, doc) in document.cells.iter().enumerate() {
        let at = |field: &str| format!("cells[{index}].{field}");
        let before = errors.0.len();
        if let Some(problem) = name_problem(&doc.name) {
            errors.push(at("name"), format!("cell name {:?} {problem}", doc.name));
        } else if let Some(first) = names.get(doc.name.as_str()) {
            errors.push(
                at("name"),
                format!("duplicate cell name {:?} (also cells[{first}])", doc.name),
            );
        } else {
            names.insert(&doc.name, index);
        }
        let region = regions.get(&doc.region).copied();
        if region.is_none() {
            errors.push(at("region"), format!("unknown region {:?}", doc.region));
        }
        let status = CellStatus::parse(&doc.status);
        if status.is_none() {
            errors.push(
                at("status"),
                format!(
                    "unknown status {:?} (expected {})",
                    doc.status,
                    CellStatus::NAMES
                ),
            );
        }
        if doc.servers.is_empty() {
            errors.push(at("servers"), "at least one logic server is required");
        }
        for (position, server) in doc.servers.iter().enumerate() {
            let path = format!("cells[{index}].servers[{position}]");
            if let Err(problem) = endpoint::check_server_address(server) {
                errors.push(path, format!("malformed address {server:?}: {problem}"));
            } else if let Some(owner) = servers.insert(server, &doc.name) {
                errors.push(
                    path,
                    format!("address {server} is already a server of cell {owner}"),
                );
            }
        }
        if let Err(problem) = endpoint::check_dsn(&doc.db) {
            errors.push(at("db"), format!("malformed DSN {:?}: {problem}", doc.db));
        } else if let Some(owner) = databases.insert(&doc.db, &doc.name) {
            errors.push(
                at("db"),
                format!(
                    "database {} is already the order DB of cell {owner}",
                    doc.db
                ),
            );
        }
        let region = region.and_then(|position| RegionDigit::new(u8::try_from(position + 1).ok()?));
        cells.push(match (errors.0.len() == before, region, status) {
            (true, Some(region), Some(status)) => Some(Cell {
                name: doc.name.clone(),
                region,
                status,
                servers: doc.servers.clone(),
                db: doc.db.clone(),
            }),
            _ => None,
        });
    }
    cells
}

fn check_epochs(
    document: &Document,
    regions: &HashMap<String, usize>,
    cells: &[Option<Cell>],
    errors: &mut Errors,
) -> Vec<Epoch> {
    if document.epochs.is_empty() {
        errors.push("epochs", "at least one epoch is required");
    }
    // Positions in the validated cell list (invalid cells are dropped from it).
    let mut cell_index: HashMap<&str, (usize, RegionDigit)> = HashMap::new();
    for cell in cells.iter().flatten() {
        let next = cell_index.len();
        cell_index.insert(&cell.name, (next, cell.region));
    }
    let known_cells: Vec<&str> = document
        .cells
        .iter()
        .map(|cell| cell.name.as_str())
        .collect();

    let mut epochs = Vec::new();
    let mut previous: Option<u32> = None;
    for (index, doc) in document.epochs.iter().enumerate() {
        let id = match u8::try_from(doc.id).ok().and_then(EpochId::new) {
            Some(id) => Some(id),
            None => {
                errors.push(
                    format!("epochs[{index}].id"),
                    format!("epoch id {} is out of range 0-{}", doc.id, EpochId::MAX),
                );
                None
            }
        };
        if let Some(previous) = previous.filter(|previous| doc.id <= *previous) {
            errors.push(
                format!("epochs[{index}].id"),
                format!(
                    "epoch ids must strictly increase ({} after {previous})",
                    doc.id
                ),
            );
        }
        previous = Some(doc.id);

        let before = errors.0.len();
        // Indexed by position in the document's list: `regions` holds only
        // the valid, unique names, so it can be shorter (found by fuzzing: a
        // bad name before a good one indexed past the end and panicked).
        let mut tables: Vec<Option<RangeTable>> = vec![None; document.regions.len()];
        for (region_name, assignments) in &doc.ranges {
            let path = format!("epochs[{index}].ranges.{region_name}");
            let Some(&position) = regions.get(region_name) else {
                errors.push(path, format!("unknown region {region_name:?}"));
                continue;
            };
            let region = RegionDigit::new(u8::try_from(position + 1).unwrap_or(0));
            tables[position] = check_table(
                &path,
                assignments,
                region,
                &cell_index,
                &known_cells,
                document,
                errors,
            );
        }
        for (name, &position) in regions {
            if !doc.ranges.contains_key(name) {
                errors.push(
                    format!("epochs[{index}].ranges"),
                    format!("region {name:?} has no range table"),
                );
                tables[position] = None;
            }
        }
        if let (Some(id), true) = (id, errors.0.len() == before) {
            epochs.push(Epoch {
                id,
                tables: tables.into_iter().flatten().collect(),
            });
        }
    }
    epochs
}

/// One region's table in one epoch: known cells of that region, well-formed
/// ranges, every suffix exactly once.
fn check_table(
    path: &str,
    assignments: &indexmap::IndexMap<String, String>,
    region: Option<RegionDigit>,
    cell_index: &HashMap<&str, (usize, RegionDigit)>,
    known_cells: &[&str],
    document: &Document,
    errors: &mut Errors,
) -> Option<RangeTable> {
    let before = errors.0.len();
    // A skipped assignment (bad cell or bad range, reported already) would only
    // show up again as a coverage gap: then coverage is not checked.
    let mut incomplete = false;
    let mut owner: Vec<Option<usize>> = vec![None; usize::from(SUFFIX_COUNT)];
    let mut overlaps: Vec<(Suffix, usize, usize)> = Vec::new();
    let mut table = Vec::new();
    for (cell_name, text) in assignments {
        let at = format!("{path}.{cell_name}");
        let ranges = suffix::parse_ranges(text);
        if ranges.is_none() {
            errors.push(
                &at,
                format!(
                    "malformed range {text:?} (expected NNN-NNN items, comma-separated, with 000 <= start <= end <= 999)"
                ),
            );
        }
        let cell = match cell_index.get(cell_name.as_str()) {
            Some(&(cell, cell_region)) if Some(cell_region) == region => Some(cell),
            Some(&(_, cell_region)) => {
                let home = document
                    .regions
                    .get(cell_region.index())
                    .map_or("?", String::as_str);
                errors.push(
                    &at,
                    format!("cell {cell_name:?} belongs to region {home:?}"),
                );
                None
            }
            None if known_cells.contains(&cell_name.as_str()) => None, // reported at its definition
            None => {
                errors.push(&at, format!("unknown cell {cell_name:?}"));
                None
            }
        };
        let (Some(cell), Some(ranges)) = (cell, ranges) else {
            incomplete = true;
            continue;
        };
        for suffix in ranges.iter().flat_map(|range| range.iter()) {
            match owner[suffix.index()] {
                Some(first) => overlaps.push((suffix, first, cell)),
                None => owner[suffix.index()] = Some(cell),
            }
        }
        table.push((cell, ranges));
    }
    if incomplete || errors.0.len() > before {
        return None;
    }
    let name_of = |cell: usize| {
        cell_index
            .iter()
            .find(|(_, (index, _))| *index == cell)
            .map_or("?", |(name, _)| *name)
    };
    let mut pairs: Vec<(usize, usize)> = overlaps.iter().map(|&(_, a, b)| (a, b)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    for (first, second) in pairs {
        let shared = overlaps
            .iter()
            .filter(|&&(_, a, b)| (a, b) == (first, second))
            .map(|&(suffix, _, _)| suffix);
        errors.push(
            path,
            format!(
                "suffixes {} are assigned to both {} and {}",
                suffix::format_ranges(&suffix::coalesce(shared)),
                name_of(first),
                name_of(second)
            ),
        );
    }
    let gaps = suffix::coalesce(
        (0..SUFFIX_COUNT)
            .filter_map(Suffix::new)
            .filter(|suffix| owner[suffix.index()].is_none()),
    );
    if !gaps.is_empty() {
        errors.push(
            path,
            format!("suffixes {} are not covered", suffix::format_ranges(&gaps)),
        );
    }
    if errors.0.len() > before {
        return None;
    }
    Some(RangeTable {
        owner: owner.into_iter().flatten().collect(),
        assignments: table,
    })
}

fn check_minting_epoch(
    document: &Document,
    epochs: &[Epoch],
    errors: &mut Errors,
) -> Option<EpochId> {
    let wanted = document.minting.epoch;
    let declared = document.epochs.iter().any(|epoch| epoch.id == wanted);
    if !declared {
        errors.push(
            "minting.epoch",
            format!("epoch {wanted} is not declared under epochs"),
        );
        return None;
    }
    epochs
        .iter()
        .find(|epoch| u32::from(epoch.id.get()) == wanted)
        .map(|epoch| epoch.id)
}

/// `minting.switched_from` and `switched_at`: both or neither; the epoch
/// exists and is older than the minting epoch (a switch moves minting
/// forward); the instant is RFC 3339 UTC.
fn check_switch(document: &Document, epochs: &[Epoch], errors: &mut Errors) -> Option<MintSwitch> {
    let minting = &document.minting;
    let (from, at) = match (minting.switched_from, minting.switched_at.as_deref()) {
        (None, None) => return None,
        (Some(from), Some(at)) => (from, at),
        (Some(_), None) => {
            errors.push(
                "minting.switched_at",
                "missing: switched_from and switched_at are set together (by `cellctl switch`)",
            );
            return None;
        }
        (None, Some(_)) => {
            errors.push(
                "minting.switched_from",
                "missing: switched_from and switched_at are set together (by `cellctl switch`)",
            );
            return None;
        }
    };
    let before = errors.0.len();
    if !document.epochs.iter().any(|epoch| epoch.id == from) {
        errors.push(
            "minting.switched_from",
            format!("epoch {from} is not declared under epochs"),
        );
    } else if from >= minting.epoch {
        errors.push(
            "minting.switched_from",
            format!(
                "epoch {from} is not older than minting.epoch {} (a switch moves minting to a newer epoch)",
                minting.epoch
            ),
        );
    }
    let at = UtcTimestamp::parse(at);
    if at.is_none() {
        errors.push(
            "minting.switched_at",
            format!(
                "malformed timestamp {:?} (expected RFC 3339 UTC, e.g. 2026-01-22T08:00:00Z)",
                minting.switched_at.as_deref().unwrap_or_default()
            ),
        );
    }
    let from = epochs
        .iter()
        .find(|epoch| u32::from(epoch.id.get()) == from)
        .map(|epoch| epoch.id);
    match (errors.0.len() == before, from, at) {
        (true, Some(from), Some(at)) => Some(MintSwitch { from, at }),
        _ => None,
    }
}

/// Per region position, the region position that mints for it.
fn check_mint_regions(
    document: &Document,
    regions: &HashMap<String, usize>,
    cells: &[Option<Cell>],
    epochs: &[Epoch],
    minting_epoch: Option<EpochId>,
    errors: &mut Errors,
) -> Vec<usize> {
    let overrides = &document.minting.region_override;
    let mut mint_region: Vec<usize> = (0..document.regions.len()).collect();
    let valid_cells: Vec<&Cell> = cells.iter().flatten().collect();
    let epoch = minting_epoch.and_then(|id| epochs.iter().find(|epoch| epoch.id == id));
    let can_mint = |position: usize| -> Option<bool> {
        let table = epoch?.tables.get(position)?;
        Some(table.assignments.iter().any(|(cell, _)| {
            valid_cells
                .get(*cell)
                .is_some_and(|cell| cell.status == CellStatus::Active)
        }))
    };

    for (from, to) in overrides {
        let path = format!("minting.region_override.{from}");
        let (Some(&from_position), to_position) = (regions.get(from), regions.get(to)) else {
            errors.push(path, format!("unknown region {from:?}"));
            continue;
        };
        let Some(&to_position) = to_position else {
            errors.push(path, format!("unknown target region {to:?}"));
            continue;
        };
        if from == to {
            errors.push(path, "a region cannot be overridden to itself");
        } else if let Some(next) = overrides.get(to) {
            errors.push(
                path,
                format!(
                    "target region {to:?} is itself overridden to {next:?}; overrides do not chain"
                ),
            );
        } else if can_mint(to_position) == Some(false) {
            errors.push(
                path,
                format!(
                    "target region {to:?} has no active cell in minting epoch {}",
                    document.minting.epoch
                ),
            );
        } else {
            mint_region[from_position] = to_position;
        }
    }
    for (position, name) in document.regions.iter().enumerate() {
        if overrides.contains_key(name) || regions.get(name) != Some(&position) {
            continue;
        }
        if can_mint(position) == Some(false) {
            errors.push(
                "minting",
                format!(
                    "region {name:?} has no active cell in minting epoch {} and no region_override",
                    document.minting.epoch
                ),
            );
        }
    }
    mint_region
}

fn check_history(document: &Document, errors: &mut Errors) -> HistoryMode {
    match &document.degrade.history {
        None => HistoryMode::On,
        Some(HistoryDegradeDoc::Switch(switch)) if switch == "on" => HistoryMode::On,
        Some(HistoryDegradeDoc::Switch(switch)) if switch == "off" => HistoryMode::Off,
        Some(HistoryDegradeDoc::Switch(other)) => {
            errors.push(
                "degrade.history",
                format!("unknown value {other:?} (expected on, off or {{ pages: N }})"),
            );
            HistoryMode::On
        }
        Some(HistoryDegradeDoc::Pages { pages: 0 }) => {
            errors.push(
                "degrade.history.pages",
                "must be at least 1 (use `history: off` to turn it off)",
            );
            HistoryMode::On
        }
        Some(HistoryDegradeDoc::Pages { pages }) => HistoryMode::Pages(*pages),
    }
}

fn check_claims(document: &Document, errors: &mut Errors) -> ClaimsMode {
    match document.degrade.claims.as_deref() {
        None | Some("on") => ClaimsMode::On,
        Some("off") => ClaimsMode::Off,
        Some(other) => {
            errors.push(
                "degrade.claims",
                format!("unknown value {other:?} (expected on or off)"),
            );
            ClaimsMode::On
        }
    }
}

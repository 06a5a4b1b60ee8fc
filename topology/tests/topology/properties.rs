//! Property tests (DESIGN.md §3, STYLE 17): the ID codec round-trips; after any
//! sequence of valid plans every suffix is covered exactly once per region and
//! epoch; the mint pool never holds a non-active cell; an expansion never
//! reroutes an existing (region, epoch, suffix); a pool without some cells is
//! the pool minus exactly them; a cell mints exactly the suffixes that route
//! back to it in the minting epoch.

use std::time::Duration;

use indexmap::IndexMap;
use proptest::prelude::*;
use redcell_topology::{
    Cell, CellStatus, ClaimsMode, EnvelopeId, EpochId, HistoryMode, MintDate, RegionDigit, Suffix,
    Topology, UtcTimestamp,
    document::{CellDoc, Document, EpochDoc, MintingDoc},
    plan::{self, DegradeSwitch, NewCell, Split},
};

const REGIONS: [&str; 3] = ["north", "south", "east"];

/// A random valid topology: 1-3 regions, 1-4 cells each, random cut points,
/// at least one active cell per region.
fn topology_strategy() -> impl Strategy<Value = Topology> {
    prop::collection::vec(
        (
            1usize..=4,
            prop::collection::vec(1u16..999, 3),
            prop::collection::vec(0u8..3, 4),
        ),
        1..=3,
    )
    .prop_map(|regions| {
        let mut document = Document {
            version: 1,
            regions: Vec::new(),
            cells: Vec::new(),
            epochs: vec![EpochDoc {
                id: 0,
                ranges: IndexMap::new(),
            }],
            minting: MintingDoc {
                epoch: 0,
                region_override: IndexMap::new(),
                switched_from: None,
                switched_at: None,
            },
            degrade: Default::default(),
        };
        for (r, (cells, cuts, statuses)) in regions.into_iter().enumerate() {
            let region = REGIONS[r].to_owned();
            document.regions.push(region.clone());
            let mut cuts: Vec<u16> = cuts.into_iter().take(cells - 1).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut bounds = vec![0u16];
            bounds.extend(cuts);
            bounds.push(1000);
            let mut table = IndexMap::new();
            for (c, pair) in bounds.windows(2).enumerate() {
                let name = format!("{}{}", &region[..1], c + 1);
                let status = if c == 0 { 0 } else { statuses[c] };
                document.cells.push(CellDoc {
                    name: name.clone(),
                    region: region.clone(),
                    status: ["active", "failed", "draining"][usize::from(status)].to_owned(),
                    servers: vec![format!("10.0.{r}.{c}:7000")],
                    db: format!("postgres://redcell@10.0.{r}.{c}:5432/cell_{name}"),
                });
                table.insert(name, format!("{:03}-{:03}", pair[0], pair[1] - 1));
            }
            document.epochs[0].ranges.insert(region, table);
        }
        Topology::from_document(document).expect("generated topology is valid")
    })
}

#[derive(Debug, Clone)]
enum Step {
    Fail(usize),
    Restore(usize),
    Expand(Vec<usize>),
    Promote,
    /// `cellctl switch` at this many seconds after 2026-01-22T00:00:00Z.
    Switch(u64),
    Reverse,
    /// `cellctl complete` at this many seconds after the same instant, with
    /// this soak (seconds).
    Complete(u64, u64),
    Drain(usize, usize),
    Undrain(usize),
    /// History (0 on, 1 off, n >= 2 at most n - 2 pages: 0 is refused) and
    /// claims (on when true).
    Degrade(u32, bool),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..16).prop_map(Step::Fail),
        (0usize..16).prop_map(Step::Restore),
        prop::collection::vec(0usize..16, 1..3).prop_map(Step::Expand),
        Just(Step::Promote),
        (0u64..1000).prop_map(Step::Switch),
        Just(Step::Reverse),
        (0u64..2000, 0u64..1000).prop_map(|(at, soak)| Step::Complete(at, soak)),
        (0usize..3, 0usize..3).prop_map(|(a, b)| Step::Drain(a, b)),
        (0usize..3).prop_map(Step::Undrain),
        (0u32..4, any::<bool>()).prop_map(|(h, c)| Step::Degrade(h, c)),
    ]
}

fn apply(topology: &Topology, step: &Step, counter: &mut u32) -> Option<Topology> {
    let cell_name = |i: usize| topology.cells()[i % topology.cells().len()].name.clone();
    let region_name = |i: usize| topology.regions()[i % topology.regions().len()].clone();
    let result = match step {
        Step::Fail(i) => plan::fail(topology, &cell_name(*i)),
        Step::Restore(i) => plan::restore(topology, &cell_name(*i)),
        Step::Expand(picks) => {
            let splits: Vec<Split> = picks
                .iter()
                .map(|i| {
                    *counter += 1;
                    Split {
                        from: cell_name(*i),
                        into: NewCell {
                            name: format!("x{counter}"),
                            servers: vec![format!("10.9.0.{}:7000", *counter % 250)],
                            db: format!(
                                "postgres://redcell@10.9.0.{}:5432/cell_x{counter}",
                                *counter % 250
                            ),
                        },
                    }
                })
                .collect();
            plan::expand(topology, &splits)
        }
        Step::Promote => {
            let latest = topology.epochs().last()?.id.get();
            plan::promote(topology, u32::from(latest))
        }
        Step::Switch(at) => plan::switch(topology, instant(*at)),
        Step::Reverse => plan::reverse(topology),
        Step::Complete(at, soak) => {
            plan::complete(topology, instant(*at), Duration::from_secs(*soak))
        }
        Step::Drain(a, b) => plan::drain_region(topology, &region_name(*a), &region_name(*b)),
        Step::Undrain(a) => plan::undrain_region(topology, &region_name(*a)),
        Step::Degrade(history, claims) => {
            plan::degrade(topology, &degrade_switches(*history, *claims))
        }
    };
    result.ok()
}

/// 2026-01-22T00:00:00Z plus `secs`.
fn instant(secs: u64) -> UtcTimestamp {
    UtcTimestamp::from_unix_secs(1_769_040_000 + secs).unwrap()
}

fn degrade_switches(history: u32, claims: bool) -> [DegradeSwitch; 2] {
    let history = match history {
        0 => HistoryMode::On,
        1 => HistoryMode::Off,
        pages => HistoryMode::Pages(pages - 2),
    };
    let claims = if claims {
        ClaimsMode::On
    } else {
        ClaimsMode::Off
    };
    [
        DegradeSwitch::History(history),
        DegradeSwitch::Claims(claims),
    ]
}

/// Every (region, epoch, suffix) -> cell, by routing a concrete ID.
fn routes(topology: &Topology) -> Vec<((u8, u8, u16), String)> {
    let mut all = Vec::new();
    for (position, _) in topology.regions().iter().enumerate() {
        let region = RegionDigit::new(u8::try_from(position + 1).unwrap()).unwrap();
        for epoch in topology.epochs() {
            for value in 0..1000 {
                let suffix = Suffix::new(value).unwrap();
                let id = EnvelopeId::new(
                    MintDate::new(2026, 1, 22).unwrap(),
                    region,
                    epoch.id,
                    1,
                    suffix,
                )
                .unwrap();
                let cell = topology.route(&id).expect("every suffix routes");
                assert_eq!(
                    cell.region, region,
                    "suffix {suffix} of region {position} routes to a foreign cell"
                );
                all.push(((region.get(), epoch.id.get(), value), cell.name.clone()));
            }
        }
    }
    all
}

fn check_invariants(topology: &Topology) {
    if let Some(switch) = topology.switch() {
        assert!(switch.from < topology.minting_epoch(), "{switch:?}");
        assert!(topology.epoch(switch.from).is_some());
    }
    // The file written is the topology planned (the switch state included).
    assert_eq!(
        &Topology::parse(&topology.to_yaml().unwrap()).unwrap(),
        topology
    );
    let routed = routes(topology);
    assert_eq!(
        routed.len(),
        topology.regions().len() * topology.epochs().len() * 1000
    );
    for pool in topology.mint_pools() {
        assert!(pool.total > 0, "a region cannot mint");
        for pool_cell in &pool.cells {
            let cell = &topology.cells()[pool_cell.cell];
            assert_eq!(cell.status, CellStatus::Active, "{} in the pool", cell.name);
            assert_eq!(cell.region, pool.minter);
        }
        // Every suffix of the pool is owned by a pool cell in the minting epoch.
        for random in 0..u64::from(pool.total) {
            let (suffix, cell) = pool.draw(random).unwrap();
            let id = EnvelopeId::new(
                MintDate::new(2026, 1, 22).unwrap(),
                pool.minter,
                pool.epoch,
                1,
                suffix,
            )
            .unwrap();
            assert_eq!(
                topology.route(&id).unwrap().name,
                topology.cells()[cell].name
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn id_round_trips(
        (year, month, day) in (2000u16..2100, 1u8..=12, 1u8..=28),
        region in 1u8..=9, epoch in 0u8..=99, sequence in 0u64..10_000_000_000, suffix in 0u16..1000,
    ) {
        let id = EnvelopeId::new(
            MintDate::new(year, month, day).unwrap(),
            RegionDigit::new(region).unwrap(),
            EpochId::new(epoch).unwrap(),
            sequence,
            Suffix::new(suffix).unwrap(),
        ).unwrap();
        let text = id.to_string();
        prop_assert_eq!(text.len(), 22);
        prop_assert_eq!(text.parse::<EnvelopeId>().unwrap(), id);
    }

    #[test]
    fn parsing_any_string_never_panics(text in ".{0,30}") {
        let _ = text.parse::<EnvelopeId>();
    }

    #[test]
    fn digit_strings_parse_or_name_the_field(text in "[0-9]{22}") {
        match text.parse::<EnvelopeId>() {
            Ok(id) => prop_assert_eq!(id.to_string(), text),
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.contains("date") || message.contains("region"), "{}", message);
            }
        }
    }

    #[test]
    fn plans_keep_coverage_pool_and_routes(
        topology in topology_strategy(),
        steps in prop::collection::vec(step_strategy(), 1..8),
    ) {
        check_invariants(&topology);
        let mut current = topology;
        let mut counter = 0;
        for step in &steps {
            let Some(next) = apply(&current, step, &mut counter) else { continue };
            check_invariants(&next);
            // Existing (region, epoch, suffix) keep their cell through any plan.
            let before = routes(&current);
            let after: std::collections::HashMap<_, _> = routes(&next).into_iter().collect();
            for (key, cell) in before {
                prop_assert_eq!(after.get(&key), Some(&cell), "{:?} rerouted by {:?}", key, step);
            }
            current = next;
        }
    }

    /// The operator's expansion workflow on any topology: expand (any cells),
    /// switch, reverse, switch, complete, with envelopes minted at every
    /// stage. Every ID minted at any stage routes to the cell that minted it
    /// at the end; a reverse puts minting back exactly; reverse is refused
    /// after complete, and complete before its soak.
    #[test]
    fn expand_switch_reverse_switch_complete_keeps_every_id_on_its_cell(
        topology in topology_strategy(),
        picks in prop::collection::vec(0usize..16, 1..4),
        randoms in prop::collection::vec(any::<u64>(), 24),
        soak in 0u64..5000,
    ) {
        let mut counter = 0;
        let Some(expanded) = apply(&topology, &Step::Expand(picks), &mut counter) else {
            return Ok(()); // every pick too small to split
        };
        prop_assert_eq!(expanded.minting_epoch(), topology.minting_epoch());
        prop_assert!(!expanded.pending_cells().is_empty());
        let date = MintDate::new(2026, 1, 22).unwrap();
        let mut minted: Vec<(EnvelopeId, String)> = Vec::new();
        let mint_some = |t: &Topology, minted: &mut Vec<(EnvelopeId, String)>| {
            for pool in t.mint_pools() {
                for random in &randoms {
                    if let Some((suffix, cell)) = pool.draw(*random) {
                        let id = EnvelopeId::new(date, pool.minter, pool.epoch, 1, suffix).unwrap();
                        minted.push((id, t.cells()[cell].name.clone()));
                    }
                }
            }
        };
        mint_some(&topology, &mut minted);
        mint_some(&expanded, &mut minted);

        let switched = plan::switch(&expanded, instant(10)).unwrap();
        let latest = expanded.epochs().last().unwrap().id;
        prop_assert_eq!(switched.minting_epoch(), latest);
        prop_assert_eq!(switched.switch().unwrap().from, topology.minting_epoch());
        prop_assert!(switched.pending_cells().is_empty());
        prop_assert_eq!(plan::switch(&switched, instant(11)).unwrap_err(), plan::PlanError::SwitchInProgress {
            from: topology.minting_epoch().get(), to: latest.get(), at: instant(10).to_string(),
        });
        mint_some(&switched, &mut minted);

        let reversed = plan::reverse(&switched).unwrap();
        prop_assert_eq!(&reversed, &expanded);
        mint_some(&reversed, &mut minted);

        let again = plan::switch(&reversed, instant(20)).unwrap();
        mint_some(&again, &mut minted);
        match plan::complete(&again, instant(20 + soak / 2), Duration::from_secs(soak)) {
            Err(plan::PlanError::Soaking { .. }) => prop_assert!(soak / 2 < soak),
            other => prop_assert!(soak == 0, "{:?}", other),
        }
        let completed = plan::complete(&again, instant(20 + soak), Duration::from_secs(soak)).unwrap();
        prop_assert_eq!(completed.minting_epoch(), latest);
        prop_assert!(completed.switch().is_none());
        prop_assert_eq!(plan::reverse(&completed).unwrap_err(), plan::PlanError::NotSwitched("reverse"));
        prop_assert_eq!(plan::complete(&completed, instant(99_999), Duration::ZERO).unwrap_err(), plan::PlanError::NotSwitched("complete"));
        check_invariants(&completed);
        for (id, cell) in &minted {
            prop_assert_eq!(&completed.route(id).unwrap().name, cell, "{} rerouted", id);
        }
    }

    #[test]
    fn degrade_switches_round_trip_and_touch_nothing_else(
        topology in topology_strategy(),
        history in 0u32..6,
        claims in any::<bool>(),
    ) {
        let switches = degrade_switches(history, claims);
        match plan::degrade(&topology, &switches) {
            // history.pages=0 is refused by validation; all on is no change.
            Err(plan::PlanError::Invalid(errors)) => {
                prop_assert_eq!(history, 2);
                prop_assert_eq!(errors.0[0].path.as_str(), "degrade.history.pages");
            }
            Err(error) => {
                prop_assert_eq!(error, plan::PlanError::SwitchesUnchanged("history=on claims=on".into()));
                prop_assert!(history == 0 && claims);
            }
            Ok(degraded) => {
                prop_assert_eq!(DegradeSwitch::History(degraded.history_mode()), switches[0]);
                prop_assert_eq!(DegradeSwitch::Claims(degraded.claims_mode()), switches[1]);
                prop_assert_eq!(routes(&degraded), routes(&topology));
                prop_assert_eq!(degraded.mint_pools(), topology.mint_pools());
                prop_assert_eq!(&Topology::parse(&degraded.to_yaml().unwrap()).unwrap(), &degraded);
                let restored = plan::degrade(&degraded, &degrade_switches(0, true)).unwrap();
                prop_assert_eq!(restored, topology);
            }
        }
    }

    #[test]
    fn expansion_of_any_cell_succeeds_and_halves_it(topology in topology_strategy(), pick in 0usize..16) {
        let from = topology.cells()[pick % topology.cells().len()].name.clone();
        let owned = |t: &Topology, epoch: usize, name: &str| {
            routes(t).into_iter().filter(|((_, e, _), cell)| usize::from(*e) == epoch && cell == name).count()
        };
        let before = owned(&topology, 0, &from);
        let split = Split {
            from: from.clone(),
            into: NewCell { name: "zz".into(), servers: vec!["10.8.0.1:7000".into()], db: "postgres://r@10.8.0.1:5432/zz".into() },
        };
        match plan::expand(&topology, &[split]) {
            Ok(expanded) => {
                prop_assert_eq!(owned(&expanded, 1, &from), before.div_ceil(2));
                prop_assert_eq!(owned(&expanded, 1, "zz"), before / 2);
            }
            Err(error) => prop_assert!(before < 2, "{}", error),
        }
    }

    #[test]
    fn a_pool_without_some_cells_is_the_pool_minus_them(
        topology in topology_strategy(),
        steps in prop::collection::vec(step_strategy(), 0..5),
        left_out in prop::collection::vec(any::<bool>(), 16),
        randoms in prop::collection::vec(any::<u64>(), 32),
    ) {
        let mut current = topology;
        let mut counter = 0;
        for step in &steps {
            if let Some(next) = apply(&current, step, &mut counter) {
                current = next;
            }
        }
        let names: Vec<&str> = current.cells().iter().map(|cell| cell.name.as_str()).collect();
        let usable = |cell: &Cell| {
            let index = names.iter().position(|name| *name == cell.name).unwrap();
            !left_out[index % left_out.len()]
        };
        for full in current.mint_pools() {
            let pool = current.mint_pool_where(full.sender, usable).unwrap();
            prop_assert_eq!((pool.sender, pool.minter, pool.epoch), (full.sender, full.minter, full.epoch));
            let expected: Vec<_> = full
                .cells
                .iter()
                .filter(|pool_cell| usable(&current.cells()[pool_cell.cell]))
                .cloned()
                .collect();
            prop_assert_eq!(pool.total, expected.iter().map(|cell| cell.suffixes).sum::<u32>());
            prop_assert_eq!(&pool.cells, &expected);
            for random in &randoms {
                match pool.draw(*random) {
                    Some((suffix, index)) => {
                        let cell = &current.cells()[index];
                        prop_assert!(usable(cell), "{} was left out", cell.name);
                        let id = EnvelopeId::new(MintDate::new(2026, 1, 22).unwrap(), pool.minter, pool.epoch, 1, suffix).unwrap();
                        prop_assert_eq!(&current.route(&id).unwrap().name, &cell.name);
                    }
                    None => prop_assert_eq!(pool.total, 0),
                }
            }
        }
    }

    #[test]
    fn a_cell_mints_exactly_the_suffixes_that_route_back_to_it(
        topology in topology_strategy(),
        steps in prop::collection::vec(step_strategy(), 0..6),
        randoms in prop::collection::vec(any::<u64>(), 16),
    ) {
        let mut current = topology;
        let mut counter = 0;
        for step in &steps {
            if let Some(next) = apply(&current, step, &mut counter) {
                current = next;
            }
        }
        let date = MintDate::new(2026, 1, 22).unwrap();
        let mut per_region = std::collections::HashMap::<u8, u32>::new();
        for cell in current.cells() {
            let mint = current.minted_by(&cell.name).unwrap();
            prop_assert_eq!(mint.region, cell.region);
            prop_assert_eq!(mint.epoch, current.minting_epoch());
            *per_region.entry(cell.region.get()).or_default() += mint.suffixes;
            for value in 0..1000 {
                let suffix = Suffix::new(value).unwrap();
                let id = EnvelopeId::new(date, mint.region, mint.epoch, 1, suffix).unwrap();
                let routes_back = current.route(&id).unwrap().name == cell.name;
                prop_assert_eq!(mint.contains(suffix), routes_back, "suffix {} of {}", suffix, cell.name);
            }
            for random in &randoms {
                match mint.draw(*random) {
                    Some(suffix) => prop_assert!(mint.contains(suffix)),
                    None => prop_assert_eq!(mint.suffixes, 0),
                }
            }
        }
        // The cells of a region mint the whole suffix space between them.
        prop_assert!(per_region.values().all(|suffixes| *suffixes == 1000), "{:?}", per_region);
        prop_assert!(current.minted_by("no-such-cell").is_none());
    }
}

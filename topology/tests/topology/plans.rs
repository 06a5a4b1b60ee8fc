//! Plans on the bundled topology: fail / restore / expand / promote /
//! switch / reverse / complete / drain.

use std::time::Duration;

use redcell_topology::{
    EnvelopeId, Suffix, Topology, UtcTimestamp,
    plan::{self, NewCell, PlanError, Split},
};

use crate::{common::bundled, routing::id_with};

fn new_cell(name: &str, port: u16) -> NewCell {
    NewCell {
        name: name.to_owned(),
        servers: vec![format!("127.0.0.1:{port}")],
        db: format!("postgres://redcell@127.0.0.1:6300/cell_{name}"),
    }
}

fn pool_cells(topology: &Topology, region: &str) -> Vec<String> {
    let digit = topology.region_digit(region).unwrap();
    let pool = topology.mint_pool(digit).unwrap();
    pool.cells
        .iter()
        .map(|c| topology.cells()[c.cell].name.clone())
        .collect()
}

#[test]
fn fail_and_restore_move_the_pool() {
    let topology = bundled();
    let failed = plan::fail(&topology, "n2").unwrap();
    assert_eq!(pool_cells(&failed, "north"), ["n1", "n3"]);
    assert_eq!(failed.route(&id_with(1, 400)).unwrap().name, "n2");
    assert_eq!(
        plan::fail(&failed, "n2").unwrap_err(),
        PlanError::AlreadyInStatus {
            cell: "n2".into(),
            status: "failed"
        }
    );
    let restored = plan::restore(&failed, "n2").unwrap();
    assert_eq!(pool_cells(&restored, "north"), ["n1", "n2", "n3"]);
    assert_eq!(restored, topology);
}

#[test]
fn failing_the_last_active_cell_of_a_region_is_refused() {
    let topology = plan::fail(&bundled(), "s1").unwrap();
    let error = plan::fail(&topology, "s2").unwrap_err();
    assert_eq!(
        error.to_string(),
        "the planned topology is invalid:\nminting: region \"south\" has no active cell in minting epoch 0 and no region_override"
    );
    // ...unless south is drained to north first.
    let drained = plan::drain_region(&topology, "south", "north").unwrap();
    let emptied = plan::fail(&drained, "s2").unwrap();
    assert_eq!(pool_cells(&emptied, "south"), ["n1", "n2", "n3"]);
}

#[test]
fn unknown_cell_is_refused() {
    assert_eq!(
        plan::fail(&bundled(), "n9").unwrap_err().to_string(),
        "unknown cell \"n9\""
    );
}

#[test]
fn expansion_adds_an_epoch_without_moving_minting() {
    let topology = bundled();
    let expanded = plan::expand(
        &topology,
        &[
            Split {
                from: "n1".into(),
                into: new_cell("n4", 7131),
            },
            Split {
                from: "s2".into(),
                into: new_cell("s3", 7221),
            },
        ],
    )
    .unwrap();
    assert_eq!(expanded.epochs().len(), 2);
    assert_eq!(expanded.minting_epoch().get(), 0);
    assert_eq!(pool_cells(&expanded, "north"), ["n1", "n2", "n3"]);
    let ranges = &expanded.document().epochs[1].ranges;
    assert_eq!(ranges["north"]["n1"], "000-166");
    assert_eq!(ranges["north"]["n4"], "167-332");
    assert_eq!(ranges["south"]["s2"], "500-749");
    assert_eq!(ranges["south"]["s3"], "750-999");
    // Old IDs keep their cells; new-epoch IDs of the upper half go to n4.
    assert_eq!(expanded.route(&id_with(1, 200)).unwrap().name, "n1");
    let new_epoch: EnvelopeId = "2601221010000000001200".parse().unwrap();
    assert_eq!(expanded.route(&new_epoch).unwrap().name, "n4");

    assert_eq!(
        plan::expand(
            &expanded,
            &[Split {
                from: "n2".into(),
                into: new_cell("n5", 7141)
            }]
        )
        .unwrap_err(),
        PlanError::ExpansionPending { pending: 1 }
    );
    let promoted = plan::promote(&expanded, 1).unwrap();
    assert_eq!(pool_cells(&promoted, "north"), ["n1", "n2", "n3", "n4"]);
    assert_eq!(promoted.route(&id_with(1, 200)).unwrap().name, "n1");
}

#[test]
fn expansion_refuses_bad_splits() {
    let topology = bundled();
    let twice = plan::expand(
        &topology,
        &[
            Split {
                from: "n1".into(),
                into: new_cell("n4", 7131),
            },
            Split {
                from: "n1".into(),
                into: new_cell("n5", 7141),
            },
        ],
    );
    assert_eq!(twice.unwrap_err(), PlanError::SplitTwice("n1".into()));
    let clash = plan::expand(
        &topology,
        &[Split {
            from: "n1".into(),
            into: new_cell("n2", 7131),
        }],
    );
    assert_eq!(clash.unwrap_err(), PlanError::CellExists("n2".into()));
    assert_eq!(
        plan::expand(&topology, &[]).unwrap_err(),
        PlanError::NothingToSplit
    );
}

#[test]
fn rendered_yaml_round_trips() {
    let topology = plan::expand(
        &bundled(),
        &[Split {
            from: "n3".into(),
            into: new_cell("n4", 7131),
        }],
    )
    .unwrap();
    let text = topology.to_yaml().unwrap();
    assert_eq!(Topology::parse(&text).unwrap(), topology);
}

#[test]
fn drain_region_mints_in_the_target_and_undrain_restores() {
    let topology = bundled();
    let drained = plan::drain_region(&topology, "north", "south").unwrap();
    assert_eq!(pool_cells(&drained, "north"), ["s1", "s2"]);
    assert_eq!(pool_cells(&drained, "south"), ["s1", "s2"]);
    // North's existing envelopes still route to north's cells.
    assert_eq!(drained.route(&id_with(1, 400)).unwrap().name, "n2");
    assert_eq!(
        plan::drain_region(&drained, "north", "south").unwrap_err(),
        PlanError::AlreadyDrained {
            from: "north".into(),
            to: "south".into()
        }
    );
    let undrained = plan::undrain_region(&drained, "north").unwrap();
    assert_eq!(undrained, topology);
    assert_eq!(
        plan::undrain_region(&undrained, "north").unwrap_err(),
        PlanError::NotDrained("north".into())
    );
}

#[test]
fn drain_region_refusals_name_the_region() {
    let topology = bundled();
    assert_eq!(
        plan::drain_region(&topology, "north", "north").unwrap_err(),
        PlanError::DrainIntoItself("north".into())
    );
    assert_eq!(
        plan::drain_region(&topology, "north", "west").unwrap_err(),
        PlanError::UnknownRegion("west".into())
    );
    assert_eq!(
        plan::drain_region(&topology, "west", "north").unwrap_err(),
        PlanError::UnknownRegion("west".into())
    );
    assert_eq!(
        plan::undrain_region(&topology, "west").unwrap_err(),
        PlanError::UnknownRegion("west".into())
    );
    // A target without an active cell cannot take the region's envelopes: a
    // region can only lose its last active cell while drained itself, so the
    // refusal reads as a chain of overrides, on both of them.
    let south_down = plan::fail(&plan::fail(&topology, "s1").unwrap(), "s2");
    assert!(south_down.is_err(), "the last active cell of south");
    let south_drained = plan::drain_region(&topology, "south", "north").unwrap();
    let south_down = plan::fail(&plan::fail(&south_drained, "s1").unwrap(), "s2").unwrap();
    assert_eq!(
        plan::drain_region(&south_down, "north", "south")
            .unwrap_err()
            .to_string(),
        "the planned topology is invalid:\n\
         minting.region_override.south: target region \"north\" is itself overridden to \"south\"; overrides do not chain\n\
         minting.region_override.north: target region \"south\" is itself overridden to \"north\"; overrides do not chain"
    );
    // Undraining a region whose cells are all out would leave it unable to mint.
    assert_eq!(
        plan::undrain_region(&south_down, "south")
            .unwrap_err()
            .to_string(),
        "the planned topology is invalid:\nminting: region \"south\" has no active cell in minting epoch 0 and no region_override"
    );
    // Chaining through a drained region is refused.
    assert!(
        plan::drain_region(&south_drained, "north", "south")
            .unwrap_err()
            .to_string()
            .contains("overrides do not chain")
    );
}

#[test]
fn degrade_sets_switches_and_on_removes_them() {
    use redcell_topology::{ClaimsMode, HistoryMode, plan::DegradeSwitch};
    let topology = bundled();
    let off = plan::degrade(
        &topology,
        &[
            DegradeSwitch::History(HistoryMode::Off),
            DegradeSwitch::Claims(ClaimsMode::Off),
        ],
    )
    .unwrap();
    assert_eq!(off.history_mode(), HistoryMode::Off);
    assert_eq!(off.claims_mode(), ClaimsMode::Off);
    let text = off.to_yaml().unwrap();
    assert!(
        text.contains("degrade:\n  history: off\n  claims: off\n"),
        "{text}"
    );
    assert_eq!(Topology::parse(&text).unwrap(), off);
    // Routing and pools are untouched by a degrade switch.
    assert_eq!(off.mint_pools(), topology.mint_pools());

    let paged = plan::degrade(&off, &[DegradeSwitch::History(HistoryMode::Pages(3))]).unwrap();
    assert_eq!(paged.history_mode(), HistoryMode::Pages(3));
    assert_eq!(paged.claims_mode(), ClaimsMode::Off);
    assert!(
        paged
            .to_yaml()
            .unwrap()
            .contains("history:\n    pages: 3\n")
    );

    // `on` removes the switch: the document is the one before, without `degrade`.
    let on = plan::degrade(
        &paged,
        &[
            DegradeSwitch::Claims(ClaimsMode::On),
            DegradeSwitch::History(HistoryMode::On),
        ],
    )
    .unwrap();
    assert_eq!(on, topology);
    assert!(!on.to_yaml().unwrap().contains("degrade"));
}

#[test]
fn degrade_refusals() {
    use redcell_topology::{ClaimsMode, HistoryMode, plan::DegradeSwitch};
    let topology = bundled();
    assert_eq!(
        plan::degrade(&topology, &[]).unwrap_err(),
        PlanError::NoSwitch
    );
    assert_eq!(
        plan::degrade(
            &topology,
            &[
                DegradeSwitch::History(HistoryMode::Off),
                DegradeSwitch::History(HistoryMode::Pages(2)),
            ]
        )
        .unwrap_err(),
        PlanError::SwitchTwice("history")
    );
    assert_eq!(
        plan::degrade(&topology, &[DegradeSwitch::Claims(ClaimsMode::On)]).unwrap_err(),
        PlanError::SwitchesUnchanged("claims=on".into())
    );
    assert_eq!(
        plan::degrade(&topology, &[DegradeSwitch::History(HistoryMode::Pages(0))])
            .unwrap_err()
            .to_string(),
        "the planned topology is invalid:\n\
         degrade.history.pages: must be at least 1 (use `history: off` to turn it off)"
    );
}

fn at(text: &str) -> UtcTimestamp {
    UtcTimestamp::parse(text).unwrap()
}

/// bundled + n1 split into n4 (epoch 1, not minting yet).
fn expanded() -> Topology {
    plan::expand(
        &bundled(),
        &[Split {
            from: "n1".into(),
            into: new_cell("n4", 7131),
        }],
    )
    .unwrap()
}

#[test]
fn switch_moves_minting_and_records_where_from_and_when() {
    let expanded = expanded();
    assert_eq!(
        expanded
            .pending_cells()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["n4"]
    );
    let switched = plan::switch(&expanded, at("2026-01-22T08:00:00Z")).unwrap();
    assert_eq!(switched.minting_epoch().get(), 1);
    let switch = switched.switch().unwrap();
    assert_eq!(
        (switch.from.get(), switch.at.to_string().as_str()),
        (0, "2026-01-22T08:00:00Z")
    );
    assert!(switched.pending_cells().is_empty());
    assert_eq!(pool_cells(&switched, "north"), ["n1", "n2", "n3", "n4"]);
    let text = switched.to_yaml().unwrap();
    assert!(
        text.contains("  epoch: 1\n  region_override: {}\n  switched_from: 0\n  switched_at: 2026-01-22T08:00:00Z\n"),
        "{text}"
    );
    assert_eq!(Topology::parse(&text).unwrap(), switched);

    // One switch at a time, and nothing to switch to without an expansion.
    assert_eq!(
        plan::switch(&switched, at("2026-01-22T08:00:01Z")).unwrap_err(),
        PlanError::SwitchInProgress {
            from: 0,
            to: 1,
            at: "2026-01-22T08:00:00Z".into()
        }
    );
    assert_eq!(
        plan::switch(&bundled(), at("2026-01-22T08:00:00Z")).unwrap_err(),
        PlanError::NothingToSwitch { minting: 0 }
    );
    // No new expansion while the switch may still be reversed.
    let error = plan::expand(
        &switched,
        &[Split {
            from: "n2".into(),
            into: new_cell("n5", 7141),
        }],
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "minting was switched from epoch 0 to epoch 1 at 2026-01-22T08:00:00Z and not completed; \
         reverse or complete that switch first"
    );
}

#[test]
fn reverse_returns_minting_and_keeps_the_new_epoch_routing() {
    let expanded = expanded();
    let switched = plan::switch(&expanded, at("2026-01-22T08:00:00Z")).unwrap();
    let reversed = plan::reverse(&switched).unwrap();
    assert_eq!(reversed, expanded);
    assert_eq!(pool_cells(&reversed, "north"), ["n1", "n2", "n3"]);
    // An ID minted under epoch 1 while switched still routes to n4.
    let minted_on_n4: EnvelopeId = "2601221010000000001200".parse().unwrap();
    assert_eq!(reversed.route(&minted_on_n4).unwrap().name, "n4");
    assert_eq!(
        plan::reverse(&reversed).unwrap_err().to_string(),
        "nothing to reverse: minting is not switched (no switch, or it was reversed or completed)"
    );
    // And it can be switched again.
    assert!(plan::switch(&reversed, at("2026-01-22T09:00:00Z")).is_ok());
}

#[test]
fn complete_waits_for_the_soak_then_forbids_reverse() {
    let switched = plan::switch(&expanded(), at("2026-01-22T08:00:00Z")).unwrap();
    let soak = Duration::from_secs(600);
    assert_eq!(
        plan::complete(&switched, at("2026-01-22T08:09:00Z"), soak)
            .unwrap_err()
            .to_string(),
        "the switch of 2026-01-22T08:00:00Z soaks for 600 s before it can be completed (60 s left; \
         until then it can be reversed)"
    );
    let completed = plan::complete(&switched, at("2026-01-22T08:10:00Z"), soak).unwrap();
    assert_eq!(completed.minting_epoch().get(), 1);
    assert!(completed.switch().is_none());
    assert_eq!(
        plan::reverse(&completed).unwrap_err(),
        PlanError::NotSwitched("reverse")
    );
    assert_eq!(
        plan::complete(&completed, at("2026-01-22T09:00:00Z"), Duration::ZERO).unwrap_err(),
        PlanError::NotSwitched("complete")
    );
    // The next expansion may be planned now.
    assert!(
        plan::expand(
            &completed,
            &[Split {
                from: "n2".into(),
                into: new_cell("n5", 7141),
            }],
        )
        .is_ok()
    );
}

/// A cell honours a router's suffix drawn under another epoch (a switch or
/// reverse reaching the fleet) by minting under the newest epoch in which it
/// owns that suffix; a suffix it owns in no epoch has none.
#[test]
fn the_newest_epoch_owning_a_suffix_follows_the_tables() {
    let topology = bundled();
    let expanded = plan::expand(
        &topology,
        &[Split {
            from: "n1".into(),
            into: new_cell("n4", 7131),
        }],
    )
    .unwrap();
    let suffix = |n: u16| Suffix::new(n).unwrap();
    // Epoch 0: n1 000-332. Epoch 1: n1 keeps 000-166, n4 takes 167-332.
    assert_eq!(
        expanded
            .newest_epoch_owning("n1", suffix(10))
            .map(|e| e.get()),
        Some(1)
    );
    assert_eq!(
        expanded
            .newest_epoch_owning("n1", suffix(300))
            .map(|e| e.get()),
        Some(0)
    );
    assert_eq!(
        expanded
            .newest_epoch_owning("n4", suffix(300))
            .map(|e| e.get()),
        Some(1)
    );
    assert_eq!(expanded.newest_epoch_owning("n4", suffix(10)), None);
    assert_eq!(expanded.newest_epoch_owning("n2", suffix(10)), None);
    assert_eq!(expanded.newest_epoch_owning("nobody", suffix(10)), None);
}

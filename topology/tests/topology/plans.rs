//! Plans on the bundled topology: fail / restore / expand / promote / drain.

use redcell_topology::{
    EnvelopeId, Topology,
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

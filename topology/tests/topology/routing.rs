//! Routing existing IDs and drawing suffixes for new ones on the bundled topology.

use redcell_topology::{EnvelopeId, RouteError};

use crate::common::{bundled, edited};

fn route(text: &str) -> Result<String, RouteError> {
    let topology = bundled();
    let id: EnvelopeId = text.parse().unwrap();
    topology.route(&id).map(|cell| cell.name.clone())
}

#[test]
fn suffix_selects_the_cell_at_range_edges() {
    assert_eq!(route("2601221000000000001000").unwrap(), "n1");
    assert_eq!(route("2601221000000000001332").unwrap(), "n1");
    assert_eq!(route("2601221000000000001333").unwrap(), "n2");
    assert_eq!(route("2601221000000000001999").unwrap(), "n3");
    assert_eq!(route("2601222000000000001499").unwrap(), "s1");
    assert_eq!(route("2601222000000000001500").unwrap(), "s2");
}

#[test]
fn unknown_region_and_epoch_are_errors() {
    assert_eq!(
        route("2601223000000000001000").unwrap_err().to_string(),
        "envelope id region digit 3 is not a region of this topology"
    );
    assert_eq!(
        route("2601221070000000001000").unwrap_err().to_string(),
        "envelope id epoch 07 does not exist in this topology"
    );
}

#[test]
fn failed_cells_still_route_but_leave_the_pool() {
    let text = edited("status: active", "status: failed");
    let topology = redcell_topology::Topology::parse(&text).unwrap();
    let id: EnvelopeId = "2601221000000000001000".parse().unwrap();
    assert_eq!(topology.route(&id).unwrap().name, "n1");
    let north = topology.region_digit("north").unwrap();
    let pool = topology.mint_pool(north).unwrap();
    assert_eq!(pool.total, 667);
    for random in 0..10_000u64 {
        let (suffix, cell) = pool
            .draw(random.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .unwrap();
        assert_ne!(topology.cells()[cell].name, "n1");
        assert!(suffix.get() >= 333);
    }
}

#[test]
fn draws_spread_by_range_size() {
    let topology = bundled();
    let north = topology.region_digit("north").unwrap();
    let pool = topology.mint_pool(north).unwrap();
    assert_eq!(pool.total, 1000);
    // Every random value in one full cycle maps to one suffix, each exactly once:
    // the draw is uniform over suffixes, so cells get load by range size.
    let mut per_cell = vec![0u32; topology.cells().len()];
    let mut seen = vec![false; 1000];
    for random in 0..1000u64 {
        let (suffix, cell) = pool.draw(random).unwrap();
        assert!(
            !seen[usize::from(suffix.get())],
            "suffix {suffix} drawn twice"
        );
        seen[usize::from(suffix.get())] = true;
        assert_eq!(
            topology.route(&id_with(1, suffix.get())).unwrap().name,
            topology.cells()[cell].name
        );
        per_cell[cell] += 1;
    }
    assert_eq!(&per_cell[..3], &[333, 333, 334]);
    let shares: Vec<u32> = pool
        .cells
        .iter()
        .map(|c| pool.share_basis_points(c))
        .collect();
    assert_eq!(shares, [3330, 3330, 3340]);
}

#[test]
fn override_mints_in_the_target_region() {
    let text = edited("region_override: {}", "region_override: {north: south}");
    let topology = redcell_topology::Topology::parse(&text).unwrap();
    let north = topology.region_digit("north").unwrap();
    let pool = topology.mint_pool(north).unwrap();
    assert_eq!(pool.minter, topology.region_digit("south").unwrap());
    let names: Vec<&str> = pool
        .cells
        .iter()
        .map(|c| topology.cells()[c.cell].name.as_str())
        .collect();
    assert_eq!(names, ["s1", "s2"]);
}

pub fn id_with(region: u8, suffix: u16) -> EnvelopeId {
    format!("260122{region}000000000001{suffix:03}")
        .parse()
        .unwrap()
}

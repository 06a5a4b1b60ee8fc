//! Invalid topologies: each is refused with every error, naming the path and the
//! offending value (exact text, since operators read these).

use crate::common::{BUNDLED, edited, errors_of};

fn check(text: &str, expected: &[&str]) {
    assert_eq!(errors_of(text), expected, "topology:\n{text}");
}

#[test]
fn range_gap() {
    check(
        &edited(r#"n2: "333-665""#, r#"n2: "333-600""#),
        &["epochs[0].ranges.north: suffixes 601-665 are not covered"],
    );
}

#[test]
fn range_overlap() {
    check(
        &edited(r#"n2: "333-665""#, r#"n2: "300-665""#),
        &["epochs[0].ranges.north: suffixes 300-332 are assigned to both n1 and n2"],
    );
}

#[test]
fn malformed_range() {
    check(
        &edited(r#"s2: "500-999""#, r#"s2: "500-1000""#),
        &[
            r#"epochs[0].ranges.south.s2: malformed range "500-1000" (expected NNN-NNN items, comma-separated, with 000 <= start <= end <= 999)"#,
        ],
    );
}

#[test]
fn reversed_range() {
    check(
        &edited(r#"n1: "000-332""#, r#"n1: "332-000""#),
        &[
            r#"epochs[0].ranges.north.n1: malformed range "332-000" (expected NNN-NNN items, comma-separated, with 000 <= start <= end <= 999)"#,
        ],
    );
}

#[test]
fn unknown_cell_in_ranges() {
    check(
        &edited(r#"n3: "666-999""#, r#"n9: "666-999""#),
        &[r#"epochs[0].ranges.north.n9: unknown cell "n9""#],
    );
}

#[test]
fn cell_in_another_regions_ranges() {
    let text = edited(r#"n3: "666-999""#, r#"s1: "666-999""#);
    check(
        &text,
        &[r#"epochs[0].ranges.north.s1: cell "s1" belongs to region "south""#],
    );
}

#[test]
fn duplicate_cell_name() {
    check(
        &edited("  - name: n2\n", "  - name: n1\n"),
        &[
            r#"cells[1].name: duplicate cell name "n1" (also cells[0])"#,
            r#"epochs[0].ranges.north.n2: unknown cell "n2""#,
        ],
    );
}

#[test]
fn duplicate_region() {
    check(
        &edited("regions: [north, south]", "regions: [north, south, north]"),
        &[r#"regions[2]: duplicate region "north" (also regions[0])"#],
    );
}

#[test]
fn epoch_ids_not_increasing() {
    let second_epoch = r#"  - id: 0
    ranges:
      north: { n1: "000-999" }
      south: { s1: "000-999" }
minting:"#;
    check(
        &edited("minting:", second_epoch),
        &["epochs[1].id: epoch ids must strictly increase (0 after 0)"],
    );
}

#[test]
fn epoch_id_out_of_range() {
    check(
        &edited("  - id: 0\n", "  - id: 100\n").replace("epoch: 0 ", "epoch: 100 "),
        &["epochs[0].id: epoch id 100 is out of range 0-99"],
    );
}

#[test]
fn minting_epoch_missing() {
    check(
        &edited("  epoch: 0 ", "  epoch: 7 "),
        &["minting.epoch: epoch 7 is not declared under epochs"],
    );
}

#[test]
fn malformed_dsn() {
    check(
        &edited(
            r#""postgres://redcell@127.0.0.1:6102/cell_n2""#,
            r#""postgres://redcell@127.0.0.1:6102""#,
        ),
        &[r#"cells[1].db: malformed DSN "postgres://redcell@127.0.0.1:6102": missing /database"#],
    );
}

#[test]
fn malformed_server_address() {
    check(
        &edited(r#""127.0.0.1:7112""#, r#""127.0.0.1""#),
        &[r#"cells[1].servers[1]: malformed address "127.0.0.1": expected host:port"#],
    );
}

#[test]
fn server_shared_by_two_cells() {
    check(
        &edited(r#""127.0.0.1:7112""#, r#""127.0.0.1:7101""#),
        &["cells[1].servers[1]: address 127.0.0.1:7101 is already a server of cell n1"],
    );
}

#[test]
fn region_without_active_cell() {
    let text = BUNDLED
        .replacen("status: active", "status: failed", 3)
        .replace(
            "    status: failed\n    servers: [\"127.0.0.1:720",
            "    status: active\n    servers: [\"127.0.0.1:720",
        );
    check(
        &text,
        &[
            r#"minting: region "north" has no active cell in minting epoch 0 and no region_override"#,
        ],
    );
}

#[test]
fn region_without_active_cell_is_fine_when_overridden() {
    let text = BUNDLED
        .replacen("status: active", "status: failed", 3)
        .replace("region_override: {}", "region_override: {north: south}");
    let topology = redcell_topology::Topology::parse(&text).unwrap();
    let north = topology.region_digit("north").unwrap();
    assert_eq!(topology.mint_region(north), topology.region_digit("south"));
}

#[test]
fn unknown_keys_are_all_collected() {
    let text = edited(
        "    status: active\n",
        "    status: active\n    weight: 3\n",
    )
    .replace("degrade: {}", "degrade: {histroy: off}");
    check(
        &text,
        &[
            "cells[0].weight: unknown key (expected one of: name, region, status, servers, db)",
            "degrade.histroy: unknown key (expected one of: history, claims)",
        ],
    );
}

#[test]
fn unknown_status() {
    check(
        &edited("status: active", "status: dead"),
        &[r#"cells[0].status: unknown status "dead" (expected active, failed or draining)"#],
    );
}

#[test]
fn unknown_region_of_cell() {
    check(
        &edited("region: south", "region: west"),
        &[r#"cells[3].region: unknown region "west""#],
    );
}

#[test]
fn epoch_missing_a_region() {
    check(
        &edited("      south: { s1: \"000-499\", s2: \"500-999\" }\n", ""),
        &[r#"epochs[0].ranges: region "south" has no range table"#],
    );
}

#[test]
fn override_to_itself_and_unknown() {
    check(
        &edited(
            "region_override: {}",
            "region_override: {north: north, south: west}",
        ),
        &[
            "minting.region_override.north: a region cannot be overridden to itself",
            r#"minting.region_override.south: unknown target region "west""#,
        ],
    );
}

#[test]
fn override_chain() {
    check(
        &edited(
            "region_override: {}",
            "region_override: {north: south, south: north}",
        ),
        &[
            r#"minting.region_override.north: target region "south" is itself overridden to "north"; overrides do not chain"#,
            r#"minting.region_override.south: target region "north" is itself overridden to "south"; overrides do not chain"#,
        ],
    );
}

#[test]
fn unsupported_version() {
    check(
        &edited("version: 1", "version: 2"),
        &["version: unsupported version 2 (expected 1)"],
    );
}

#[test]
fn bad_degrade_value() {
    check(
        &edited("degrade: {}", "degrade: {history: sometimes}"),
        &[r#"degrade.history: unknown value "sometimes" (expected on, off or { pages: N })"#],
    );
}

#[test]
fn bad_claims_value() {
    check(
        &edited("degrade: {}", "degrade: {claims: sometimes}"),
        &[r#"degrade.claims: unknown value "sometimes" (expected on or off)"#],
    );
    // Two bad switches are both reported.
    check(
        &edited("degrade: {}", "degrade: {claims: no, history: {pages: 0}}"),
        &[
            "degrade.history.pages: must be at least 1 (use `history: off` to turn it off)",
            r#"degrade.claims: unknown value "no" (expected on or off)"#,
        ],
    );
    let errors = errors_of(&edited("degrade: {}", "degrade: {claims: [off]}"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("degrade.claims"), "{errors:?}");
}

#[test]
fn claims_switch_parses() {
    use redcell_topology::{ClaimsMode, Topology};
    let off = Topology::parse(&edited("degrade: {}", "degrade: {claims: off}")).unwrap();
    assert_eq!(off.claims_mode(), ClaimsMode::Off);
    let on = Topology::parse(&edited("degrade: {}", "degrade: {claims: on}")).unwrap();
    assert_eq!(on.claims_mode(), ClaimsMode::On);
    assert_eq!(crate::common::bundled().claims_mode(), ClaimsMode::On);
}

#[test]
fn wrong_type_carries_the_line() {
    check(
        &edited("  epoch: 0 ", "  epoch: zero "),
        &["line 39: minting.epoch: invalid type: string \"zero\", expected u32"],
    );
}

#[test]
fn yaml_syntax_error_carries_the_line() {
    check(
        &edited("regions: [north, south]", "regions: [north, south"),
        &["line 7: did not find expected ',' or ']'"],
    );
}

#[test]
fn several_errors_are_reported_together() {
    let text = edited("status: active", "status: dead")
        .replace("degrade: {}", "degrade: {history: sometimes}")
        .replace(r#"s2: "500-999""#, r#"s2: "550-999""#);
    check(
        &text,
        &[
            r#"cells[0].status: unknown status "dead" (expected active, failed or draining)"#,
            "epochs[0].ranges.south: suffixes 500-549 are not covered",
            r#"degrade.history: unknown value "sometimes" (expected on, off or { pages: N })"#,
        ],
    );
}

/// The bundled file expanded (n1 split into n4, epoch 1) with `minting`
/// replaced by `minting_lines`.
fn expanded_with(minting_lines: &str) -> String {
    let expanded = BUNDLED
        .replace(
            "  - name: s1\n",
            "  - name: n4\n    region: north\n    status: active\n    servers: [\"127.0.0.1:7131\"]\n    db: \"postgres://redcell@127.0.0.1:6104/cell_n4\"\n  - name: s1\n",
        )
        .replace(
            "minting:\n",
            "  - id: 1\n    ranges:\n      north: { n1: \"000-166\", n4: \"167-332\", n2: \"333-665\", n3: \"666-999\" }\n      south: { s1: \"000-499\", s2: \"500-999\" }\nminting:\n",
        );
    let at = expanded.find("minting:\n").unwrap();
    let end = expanded[at..].find("degrade:").unwrap() + at;
    format!(
        "{}minting:\n{minting_lines}{}",
        &expanded[..at],
        &expanded[end..]
    )
}

#[test]
fn a_switch_in_progress_is_accepted() {
    let text =
        expanded_with("  epoch: 1\n  switched_from: 0\n  switched_at: 2026-01-22T08:00:00Z\n");
    let topology = redcell_topology::Topology::parse(&text).unwrap();
    assert_eq!(topology.switch().unwrap().from.get(), 0);
}

#[test]
fn switch_fields_come_together_older_existing_and_well_formed() {
    check(
        &expanded_with("  epoch: 1\n  switched_from: 0\n"),
        &[
            "minting.switched_at: missing: switched_from and switched_at are set together (by `cellctl switch`)",
        ],
    );
    check(
        &expanded_with("  epoch: 1\n  switched_at: 2026-01-22T08:00:00Z\n"),
        &[
            "minting.switched_from: missing: switched_from and switched_at are set together (by `cellctl switch`)",
        ],
    );
    check(
        &expanded_with("  epoch: 0\n  switched_from: 1\n  switched_at: 2026-01-22T08:00:00Z\n"),
        &[
            "minting.switched_from: epoch 1 is not older than minting.epoch 0 (a switch moves minting to a newer epoch)",
        ],
    );
    check(
        &expanded_with("  epoch: 1\n  switched_from: 7\n  switched_at: 2026-01-22T08:00:00Z\n"),
        &["minting.switched_from: epoch 7 is not declared under epochs"],
    );
    check(
        &expanded_with("  epoch: 1\n  switched_from: 0\n  switched_at: 2026-01-22 08:00\n"),
        &[
            r#"minting.switched_at: malformed timestamp "2026-01-22 08:00" (expected RFC 3339 UTC, e.g. 2026-01-22T08:00:00Z)"#,
        ],
    );
}

//! Shared fixtures: the bundled cells.yaml and small text edits of it.

use redcell_topology::Topology;

/// The topology shipped at the workspace root.
pub const BUNDLED: &str = include_str!("../../../cells.yaml");

pub fn bundled() -> Topology {
    Topology::parse(BUNDLED).expect("the bundled cells.yaml is valid")
}

/// The bundled file with one exact text replaced (which must be present).
pub fn edited(from: &str, to: &str) -> String {
    assert!(
        BUNDLED.contains(from),
        "fixture text {from:?} not in cells.yaml"
    );
    BUNDLED.replacen(from, to, 1)
}

/// Every error message of an invalid topology text.
pub fn errors_of(text: &str) -> Vec<String> {
    match Topology::parse(text) {
        Ok(_) => panic!("topology was accepted:\n{text}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

//! cells.yaml parsing and validation (DESIGN §3) on arbitrary text: never
//! panics; a refusal lists at least one error, each with a message saying
//! where (a path or a line, or that it is about the whole document); a file
//! that validates renders to YAML that validates to the same topology with
//! the same fingerprint, and every (region, epoch, suffix) of it routes to
//! exactly one cell of that region.

#![no_main]

use libfuzzer_sys::fuzz_target;
use redcell_topology::{
    EnvelopeId, MintDate, RegionDigit, Suffix, Topology, document, suffix::SUFFIX_COUNT,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The document alone (the parse every binary does before validating).
    if let Err(errors) = document::parse(&text) {
        assert!(!errors.is_empty());
    }
    let topology = match Topology::parse(&text) {
        Ok(topology) => topology,
        Err(errors) => {
            assert!(!errors.is_empty(), "a refusal without an error");
            for error in errors.iter() {
                assert!(!error.message.is_empty(), "an error without a message");
                // Where: a path, a line, or (empty path: the document itself,
                // as ConfigError documents it) a message about the document.
                assert!(
                    !error.path.is_empty()
                        || error.line.is_some()
                        || error.message.contains("document"),
                    "an error that says neither where nor which field: {error:?}"
                );
            }
            return;
        }
    };
    let rendered = match topology.to_yaml() {
        Ok(rendered) => rendered,
        Err(errors) => panic!("a valid topology does not render: {errors}"),
    };
    let again = match Topology::parse(&rendered) {
        Ok(again) => again,
        Err(errors) => panic!("a rendered topology does not validate: {errors}\n{rendered}"),
    };
    assert_eq!(again, topology, "render + parse changed the topology");
    assert_eq!(again.fingerprint(), topology.fingerprint());
    let Some(date) = MintDate::new(2026, 1, 22) else {
        return;
    };
    for (index, _) in topology.regions().iter().enumerate() {
        let Some(region) = u8::try_from(index + 1).ok().and_then(RegionDigit::new) else {
            continue;
        };
        for epoch in topology.epochs() {
            for suffix in (0..SUFFIX_COUNT).step_by(37).filter_map(Suffix::new) {
                let Some(id) = EnvelopeId::new(date, region, epoch.id, 1, suffix) else {
                    continue;
                };
                match topology.route(&id) {
                    Ok(cell) => assert_eq!(cell.region, region, "{id} left its region"),
                    Err(error) => panic!("{id} of a valid topology does not route: {error}"),
                }
            }
        }
    }
});

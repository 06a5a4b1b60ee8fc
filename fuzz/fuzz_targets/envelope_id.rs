//! The envelope-ID codec (DESIGN §2) on arbitrary text: parsing never panics,
//! whatever parses is 22 digits and formats back to exactly the same text,
//! and routing a parsed ID through a topology never panics and lands on a
//! cell of the ID's own region.

#![no_main]

use libfuzzer_sys::fuzz_target;
use redcell_fuzz::{is_id_text, topology};
use redcell_topology::{EnvelopeId, RouteError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(id) = text.parse::<EnvelopeId>() else {
        assert!(
            !is_id_text(&text) || refused_for_its_date_or_region(&text),
            "22 digits with a real date and region refused: {text:?}"
        );
        return;
    };
    assert!(is_id_text(&text), "accepted a non-ID: {text:?}");
    let formatted = id.to_string();
    assert_eq!(formatted, text, "an ID does not format back to its text");
    assert_eq!(formatted.parse::<EnvelopeId>(), Ok(id));
    assert!((1..=9).contains(&id.region().get()));
    assert!(id.epoch().get() <= 99);
    assert!(id.suffix().get() <= 999);
    assert!(id.sequence() < 10_000_000_000);
    let topology = topology();
    match topology.route(&id) {
        Ok(cell) => assert_eq!(cell.region, id.region(), "{text} routed out of its region"),
        Err(RouteError::UnknownRegion(digit)) => {
            assert_eq!(digit, id.region().get());
            assert!(topology.region_name(id.region()).is_none());
        }
        Err(RouteError::UnknownEpoch(epoch)) => {
            assert_eq!(epoch, id.epoch().get());
            assert!(topology.epoch(id.epoch()).is_none());
        }
    }
});

/// The codec's own reasons to refuse 22 digits: no such calendar day in
/// 2000-2099, or region digit 0.
fn refused_for_its_date_or_region(text: &str) -> bool {
    let number = |from: usize, to: usize| text[from..to].parse::<u16>().unwrap_or(0);
    let (year, month, day) = (2000 + number(0, 2), number(2, 4), number(4, 6));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    !(1..=days).contains(&day) || number(6, 7) == 0
}

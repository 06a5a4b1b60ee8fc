//! The envelope-ID codec: well-formed IDs round-trip field by field; malformed
//! ones are errors with exact text, never panics.

use redcell_topology::{EnvelopeId, EpochId, IdError, MintDate, RegionDigit, Suffix};

#[test]
fn parses_the_design_example() {
    let id: EnvelopeId = "2601221030000481516742".parse().unwrap();
    assert_eq!(id.date(), MintDate::new(2026, 1, 22).unwrap());
    assert_eq!(id.region(), RegionDigit::new(1).unwrap());
    assert_eq!(id.epoch(), EpochId::new(3).unwrap());
    assert_eq!(id.sequence(), 481_516);
    assert_eq!(id.suffix(), Suffix::new(742).unwrap());
    assert_eq!(id.to_string(), "2601221030000481516742");
}

#[test]
fn formats_fixed_width() {
    let id = EnvelopeId::new(
        MintDate::new(2000, 2, 29).unwrap(),
        RegionDigit::new(9).unwrap(),
        EpochId::new(0).unwrap(),
        0,
        Suffix::new(7).unwrap(),
    )
    .unwrap();
    assert_eq!(id.to_string(), "0002299000000000000007");
}

#[test]
fn sequence_must_fit_ten_digits() {
    let build = |sequence| {
        EnvelopeId::new(
            MintDate::new(2026, 1, 22).unwrap(),
            RegionDigit::new(1).unwrap(),
            EpochId::new(0).unwrap(),
            sequence,
            Suffix::new(0).unwrap(),
        )
    };
    assert!(build(9_999_999_999).is_some());
    assert!(build(10_000_000_000).is_none());
}

#[test]
fn malformed_ids_name_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("", "envelope id must be 22 digits, got 0 characters"),
        (
            "260122103000048151674",
            "envelope id must be 22 digits, got 21 characters",
        ),
        (
            "26012210300004815167420",
            "envelope id must be 22 digits, got 23 characters",
        ),
        (
            "26012210300004815167a2",
            "envelope id has 'a' at position 21; only digits 0-9 are allowed",
        ),
        (
            " 601221030000481516742",
            "envelope id has ' ' at position 1; only digits 0-9 are allowed",
        ),
        (
            "2601221030000481516-42",
            "envelope id has '-' at position 20; only digits 0-9 are allowed",
        ),
        (
            "２601221030000481516742",
            "envelope id has '２' at position 1; only digits 0-9 are allowed",
        ),
        (
            "2613221030000481516742",
            "envelope id date 261322 is not a calendar date (YYMMDD)",
        ),
        (
            "2600221030000481516742",
            "envelope id date 260022 is not a calendar date (YYMMDD)",
        ),
        (
            "2602301030000481516742",
            "envelope id date 260230 is not a calendar date (YYMMDD)",
        ),
        (
            "2502291030000481516742",
            "envelope id date 250229 is not a calendar date (YYMMDD)",
        ),
        (
            "2601000030000481516742",
            "envelope id date 260100 is not a calendar date (YYMMDD)",
        ),
        (
            "2601220030000481516742",
            "envelope id region digit is 0; regions are numbered 1-9",
        ),
    ];
    for (text, message) in cases {
        let error: IdError = text.parse::<EnvelopeId>().expect_err(text);
        assert_eq!(error.to_string(), *message, "{text:?}");
    }
}

#[test]
fn leap_day_of_a_leap_year_is_valid() {
    assert!("2402291030000481516742".parse::<EnvelopeId>().is_ok());
}

#[test]
fn unix_days_become_calendar_dates() {
    let date = |days| MintDate::from_unix_days(days);
    assert_eq!(date(10_957), MintDate::new(2000, 1, 1)); // 2000-01-01
    assert_eq!(date(11_016), MintDate::new(2000, 2, 29));
    assert_eq!(date(20_475), MintDate::new(2026, 1, 22));
    assert_eq!(date(47_481), MintDate::new(2099, 12, 31));
    assert_eq!(date(47_482), None); // 2100-01-01 does not fit two year digits
    assert_eq!(date(0), None); // 1970
}

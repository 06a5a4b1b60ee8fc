//! Property tests of the input surfaces (issue 16 item 3; the cargo-fuzz
//! targets in fuzz/ run the same checks on libFuzzer's inputs): a valid
//! envelope ID with one character changed, inserted or removed is refused
//! with the reason that change caused, never a panic; and a cells.yaml with a
//! line deleted, duplicated, swapped, truncated or given a hostile value
//! either validates (and then renders back to the same topology) or is
//! refused with errors that each say where (a path or a line).

use proptest::prelude::*;
use redcell_topology::{EnvelopeId, IdError, Topology};

use crate::common::BUNDLED;

const ID: &str = "2601221030000481516742";

/// Values a hand-edited or hostile cells.yaml might hold where a scalar was.
const HOSTILE_VALUES: &[&str] = &[
    "",
    "~",
    "-1",
    "99999999999999999999999",
    "1e400",
    "[]",
    "{}",
    "\"\"",
    "'\\0'",
    "\"\\u0000\"",
    "!!binary AAAA",
    "*nowhere",
    "&anchor x",
    "{ n1: \"000-999\", n1: \"000-999\" }",
    "\"999-000\"",
    "\"000-999,000-999\"",
    "[\"127.0.0.1:99999\"]",
    "\"postgres://x@[::1\"",
    "日本",
    "\"a\u{202e}b\"",
    "north; DROP TABLE envelopes; --",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Truncate(usize),
    Value(usize, usize),
    Insert(usize, String),
    /// One character anywhere replaced (a typo inside a value or a list).
    Char(usize, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0..HOSTILE_VALUES.len()).prop_map(|(a, b)| Mutation::Value(a, b)),
        (any::<usize>(), "\\PC{0,40}").prop_map(|(a, text)| Mutation::Insert(a, text)),
        (
            any::<usize>(),
            prop_oneof![
                any::<char>(),
                prop::sample::select(vec![' ', ',', ':', '[', ']', '"', '-', '0', '9'])
            ]
        )
            .prop_map(|(a, c)| Mutation::Char(a, c)),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match mutation {
        Mutation::Delete(at) => {
            lines.remove(at % n);
        }
        Mutation::Duplicate(at) => {
            let line = lines[at % n].clone();
            lines.insert(at % n, line);
        }
        Mutation::Swap(a, b) => lines.swap(a % n, b % n),
        Mutation::Truncate(at) => {
            let cut = text
                .char_indices()
                .map(|(i, _)| i)
                .nth(at % text.chars().count().max(1))
                .unwrap_or(0);
            return text[..cut].to_owned();
        }
        Mutation::Value(at, value) => {
            let line = &mut lines[at % n];
            if let Some(colon) = line.find(": ") {
                line.truncate(colon + 2);
            } else {
                line.push_str(": ");
            }
            line.push_str(HOSTILE_VALUES[*value]);
        }
        Mutation::Insert(at, inserted) => lines.insert(at % n, inserted.clone()),
        Mutation::Char(at, replacement) => {
            let mut chars: Vec<char> = text.chars().collect();
            if !chars.is_empty() {
                let at = at % chars.len();
                chars[at] = *replacement;
            }
            return chars.into_iter().collect();
        }
    }
    lines.join("\n")
}

/// Accepted: renders to a file that validates to the same topology. Refused:
/// at least one error, and each says where and what.
fn check_topology_text(text: &str) -> Result<(), TestCaseError> {
    match Topology::parse(text) {
        Ok(topology) => {
            let rendered = topology
                .to_yaml()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = Topology::parse(&rendered).map_err(|e| {
                TestCaseError::fail(format!("rendered file refused: {e}\n{rendered}"))
            })?;
            prop_assert_eq!(&again, &topology);
            prop_assert_eq!(again.fingerprint(), topology.fingerprint());
        }
        Err(errors) => {
            prop_assert!(!errors.is_empty());
            for error in errors.iter() {
                prop_assert!(!error.message.is_empty(), "{:?}", error);
                // A path, a line, or (path empty: the document itself, as
                // ConfigError documents it) a message about the document.
                prop_assert!(
                    !error.path.is_empty()
                        || error.line.is_some()
                        || error.message.contains("document"),
                    "an error that says neither where nor which field: {:?}\n{}",
                    error,
                    text
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn an_id_with_one_character_replaced_is_refused_for_that_character(
        at in 0usize..22, replacement in any::<char>(),
    ) {
        let mut chars: Vec<char> = ID.chars().collect();
        chars[at] = replacement;
        let text: String = chars.iter().collect();
        match text.parse::<EnvelopeId>() {
            Ok(id) => {
                prop_assert!(replacement.is_ascii_digit());
                prop_assert_eq!(id.to_string(), text);
            }
            Err(IdError::NotDigit { position, found }) => {
                prop_assert!(!replacement.is_ascii_digit());
                prop_assert_eq!((position, found), (at + 1, replacement));
            }
            // YYMMDD, then R.
            Err(IdError::Date(date)) => {
                prop_assert!(at < 6);
                prop_assert_eq!(date, &text[..6]);
            }
            Err(IdError::RegionZero) => prop_assert_eq!((at, replacement), (6, '0')),
            Err(other) => prop_assert!(false, "{:?} for {:?}", other, text),
        }
    }

    #[test]
    fn an_id_one_character_longer_or_shorter_is_refused_for_its_length(
        at in 0usize..=22, inserted in any::<char>(), remove in any::<bool>(),
    ) {
        let mut chars: Vec<char> = ID.chars().collect();
        if remove {
            chars.remove(at.min(21));
        } else {
            chars.insert(at, inserted);
        }
        let text: String = chars.iter().collect();
        prop_assert_eq!(text.parse::<EnvelopeId>(), Err(IdError::Length(chars.len())));
    }

    #[test]
    fn a_mutated_cells_yaml_validates_or_says_where(
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let text = mutations.iter().fold(BUNDLED.to_owned(), |text, m| apply(&text, m));
        check_topology_text(&text)?;
    }

    #[test]
    fn arbitrary_text_as_cells_yaml_never_panics(text in "\\PC{0,200}") {
        check_topology_text(&text)?;
    }
}

/// Found by the cells_yaml fuzz target: an invalid region name listed before
/// a valid one panicked validation (a table indexed by list position in a
/// vector sized by the valid names). Now both problems are reported.
#[test]
fn an_invalid_region_before_a_valid_one_is_an_error_not_a_panic() {
    let text = crate::common::edited("regions: [north, south]", "regions: [\"no rth\", south]");
    let errors = crate::common::errors_of(&text);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("regions[0]: region name \"no rth\"")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("epochs[0].ranges.north") && e.contains("unknown region")),
        "{errors:?}"
    );
}

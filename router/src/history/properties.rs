//! Property tests of History's page tokens (issue 16 item 3; fuzz/ runs the
//! same checks under libFuzzer): decoding any text is total (never a panic,
//! a decoded cursor is bounded and re-encodes to itself); a sealed token
//! opens for its own listing only; any other token, and any edit of a good
//! one, is INVALID_ARGUMENT.

use proptest::prelude::*;

use super::*;

fn cursor() -> impl Strategy<Value = Cursor> {
    (
        0..=MAX_CURSOR_SECS,
        0u32..1_000_000_000,
        "[0-9]{22}",
        any::<u32>(),
    )
        .prop_map(|(secs, nanos, id, page)| Cursor {
            at: UNIX_EPOCH + Duration::new(secs, nanos),
            id,
            page,
        })
}

/// Cursor-shaped text with every part possibly out of range.
fn cursor_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,60}",
        (
            prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9+-]{0,25}"],
            prop_oneof![any::<u32>().prop_map(|n| n.to_string()), "[0-9+-]{0,12}"],
            "[0-9a-z]{20,24}",
            prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9+-]{0,12}"],
        )
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoding_any_text_is_total_and_bounded(text in cursor_text()) {
        if let Some(cursor) = Cursor::decode(&text) {
            prop_assert!(cursor.id.len() == 22 && cursor.id.bytes().all(|b| b.is_ascii_digit()));
            let last = UNIX_EPOCH + Duration::new(MAX_CURSOR_SECS, 999_999_999);
            prop_assert!(cursor.at <= last);
            prop_assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        }
    }

    #[test]
    fn a_sealed_token_opens_for_its_listing_only(
        cursor in cursor(), user in "[A-Za-z0-9_-]{1,64}", other in "[A-Za-z0-9_-]{1,64}",
        direction in 1i32..=2, flip in any::<usize>(),
    ) {
        let key = PageTokenKey::derive("internal-test-token-0123456789");
        let token = key.seal(&user, direction, &cursor);
        prop_assert_eq!(key.open(&user, direction, &token).ok(), Some(cursor.clone()));
        if other != user {
            prop_assert!(key.open(&other, direction, &token).is_err());
        }
        prop_assert!(key.open(&user, 3 - direction, &token).is_err());
        // Any one character changed.
        let mut bytes = token.clone().into_bytes();
        let at = flip % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let edited = String::from_utf8(bytes).unwrap_or_default();
        if edited != token {
            match key.open(&user, direction, &edited) {
                Ok(opened) => prop_assert!(false, "an edited token opened: {:?}", opened),
                Err(status) => prop_assert_eq!(status.code(), tonic::Code::InvalidArgument),
            }
        }
    }

    #[test]
    fn any_other_token_is_invalid_argument(
        token in prop_oneof!["\\PC{0,200}", "[A-Za-z0-9_-]{0,130}\\.[A-Za-z0-9_-]{43}"],
        direction in any::<i32>(),
    ) {
        let key = PageTokenKey::derive("internal-test-token-0123456789");
        match key.open("alice", direction, &token) {
            Ok(opened) => prop_assert!(false, "{:?} opened as {:?}", token, opened),
            Err(status) => prop_assert_eq!(status.code(), tonic::Code::InvalidArgument),
        }
    }
}

//! Property tests of the edge validation (issue 16 item 3; fuzz/ runs the
//! same checks under libFuzzer): arbitrary requests, with hostile strings and
//! extreme numbers in every field, are either accepted within DESIGN.md §8's
//! limits, unchanged, or refused as INVALID_ARGUMENT naming a field of the
//! request; never a panic. A valid Send with exactly one field broken is
//! refused naming that field.

use proptest::prelude::*;
use tonic::Code;

use super::*;

/// DESIGN §8's token rule, restated independently of `check_token`.
fn is_token(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Strings a hostile client sends: valid tokens, too long ones, control
/// characters and NUL, injection, any printable text.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,64}",
        "[A-Za-z0-9_-]{65,80}",
        Just(String::new()),
        "\\PC{0,80}",
        "[\\x00-\\x1f\"'\\\\;%]{1,8}",
        Just("x'; DROP TABLE envelopes; --".to_owned()),
        Just("a\u{0}b".to_owned()),
        Just("\u{202e}\u{feff}".to_owned()),
        Just("恭喜发财".repeat(16)),
        Just("恭喜发财".repeat(17)),
    ]
}

fn hostile_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        Just(-1),
        Just(2_000_000),
        Just(2_000_001),
        1i64..=2_000_000,
        any::<i64>(),
    ]
}

fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(500),
        Just(501),
        Just(u32::MAX),
        1u32..=500,
        any::<u32>(),
    ]
}

fn send_request() -> impl Strategy<Value = pb::SendRequest> {
    (
        hostile_i64(),
        hostile_u32(),
        prop_oneof![-1i32..=4, any::<i32>()],
        hostile_string(),
        prop::collection::vec(hostile_string(), 0..3),
        hostile_string(),
    )
        .prop_map(
            |(total_cents, count, kind, greeting, recipients, idempotency_key)| pb::SendRequest {
                total_cents,
                count,
                kind,
                greeting,
                recipients,
                idempotency_key,
            },
        )
}

/// An ID-looking or not string: valid IDs, 22 digits, anything.
fn id_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2601221000000481516742".to_owned()),
        "[0-9]{22}",
        "[0-9]{20,24}",
        hostile_string(),
    ]
}

/// The refusal must be INVALID_ARGUMENT, name one of `fields`, and say why.
fn refused_naming(error: CellError, fields: &[&str]) -> Result<(), TestCaseError> {
    let status = tonic::Status::from(error.clone());
    prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", error);
    match error {
        CellError::InvalidArgument { field, message } => {
            prop_assert!(fields.contains(&field), "{} not in {:?}", field, fields);
            prop_assert!(!message.is_empty());
        }
        other => prop_assert!(false, "{:?}", other),
    }
    Ok(())
}

const SEND_FIELDS: &[&str] = &[
    "total_cents",
    "count",
    "kind",
    "greeting",
    "recipients",
    "idempotency_key",
];

fn valid_send() -> pb::SendRequest {
    pb::SendRequest {
        total_cents: 300,
        count: 3,
        kind: pb::EnvelopeKind::Equal.into(),
        greeting: "恭喜发财".into(),
        recipients: Vec::new(),
        idempotency_key: "key-1".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_send_is_accepted_within_the_limits_or_refused_naming_a_field(
        caller in hostile_string(), request in send_request(),
    ) {
        let sender = match UserId::parse("user", &caller) {
            Ok(sender) => sender,
            Err(error) => {
                prop_assert!(!is_token(&caller));
                return refused_naming(error, &["user"]);
            }
        };
        prop_assert!(is_token(&caller));
        let command = match SendCommand::parse(sender.clone(), request.clone(), &Limits::default()) {
            Ok(command) => command,
            Err(error) => return refused_naming(error, SEND_FIELDS),
        };
        let (total, count) = (command.total_cents, command.count);
        prop_assert!((1..=500).contains(&count));
        prop_assert!((1..=2_000_000).contains(&total));
        prop_assert!(total >= i64::from(count));
        prop_assert!(command.greeting.chars().count() <= 64 && !command.greeting.contains('\0'));
        prop_assert!(is_token(&command.idempotency_key));
        prop_assert!(command.recipients.iter().all(|r| is_token(r.as_str())));
        match command.kind {
            Kind::Lucky => prop_assert!(command.recipients.is_empty()),
            Kind::Equal => {
                prop_assert_eq!(total % i64::from(count), 0);
                prop_assert!(command.recipients.is_empty());
            }
            Kind::Exclusive => {
                prop_assert_eq!(count, 1);
                prop_assert_eq!(command.recipients.len(), 1);
                prop_assert!(command.recipients[0] != sender);
            }
        }
        // Accepted as sent: nothing trimmed, clamped or defaulted.
        prop_assert_eq!(total, request.total_cents);
        prop_assert_eq!(count, request.count);
        prop_assert_eq!(&command.greeting, &request.greeting);
        prop_assert_eq!(&command.idempotency_key, &request.idempotency_key);
        let recipients: Vec<&str> = command.recipients.iter().map(UserId::as_str).collect();
        prop_assert_eq!(recipients, request.recipients.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn a_valid_send_with_one_field_broken_is_refused_naming_that_field(
        which in 0usize..5, text in hostile_string(), number in hostile_i64(),
    ) {
        let mut request = valid_send();
        let field = match which {
            0 => {
                prop_assume!(!(1..=2_000_000).contains(&number) || number % 3 != 0);
                request.total_cents = number;
                "total_cents"
            }
            1 => {
                let count = u32::try_from(number).unwrap_or(0);
                prop_assume!(count == 0 || count > 500);
                request.count = count;
                "count"
            }
            2 => {
                prop_assume!(!(1..=3).contains(&number));
                request.kind = i32::try_from(number).unwrap_or(-1);
                "kind"
            }
            3 => {
                prop_assume!(text.chars().count() > 64 || text.contains('\0'));
                request.greeting = text;
                "greeting"
            }
            _ => {
                prop_assume!(!is_token(&text));
                request.idempotency_key = text;
                "idempotency_key"
            }
        };
        let sender = UserId::parse("user", "alice").map_err(|e| TestCaseError::fail(e.to_string()))?;
        match SendCommand::parse(sender, request, &Limits::default()) {
            Ok(command) => prop_assert!(false, "accepted a broken {}: {:?}", field, command),
            Err(error) => refused_naming(error, &[field])?,
        }
    }

    #[test]
    fn any_get_is_an_id_and_a_token_or_refused_naming_the_field(
        envelope_id in id_string(), page_token in prop_oneof!["[0-9]{0,12}", hostile_string()],
        page_size in hostile_u32(),
    ) {
        let request = pb::GetRequest { envelope_id, page_token, page_size };
        match GetQuery::try_from(request.clone()) {
            Ok(query) => {
                prop_assert_eq!(query.envelope_id.to_string(), request.envelope_id);
                prop_assert_eq!(query.page_size, request.page_size);
                if request.page_token.is_empty() {
                    prop_assert_eq!(query.after, 0);
                } else {
                    prop_assert_eq!(Some(query.after), request.page_token.parse().ok());
                }
            }
            Err(error) => refused_naming(error, &["envelope_id", "page_token"])?,
        }
    }

    #[test]
    fn any_cell_history_request_is_bounded_or_refused_naming_the_field(
        user in hostile_string(), direction in prop_oneof![0i32..=3, any::<i32>()],
        before in prop::option::of((hostile_i64(), prop_oneof![0i32..1_000_000_000, any::<i32>()])),
        before_id in id_string(), limit in hostile_u32(),
    ) {
        let request = pb::CellHistoryRequest {
            user,
            direction,
            before: before.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            before_id,
            limit,
        };
        match HistoryQuery::try_from(request.clone()) {
            Ok(query) => {
                prop_assert!(is_token(query.user.as_str()));
                prop_assert!(matches!(request.direction, 1 | 2));
                let id = &query.cursor.before_id;
                prop_assert!(id.len() <= 23 && id.bytes().all(|b| b.is_ascii_digit()));
                let last = std::time::UNIX_EPOCH + std::time::Duration::from_secs(LAST_SECOND as u64 + 1);
                prop_assert!(query.cursor.before < last);
                prop_assert_eq!(query.limit, request.limit);
            }
            Err(error) => refused_naming(error, &["user", "direction", "before", "before_id"])?,
        }
    }
}

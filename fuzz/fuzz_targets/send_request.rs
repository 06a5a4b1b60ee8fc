//! A Send as a cell receives it (DESIGN §4, §8): the caller from metadata and
//! arbitrary bytes decoded as `SendRequest`, through the cell's own edge
//! validation ([`SendCommand::parse`]; the router forwards a Send's body
//! unread). Never panics; a refusal is INVALID_ARGUMENT naming a field of the
//! request; an accepted Send is within every §8 limit and is the request
//! unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use redcell_cell::request::{Limits, SendCommand, UserId};
use redcell_fuzz::{assert_invalid, is_token, split_caller};
use redcell_proto::v1 as pb;

const FIELDS: &[&str] = &[
    "total_cents",
    "count",
    "kind",
    "greeting",
    "recipients",
    "idempotency_key",
];

fuzz_target!(|data: &[u8]| {
    let (caller, body) = split_caller(data);
    let sender = match UserId::parse("user", &caller) {
        Ok(sender) => sender,
        Err(error) => {
            assert_invalid(&error, &["user"]);
            assert!(!is_token(&caller), "caller {caller:?} refused");
            return;
        }
    };
    assert!(is_token(sender.as_str()), "caller {caller:?} accepted");
    let Ok(request) = pb::SendRequest::decode(body) else {
        return;
    };
    let limits = Limits::default();
    let command = match SendCommand::parse(sender.clone(), request.clone(), &limits) {
        Ok(command) => command,
        Err(error) => return assert_invalid(&error, FIELDS),
    };
    // DESIGN §8, restated.
    let (total, count) = (command.total_cents, command.count);
    assert!((1..=500).contains(&count), "count {count}");
    assert!((1..=2_000_000).contains(&total), "total {total}");
    assert!(
        total >= i64::from(count),
        "{total} cents for {count} shares"
    );
    assert!(command.greeting.chars().count() <= 64);
    assert!(!command.greeting.contains('\0'));
    assert!(is_token(&command.idempotency_key));
    assert!(command.recipients.iter().all(|r| is_token(r.as_str())));
    match pb::EnvelopeKind::try_from(request.kind) {
        Ok(pb::EnvelopeKind::Lucky) => assert!(command.recipients.is_empty()),
        Ok(pb::EnvelopeKind::Equal) => {
            assert_eq!(total % i64::from(count), 0);
            assert!(command.recipients.is_empty());
        }
        Ok(pb::EnvelopeKind::Exclusive) => {
            assert_eq!(count, 1);
            assert_eq!(command.recipients.len(), 1);
            assert!(command.recipients[0] != sender, "an EXCLUSIVE to oneself");
        }
        other => panic!("accepted kind {} ({other:?})", request.kind),
    }
    // Accepted as sent: nothing trimmed, clamped or defaulted.
    assert_eq!(command.sender, sender);
    assert_eq!(total, request.total_cents);
    assert_eq!(count, request.count);
    assert_eq!(command.greeting, request.greeting);
    assert_eq!(command.idempotency_key, request.idempotency_key);
    let recipients: Vec<&str> = command.recipients.iter().map(UserId::as_str).collect();
    assert_eq!(recipients, request.recipients);
});

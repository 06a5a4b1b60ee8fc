//! History (DESIGN §4, §8): the first byte picks the message, the rest is
//! `caller '\n' bytes`. A client's `HistoryRequest` goes through the router's
//! checks: its page token (MACed; opened with a fixed key), the cursor inside
//! it, the direction. A router's `CellHistoryRequest` goes through the
//! cell's ([`HistoryQuery`]). Never panics; every cursor the router decodes
//! re-encodes to itself, survives seal/open, and is accepted by the cell (the
//! router never hands a cell a cursor it refuses); a cell refusal is
//! INVALID_ARGUMENT naming the field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use redcell_cell::request::{HistoryCursor, HistoryQuery, UserId};
use redcell_fuzz::{assert_invalid, is_token, split_caller};
use redcell_proto::v1 as pb;
use redcell_router::history::{Cursor, PageTokenKey};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (caller, body) = split_caller(rest);
    if which % 2 == 0 {
        if let Ok(request) = pb::HistoryRequest::decode(body) {
            at_router(&caller, &request);
        }
    } else if let Ok(request) = pb::CellHistoryRequest::decode(body) {
        at_cell(request);
    }
});

fn at_router(user: &str, request: &pb::HistoryRequest) {
    let key = PageTokenKey::derive("fuzz-internal-token");
    // Nothing the fuzzer writes carries a valid MAC; opening must just refuse.
    if let Err(status) = key.open(user, request.direction, &request.page_token) {
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    // The cursor text itself, as if its MAC had held.
    let Some(cursor) = Cursor::decode(&request.page_token) else {
        return;
    };
    assert_eq!(Cursor::decode(&cursor.encode()).as_ref(), Some(&cursor));
    let token = key.seal(user, request.direction, &cursor);
    match key.open(user, request.direction, &token) {
        Ok(opened) => assert_eq!(opened, cursor),
        Err(status) => panic!("a sealed cursor does not open: {status}"),
    }
    // Another listing's token is refused.
    assert!(key.open(user, request.direction ^ 1, &token).is_err());
    // What the router will ask the cell for.
    if let Err(error) = HistoryCursor::parse(Some(cursor.at.into()), &cursor.id) {
        panic!("the cell refuses a cursor the router decoded ({cursor:?}): {error}");
    }
}

fn at_cell(request: pb::CellHistoryRequest) {
    match HistoryQuery::try_from(request.clone()) {
        Ok(query) => {
            assert!(is_token(query.user.as_str()));
            assert_eq!(query.user.as_str(), request.user);
            assert!(matches!(
                pb::HistoryDirection::try_from(request.direction),
                Ok(pb::HistoryDirection::Sent | pb::HistoryDirection::Received)
            ));
            let id = &query.cursor.before_id;
            assert!(id.len() <= 23 && id.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(query.limit, request.limit);
        }
        Err(error) => assert_invalid(&error, &["direction", "user", "before", "before_id"]),
    }
    // UserId is the same rule for every field that names a user.
    assert_eq!(
        UserId::parse("user", &request.user).is_ok(),
        is_token(&request.user)
    );
}

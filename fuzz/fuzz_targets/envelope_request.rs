//! Grab, Open and Get (DESIGN §4, §8): the first byte picks the message, the
//! rest is `caller '\n' bytes` decoded as it. Each goes through what the
//! router checks (the ID parses and routes in its topology) and what the cell
//! checks (its caller, the ID, Get's page token and page size). Never panics;
//! router and cell agree on which IDs are IDs; a refusal is INVALID_ARGUMENT
//! naming the field; an accepted ID is 22 digits that format back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use redcell_cell::request::{self, GetQuery, UserId};
use redcell_fuzz::{assert_invalid, is_id_text, is_token, split_caller, topology};
use redcell_proto::{page::PageSize, v1 as pb};
use redcell_topology::EnvelopeId;

/// The cell's Get page size (cell/src/ops/get.rs).
const GET_PAGE: PageSize = PageSize::new(100, 500);

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (caller, body) = split_caller(rest);
    match UserId::parse("user", &caller) {
        Ok(user) => assert!(is_token(user.as_str())),
        Err(error) => assert_invalid(&error, &["user"]),
    }
    match which % 3 {
        0 => {
            if let Ok(grab) = pb::GrabRequest::decode(body) {
                envelope_id(&grab.envelope_id);
            }
        }
        1 => {
            if let Ok(open) = pb::OpenRequest::decode(body) {
                envelope_id(&open.envelope_id);
            }
        }
        _ => {
            if let Ok(get) = pb::GetRequest::decode(body) {
                self::get(get);
            }
        }
    }
});

/// The ID as the router routes it and as the cell parses it.
fn envelope_id(text: &str) -> Option<EnvelopeId> {
    let at_router = text.parse::<EnvelopeId>();
    let at_cell = request::parse_envelope_id(text);
    match (&at_router, &at_cell) {
        (Ok(routed), Ok(parsed)) => {
            assert_eq!(routed, parsed);
            assert!(is_id_text(text));
            assert_eq!(parsed.to_string(), text);
            if let Ok(cell) = topology().route(parsed) {
                assert_eq!(cell.region, parsed.region());
            }
        }
        (Err(_), Err(error)) => assert_invalid(error, &["envelope_id"]),
        _ => panic!("router and cell disagree on {text:?}: {at_router:?} / {at_cell:?}"),
    }
    at_cell.ok()
}

fn get(get: pb::GetRequest) {
    let query = GetQuery::try_from(get.clone());
    let id = envelope_id(&get.envelope_id);
    match query {
        Ok(query) => {
            assert_eq!(Some(query.envelope_id), id);
            assert_eq!(query.page_size, get.page_size);
            let after = if get.page_token.is_empty() {
                0
            } else {
                get.page_token
                    .parse::<u32>()
                    .ok()
                    .unwrap_or_else(|| panic!("page token {:?} accepted", get.page_token))
            };
            assert_eq!(query.after, after);
            match GET_PAGE.resolve(query.page_size) {
                Ok(size) => assert!((1..=500).contains(&size)),
                Err(error) => assert!(query.page_size > 500, "{error}"),
            }
        }
        Err(error) => assert_invalid(&error, &["envelope_id", "page_token"]),
    }
}

//! History across cells (DESIGN.md §4): the router asks every cell for its
//! newest entries of the caller older than the cursor, merges them by time
//! (newest first, envelope ID breaking ties) and returns one page. Because every
//! cell applies the same exclusive cursor `(at, id)`, the merged pages are exact
//! keyset pages over the union, without any cross-cell state.
//!
//! History is the first thing to shed under load: `degrade.history` in
//! cells.yaml switches it off or caps the pages served, and takes effect on
//! reload. A cell that does not answer makes the page partial (`degraded`)
//! rather than failing it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use redcell_proto::v1::{self as pb, cell_internal_client::CellInternalClient};
use redcell_topology::HistoryMode;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::{
    failover, route,
    service::{Caller, RouterService},
};

/// Entries per page when the caller asks for 0, and the most per page.
const PAGE: redcell_proto::page::PageSize = redcell_proto::page::PageSize::new(20, 100);

/// The latest instant a cursor may name (9999-12-31T23:59:59Z): far beyond
/// any entry, and small enough that no conversion of it can overflow.
const MAX_CURSOR_SECS: u64 = 253_402_300_799;

/// The label the page-token key is derived under (see [`PageTokenKey`]).
const PAGE_TOKEN_LABEL: &[u8] = b"redcell router: history page tokens v1";

/// The one answer to a page token this router cannot use: whatever is wrong
/// with it (edited, truncated, another user's, another router fleet's) the
/// client learns only that it must start again from the first page.
fn bad_page_token() -> Status {
    Status::invalid_argument("page_token: not a token this service issued for this listing")
}

/// Where the next page starts: strictly older than (`at`, `id`); `page` counts
/// pages served, for the `pages: N` degrade switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: SystemTime,
    pub id: String,
    pub page: u32,
}

impl Cursor {
    /// `secs.nanos.id.page`: the cursor's plain text (clients see it only
    /// inside a MACed page token, [`PageTokenKey::seal`]).
    pub fn encode(&self) -> String {
        let since = self.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!(
            "{}.{}.{}.{}",
            since.as_secs(),
            since.subsec_nanos(),
            self.id,
            self.page
        )
    }

    /// The cursor of `text`, or `None`: total over every input (no
    /// arithmetic that can overflow, every field bounded).
    pub fn decode(text: &str) -> Option<Cursor> {
        let mut parts = text.split('.');
        let secs: u64 = parts.next()?.parse().ok()?;
        let nanos: u32 = parts.next()?.parse().ok().filter(|n| *n < 1_000_000_000)?;
        let id = parts.next()?;
        let page: u32 = parts.next()?.parse().ok()?;
        if parts.next().is_some()
            || secs > MAX_CURSOR_SECS
            || id.len() != 22
            || !id.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Cursor {
            at: UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?,
            id: id.to_owned(),
            page,
        })
    }
}

/// The key page tokens are MACed with. Routers are stateless and a client's
/// next page may reach any replica, so every replica must hold the same key
/// without another secret to distribute: it is derived from the internal
/// token (which every router of a deployment already shares, since cells
/// check it) as HMAC-SHA256(internal token, [`PAGE_TOKEN_LABEL`]). The label
/// keeps the two uses apart: the MAC key reveals nothing about the token.
/// Rotating the internal token invalidates outstanding page tokens; their
/// clients get `INVALID_ARGUMENT page_token` and start from the first page.
#[derive(Clone)]
pub struct PageTokenKey(HmacSha256);

impl std::fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenKey([redacted])")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl PageTokenKey {
    pub fn derive(internal_token: &str) -> PageTokenKey {
        let derived: [u8; 32] = match HmacSha256::new_from_slice(internal_token.as_bytes()) {
            Ok(mac) => mac
                .chain_update(PAGE_TOKEN_LABEL)
                .finalize()
                .into_bytes()
                .into(),
            // Not reached: HMAC takes keys of every length (RFC 2104 hashes
            // long ones). Kept total all the same.
            Err(_) => Sha256::digest([PAGE_TOKEN_LABEL, internal_token.as_bytes()].concat()).into(),
        };
        // A 32-byte HMAC key, zero-padded to SHA-256's block as RFC 2104 does.
        let mut block = [0_u8; 64];
        block[..32].copy_from_slice(&derived);
        PageTokenKey(HmacSha256::new(&block.into()))
    }

    /// The MAC over a cursor's text, bound to the listing it pages (the
    /// caller and the direction): a token is good for that listing only.
    fn mac(&self, user: &str, direction: i32, cursor: &str) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(&direction.to_be_bytes());
        mac.update(cursor.as_bytes());
        mac
    }

    /// `base64url(cursor text) "." base64url(HMAC-SHA256)`.
    pub fn seal(&self, user: &str, direction: i32, cursor: &Cursor) -> String {
        let text = cursor.encode();
        let tag = self.mac(user, direction, &text).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(text.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The cursor of a token [`seal`](Self::seal)ed for this listing, or
    /// `INVALID_ARGUMENT page_token`. The MAC is checked (in constant time)
    /// before anything in the token is believed.
    pub fn open(&self, user: &str, direction: i32, token: &str) -> Result<Cursor, Status> {
        let (payload, tag) = token.split_once('.').ok_or_else(bad_page_token)?;
        // A cursor's text is under 64 bytes; refuse big inputs undecoded.
        if payload.len() > 128 || tag.len() != 43 {
            return Err(bad_page_token());
        }
        let text = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| bad_page_token())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad_page_token())?;
        let text = String::from_utf8(text).map_err(|_| bad_page_token())?;
        self.mac(user, direction, &text)
            .verify_slice(&tag)
            .map_err(|_| bad_page_token())?;
        Cursor::decode(&text).ok_or_else(bad_page_token)
    }
}

/// Orders entries newest first; ties by envelope ID, descending.
fn sort_key(entry: &pb::HistoryEntry) -> (SystemTime, String) {
    let at = entry
        .at
        .and_then(|at| SystemTime::try_from(at).ok())
        .unwrap_or(UNIX_EPOCH);
    let id = entry
        .envelope
        .as_ref()
        .map(|e| e.id.clone())
        .unwrap_or_default();
    (at, id)
}

/// Merges per-cell slices (each newest first) into one page of `limit`.
/// Returns the page and whether more entries may follow.
pub fn merge(slices: Vec<Vec<pb::HistoryEntry>>, limit: usize) -> (Vec<pb::HistoryEntry>, bool) {
    let mut all: Vec<pb::HistoryEntry> = slices.into_iter().flatten().collect();
    all.sort_by_key(|entry| std::cmp::Reverse(sort_key(entry)));
    let more = all.len() > limit;
    all.truncate(limit);
    (all, more)
}

/// History as the router serves it, with the key of its page tokens.
#[derive(Debug, Clone)]
pub struct History {
    key: PageTokenKey,
}

impl History {
    pub fn new(key: PageTokenKey) -> History {
        History { key }
    }

    pub(crate) async fn serve(
        &self,
        router: &RouterService,
        caller: &Caller,
        request: pb::HistoryRequest,
    ) -> Result<pb::HistoryResponse, Status> {
        let user = &caller.user;
        let topology = router.topology.load();
        // Shedding first: while History is off, nothing of the request is
        // even looked at.
        let pages_allowed = match topology.history_mode() {
            HistoryMode::Off => {
                return Err(Status::unavailable(
                    "history is switched off for now (degrade.history: off); retry later",
                ));
            }
            HistoryMode::Pages(pages) => Some(pages),
            HistoryMode::On => None,
        };
        let cursor = match request.page_token.as_str() {
            "" => None,
            token => Some(self.key.open(user.as_str(), request.direction, token)?),
        };
        let page = cursor.as_ref().map_or(0, |cursor| cursor.page);
        if pages_allowed.is_some_and(|pages| page >= pages) {
            return Ok(pb::HistoryResponse {
                entries: Vec::new(),
                next_page_token: String::new(),
                degraded: true,
            });
        }
        let limit = PAGE
            .resolve(request.page_size)
            .map_err(|error| Status::invalid_argument(format!("page_size: {error}")))?;
        let direction = match pb::HistoryDirection::try_from(request.direction) {
            Ok(direction @ (pb::HistoryDirection::Sent | pb::HistoryDirection::Received)) => {
                direction
            }
            _ => {
                return Err(Status::invalid_argument(
                    "direction: must be SENT or RECEIVED",
                ));
            }
        };

        let mut calls = tokio::task::JoinSet::new();
        for cell in topology.cells() {
            let servers: Vec<String> = route::servers_for(cell, user.as_str(), |server| {
                router.directory.is_serving(server)
            })
            .into_iter()
            .map(str::to_owned)
            .collect();
            // One more than the page: a cell holding everything that is left
            // must be able to say "there is more" (found in review: pages
            // silently stopped when one cell held the rest).
            let message = pb::CellHistoryRequest {
                user: user.as_str().to_owned(),
                direction: direction.into(),
                before: cursor.as_ref().map(|cursor| cursor.at.into()),
                before_id: cursor
                    .as_ref()
                    .map(|cursor| cursor.id.clone())
                    .unwrap_or_default(),
                limit: limit + 1,
            };
            // The cell's servers in order (the next one after a transport
            // failure, a stall or UNAVAILABLE), within the call's deadline.
            let router = router.clone();
            let caller = caller.clone();
            let name = cell.name.clone();
            calls.spawn(async move {
                failover::call_cell(
                    &router.directory,
                    &name,
                    &servers,
                    caller.deadline,
                    |status| status.code() == tonic::Code::Unavailable,
                    |channel, budget| {
                        let request = router.attempt(&caller, message.clone(), budget);
                        async move {
                            CellInternalClient::new(channel)
                                .cell_history(request?)
                                .await
                        }
                    },
                )
                .await
            });
        }
        let mut slices = Vec::new();
        let mut degraded = false;
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok(Ok(response)) => slices.push(response.entries),
                Ok(Err(error)) => {
                    let status = error.into_status();
                    tracing::warn!(%status, "a cell's history slice failed; serving a partial page");
                    degraded = true;
                }
                Err(_) => degraded = true,
            }
        }
        // A partial page after the deadline is no page: the client gave up.
        if degraded {
            caller.deadline.left_for("every cell answered")?;
        }
        let (entries, more) = merge(slices, limit as usize);
        let last_allowed = pages_allowed.is_some_and(|pages| page + 1 >= pages);
        let next_page_token = match entries.last() {
            Some(last) if more && !last_allowed => {
                let (at, id) = sort_key(last);
                let next = Cursor {
                    at,
                    id,
                    page: page + 1,
                };
                self.key.seal(user.as_str(), request.direction, &next)
            }
            _ => String::new(),
        };
        Ok(pb::HistoryResponse {
            entries,
            next_page_token,
            degraded: degraded || (more && last_allowed),
        })
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(secs: u64, id: &str) -> pb::HistoryEntry {
        pb::HistoryEntry {
            envelope: Some(pb::Envelope {
                id: id.into(),
                ..Default::default()
            }),
            claim: None,
            at: Some((UNIX_EPOCH + Duration::from_secs(secs)).into()),
        }
    }

    #[test]
    fn merges_newest_first_with_id_tiebreak() {
        let a = vec![
            entry(30, "2601221000000000001003"),
            entry(10, "2601221000000000001001"),
        ];
        let b = vec![
            entry(30, "2601221000000000001500"),
            entry(20, "2601221000000000001501"),
        ];
        let (page, more) = merge(vec![a, b], 3);
        let ids: Vec<&str> = page
            .iter()
            .map(|e| e.envelope.as_ref().unwrap().id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "2601221000000000001500",
                "2601221000000000001003",
                "2601221000000000001501"
            ]
        );
        assert!(more);
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            at: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            id: "2601221000000000001003".into(),
            page: 4,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "x",
            "1.2.3.4",
            "1.2.2601221000000000001003",
            "1.2000000000.2601221000000000001003.1",
            "1.2.2601221000000000001003.1.9",
            // Found from outside: `UNIX_EPOCH + Duration` overflowed and
            // panicked the call.
            "18446744073709551615.0.2601221000000000001003.0",
            "9223372036854775807.999999999.2601221000000000001003.0",
            "253402300800.0.2601221000000000001003.0",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
        let last = format!("{MAX_CURSOR_SECS}.999999999.2601221000000000001003.0");
        assert!(Cursor::decode(&last).is_some());
    }

    #[test]
    fn page_tokens_are_sealed_for_their_listing_and_refuse_every_edit() {
        let key = PageTokenKey::derive("internal-test-token-0123456789");
        let cursor = Cursor {
            at: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            id: "2601221000000000001003".into(),
            page: 4,
        };
        let sent = pb::HistoryDirection::Sent as i32;
        let received = pb::HistoryDirection::Received as i32;
        let token = key.seal("alice", sent, &cursor);
        assert!(!token.contains("2601221000000000001003"), "opaque: {token}");
        assert_eq!(key.open("alice", sent, &token).unwrap(), cursor);
        // Another replica derives the same key from the same internal token.
        let replica = PageTokenKey::derive("internal-test-token-0123456789");
        assert_eq!(replica.open("alice", sent, &token).unwrap(), cursor);

        let mut refused = vec![
            PageTokenKey::derive("another-internal-token-000000").seal("alice", sent, &cursor),
            key.seal("bob", sent, &cursor),
            key.seal("alice", received, &cursor),
            format!("{token}x"),
            format!("x{token}"),
            token.replace('.', ""),
            format!("{token}.{token}"),
            "18446744073709551615.0.2601221000000000001003.0".to_owned(),
        ];
        // The page number reset in the cursor text, the MAC kept.
        let (_, tag) = token.split_once('.').unwrap();
        let reset = cursor.encode().replace(".4", ".0");
        refused.push(format!("{}.{tag}", URL_SAFE_NO_PAD.encode(reset)));
        // Every single character changed.
        for at in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            refused.push(String::from_utf8(bytes).unwrap());
        }
        for bad in refused {
            let status = key.open("alice", sent, &bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(status.message().starts_with("page_token:"), "{status:?}");
        }
        // A MACed cursor with an overflowing time is refused too (a key
        // leak must not turn into a panic).
        let mac = key.mac(
            "alice",
            sent,
            "18446744073709551615.0.2601221000000000001003.0",
        );
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode("18446744073709551615.0.2601221000000000001003.0"),
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            key.open("alice", sent, &forged).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}

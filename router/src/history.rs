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

use redcell_proto::v1::{self as pb, cell_internal_client::CellInternalClient};
use redcell_topology::HistoryMode;
use tonic::Status;

use crate::{
    route,
    service::{Caller, RouterService},
};

/// Entries per page when the caller asks for 0, and the most per page.
const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// Where the next page starts: strictly older than (`at`, `id`); `page` counts
/// pages served, for the `pages: N` degrade switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: SystemTime,
    pub id: String,
    pub page: u32,
}

impl Cursor {
    /// `secs.nanos.id.page`, opaque to clients.
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

    pub fn decode(token: &str) -> Option<Cursor> {
        let mut parts = token.split('.');
        let secs: u64 = parts.next()?.parse().ok()?;
        let nanos: u32 = parts.next()?.parse().ok().filter(|n| *n < 1_000_000_000)?;
        let id = parts.next()?;
        let page: u32 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || id.len() != 22 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Cursor {
            at: UNIX_EPOCH + Duration::new(secs, nanos),
            id: id.to_owned(),
            page,
        })
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

#[derive(Debug, Clone, Copy, Default)]
pub struct History;

impl History {
    pub(crate) async fn serve(
        &self,
        router: &RouterService,
        caller: &Caller,
        request: pb::HistoryRequest,
    ) -> Result<pb::HistoryResponse, Status> {
        let user = &caller.user;
        let topology = router.topology.load();
        let cursor = match request.page_token.as_str() {
            "" => None,
            token => Some(Cursor::decode(token).ok_or_else(|| {
                Status::invalid_argument("page_token: not a token this service issued")
            })?),
        };
        let page = cursor.as_ref().map_or(0, |cursor| cursor.page);
        let pages_allowed = match topology.history_mode() {
            HistoryMode::Off => {
                return Err(Status::unavailable(
                    "history is switched off for now (degrade.history: off); retry later",
                ));
            }
            HistoryMode::Pages(pages) => Some(pages),
            HistoryMode::On => None,
        };
        if pages_allowed.is_some_and(|pages| page >= pages) {
            return Ok(pb::HistoryResponse {
                entries: Vec::new(),
                next_page_token: String::new(),
                degraded: true,
            });
        }
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            size if size <= MAX_PAGE => size,
            size => {
                return Err(Status::invalid_argument(format!(
                    "page_size: must be at most {MAX_PAGE}, got {size}"
                )));
            }
        };
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
            let mut attempts = Vec::with_capacity(servers.len());
            for server in &servers {
                attempts.push((
                    router.directory.channel(server)?,
                    router.outgoing(caller, message.clone())?,
                ));
            }
            // The cell's servers in order, the next one on UNAVAILABLE, each
            // with what is left of the call's deadline.
            let deadline = caller.deadline;
            calls.spawn(async move {
                let mut last = Status::unavailable("cell has no server");
                for (channel, mut request) in attempts {
                    let Some(left) = deadline.remaining() else {
                        break;
                    };
                    request.set_timeout(left);
                    match CellInternalClient::new(channel).cell_history(request).await {
                        Err(status) if status.code() == tonic::Code::Unavailable => last = status,
                        other => return other,
                    }
                }
                Err(last)
            });
        }
        let mut slices = Vec::new();
        let mut degraded = false;
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok(Ok(response)) => slices.push(response.into_inner().entries),
                Ok(Err(status)) => {
                    tracing::warn!(%status, "a cell's history slice failed; serving a partial page");
                    degraded = true;
                }
                Err(_) => degraded = true,
            }
        }
        let (entries, more) = merge(slices, limit as usize);
        let last_allowed = pages_allowed.is_some_and(|pages| page + 1 >= pages);
        let next_page_token = match entries.last() {
            Some(last) if more && !last_allowed => {
                let (at, id) = sort_key(last);
                Cursor {
                    at,
                    id,
                    page: page + 1,
                }
                .encode()
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
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}

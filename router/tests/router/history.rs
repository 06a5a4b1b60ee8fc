//! History across cells (DESIGN.md §4): the router fans out to every cell,
//! merges newest first, pages with an opaque keyset cursor, and honours the
//! `degrade.history` switch of the reloaded topology.

use std::{collections::HashSet, time::SystemTime};

use redcell_proto::v1 as pb;
use tonic::Code;

use crate::stack::{Builder, Client, Stack, topology_text};

/// Most pages any listing here may take: a cursor that never ends fails the
/// test instead of hanging it.
const MAX_PAGES: usize = 50;

/// Funds `user` and sends one LUCKY envelope from `region` (or the router's own).
async fn send_from(
    stack: &mut Stack,
    user: &str,
    region: Option<&str>,
    key: &str,
    total: i64,
    count: u32,
) -> pb::Envelope {
    stack.fund(user, total).await;
    let mut client = match region {
        Some(region) => stack.client_in(user, region),
        None => stack.client(user),
    };
    client
        .send(pb::SendRequest {
            total_cents: total,
            count,
            kind: pb::EnvelopeKind::Lucky.into(),
            greeting: "大吉大利".into(),
            recipients: Vec::new(),
            idempotency_key: key.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap()
}

fn history_request(
    direction: pb::HistoryDirection,
    page_token: &str,
    page_size: u32,
) -> pb::HistoryRequest {
    pb::HistoryRequest {
        direction: direction.into(),
        page_token: page_token.into(),
        page_size,
    }
}

/// Every page from `first_token` on, until a page without a next token.
async fn all_pages(
    client: &mut Client,
    direction: pb::HistoryDirection,
    first_token: &str,
    page_size: u32,
) -> Vec<pb::HistoryResponse> {
    let mut pages = Vec::new();
    let mut token = first_token.to_owned();
    loop {
        let page = client
            .history(history_request(direction, &token, page_size))
            .await
            .unwrap()
            .into_inner();
        token = page.next_page_token.clone();
        pages.push(page);
        if token.is_empty() {
            return pages;
        }
        assert!(pages.len() < MAX_PAGES, "history never ended: {pages:#?}");
    }
}

fn entry_id(entry: &pb::HistoryEntry) -> String {
    entry.envelope.as_ref().unwrap().id.clone()
}

/// The envelope IDs of each page, for failure messages.
fn page_ids(pages: &[pb::HistoryResponse]) -> Vec<Vec<String>> {
    pages
        .iter()
        .map(|page| page.entries.iter().map(entry_id).collect())
        .collect()
}

/// Full pages of `page_size`, then the rest: what exact keyset pages of
/// `total` entries look like.
fn exact_sizes(total: usize, page_size: usize) -> Vec<usize> {
    let mut sizes = vec![page_size; total / page_size];
    if !total.is_multiple_of(page_size) || total == 0 {
        sizes.push(total % page_size);
    }
    sizes
}

fn page_sizes(pages: &[pb::HistoryResponse]) -> Vec<usize> {
    pages.iter().map(|page| page.entries.len()).collect()
}

/// The entries of all pages, in order, checking no ID appears twice.
fn flatten(pages: &[pb::HistoryResponse]) -> Vec<pb::HistoryEntry> {
    let entries: Vec<pb::HistoryEntry> = pages
        .iter()
        .flat_map(|page| page.entries.iter().cloned())
        .collect();
    let ids: Vec<String> = entries.iter().map(entry_id).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an entry on two pages: {ids:?}");
    entries
}

/// `user`'s paid envelopes in every cell's order DB, newest first (created_at,
/// then ID, both descending): the order History SENT must reproduce.
async fn sent_in_databases(stack: &Stack, user: &str) -> Vec<(String, SystemTime)> {
    let mut all = Vec::new();
    for cell in &stack.cells {
        let client = cell.orders.connect().await.unwrap();
        let rows = client
            .query(
                "SELECT id, created_at FROM envelopes WHERE sender = $1 AND status IN (2, 3, 4)",
                &[&user],
            )
            .await
            .unwrap();
        for row in rows {
            all.push((row.get::<_, String>(0), row.get::<_, SystemTime>(1)));
        }
    }
    all.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
    all
}

/// `user`'s claims in every cell's order DB as (envelope ID, amount, opened_at),
/// newest first: the order History RECEIVED must reproduce.
async fn received_in_databases(stack: &Stack, user: &str) -> Vec<(String, i64, SystemTime)> {
    let mut all = Vec::new();
    for cell in &stack.cells {
        let client = cell.orders.connect().await.unwrap();
        let rows = client
            .query(
                "SELECT envelope_id, amount_cents, opened_at FROM claims WHERE user_id = $1",
                &[&user],
            )
            .await
            .unwrap();
        for row in rows {
            all.push((
                row.get::<_, String>(0),
                row.get::<_, i64>(1),
                row.get::<_, SystemTime>(2),
            ));
        }
    }
    all.sort_by(|a, b| (b.2, &b.0).cmp(&(a.2, &a.0)));
    all
}

fn at(entry: &pb::HistoryEntry) -> SystemTime {
    SystemTime::try_from(entry.at.unwrap()).unwrap()
}

/// Checks a full SENT listing of `user` against the DBs and the sends made.
async fn check_sent(
    stack: &Stack,
    user: &str,
    pages: &[pb::HistoryResponse],
    sent: &[pb::Envelope],
) -> Vec<String> {
    let entries = flatten(pages);
    for page in pages {
        assert!(!page.degraded, "{user}: nothing degraded");
    }
    let ids: Vec<String> = entries.iter().map(entry_id).collect();
    let expected = sent_in_databases(stack, user).await;
    let expected_ids: Vec<String> = expected.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, expected_ids, "{user}: newest first, as in the DBs");
    // Sent one after another, so newest first is the reverse of sending.
    let reversed: Vec<String> = sent.iter().rev().map(|e| e.id.clone()).collect();
    assert_eq!(ids, reversed, "{user}: the reverse of the sending order");
    for (entry, (id, created_at)) in entries.iter().zip(&expected) {
        let envelope = entry.envelope.as_ref().unwrap();
        assert_eq!(envelope.sender, user, "{id}");
        assert_eq!(at(entry), *created_at, "{id}: ordered by created_at");
        assert_eq!(
            SystemTime::try_from(envelope.created_at.unwrap()).unwrap(),
            *created_at,
            "{id}"
        );
        assert!(entry.claim.is_none(), "{id}: SENT carries no claim");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_merges_every_cell_newest_first_in_exact_pages() {
    let mut stack = Builder::default().start().await;
    let mut sent: Vec<(&str, Vec<pb::Envelope>)> = Vec::new();
    for (user, region) in [("alice", None), ("bob", None), ("carol", Some("south"))] {
        let mut envelopes = Vec::new();
        for index in 0..8 {
            let key = format!("history-{index}");
            let total = 500 + i64::from(index);
            envelopes.push(send_from(&mut stack, user, region, &key, total, 3).await);
        }
        sent.push((user, envelopes));
    }
    let alice_cells: HashSet<String> = sent[0].1.iter().map(|e| stack.cell_of(&e.id)).collect();
    assert!(
        alice_cells.len() >= 2,
        "alice's envelopes span cells: {alice_cells:?}"
    );

    // Dave opens a share of four of alice's (north) and four of carol's
    // (south) envelopes: claims in several cells.
    let mut opened = Vec::new();
    let mut dave = stack.client("dave");
    for envelope in sent[0].1.iter().take(4).chain(sent[2].1.iter().take(4)) {
        let reply = dave
            .open(pb::OpenRequest {
                envelope_id: envelope.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status(), pb::ShareStatus::Available);
        opened.push((envelope.id.clone(), reply.amount_cents));
    }
    let dave_cells: HashSet<String> = opened.iter().map(|(id, _)| stack.cell_of(id)).collect();
    assert!(
        dave_cells.len() >= 2,
        "dave's claims span cells: {dave_cells:?}"
    );
    // Bob opens one of alice's: it must show in bob's history, not dave's.
    let bob_open = stack
        .client("bob")
        .open(pb::OpenRequest {
            envelope_id: sent[0].1[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    // SENT, page size 3: 8 envelopes in pages of 3, 3, 2, each exactly once;
    // and the same for every other page size.
    for (user, envelopes) in &sent {
        let mut client = stack.client(user);
        let pages = all_pages(&mut client, pb::HistoryDirection::Sent, "", 3).await;
        assert_eq!(page_sizes(&pages), [3, 3, 2], "{user}");
        let ids = check_sent(&stack, user, &pages, envelopes).await;
        let own: HashSet<&String> = envelopes.iter().map(|e| &e.id).collect();
        assert_eq!(ids.iter().collect::<HashSet<_>>(), own, "{user}: own only");
        for page_size in 1..=9 {
            let pages = all_pages(&mut client, pb::HistoryDirection::Sent, "", page_size).await;
            assert_eq!(
                page_sizes(&pages),
                exact_sizes(8, page_size as usize),
                "{user}, page size {page_size}: pages {:?}, newest first {ids:?}, cells {:?}",
                page_ids(&pages),
                ids.iter().map(|id| stack.cell_of(id)).collect::<Vec<_>>()
            );
            check_sent(&stack, user, &pages, envelopes).await;
        }
        // The default page size takes them all at once.
        let whole = client
            .history(history_request(pb::HistoryDirection::Sent, "", 0))
            .await
            .unwrap()
            .into_inner();
        assert!(whole.next_page_token.is_empty());
        assert_eq!(whole.entries.iter().map(entry_id).collect::<Vec<_>>(), ids);
    }

    // RECEIVED: dave's eight claims across cells, with their amounts.
    let mut dave = stack.client("dave");
    for page_size in 1..=9 {
        let pages = all_pages(&mut dave, pb::HistoryDirection::Received, "", page_size).await;
        assert_eq!(
            page_sizes(&pages),
            exact_sizes(8, page_size as usize),
            "dave, page size {page_size}: pages {:?}, claims {:?}",
            page_ids(&pages),
            received_in_databases(&stack, "dave").await
        );
    }
    let pages = all_pages(&mut dave, pb::HistoryDirection::Received, "", 3).await;
    assert_eq!(page_sizes(&pages), [3, 3, 2]);
    assert!(pages.iter().all(|page| !page.degraded));
    let entries = flatten(&pages);
    let expected = received_in_databases(&stack, "dave").await;
    assert_eq!(expected.len(), 8);
    let listed: Vec<(String, i64)> = entries
        .iter()
        .map(|entry| (entry_id(entry), entry.claim.as_ref().unwrap().amount_cents))
        .collect();
    let in_databases: Vec<(String, i64)> = expected
        .iter()
        .map(|(id, amount, _)| (id.clone(), *amount))
        .collect();
    assert_eq!(listed, in_databases, "newest claim first, as in the DBs");
    // Opened one after another: newest first is the reverse of opening.
    let reversed: Vec<(String, i64)> = opened.iter().rev().cloned().collect();
    assert_eq!(listed, reversed, "the amounts Open returned");
    for (entry, (id, _, opened_at)) in entries.iter().zip(&expected) {
        let claim = entry.claim.as_ref().unwrap();
        assert_eq!(claim.user, "dave", "{id}");
        assert_eq!(at(entry), *opened_at, "{id}: ordered by opened_at");
        assert_eq!(
            SystemTime::try_from(claim.opened_at.unwrap()).unwrap(),
            *opened_at
        );
        assert!(claim.sequence >= 1, "{id}");
    }

    // Bob received one; alice and carol none; dave sent none.
    let mut bob = stack.client("bob");
    let received = all_pages(&mut bob, pb::HistoryDirection::Received, "", 3).await;
    let received = flatten(&received);
    assert_eq!(received.len(), 1);
    assert_eq!(entry_id(&received[0]), sent[0].1[0].id);
    assert_eq!(
        received[0].claim.as_ref().unwrap().amount_cents,
        bob_open.amount_cents
    );
    for (user, direction) in [
        ("alice", pb::HistoryDirection::Received),
        ("carol", pb::HistoryDirection::Received),
        ("dave", pb::HistoryDirection::Sent),
    ] {
        let page = stack
            .client(user)
            .history(history_request(direction, "", 3))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.is_empty(), "{user} {direction:?}: {page:?}");
        assert!(page.next_page_token.is_empty());
        assert!(!page.degraded);
    }

    // A page token this service never issued is refused, naming the field.
    let mut alice = stack.client("alice");
    let first = alice
        .history(history_request(pb::HistoryDirection::Sent, "", 3))
        .await
        .unwrap()
        .into_inner();
    let good = first.next_page_token.clone();
    assert!(!good.is_empty());
    let malformed = [
        "garbage".to_owned(),
        "1.2.3".to_owned(),
        "x.0.2601221000000000001042.1".to_owned(),
        "1.0.260122100000000000104.1".to_owned(),
        "1.0.2601221000000000001042.-1".to_owned(),
        "1.1000000000.2601221000000000001042.1".to_owned(),
        format!("{good}.7"),
        format!("{good} "),
        good.replace('.', "-"),
    ];
    for token in &malformed {
        for direction in [pb::HistoryDirection::Sent, pb::HistoryDirection::Received] {
            let status = alice
                .history(history_request(direction, token, 3))
                .await
                .expect_err(&format!("page_token {token:?} accepted"));
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{token:?}: {status:?}"
            );
            assert!(
                status.message().contains("page_token"),
                "{token:?}: names the field: {status:?}"
            );
        }
    }
    // Other bad requests name their fields too.
    let status = alice
        .history(history_request(pb::HistoryDirection::Sent, "", 101))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("page_size"), "{status:?}");
    let status = alice
        .history(history_request(pb::HistoryDirection::Unspecified, "", 3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("direction"), "{status:?}");
    stack.check_money().await;
}

/// Rewrites the topology with only the degrade switches changed.
pub(crate) async fn set_degrade(stack: &mut Stack, degrade: &str) {
    let text = topology_text(&stack.layout(), &[], "{}", degrade);
    stack.rewrite_topology(&text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_degrade_switch_is_honoured_on_reload() {
    let mut stack = Builder::default().start().await;
    let mut envelopes = Vec::new();
    for index in 0..5 {
        let key = format!("degrade-{index}");
        envelopes.push(send_from(&mut stack, "alice", None, &key, 300, 2).await);
    }
    let mut alice = stack.client("alice");
    let sent = pb::HistoryDirection::Sent;
    let baseline = all_pages(&mut alice, sent, "", 2).await;
    assert_eq!(
        page_sizes(&baseline),
        [2, 2, 1],
        "pages {:?}, in the DBs {:?}",
        page_ids(&baseline),
        sent_in_databases(&stack, "alice").await
    );
    let baseline_ids = check_sent(&stack, "alice", &baseline, &envelopes).await;
    let second_page_token = baseline[0].next_page_token.clone();

    // Off: History is refused as retryable; everything else still works.
    set_degrade(&mut stack, "{history: off}").await;
    for token in ["", second_page_token.as_str()] {
        for direction in [sent, pb::HistoryDirection::Received] {
            let status = alice
                .history(history_request(direction, token, 2))
                .await
                .expect_err("history is off");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
    }
    envelopes.push(send_from(&mut stack, "alice", None, "degrade-off", 300, 2).await);
    let opened = stack
        .client("bob")
        .open(pb::OpenRequest {
            envelope_id: envelopes[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.status(), pb::ShareStatus::Available);

    // One page: served, without a next token, marked degraded when more exist.
    set_degrade(&mut stack, "{history: {pages: 1}}").await;
    let first = alice
        .history(history_request(sent, "", 2))
        .await
        .unwrap()
        .into_inner();
    let all_ids: Vec<String> = sent_in_databases(&stack, "alice")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(all_ids.len(), 6);
    assert_eq!(
        first.entries.iter().map(entry_id).collect::<Vec<_>>(),
        all_ids[..2]
    );
    assert!(first.next_page_token.is_empty(), "{first:?}");
    assert!(first.degraded, "more exist: {first:?}");
    // A page that holds everything is whole, not degraded.
    let whole = alice
        .history(history_request(sent, "", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        whole.entries.iter().map(entry_id).collect::<Vec<_>>(),
        all_ids
    );
    assert!(whole.next_page_token.is_empty());
    assert!(!whole.degraded, "{whole:?}");
    // A cursor from before the switch gets no second page.
    let beyond = alice
        .history(history_request(sent, &second_page_token, 2))
        .await
        .unwrap()
        .into_inner();
    assert!(beyond.entries.is_empty(), "{beyond:?}");
    assert!(beyond.next_page_token.is_empty());
    assert!(beyond.degraded);
    // Bob's single claim fits on the one page.
    let received = stack
        .client("bob")
        .history(history_request(pb::HistoryDirection::Received, "", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(received.entries.len(), 1);
    assert_eq!(
        received.entries[0].claim.as_ref().unwrap().amount_cents,
        opened.amount_cents
    );
    assert!(!received.degraded);

    // Two pages: the second is the last, degraded since more exist.
    set_degrade(&mut stack, "{history: {pages: 2}}").await;
    let pages = all_pages(&mut alice, sent, "", 2).await;
    assert_eq!(page_sizes(&pages), [2, 2]);
    assert!(!pages[0].degraded);
    assert!(pages[1].degraded);
    assert_eq!(
        flatten(&pages).iter().map(entry_id).collect::<Vec<_>>(),
        all_ids[..4]
    );

    // Switched back on: the whole history again, and old cursors continue.
    set_degrade(&mut stack, "{}").await;
    let pages = all_pages(&mut alice, sent, "", 2).await;
    assert_eq!(page_sizes(&pages), [2, 2, 2]);
    let ids = check_sent(&stack, "alice", &pages, &envelopes).await;
    assert_eq!(ids, all_ids);
    let rest = all_pages(&mut alice, sent, &second_page_token, 2).await;
    assert!(rest.iter().all(|page| !page.degraded));
    assert_eq!(page_sizes(&rest), [2, 1]);
    assert_eq!(
        flatten(&rest).iter().map(entry_id).collect::<Vec<_>>(),
        baseline_ids[2..],
        "keyset pages stay exact across new envelopes"
    );
    stack.check_money().await;
}

/// `token` with its page number set to `page`, as a client editing it would:
/// a sealed token (`base64url(cursor).tag`) gets its cursor text rewritten
/// and its tag kept; a plain `secs.nanos.id.page` token gets its last field
/// replaced.
fn with_page(token: &str, page: u32) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let edit = |text: &str| {
        let (head, _) = text.rsplit_once('.').unwrap();
        format!("{head}.{page}")
    };
    if let Some((payload, tag)) = token.split_once('.')
        && let Ok(text) = URL_SAFE_NO_PAD.decode(payload)
        && let Ok(text) = String::from_utf8(text)
        && text.split('.').count() == 4
    {
        return format!("{}.{tag}", URL_SAFE_NO_PAD.encode(edit(&text)));
    }
    edit(token)
}

fn assert_bad_page_token<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().contains("page_token"),
        "{what}: names the field: {status:?}"
    );
}

/// Found from outside: a page token with an overflowing timestamp panicked the
/// router (the client saw CANCELLED), and a token's page number could be reset
/// by hand to read past `degrade: {history: {pages: N}}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_are_total_and_tamper_evident() {
    let mut stack = Builder::default().start().await;
    let mut envelopes = Vec::new();
    for index in 0..7 {
        let key = format!("sealed-{index}");
        envelopes.push(send_from(&mut stack, "alice", None, &key, 300, 2).await);
    }
    let mut alice = stack.client("alice");
    let sent = pb::HistoryDirection::Sent;
    let id = &envelopes[0].id;

    // Overflowing or out-of-range times, as plain text: refused, and the router
    // still serves (the same connection answers the next call).
    for token in [
        format!("18446744073709551615.0.{id}.0"),
        format!("9223372036854775807.999999999.{id}.0"),
        format!("18446744073709551615.999999999.{id}.4294967295"),
    ] {
        assert_bad_page_token(
            alice.history(history_request(sent, &token, 2)).await,
            &format!("overflowing {token}"),
        );
    }

    // Valid tokens still page through everything.
    let pages = all_pages(&mut alice, sent, "", 2).await;
    assert_eq!(page_sizes(&pages), [2, 2, 2, 1]);
    check_sent(&stack, "alice", &pages, &envelopes).await;

    // Capped at two pages: the second page's token is not handed out, and
    // resetting the page number of the first page's token is refused, as is
    // a token for another listing (bob's, or alice's RECEIVED).
    set_degrade(&mut stack, "{history: {pages: 2}}").await;
    let first = alice
        .history(history_request(sent, "", 2))
        .await
        .unwrap()
        .into_inner();
    let second = alice
        .history(history_request(sent, &first.next_page_token, 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.entries.len(), 2);
    assert!(second.degraded, "the last page allowed: {second:?}");
    assert!(second.next_page_token.is_empty());
    let reset = with_page(&first.next_page_token, 0);
    assert_ne!(reset, first.next_page_token);
    assert_bad_page_token(
        alice.history(history_request(sent, &reset, 2)).await,
        &format!("page number reset: {reset}"),
    );
    assert_bad_page_token(
        stack
            .client("bob")
            .history(history_request(sent, &first.next_page_token, 2))
            .await,
        "alice's token used by bob",
    );
    assert_bad_page_token(
        alice
            .history(history_request(
                pb::HistoryDirection::Received,
                &first.next_page_token,
                2,
            ))
            .await,
        "a SENT token used for RECEIVED",
    );
    stack.check_money().await;
}

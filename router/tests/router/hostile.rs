//! Hostile clients (issue 16 item 4): what an attacker can send the router and
//! the cells, and that nothing is written, nobody is impersonated and the
//! servers keep serving everyone else.
//!
//! access.rs already covers the plain cases (no token, another key, `alg:
//! none` with an empty signature, expired, bad subjects, an oversized token,
//! a cell called with no or a wrong internal credential, each user's rate
//! limit); this module adds what a determined client tries next: algorithm
//! switches, `nbf`, garbled and re-assembled tokens, metadata naming another
//! user, a user's token presented to a cell, injection strings in every
//! string field, oversized messages, floods, and (against the `router`
//! binary, to read its RSS) slow-loris connections.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use redcell_proto::internal::{AsUser, INTERNAL_METADATA, USER_METADATA};
use redcell_proto::token::mint_hs256;
use redcell_proto::v1::{
    self as pb, cell_internal_client::CellInternalClient, cell_ops_client::CellOpsClient,
    red_envelope_client::RedEnvelopeClient, router_ops_client::RouterOpsClient,
};
use tonic::{Code, Request, Status, transport::Channel};

use crate::access::assert_code;
use crate::stack::{Builder, HS_KEY, INTERNAL_TOKEN, Stack};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// How a hand-built token is signed.
#[derive(Clone, Copy)]
enum Sign<'a> {
    Hs256(&'a [u8]),
    Hs384(&'a [u8]),
    Hs512(&'a [u8]),
    /// A signature segment of this literal text.
    Literal(&'a str),
}

/// `base64url(header).base64url(payload).signature`, signed as told.
fn jws(header: &str, payload: &str, sign: Sign<'_>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = match sign {
        Sign::Hs256(key) => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
            mac.update(input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        Sign::Hs384(key) => {
            let mut mac = Hmac::<sha2::Sha384>::new_from_slice(key).unwrap();
            mac.update(input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        Sign::Hs512(key) => {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key).unwrap();
            mac.update(input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        Sign::Literal(text) => text.to_owned(),
    };
    format!("{input}.{signature}")
}

const HS256_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Claims for `alice`, valid for ten minutes.
fn alice_claims() -> String {
    format!(r#"{{"sub":"alice","iat":{},"exp":{}}}"#, now(), now() + 600)
}

/// Tokens the router must refuse (none of them covered by access.rs), each
/// with what it tries. All of them name `alice`, who has money, unless they
/// try a subject of their own.
fn hostile_tokens() -> Vec<(&'static str, String)> {
    let (t, alice) = (now(), alice_claims());
    let other_key: &[u8] = b"attacker-chosen-hs256-key-0123456789abcdef";
    let hs = |payload: &str| jws(HS256_HEADER, payload, Sign::Hs256(HS_KEY));
    let valid = hs(&alice);
    let swapped_payload = {
        let parts: Vec<&str> = valid.split('.').collect();
        let bob = format!(r#"{{"sub":"bob","iat":{t},"exp":{}}}"#, t + 600);
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(bob), parts[2])
    };
    vec![
        (
            "nbf an hour ahead",
            hs(&format!(
                r#"{{"sub":"alice","iat":{t},"nbf":{},"exp":{}}}"#,
                t + 3600,
                t + 7200
            )),
        ),
        (
            "alg HS512, signed with the router's key",
            jws(
                r#"{"alg":"HS512","typ":"JWT"}"#,
                &alice,
                Sign::Hs512(HS_KEY),
            ),
        ),
        (
            "alg HS384, signed with the router's key",
            jws(
                r#"{"alg":"HS384","typ":"JWT"}"#,
                &alice,
                Sign::Hs384(HS_KEY),
            ),
        ),
        (
            "alg RS256, HMAC-signed with the router's key",
            jws(
                r#"{"alg":"RS256","typ":"JWT"}"#,
                &alice,
                Sign::Hs256(HS_KEY),
            ),
        ),
        (
            "alg None, signed",
            jws(r#"{"alg":"None","typ":"JWT"}"#, &alice, Sign::Hs256(HS_KEY)),
        ),
        (
            "alg NONE, no signature",
            jws(r#"{"alg":"NONE"}"#, &alice, Sign::Literal("")),
        ),
        (
            "no alg in the header",
            jws(r#"{"typ":"JWT"}"#, &alice, Sign::Hs256(HS_KEY)),
        ),
        (
            "header not JSON",
            jws("not json at all", &alice, Sign::Hs256(HS_KEY)),
        ),
        (
            "header not base64",
            format!(
                "%%%.{}.{}",
                URL_SAFE_NO_PAD.encode(&alice),
                valid.rsplit('.').next().unwrap()
            ),
        ),
        (
            "an attacker's key named in jwk/kid",
            jws(
                r#"{"alg":"HS256","kid":"../../../dev/null","jwk":{"kty":"oct","k":"YXR0YWNrZXI"}}"#,
                &alice,
                Sign::Hs256(other_key),
            ),
        ),
        ("alice's signature over bob's claims", swapped_payload),
        ("four segments", format!("{valid}.extra")),
        ("signature stripped", {
            let mut cut = valid.clone();
            cut.truncate(valid.rfind('.').unwrap() + 1);
            cut
        }),
        (
            "exp as a string",
            hs(&format!(r#"{{"sub":"alice","exp":"{}"}}"#, t + 600)),
        ),
        ("exp 0", hs(r#"{"sub":"alice","exp":0}"#)),
        ("no exp", hs(r#"{"sub":"alice"}"#)),
        (
            "numeric sub",
            hs(&format!(r#"{{"sub":42,"exp":{}}}"#, t + 600)),
        ),
        (
            "sub with NUL",
            hs(&format!(r#"{{"sub":"alice\u0000","exp":{}}}"#, t + 600)),
        ),
        (
            "sub with CRLF and a header",
            hs(&format!(
                r#"{{"sub":"alice\r\nx-redcell-user: bob","exp":{}}}"#,
                t + 600
            )),
        ),
        (
            "sub an SQL injection",
            hs(&format!(
                r#"{{"sub":"'; DROP TABLE claims; --","exp":{}}}"#,
                t + 600
            )),
        ),
        (
            "sub a list",
            hs(&format!(r#"{{"sub":["alice","bob"],"exp":{}}}"#, t + 600)),
        ),
        (
            "an audience",
            hs(&format!(
                r#"{{"sub":"alice","aud":"elsewhere","exp":{}}}"#,
                t + 600
            )),
        ),
    ]
}

/// INVALID_ARGUMENT whose message names `field`.
fn invalid(result: Result<(), Status>, field: &str, what: &str) {
    let status = assert_code(result, Code::InvalidArgument, what);
    assert!(
        status.message().contains(field),
        "{what}: names {field}: {status:?}"
    );
}

/// What the whole deployment has written: rows of every money-bearing table,
/// summed over the cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    envelopes: i64,
    claims: i64,
    transfers: i64,
    send_requests: i64,
}

async fn written(stack: &Stack) -> Written {
    let mut total = Written {
        envelopes: 0,
        claims: 0,
        transfers: 0,
        send_requests: 0,
    };
    for cell in &stack.cells {
        let client = cell.orders.connect().await.unwrap();
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM envelopes), (SELECT count(*) FROM claims), \
                 (SELECT count(*) FROM transfers), (SELECT count(*) FROM send_requests)",
                &[],
            )
            .await
            .unwrap();
        total.envelopes += row.get::<_, i64>(0);
        total.claims += row.get::<_, i64>(1);
        total.transfers += row.get::<_, i64>(2);
        total.send_requests += row.get::<_, i64>(3);
    }
    total
}

/// One value of the order DB of the cell that holds envelope `id`; `sql`
/// takes `id` as `$1`.
async fn envelope_value<T>(stack: &Stack, id: &str, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    stack
        .cell(&stack.cell_of(id))
        .orders
        .connect()
        .await
        .unwrap()
        .query_one(sql, &[&id])
        .await
        .unwrap()
        .get(0)
}

/// The envelope of a Send that must succeed.
fn sent_envelope(reply: Result<tonic::Response<pb::SendResponse>, Status>) -> pb::Envelope {
    reply.unwrap().into_inner().envelope.unwrap()
}

/// Tables of every cell's order DB and of the ledger, to show none was
/// dropped or added.
async fn tables(stack: &Stack) -> Vec<String> {
    const QUERY: &str = "SELECT tablename FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";
    let mut names = Vec::new();
    for cell in &stack.cells {
        let client = cell.orders.connect().await.unwrap();
        for row in client.query(QUERY, &[]).await.unwrap() {
            names.push(format!("{}.{}", cell.name, row.get::<_, String>(0)));
        }
    }
    let ledger = stack.ledger_db.connect().await.unwrap();
    for row in ledger.query(QUERY, &[]).await.unwrap() {
        names.push(format!("ledger.{}", row.get::<_, String>(0)));
    }
    names
}

/// A request carrying `metadata` exactly (no interceptor adds anything).
fn with_metadata<T>(message: T, metadata: &[(&'static str, String)]) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in metadata {
        request.metadata_mut().append(*key, value.parse().unwrap());
    }
    request
}

fn channel_to(address: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy()
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", mint_hs256(HS_KEY, user, 3600).unwrap())
}

fn lucky(key: &str, greeting: &str) -> pb::SendRequest {
    pb::SendRequest {
        total_cents: 100,
        count: 2,
        kind: pb::EnvelopeKind::Lucky.into(),
        greeting: greeting.to_owned(),
        recipients: Vec::new(),
        idempotency_key: key.to_owned(),
    }
}

fn history(direction: pb::HistoryDirection, page_token: &str) -> pb::HistoryRequest {
    pb::HistoryRequest {
        direction: direction.into(),
        page_token: page_token.to_owned(),
        page_size: 0,
    }
}

fn get(envelope_id: &str, page_token: &str) -> pb::GetRequest {
    pb::GetRequest {
        envelope_id: envelope_id.to_owned(),
        page_token: page_token.to_owned(),
        page_size: 0,
    }
}

/// Calls every client RPC of the router with `authorization` and expects
/// each to be refused with `code`.
async fn every_rpc_refused(stack: &Stack, authorization: &str, envelope_id: &str, what: &str) {
    let mut client = RedEnvelopeClient::new(channel_to(stack.router_address));
    let auth = [("authorization", authorization.to_owned())];
    let code = Code::Unauthenticated;
    assert_code(
        client
            .send(with_metadata(lucky("hostile", "hi"), &auth))
            .await,
        code,
        &format!("Send, {what}"),
    );
    let grab = pb::GrabRequest {
        envelope_id: envelope_id.to_owned(),
    };
    assert_code(
        client.grab(with_metadata(grab, &auth)).await,
        code,
        &format!("Grab, {what}"),
    );
    let open = pb::OpenRequest {
        envelope_id: envelope_id.to_owned(),
    };
    assert_code(
        client.open(with_metadata(open, &auth)).await,
        code,
        &format!("Open, {what}"),
    );
    assert_code(
        client.get(with_metadata(get(envelope_id, ""), &auth)).await,
        code,
        &format!("Get, {what}"),
    );
    assert_code(
        client
            .history(with_metadata(
                history(pb::HistoryDirection::Sent, ""),
                &auth,
            ))
            .await,
        code,
        &format!("History, {what}"),
    );
}

// ---------------------------------------------------------------------------
// 1. Tokens
// ---------------------------------------------------------------------------

/// Every hostile token is UNAUTHENTICATED on every RPC, and nothing is
/// written: no envelope, claim, transfer or send request, no ledger change.
/// The positive control: the same header and claims, signed right, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_unauthenticated_and_write_nothing() {
    let mut stack = Builder::default().start().await;
    stack.fund("alice", 10_000).await;
    stack.fund("bob", 10_000).await;
    let envelope = stack.send("carol", "target", 1_000, 10).await;
    let before = written(&stack).await;

    let tokens = hostile_tokens();
    for (what, token) in &tokens {
        every_rpc_refused(&stack, &format!("Bearer {token}"), &envelope.id, what).await;
    }
    // Two credentials at once, one of them good: ambiguous, refused.
    let mut client = RedEnvelopeClient::new(channel_to(stack.router_address));
    let two = [
        ("authorization", bearer("alice")),
        ("authorization", format!("Bearer {}", tokens[0].1)),
    ];
    assert_code(
        client.send(with_metadata(lucky("two", "hi"), &two)).await,
        Code::Unauthenticated,
        "Send with two authorization entries",
    );

    assert_eq!(written(&stack).await, before, "nothing written");
    assert_eq!(stack.ledger.balance("alice").await.unwrap(), 10_000);
    assert_eq!(stack.ledger.balance("bob").await.unwrap(), 10_000);
    println!(
        "{} hostile tokens x 5 RPCs: all UNAUTHENTICATED",
        tokens.len()
    );

    // Control: the router's own header and alice's claims, signed with the
    // router's key, are served.
    let good = jws(HS256_HEADER, &alice_claims(), Sign::Hs256(HS_KEY));
    let sent = sent_envelope(
        client
            .send(with_metadata(
                lucky("control", "hi"),
                &[("authorization", format!("Bearer {good}"))],
            ))
            .await,
    );
    assert_eq!(sent.sender, "alice");
    stack.check_money().await;
}

// ---------------------------------------------------------------------------
// 2. Acting for another, 3. a cell called directly
// ---------------------------------------------------------------------------

/// The caller is the token's `sub`, whatever the request says: the client API
/// has no user field (DESIGN §4), so an attacker tries the metadata the
/// router uses towards cells (`x-redcell-user`, `x-redcell-internal`). The
/// router builds every cell request afresh, so those entries never leave it:
/// alice's Send debits alice, her Open is her claim, her History is hers, and
/// bob's money does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_act_for_another_user() {
    let mut stack = Builder::default().start().await;
    stack.fund("alice", 10_000).await;
    stack.fund("bob", 10_000).await;
    let bobs = stack.send("bob", "bobs", 1_000, 10).await;
    // An EXCLUSIVE envelope for carol, from dave.
    stack.fund("dave", 500).await;
    let for_carol = sent_envelope(
        stack
            .client("dave")
            .send(pb::SendRequest {
                total_cents: 500,
                count: 1,
                kind: pb::EnvelopeKind::Exclusive.into(),
                greeting: String::new(),
                recipients: vec!["carol".into()],
                idempotency_key: "for-carol".into(),
            })
            .await,
    );
    let bob_before = stack.ledger.balance("bob").await.unwrap();

    let posing = |user: &str, as_whom: &str| {
        vec![
            ("authorization", bearer(user)),
            (USER_METADATA, as_whom.to_owned()),
            (INTERNAL_METADATA, INTERNAL_TOKEN.to_owned()),
        ]
    };
    let mut router = RedEnvelopeClient::new(channel_to(stack.router_address));

    // Send: the sender is alice, and alice pays.
    let sent = sent_envelope(
        router
            .send(with_metadata(
                lucky("posing", "hi"),
                &posing("alice", "bob"),
            ))
            .await,
    );
    assert_eq!(sent.sender, "alice");
    assert_eq!(stack.ledger.balance("alice").await.unwrap(), 10_000 - 100);
    let sender: String = envelope_value(
        &stack,
        &sent.id,
        "SELECT sender FROM envelopes WHERE id = $1",
    )
    .await;
    assert_eq!(sender, "alice");

    // Open of bob's envelope: the claim is alice's, not bob's.
    let opened = router
        .open(with_metadata(
            pb::OpenRequest {
                envelope_id: bobs.id.clone(),
            },
            &posing("alice", "bob"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.status(), pb::ShareStatus::Available);
    let claimers: Vec<String> = stack
        .cell(&stack.cell_of(&bobs.id))
        .orders
        .connect()
        .await
        .unwrap()
        .query(
            "SELECT user_id FROM claims WHERE envelope_id = $1",
            &[&bobs.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(claimers, ["alice"]);

    // EXCLUSIVE: bob posing as carol is still bob, who is not eligible.
    let refused = router
        .open(with_metadata(
            pb::OpenRequest {
                envelope_id: for_carol.id.clone(),
            },
            &posing("bob", "carol"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refused.status(), pb::ShareStatus::NotEligible);

    // History: alice's own, not bob's.
    let page = router
        .history(with_metadata(
            history(pb::HistoryDirection::Sent, ""),
            &posing("alice", "bob"),
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = page
        .entries
        .iter()
        .map(|entry| entry.envelope.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, [sent.id.as_str()], "alice's sent envelopes only");

    // The internal credential alone (no bearer token) does not get in.
    assert_code(
        router
            .grab(with_metadata(
                pb::GrabRequest {
                    envelope_id: bobs.id.clone(),
                },
                &[
                    (USER_METADATA, "bob".to_owned()),
                    (INTERNAL_METADATA, INTERNAL_TOKEN.to_owned()),
                ],
            ))
            .await,
        Code::Unauthenticated,
        "the router with the internal credential and no token",
    );

    // Nothing of bob's moved: his balance is what it was before (his own
    // envelope's debit happened before), and carol's envelope is untouched.
    stack.drain_settlement().await;
    assert_eq!(stack.ledger.balance("bob").await.unwrap(), bob_before);
    let carol_claims: i64 = envelope_value(
        &stack,
        &for_carol.id,
        "SELECT count(*) FROM claims WHERE envelope_id = $1",
    )
    .await;
    assert_eq!(carol_claims, 0);
    stack.check_money().await;
}

/// A client that finds a cell's port cannot use its own credentials there:
/// a valid user token (as `authorization`, or in place of the internal
/// credential) is UNAUTHENTICATED on every cell service, and so is the
/// router's operator service without the internal credential. Nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_token_does_not_open_a_cell_or_the_routers_ops() {
    let mut stack = Builder::default().start().await;
    let envelope = stack.send("alice", "direct", 1_000, 5).await;
    stack.fund("mallory", 10_000).await;
    let before = written(&stack).await;
    let cell = stack.cell_of(&envelope.id);
    let channel = channel_to(stack.cell(&cell).servers[0].address);
    let token = bearer("mallory");
    let raw = token.trim_start_matches("Bearer ").to_owned();
    let attempts: Vec<(&str, Vec<(&'static str, String)>)> = vec![
        (
            "a user's bearer token",
            vec![
                ("authorization", token.clone()),
                (USER_METADATA, "mallory".into()),
            ],
        ),
        (
            "a user's token as the internal credential",
            vec![
                (INTERNAL_METADATA, raw.clone()),
                (USER_METADATA, "mallory".into()),
            ],
        ),
        (
            "'Bearer <token>' as the internal credential",
            vec![
                (INTERNAL_METADATA, token.clone()),
                (USER_METADATA, "alice".into()),
            ],
        ),
        (
            "two internal credentials, the first a user's token",
            vec![
                (INTERNAL_METADATA, raw.clone()),
                (INTERNAL_METADATA, INTERNAL_TOKEN.into()),
                (USER_METADATA, "mallory".into()),
            ],
        ),
    ];
    for (what, metadata) in &attempts {
        let mut client = RedEnvelopeClient::new(channel.clone());
        let send = client
            .send(with_metadata(lucky("direct-hostile", "hi"), metadata))
            .await;
        assert_code(send, Code::Unauthenticated, &format!("Send with {what}"));
        let open = pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        };
        let open = client.open(with_metadata(open, metadata)).await;
        assert_code(open, Code::Unauthenticated, &format!("Open with {what}"));
        let get = client
            .get(with_metadata(get(&envelope.id, ""), metadata))
            .await;
        assert_code(get, Code::Unauthenticated, &format!("Get with {what}"));
        let slice = pb::CellHistoryRequest {
            user: "alice".into(),
            direction: pb::HistoryDirection::Sent.into(),
            before: None,
            before_id: String::new(),
            limit: 0,
        };
        let slice = CellInternalClient::new(channel.clone())
            .cell_history(with_metadata(slice, metadata))
            .await;
        assert_code(
            slice,
            Code::Unauthenticated,
            &format!("CellHistory with {what}"),
        );
        let status = CellOpsClient::new(channel.clone())
            .cell_status(with_metadata(pb::CellStatusRequest {}, metadata))
            .await;
        assert_code(
            status,
            Code::Unauthenticated,
            &format!("CellStatus with {what}"),
        );
    }
    let router_status = RouterOpsClient::new(channel_to(stack.router_address))
        .router_status(with_metadata(
            pb::RouterStatusRequest {},
            &[("authorization", token.clone())],
        ))
        .await;
    assert_code(
        router_status,
        Code::Unauthenticated,
        "RouterStatus with a user's bearer token",
    );
    assert_eq!(written(&stack).await, before, "nothing written");
    assert_eq!(stack.ledger.balance("mallory").await.unwrap(), 10_000);
    stack.check_money().await;
}

// ---------------------------------------------------------------------------
// 4. Injection strings
// ---------------------------------------------------------------------------

/// Strings an attacker tries in every text field.
fn injections() -> Vec<(&'static str, String)> {
    vec![
        ("SQL", "'; DROP TABLE claims; --".to_owned()),
        ("SQL 2", "x' OR '1'='1".to_owned()),
        ("SQL 3", "1); DELETE FROM envelopes; --".to_owned()),
        ("NUL", "a\0b".to_owned()),
        ("CRLF", "a\r\nx-redcell-user: bob".to_owned()),
        ("format", "%s%n%x{}{0}${jndi:ldap://x/a}".to_owned()),
        ("path", "../../../etc/passwd".to_owned()),
        ("emoji x64", "😀".repeat(64)),
        ("emoji x10000", "😀".repeat(10_000)),
        ("RTL override and BOM", "\u{202E}\u{FEFF}abc".to_owned()),
        ("combining", "e\u{301}".repeat(32)),
        ("backslash and quotes", r#"\"\\'"`$(id)"#.to_owned()),
    ]
}

/// Injection strings in every string field of the client API (greeting,
/// idempotency key, recipients, envelope ids, page tokens, and the metadata
/// a client may send: region, traceparent): each is either refused
/// INVALID_ARGUMENT naming the field, with nothing written, or (a greeting
/// the rules allow) stored and read back byte for byte. Every table is still
/// there afterwards and the money checks hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_strings_are_refused_or_stored_verbatim() {
    let mut stack = Builder::default().start().await;
    let target = stack.send("carol", "target", 1_000, 10).await;
    let tables_before = tables(&stack).await;
    assert!(
        tables_before.iter().any(|t| t.ends_with(".claims")),
        "{tables_before:?}"
    );
    stack.fund("alice", 100_000).await;
    let mut alice = stack.client("alice");
    let mut stored = 0;
    for (index, (what, text)) in injections().into_iter().enumerate() {
        let before = written(&stack).await;
        // Idempotency key: refused.
        let reply = alice.send(lucky(&text, "hi")).await.map(|_| ());
        invalid(reply, "idempotency_key", &format!("idempotency_key {what}"));
        // Recipients of an EXCLUSIVE envelope: refused.
        let exclusive = pb::SendRequest {
            total_cents: 100,
            count: 1,
            kind: pb::EnvelopeKind::Exclusive.into(),
            greeting: String::new(),
            recipients: vec![text.clone()],
            idempotency_key: format!("excl-{index}"),
        };
        let reply = alice.send(exclusive).await.map(|_| ());
        invalid(reply, "recipients", &format!("recipients {what}"));
        // Envelope ids: refused by the router before any cell is asked.
        let reply = alice
            .grab(pb::GrabRequest {
                envelope_id: text.clone(),
            })
            .await
            .map(|_| ());
        invalid(reply, "envelope_id", &format!("Grab envelope_id {what}"));
        let reply = alice
            .open(pb::OpenRequest {
                envelope_id: text.clone(),
            })
            .await
            .map(|_| ());
        invalid(reply, "envelope_id", &format!("Open envelope_id {what}"));
        let reply = alice.get(get(&text, "")).await.map(|_| ());
        invalid(reply, "envelope_id", &format!("Get envelope_id {what}"));
        // Page tokens: Get's (the cell's) and History's (the router's).
        let reply = alice.get(get(&target.id, &text)).await.map(|_| ());
        invalid(reply, "page_token", &format!("Get page_token {what}"));
        let reply = alice
            .history(history(pb::HistoryDirection::Received, &text))
            .await
            .map(|_| ());
        invalid(reply, "page_token", &format!("History page_token {what}"));
        assert_eq!(written(&stack).await, before, "{what}: nothing written");

        // Greeting: at most 64 characters and no NUL are the only rules;
        // anything else is stored as sent and read back identical.
        let key = format!("greeting-{index}");
        let allowed = text.chars().count() <= 64 && !text.contains('\0');
        let reply = alice.send(lucky(&key, &text)).await;
        if !allowed {
            invalid(reply.map(|_| ()), "greeting", &format!("greeting {what}"));
            assert_eq!(written(&stack).await, before, "{what}: nothing written");
            continue;
        }
        let envelope = reply
            .unwrap_or_else(|status| panic!("greeting {what}: {status:?}"))
            .into_inner()
            .envelope
            .unwrap();
        assert_eq!(envelope.greeting, text, "{what}: Send's reply");
        let got = alice
            .get(get(&envelope.id, ""))
            .await
            .unwrap()
            .into_inner()
            .envelope
            .unwrap();
        assert_eq!(got.greeting, text, "{what}: Get");
        let row: String = envelope_value(
            &stack,
            &envelope.id,
            "SELECT greeting FROM envelopes WHERE id = $1",
        )
        .await;
        assert_eq!(row, text, "{what}: the order DB");
        stored += 1;
    }

    // Client metadata: a region that is not one is refused naming it; a
    // garbage traceparent is ignored (a fresh trace starts). Values with CR
    // or LF cannot be sent at all: HTTP/2 header values exclude them, and
    // the client library refuses to build such a request.
    let token = bearer("alice");
    let mut raw = RedEnvelopeClient::new(channel_to(stack.router_address));
    for (what, text) in injections() {
        let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(text.as_str()) else {
            continue;
        };
        let mut request = Request::new(lucky(&format!("region-{}", what.len()), "hi"));
        request
            .metadata_mut()
            .insert("authorization", token.parse().unwrap());
        request
            .metadata_mut()
            .insert(redcell_proto::internal::REGION_METADATA, value.clone());
        let reply = raw.send(request).await.map(|_| ());
        invalid(reply, "x-redcell-region", &format!("region {what}"));
        let mut request = Request::new(pb::GrabRequest {
            envelope_id: target.id.clone(),
        });
        request
            .metadata_mut()
            .insert("authorization", token.parse().unwrap());
        request.metadata_mut().insert("traceparent", value);
        let grabbed = raw.grab(request).await;
        assert!(grabbed.is_ok(), "traceparent {what}: {grabbed:?}");
    }

    assert_eq!(tables(&stack).await, tables_before, "every table intact");
    println!(
        "{} injection strings in 8 fields: refused INVALID_ARGUMENT naming the field, \
         {stored} greetings stored verbatim",
        injections().len()
    );
    stack.check_money().await;
}

// ---------------------------------------------------------------------------
// 5. Message size
// ---------------------------------------------------------------------------

/// A request over `--max-message-bytes` (64 KiB by default, on the router and
/// on every cell) is refused before any handler runs, `OUT_OF_RANGE` (tonic's
/// code for a message over the limit), with nothing written; both servers go
/// on serving. Just under the limit the request is decoded and refused by
/// validation, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_and_the_servers_keep_serving() {
    let mut stack = Builder::default().start().await;
    let envelope = stack.send("carol", "target", 1_000, 10).await;
    stack.fund("alice", 10_000).await;
    let before = written(&stack).await;
    let limit = redcell_router::config::ConnectionLimits::default().max_message_bytes;
    let mut alice = stack.client("alice");
    let huge = "x".repeat(limit + 1);
    let oversized = [
        ("greeting", lucky("big", &huge)),
        ("idempotency_key", lucky(&huge, "hi")),
        ("recipients", {
            let mut request = lucky("many", "hi");
            request.recipients = vec!["a".repeat(64); limit / 64 + 1];
            request
        }),
    ];
    for (what, request) in oversized {
        let status = assert_code(
            alice.send(request).await,
            Code::OutOfRange,
            &format!("a Send with an oversized {what}"),
        );
        println!(
            "router, oversized {what}: {:?} {}",
            status.code(),
            status.message()
        );
    }
    let open = pb::OpenRequest {
        envelope_id: huge.clone(),
    };
    assert_code(
        alice.open(open).await,
        Code::OutOfRange,
        "an oversized Open",
    );
    // Under the limit: decoded, then refused by validation.
    let near = "x".repeat(limit - 1_024);
    let status = assert_code(
        alice.send(lucky("near", &near)).await,
        Code::InvalidArgument,
        "a 63 KiB greeting",
    );
    assert!(status.message().contains("greeting"), "{status:?}");

    // A cell: the credential is checked first; with it, the size.
    let cell = stack.cell_of(&envelope.id);
    let channel = channel_to(stack.cell(&cell).servers[0].address);
    let router_like = AsUser::new("alice")
        .unwrap()
        .with_internal(INTERNAL_TOKEN)
        .unwrap();
    let mut direct = RedEnvelopeClient::with_interceptor(channel.clone(), router_like);
    let status = assert_code(
        direct.send(lucky("big", &huge)).await,
        Code::OutOfRange,
        "an oversized Send to a cell",
    );
    println!(
        "cell, oversized greeting: {:?} {}",
        status.code(),
        status.message()
    );
    assert_code(
        direct
            .grab(pb::GrabRequest {
                envelope_id: huge.clone(),
            })
            .await,
        Code::OutOfRange,
        "an oversized Grab to a cell",
    );
    let mut anonymous = RedEnvelopeClient::new(channel);
    assert_code(
        anonymous.send(lucky("big", &huge)).await,
        Code::Unauthenticated,
        "an oversized Send to a cell without the credential",
    );
    assert_eq!(written(&stack).await, before, "nothing written");
    assert_eq!(stack.ledger.balance("alice").await.unwrap(), 10_000);

    // Both still serve, on the same connections.
    let grabbed = direct
        .grab(pb::GrabRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grabbed.status(), pb::ShareStatus::Available);
    let sent = sent_envelope(alice.send(lucky("after", "hi")).await);
    assert_eq!(sent.sender, "alice");
    stack.check_money().await;
}

// ---------------------------------------------------------------------------
// 6. Floods
// ---------------------------------------------------------------------------

/// One user floods: their rate limit answers RESOURCE_EXHAUSTED while another
/// user is served. Then many users flood Opens at once past the global
/// in-flight limit: the excess is shed RESOURCE_EXHAUSTED, the router stays
/// up, a well-behaved client still gets answers, and every acknowledged Open
/// is exactly one claim (the money checks hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_shed_and_others_are_still_served() {
    let mut stack = Builder {
        rate_per_user: 5,
        rate_burst: 10,
        max_in_flight: 8,
        ..Builder::default()
    }
    .start()
    .await;
    let envelope = stack.send("carol", "flooded", 500, 500).await;
    let grab = || pb::GrabRequest {
        envelope_id: envelope.id.clone(),
    };

    // One user: 200 Grabs at once on one connection.
    let mallory = stack.client("mallory");
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let mut client = mallory.clone();
            let request = grab();
            tokio::spawn(async move { client.grab(request).await.map(|_| ()) })
        })
        .collect();
    // Another user meanwhile: the global limit may shed some of their calls
    // too, their own rate limit never does.
    let mut bob = stack.client("bob");
    // A shed call never reaches the handler, so it charges nothing to
    // bob's bucket: he retries until answered (at most 200 times).
    let (mut bob_answered, mut bob_shed) = (0, 0);
    while bob_answered == 0 && bob_shed < 200 {
        match bob.grab(grab()).await {
            Ok(reply) => {
                assert_eq!(reply.into_inner().status(), pb::ShareStatus::Available);
                bob_answered += 1;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(!status.message().contains("rate limit"), "bob: {status:?}");
                bob_shed += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(status) => panic!("bob: {status:?}"),
        }
    }
    let (mut ok, mut limited) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => ok += 1,
            Err(status) if status.code() == Code::ResourceExhausted => limited += 1,
            Err(status) => panic!("a flood Grab: {status:?}"),
        }
    }
    println!(
        "one user, 200 Grabs at once: {ok} served, {limited} RESOURCE_EXHAUSTED; \
         another user meanwhile: answered after {bob_shed} calls shed by the global limit"
    );
    assert_eq!(ok + limited, 200);
    assert!(ok <= 10 + 5, "at most the burst and a little refill: {ok}");
    assert!(bob_answered > 0, "another user is served during the flood");

    // Many users: 400 Opens at once, each user one, on four connections.
    let channels: Vec<Channel> = (0..4).map(|_| channel_to(stack.router_address)).collect();
    let started = Instant::now();
    let opens: Vec<_> = (0..400)
        .map(|n| {
            let token = bearer(&format!("crowd-{n}"));
            let channel = channels[n % channels.len()].clone();
            let request = with_metadata(
                pb::OpenRequest {
                    envelope_id: envelope.id.clone(),
                },
                &[("authorization", token)],
            );
            tokio::spawn(async move {
                RedEnvelopeClient::new(channel)
                    .open(request)
                    .await
                    .map(|reply| reply.into_inner().amount_cents)
            })
        })
        .collect();
    // The well-behaved client: one Grab at a time while the crowd floods,
    // retrying shed calls after a short pause.
    let well_behaved = tokio::spawn({
        let mut client = stack.client("polite");
        let request = grab();
        async move {
            let (mut answered, mut shed) = (0, 0);
            // Up to 5 answers (inside its own rate limit, burst 10; shed
            // calls charge nothing), a call every 50 ms, at most 100 calls.
            for _ in 0..100 {
                if answered == 5 {
                    break;
                }
                match client.grab(request.clone()).await {
                    Ok(_) => answered += 1,
                    Err(status) if status.code() == Code::ResourceExhausted => shed += 1,
                    Err(status) => panic!("the well-behaved client: {status:?}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (answered, shed)
        }
    });
    let (mut opened, mut shed, mut cents) = (0i64, 0, 0);
    let mut messages = std::collections::BTreeSet::new();
    for open in opens {
        match open.await.unwrap() {
            Ok(amount) => {
                opened += 1;
                cents += amount;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                shed += 1;
                messages.insert(status.message().to_owned());
            }
            Err(status) => panic!("a crowd Open: {status:?}"),
        }
    }
    let flood_time = started.elapsed();
    let (answered, polite_shed) = well_behaved.await.unwrap();
    println!(
        "400 users, one Open each, max-in-flight 8: {opened} opened ({cents} cents), \
         {shed} shed {messages:?} in {flood_time:?}; the well-behaved client: \
         {answered} answered, {polite_shed} shed"
    );
    assert_eq!(opened + shed, 400);
    assert!(
        answered > 0,
        "the well-behaved client got answers during the flood"
    );
    // The router is up and serves the well-behaved client after the flood.
    assert_eq!(
        stack
            .client("polite")
            .grab(grab())
            .await
            .unwrap()
            .into_inner()
            .status(),
        pb::ShareStatus::Available
    );
    // Every acknowledged Open is one claim, and nothing else was claimed.
    let claims: i64 = envelope_value(
        &stack,
        &envelope.id,
        "SELECT count(*) FROM claims WHERE envelope_id = $1",
    )
    .await;
    assert_eq!(claims, opened, "one claim per acknowledged Open");
    stack.check_money().await;
}

// ---------------------------------------------------------------------------
// 6. Slow-loris and memory, against the `router` binary
// ---------------------------------------------------------------------------

const BUNDLED_TOPOLOGY: &str = include_str!("../../../cells.yaml");
const BINARY_KEY: &[u8] = b"a-development-key-of-32-bytes-or-more!!";

/// The router process's resident set, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// How many connections to `port` the process holds: its sockets (from
/// /proc/PID/fd) that /proc/PID/net/tcp lists with `port` as the local port
/// and a state other than LISTEN. Its own outgoing sockets (health checks of
/// the cells) do not count.
fn connections_of(pid: u32, port: u16) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: std::collections::HashSet<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let local_port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9
                && fields[1].ends_with(&local_port)
                && fields[3] != "0A"
                && inodes.contains(fields[9])
        })
        .count()
}

/// The `router` binary with small limits. No cell runs: History still
/// answers (an empty, degraded page) after authentication and the rate
/// limit, which is the path a flood takes.
struct Process {
    _dir: tempfile::TempDir,
    child: std::process::Child,
    address: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MAX_CONNECTIONS: usize = 32;
const MAX_IN_FLIGHT: usize = 16;
const MAX_STREAMS: u32 = 16;
const HANDSHAKE_MS: u64 = 500;

fn start_router_process() -> Process {
    start_router_process_with(&[])
}

/// A directory with the bundled topology and the binary tests' key.
fn router_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cells.yaml"), BUNDLED_TOPOLOGY).unwrap();
    std::fs::write(dir.path().join("hs.key"), BINARY_KEY).unwrap();
    dir
}

/// The `router` binary with the required flags, on the files of
/// [`router_files`], listening on `listen`.
fn router_command(dir: &tempfile::TempDir, listen: &str) -> Command {
    let topology = dir.path().join("cells.yaml");
    let key = dir.path().join("hs.key");
    let mut command = Command::new(env!("CARGO_BIN_EXE_router"));
    command
        .args(["--topology", topology.to_str().unwrap()])
        .args(["--listen", listen])
        .args(["--region", "north"])
        .args(["--jwt-hs256-key-file", key.to_str().unwrap()])
        .args(["--internal-token", "router-internal-token-0123456789"]);
    command
}

/// [`start_router_process`] with `extra` flags after the test's own.
fn start_router_process_with(extra: &[&str]) -> Process {
    let dir = router_files();
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = router_command(&dir, &address.to_string())
        .args(["--max-connections", &MAX_CONNECTIONS.to_string()])
        .args(["--handshake-timeout-ms", &HANDSHAKE_MS.to_string()])
        .args(["--max-in-flight", &MAX_IN_FLIGHT.to_string()])
        .args(["--max-streams-per-connection", &MAX_STREAMS.to_string()])
        .args(["--rate-per-user", "5", "--rate-burst", "5"])
        .args(["--cell-timeout-ms", "2000"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process {
        _dir: dir,
        child,
        address,
    }
}

/// One History call as `user` on `channel`.
async fn history_as(channel: &Channel, user: &str) -> Result<(), Status> {
    let token = mint_hs256(BINARY_KEY, user, 600).unwrap();
    let request = with_metadata(
        history(pb::HistoryDirection::Sent, ""),
        &[("authorization", format!("Bearer {token}"))],
    );
    RedEnvelopeClient::new(channel.clone())
        .history(request)
        .await
        .map(|_| ())
}

/// Until the well-behaved client gets an answer on a fresh connection:
/// (attempts, time). Panics after a minute.
async fn first_answer(address: SocketAddr) -> (u32, Duration) {
    let started = Instant::now();
    for attempt in 1.. {
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        if history_as(&channel, "polite").await.is_ok() {
            return (attempt, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the well-behaved client got no answer in a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Slow-loris: 300 connections that send nothing and 100 that send a few
/// bytes of the HTTP/2 preface and stall, many more than `--max-connections`.
/// The router holds at most 32 at once, closes each after the 500 ms
/// handshake timeout, keeps answering a well-behaved client, and its RSS
/// stays under a bound computed from the limits. Then a flood of History
/// calls from many users over few connections: shed or rate-limited, never
/// a crash, RSS bounded the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_and_floods_leave_the_router_process_bounded() {
    let mut router = start_router_process();
    let pid = router.child.id();
    let address = router.address;
    // Up and answering before anything hostile starts.
    let (_, startup) = first_answer(address).await;
    let rss_start = rss_kib(pid);

    // Slow-loris connections, opened from blocking threads (the kernel
    // completes the TCP handshake from the backlog even when the router is
    // not accepting).
    let loris = tokio::task::spawn_blocking(move || {
        let mut sockets = Vec::new();
        for n in 0..400 {
            let Ok(mut socket) = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            else {
                continue;
            };
            if n % 4 == 0 {
                let _ = socket.write_all(b"PRI * HTT");
            }
            sockets.push(socket);
        }
        sockets
    })
    .await
    .unwrap();
    let opened = loris.len();
    // The router's open sockets, sampled while the slow connections are
    // queued and the well-behaved client waits its turn.
    let sampler = tokio::spawn(async move {
        let mut most = 0;
        for _ in 0..100 {
            most = most.max(connections_of(pid, address.port()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        most
    });
    let (attempts, waited) = first_answer(address).await;
    let rss_loris = rss_kib(pid);
    let most_sockets = sampler.await.unwrap();
    // Every slow connection is closed by the router once its handshake
    // timeout passed (after its turn to be accepted came).
    let closed = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut closed = 0;
        for mut socket in loris {
            let left = deadline.saturating_duration_since(Instant::now());
            socket
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .unwrap();
            let mut buf = [0u8; 256];
            loop {
                match socket.read(&mut buf) {
                    // The router's SETTINGS may come first, then EOF or RST.
                    Ok(0) => break closed += 1,
                    Ok(_) => continue,
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(_) => break closed += 1,
                }
            }
        }
        closed
    })
    .await
    .unwrap();
    let (_, after_loris) = first_answer(address).await;

    // Floods: 2,000 History calls from 100 users (20 each, against a burst
    // of 5) over 8 connections, all at once.
    let channels: Vec<Channel> = (0..8).map(|_| channel_to(address)).collect();
    let channels = Arc::new(channels);
    let calls: Vec<_> = (0..2_000)
        .map(|n| {
            let channels = channels.clone();
            tokio::spawn(async move {
                history_as(&channels[n % channels.len()], &format!("crowd-{}", n % 100)).await
            })
        })
        .collect();
    let (mut served, mut exhausted, mut other) = (0, 0, Vec::new());
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => served += 1,
            Err(status) if status.code() == Code::ResourceExhausted => exhausted += 1,
            Err(status) => other.push((status.code(), status.message().to_owned())),
        }
    }
    let mut answers = std::collections::BTreeMap::new();
    for (code, message) in &other {
        *answers.entry(format!("{code:?} {message:?}")).or_insert(0) += 1;
    }
    let rss_flood = rss_kib(pid);
    let (_, after_flood) = first_answer(address).await;
    let alive = router.child.try_wait().unwrap().is_none();

    println!(
        "router process: RSS {rss_start} KiB at start (first answer after {startup:?}); \
         {opened} slow-loris connections (max-connections {MAX_CONNECTIONS}, handshake \
         {HANDSHAKE_MS} ms): the well-behaved client answered after {attempts} attempt(s) \
         in {waited:?}, at most {most_sockets} connections held, RSS {rss_loris} KiB, {closed} of {opened} closed by the router, next \
         answer in {after_loris:?}; flood of 2000 History calls from 100 users: {served} \
         served, {exhausted} RESOURCE_EXHAUSTED, other {answers:?}, RSS {rss_flood} KiB, next \
         answer in {after_flood:?}"
    );
    assert!(alive, "the router process exited");
    // Without the limit: one per connection opened (404 measured).
    assert!(
        most_sockets <= MAX_CONNECTIONS,
        "the router held {most_sockets} connections, --max-connections {MAX_CONNECTIONS}"
    );
    assert_eq!(closed, opened, "every slow-loris connection was closed");
    let timed_out = other
        .iter()
        .filter(|(code, _)| matches!(code, Code::DeadlineExceeded | Code::Cancelled))
        .count();
    assert_eq!(
        timed_out,
        other.len(),
        "served, shed, or past a deadline only: {other:?}"
    );
    assert!(
        served > 0 && exhausted > 0,
        "{served} served, {exhausted} shed"
    );
    // What the limits let a client make the router hold, generously: per
    // connection hyper's 1 MiB connection window and the streams' header
    // lists and messages; per call in flight, a message and its reply. Plus
    // 64 MiB for allocator slack and thread stacks.
    let per_connection_kib = 1024 + u64::from(MAX_STREAMS) * (128 + 64);
    let bound_kib =
        MAX_CONNECTIONS as u64 * per_connection_kib + MAX_IN_FLIGHT as u64 * 2 * 64 + 64 * 1024;
    for (phase, rss) in [("slow-loris", rss_loris), ("flood", rss_flood)] {
        assert!(
            rss.saturating_sub(rss_start) < bound_kib,
            "{phase}: RSS grew {} KiB, bound {bound_kib} KiB",
            rss.saturating_sub(rss_start)
        );
    }
    router.child.kill().unwrap();
}

/// The guards' flags, like every router flag, fall back to the environment
/// and are validated before the port is bound: 0 is refused naming the
/// flag, and so is a request timeout shorter than the cell timeout.
#[test]
fn the_guards_flags_are_validated_naming_the_flag() {
    let dir = router_files();
    // Taken, so a router that got past validation would fail to bind (exit
    // 1) rather than serve.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let cases = [
        (
            "REDCELL_ROUTER_MAX_MESSAGE_BYTES",
            "0",
            "--max-message-bytes: must be at least 1",
        ),
        (
            "REDCELL_ROUTER_MAX_CONNECTIONS",
            "0",
            "--max-connections: must be at least 1",
        ),
        (
            "REDCELL_ROUTER_HANDSHAKE_TIMEOUT_MS",
            "0",
            "--handshake-timeout-ms: must be at least 1",
        ),
        (
            "REDCELL_ROUTER_REQUEST_TIMEOUT_MS",
            "0",
            "--request-timeout-ms: must be at least 1",
        ),
        (
            "REDCELL_ROUTER_MAX_STREAMS_PER_CONNECTION",
            "0",
            "--max-streams-per-connection: must be at least 1",
        ),
        (
            "REDCELL_ROUTER_KEEPALIVE_MS",
            "0",
            "--keepalive-ms: must be at least 1",
        ),
        (
            "REDCELL_ROUTER_REQUEST_TIMEOUT_MS",
            "1999",
            "--request-timeout-ms: must be at least --cell-timeout-ms (2000)",
        ),
    ];
    for (variable, value, expected) in cases {
        let output = router_command(&dir, &listen)
            .env(variable, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(78),
            "{variable}={value}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("router: {expected}")),
            "{variable}={value}: expected {expected:?} in {stderr}"
        );
    }
    drop(taken);
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1), as a string
/// length is written.
fn hpack_length(length: usize, out: &mut Vec<u8>) {
    if length < 127 {
        out.push(length as u8);
        return;
    }
    out.push(127);
    let mut rest = length - 127;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// An HTTP/2 frame: length, type, flags, stream, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A call whose body trickles in: a hand-written HTTP/2 client sends a
/// History call's headers and 10 of the 100 bytes its gRPC message
/// announces, then nothing. The router ends the stream once
/// `--request-timeout-ms` (2 s here, the least the 2 s cell timeout allows) has passed; without that guard the
/// handler would wait for the rest of the body for as long as the
/// connection lives (its own per-call deadline only starts once the body is
/// decoded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_by_the_request_timeout() {
    let mut router = start_router_process_with(&["--request-timeout-ms", "2000"]);
    let address = router.address;
    first_answer(address).await;
    let token = mint_hs256(BINARY_KEY, "slow", 600).unwrap();
    let ended = tokio::task::spawn_blocking(move || {
        let mut socket = TcpStream::connect(address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/redcell.v1.RedEnvelope/History"),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", &format!("Bearer {token}")),
        ] {
            // Literal header field without indexing, new name.
            block.push(0);
            hpack_length(name.len(), &mut block);
            block.extend(name.as_bytes());
            hpack_length(value.len(), &mut block);
            block.extend(value.as_bytes());
        }
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out.extend(frame(0x1, 0x4, 1, &block));
        let mut data = vec![0, 0, 0, 0, 100];
        data.extend([0u8; 10]);
        out.extend(frame(0x0, 0, 1, &data));
        socket.write_all(&out).unwrap();
        let started = Instant::now();
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // Parse every whole frame received so far.
            while buffer.len() >= 9 {
                let length = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
                if buffer.len() < 9 + length {
                    break;
                }
                let (kind, flags) = (buffer[3], buffer[4]);
                let stream =
                    u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) & 0x7fff_ffff;
                buffer.drain(..9 + length);
                if kind == 0x4 && flags & 0x1 == 0 {
                    // Acknowledge the router's SETTINGS, as a client must.
                    socket.write_all(&frame(0x4, 0x1, 0, &[])).unwrap();
                }
                let end_of_stream = (kind == 0x1 && flags & 0x1 != 0) || kind == 0x3;
                if stream == 1 && end_of_stream {
                    return Some(started.elapsed());
                }
            }
            match socket.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(read) => buffer.extend(&chunk[..read]),
            }
        }
    })
    .await
    .unwrap();
    println!("a trickled History body: the router ended the stream after {ended:?}");
    assert!(ended.is_some(), "the router never ended the trickled call");
    router.child.kill().unwrap();
}

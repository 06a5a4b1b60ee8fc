//! Bad input and limits (DESIGN.md §8) over gRPC: every bad request gets its
//! code and a message naming the field (the exact texts of request.rs,
//! ops/mod.rs and the topology's ID errors), and writes nothing: the order DB's
//! tables and the ledger are the same before and after.

use redcell_proto::{
    internal::{INTERNAL_METADATA, SUFFIX_METADATA, USER_METADATA},
    v1::{self as pb, red_envelope_client::RedEnvelopeClient},
};
use redcell_topology::EnvelopeId;
use tonic::{Code, Request, Status, transport::Channel};

use crate::stack::{Stack, StackBuilder};

/// The caller's metadata: `None` leaves the entry out.
type User = Option<&'static str>;

enum Call {
    Send {
        user: User,
        suffix: Option<&'static str>,
        request: pb::SendRequest,
    },
    Open {
        user: User,
        id: String,
    },
    Grab {
        user: User,
        id: String,
    },
    Get {
        user: User,
        request: pb::GetRequest,
    },
}

struct Case {
    name: String,
    call: Call,
    code: Code,
    /// The field the message must start with (`INVALID_ARGUMENT`).
    field: Option<&'static str>,
    message: String,
}

fn with_metadata<T>(body: T, user: User, suffix: Option<&str>) -> Request<T> {
    let mut request = Request::new(body);
    request.metadata_mut().insert(
        INTERNAL_METADATA,
        crate::stack::INTERNAL_TOKEN.parse().unwrap(),
    );
    if let Some(user) = user {
        request
            .metadata_mut()
            .insert(USER_METADATA, user.parse().unwrap());
    }
    if let Some(suffix) = suffix {
        request
            .metadata_mut()
            .insert(SUFFIX_METADATA, suffix.parse().unwrap());
    }
    request
}

async fn call(channel: &Channel, call: Call) -> Result<(), Status> {
    let mut client = RedEnvelopeClient::new(channel.clone());
    match call {
        Call::Send {
            user,
            suffix,
            request,
        } => client
            .send(with_metadata(request, user, suffix))
            .await
            .map(drop),
        Call::Open { user, id } => client
            .open(with_metadata(
                pb::OpenRequest { envelope_id: id },
                user,
                None,
            ))
            .await
            .map(drop),
        Call::Grab { user, id } => client
            .grab(with_metadata(
                pb::GrabRequest { envelope_id: id },
                user,
                None,
            ))
            .await
            .map(drop),
        Call::Get { user, request } => client
            .get(with_metadata(request, user, None))
            .await
            .map(drop),
    }
}

/// `YYMMDD R EE NNNNNNNNNN SSS`.
fn id(date: &str, region: u32, epoch: u32, sequence: u64, suffix: u32) -> String {
    format!("{date}{region}{epoch:02}{sequence:010}{suffix:03}")
}

const SENDER: &str = "rich";

/// A Send that passes every check (the funded sender, a fresh key).
fn good_send(key: &str) -> pb::SendRequest {
    pb::SendRequest {
        total_cents: 1_000,
        count: 10,
        kind: pb::EnvelopeKind::Lucky.into(),
        greeting: "恭喜发财".into(),
        recipients: Vec::new(),
        idempotency_key: key.to_owned(),
    }
}

fn invalid(name: &str, call: Call, field: &'static str, message: String) -> Case {
    Case {
        name: name.to_owned(),
        call,
        code: Code::InvalidArgument,
        field: Some(field),
        message: format!("{field}: {message}"),
    }
}

/// A Send as `rich` whose body is `edit`ed from a good one.
fn bad_send(
    name: &str,
    edit: impl FnOnce(&mut pb::SendRequest),
    field: &'static str,
    message: &str,
) -> Case {
    let mut request = good_send(&format!(
        "key-{}",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    edit(&mut request);
    invalid(
        name,
        Call::Send {
            user: Some(SENDER),
            suffix: None,
            request,
        },
        field,
        message.to_owned(),
    )
}

fn kind(kind: pb::EnvelopeKind) -> i32 {
    kind.into()
}

/// Makes a Send EXCLUSIVE with `count` shares for `recipients`.
fn exclusive(recipients: &[&str], count: u32) -> impl FnOnce(&mut pb::SendRequest) + use<> {
    let recipients: Vec<String> = recipients.iter().map(|r| (*r).to_owned()).collect();
    move |request: &mut pb::SendRequest| {
        request.kind = kind(pb::EnvelopeKind::Exclusive);
        request.count = count;
        request.recipients = recipients;
    }
}

fn send_cases() -> Vec<Case> {
    let ws = "' ' is not allowed; use only A-Z a-z 0-9 _ -";
    vec![
        bad_send(
            "total 0",
            |r| r.total_cents = 0,
            "total_cents",
            "must be at least 1 cent, got 0",
        ),
        bad_send(
            "total -5",
            |r| r.total_cents = -5,
            "total_cents",
            "must be at least 1 cent, got -5",
        ),
        bad_send(
            "total 2000001",
            |r| r.total_cents = 2_000_001,
            "total_cents",
            "must be at most 2000000 cents, got 2000001",
        ),
        bad_send(
            "total i64::MAX",
            |r| r.total_cents = i64::MAX,
            "total_cents",
            &format!("must be at most 2000000 cents, got {}", i64::MAX),
        ),
        bad_send("count 0", |r| r.count = 0, "count", "must be 1-500, got 0"),
        bad_send(
            "count 501",
            |r| r.count = 501,
            "count",
            "must be 1-500, got 501",
        ),
        bad_send(
            "total below count",
            |r| {
                r.total_cents = 5;
                r.count = 10;
            },
            "total_cents",
            "5 cents cannot make 10 shares of at least 1 cent",
        ),
        bad_send(
            "EQUAL 1001 / 10",
            |r| {
                r.kind = kind(pb::EnvelopeKind::Equal);
                r.total_cents = 1_001;
                r.count = 10;
            },
            "total_cents",
            "EQUAL needs a total divisible by count: 1001 % 10 = 1",
        ),
        bad_send(
            "greeting of 65 characters",
            |r| r.greeting = "福".repeat(65),
            "greeting",
            "must be at most 64 characters, got 65",
        ),
        // PostgreSQL `text` cannot hold NUL: refused before the insert, by name.
        bad_send(
            "greeting with NUL",
            |r| r.greeting = "恭喜\0发财".into(),
            "greeting",
            "must not contain the NUL character (U+0000), found at character 3",
        ),
        bad_send(
            "greeting of one NUL",
            |r| r.greeting = "\0".into(),
            "greeting",
            "must not contain the NUL character (U+0000), found at character 1",
        ),
        bad_send(
            "kind 0",
            |r| r.kind = 0,
            "kind",
            "must be LUCKY, EQUAL or EXCLUSIVE, got 0",
        ),
        bad_send(
            "kind 9",
            |r| r.kind = 9,
            "kind",
            "must be LUCKY, EQUAL or EXCLUSIVE, got 9",
        ),
        bad_send(
            "kind -1",
            |r| r.kind = -1,
            "kind",
            "must be LUCKY, EQUAL or EXCLUSIVE, got -1",
        ),
        bad_send(
            "EXCLUSIVE without a recipient",
            exclusive(&[], 1),
            "recipients",
            "EXCLUSIVE needs exactly 1 recipient, got 0",
        ),
        bad_send(
            "EXCLUSIVE with 2 recipients",
            exclusive(&["bob", "carol"], 1),
            "recipients",
            "EXCLUSIVE needs exactly 1 recipient, got 2",
        ),
        bad_send(
            "EXCLUSIVE with count 2",
            exclusive(&["bob"], 2),
            "count",
            "EXCLUSIVE has exactly 1 share, got 2",
        ),
        bad_send(
            "EXCLUSIVE to oneself",
            exclusive(&[SENDER], 1),
            "recipients",
            "cannot send an EXCLUSIVE envelope to yourself",
        ),
        bad_send(
            "LUCKY with recipients",
            |r| r.recipients = vec!["bob".into()],
            "recipients",
            "only EXCLUSIVE envelopes name recipients",
        ),
        bad_send(
            "EQUAL with recipients",
            |r| {
                r.kind = kind(pb::EnvelopeKind::Equal);
                r.recipients = vec!["bob".into()];
            },
            "recipients",
            "only EXCLUSIVE envelopes name recipients",
        ),
        bad_send(
            "bad recipient id",
            exclusive(&["bad user!"], 1),
            "recipients",
            ws,
        ),
        bad_send(
            "empty recipient id",
            exclusive(&[""], 1),
            "recipients",
            "must be 1-64 characters, got 0",
        ),
        bad_send(
            "idempotency_key empty",
            |r| r.idempotency_key = String::new(),
            "idempotency_key",
            "must be 1-64 characters, got 0",
        ),
        bad_send(
            "idempotency_key of 65",
            |r| r.idempotency_key = "k".repeat(65),
            "idempotency_key",
            "must be 1-64 characters, got 65",
        ),
        bad_send(
            "idempotency_key with a space",
            |r| r.idempotency_key = "a b".into(),
            "idempotency_key",
            ws,
        ),
        bad_send(
            "idempotency_key with NUL",
            |r| r.idempotency_key = "key\0".into(),
            "idempotency_key",
            "'\\0' is not allowed; use only A-Z a-z 0-9 _ -",
        ),
        bad_send(
            "recipient with NUL",
            exclusive(&["bob\0"], 1),
            "recipients",
            "'\\0' is not allowed; use only A-Z a-z 0-9 _ -",
        ),
        bad_send(
            "idempotency_key not ASCII",
            |r| r.idempotency_key = "福".into(),
            "idempotency_key",
            "'福' is not allowed; use only A-Z a-z 0-9 _ -",
        ),
    ]
}

/// Metadata: the caller and the router's suffix.
fn metadata_cases(envelope: &str) -> Vec<Case> {
    let ws = "' ' is not allowed; use only A-Z a-z 0-9 _ -";
    let long_user: &'static str = "u".repeat(65).leak();
    let get = |id: &str| pb::GetRequest {
        envelope_id: id.to_owned(),
        ..pb::GetRequest::default()
    };
    let mut cases = Vec::new();
    for (label, user, field_message) in [
        ("bad user", "bad user!", ws.to_owned()),
        (
            "empty user",
            "",
            "must be 1-64 characters, got 0".to_owned(),
        ),
        (
            "user of 65",
            long_user,
            "must be 1-64 characters, got 65".to_owned(),
        ),
    ] {
        let calls = [
            (
                "Send",
                Call::Send {
                    user: Some(user),
                    suffix: None,
                    request: good_send("key-bad-user"),
                },
            ),
            (
                "Open",
                Call::Open {
                    user: Some(user),
                    id: envelope.to_owned(),
                },
            ),
            (
                "Grab",
                Call::Grab {
                    user: Some(user),
                    id: envelope.to_owned(),
                },
            ),
            (
                "Get",
                Call::Get {
                    user: Some(user),
                    request: get(envelope),
                },
            ),
        ];
        for (method, call) in calls {
            cases.push(invalid(
                &format!("{method}: {label}"),
                call,
                "user",
                field_message.clone(),
            ));
        }
    }
    let anonymous = [
        (
            "Send",
            Call::Send {
                user: None,
                suffix: None,
                request: good_send("key-anonymous"),
            },
        ),
        (
            "Open",
            Call::Open {
                user: None,
                id: envelope.to_owned(),
            },
        ),
        (
            "Grab",
            Call::Grab {
                user: None,
                id: envelope.to_owned(),
            },
        ),
        (
            "Get",
            Call::Get {
                user: None,
                request: get(envelope),
            },
        ),
    ];
    for (method, call) in anonymous {
        cases.push(Case {
            name: format!("{method}: no x-redcell-user"),
            call,
            code: Code::Unauthenticated,
            field: None,
            message: "missing caller identity (no x-redcell-user)".into(),
        });
    }
    for suffix in ["12", "abc", "1000", "-12", ""] {
        cases.push(invalid(
            &format!("Send: x-redcell-suffix {suffix:?}"),
            Call::Send {
                user: Some(SENDER),
                suffix: Some(suffix),
                request: good_send(&format!("key-suffix-{}", suffix.len())),
            },
            "x-redcell-suffix",
            "must be three digits 000-999".into(),
        ));
    }
    cases.push(Case {
        name: "Send: x-redcell-suffix of n2".into(),
        call: Call::Send {
            user: Some(SENDER),
            suffix: Some("700"),
            request: good_send("key-suffix-700"),
        },
        // A suffix the cell does not mint is the router's and the cell's
        // topologies disagreeing during a change: retryable, nothing written.
        code: Code::Unavailable,
        field: None,
        message: "suffix 700 is not minted by cell n1 in epoch 0: this server's topology \
                  differs from the router's (a change is reaching the fleet); retry"
            .into(),
    });
    cases
}

/// Open, Grab and Get of IDs that are malformed, unroutable, foreign, unknown.
fn id_cases(envelope: &str) -> Vec<Case> {
    let well_formed = id("260122", 1, 0, 1, 123);
    let mut letter = well_formed.clone();
    letter.replace_range(12..13, "x");
    let foreign = id("260122", 1, 0, 1, 700);
    let south = id("260122", 2, 0, 1, 123);
    let unknown = id("250101", 1, 0, 9_999_999_999, 123);
    let invalid_ids = [
        (
            "21 digits",
            well_formed[..21].to_owned(),
            "envelope id must be 22 digits, got 21 characters".to_owned(),
        ),
        (
            "23 digits",
            format!("{well_formed}0"),
            "envelope id must be 22 digits, got 23 characters".to_owned(),
        ),
        (
            "empty",
            String::new(),
            "envelope id must be 22 digits, got 0 characters".to_owned(),
        ),
        (
            "a letter",
            letter,
            "envelope id has 'x' at position 13; only digits 0-9 are allowed".to_owned(),
        ),
        (
            "22 CJK characters",
            "福".repeat(22),
            "envelope id has '福' at position 1; only digits 0-9 are allowed".to_owned(),
        ),
        (
            "month 13",
            id("261301", 1, 0, 1, 123),
            "envelope id date 261301 is not a calendar date (YYMMDD)".to_owned(),
        ),
        (
            "February 30",
            id("260230", 1, 0, 1, 123),
            "envelope id date 260230 is not a calendar date (YYMMDD)".to_owned(),
        ),
        (
            "region 0",
            id("260122", 0, 0, 1, 123),
            "envelope id region digit is 0; regions are numbered 1-9".to_owned(),
        ),
        (
            "region 3",
            id("260122", 3, 0, 1, 123),
            "envelope id region digit 3 is not a region of this topology".to_owned(),
        ),
        (
            "epoch 05",
            id("260122", 1, 5, 1, 123),
            "envelope id epoch 05 does not exist in this topology".to_owned(),
        ),
        (
            "suffix of n2",
            foreign.clone(),
            format!("envelope {foreign} belongs to cell n2, not n1"),
        ),
        (
            "region of s1",
            south.clone(),
            format!("envelope {south} belongs to cell s1, not n1"),
        ),
    ];
    let mut cases = Vec::new();
    for (label, bad, message) in invalid_ids {
        let calls = [
            (
                "Open",
                Call::Open {
                    user: Some("alice"),
                    id: bad.clone(),
                },
            ),
            (
                "Grab",
                Call::Grab {
                    user: Some("alice"),
                    id: bad.clone(),
                },
            ),
            (
                "Get",
                Call::Get {
                    user: Some("alice"),
                    request: pb::GetRequest {
                        envelope_id: bad.clone(),
                        ..pb::GetRequest::default()
                    },
                },
            ),
        ];
        for (method, call) in calls {
            cases.push(invalid(
                &format!("{method}: {label}"),
                call,
                "envelope_id",
                message.clone(),
            ));
        }
    }
    let calls = [
        (
            "Open",
            Call::Open {
                user: Some("alice"),
                id: unknown.clone(),
            },
        ),
        (
            "Grab",
            Call::Grab {
                user: Some("alice"),
                id: unknown.clone(),
            },
        ),
        (
            "Get",
            Call::Get {
                user: Some("alice"),
                request: pb::GetRequest {
                    envelope_id: unknown.clone(),
                    ..pb::GetRequest::default()
                },
            },
        ),
    ];
    for (method, call) in calls {
        cases.push(Case {
            name: format!("{method}: unknown owned id"),
            call,
            code: Code::NotFound,
            field: None,
            message: format!("envelope {unknown} not found"),
        });
    }
    cases.push(invalid(
        "Get: page_size 501",
        Call::Get {
            user: Some("alice"),
            request: pb::GetRequest {
                envelope_id: envelope.to_owned(),
                page_token: String::new(),
                page_size: 501,
            },
        },
        "page_size",
        "must be at most 500, got 501".into(),
    ));
    cases.push(invalid(
        "Get: foreign page_token",
        Call::Get {
            user: Some("alice"),
            request: pb::GetRequest {
                envelope_id: envelope.to_owned(),
                page_token: "abc".into(),
                page_size: 0,
            },
        },
        "page_token",
        "\"abc\" is not a token this server issued".into(),
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let mut stack = StackBuilder::default().start().await;
    // The sender could pay for any of the bad Sends: only validation stops them.
    stack.fund(SENDER, 10_000_000).await;
    let envelope = stack
        .send("setup", pb::EnvelopeKind::Lucky, 1_000, 10)
        .await;
    // The test's IDs mean what their names say in this topology.
    let route = |text: &str| {
        let parsed: EnvelopeId = text.parse().unwrap();
        stack.topology.route(&parsed).unwrap().name.clone()
    };
    assert_eq!(route(&id("260122", 1, 0, 1, 700)), "n2");
    assert_eq!(route(&id("260122", 1, 0, 1, 499)), "n1");
    assert_eq!(route(&id("260122", 2, 0, 1, 123)), "s1");

    let channel = Stack::channel_to(stack.address(0));
    let before = stack.snapshot().await;
    let mut cases = send_cases();
    cases.extend(metadata_cases(&envelope.id));
    cases.extend(id_cases(&envelope.id));
    for case in cases {
        let name = case.name;
        let status = call(&channel, case.call)
            .await
            .expect_err(&format!("{name}: accepted"));
        assert_eq!(status.code(), case.code, "{name}: {status:?}");
        assert_eq!(status.message(), case.message, "{name}");
        if let Some(field) = case.field {
            assert!(
                status.message().starts_with(&format!("{field}: ")),
                "{name}"
            );
        }
        assert_eq!(
            stack.snapshot().await,
            before,
            "{name}: something was written"
        );
    }

    // The limits themselves are accepted: a page of 500, a greeting of 64
    // characters (192 bytes), a suffix the cell owns.
    let page = RedEnvelopeClient::new(channel.clone())
        .get(with_metadata(
            pb::GetRequest {
                envelope_id: envelope.id.clone(),
                page_token: String::new(),
                page_size: 500,
            },
            Some("alice"),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.envelope.unwrap().id, envelope.id);
    let greeting = "福".repeat(64);
    let mut request = good_send("key-limits");
    request.greeting = greeting.clone();
    request.total_cents = 2_000_000;
    request.count = 500;
    let sent = RedEnvelopeClient::new(channel.clone())
        .send(with_metadata(request, Some(SENDER), Some("499")))
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    assert_eq!(sent.status(), pb::EnvelopeStatus::Active);
    assert_eq!(sent.greeting, greeting);
    assert!(sent.id.ends_with("499"), "{}", sent.id);
    assert_eq!(stack.ledger.balance(SENDER).await.unwrap(), 8_000_000);
    let after = stack.snapshot().await;
    assert_eq!(after.envelopes, before.envelopes + 1);
    assert_eq!(after.send_requests, before.send_requests + 1);
    assert_eq!(after.ledger_entries, before.ledger_entries + 1);

    // Both envelopes open normally afterwards.
    for user in ["alice", "bob"] {
        for id in [&envelope.id, &sent.id] {
            let reply = stack
                .client(0, user)
                .open(pb::OpenRequest {
                    envelope_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(reply.status(), pb::ShareStatus::Available);
        }
    }
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.claims, 4);
}

/// Words of PostgreSQL's own messages that must never reach a client.
const SQL_WORDS: [&str; 8] = [
    "relation",
    "does not exist",
    "42P01",
    "SQLSTATE",
    "db error",
    "ERROR",
    "claims",
    "entries",
];

fn assert_no_sql_text(name: &str, status: &Status) {
    for word in SQL_WORDS {
        assert!(
            !status.message().contains(word),
            "{name}: {word:?} reached the client: {status:?}"
        );
    }
    assert!(
        status.message().contains("(ref "),
        "{name}: no incident reference: {status:?}"
    );
}

/// A broken order DB (a table dropped under a running cell) answers every
/// operation with a generic message and an incident reference, never the
/// database's own text (which names tables and SQLSTATEs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_database_errors_reach_clients_without_sql_text() {
    let mut stack = StackBuilder::default().start().await;
    let envelope = stack
        .send("setup", pb::EnvelopeKind::Lucky, 1_000, 10)
        .await;
    stack.drain_settlement().await;
    stack.check_money().await;
    let books = stack.ledger.total_balance().await.unwrap();
    stack
        .orders
        .connect()
        .await
        .unwrap()
        .batch_execute("DROP TABLE claims CASCADE")
        .await
        .unwrap();
    let channel = Stack::channel_to(stack.address(0));
    let calls = [
        (
            "Open",
            Call::Open {
                user: Some("alice"),
                id: envelope.id.clone(),
            },
        ),
        (
            "Grab",
            Call::Grab {
                user: Some("alice"),
                id: envelope.id.clone(),
            },
        ),
        (
            "Get",
            Call::Get {
                user: Some("alice"),
                request: pb::GetRequest {
                    envelope_id: envelope.id.clone(),
                    ..pb::GetRequest::default()
                },
            },
        ),
    ];
    for (name, request) in calls {
        let status = call(&channel, request)
            .await
            .expect_err(&format!("{name}: answered without claims"));
        assert!(
            matches!(status.code(), Code::Internal | Code::Unavailable),
            "{name}: {status:?}"
        );
        assert_no_sql_text(name, &status);
    }
    // Nothing moved: the ledger is as it was.
    assert_eq!(stack.ledger.total_balance().await.unwrap(), books);
    assert_eq!(stack.ledger.balance("setup").await.unwrap(), 0);
}

/// The payment system's own error text (here the ledger's PostgreSQL saying
/// a table is missing) does not reach the client either; once the ledger is
/// whole again the same Send goes through and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_system_errors_reach_clients_without_sql_text() {
    let mut stack = StackBuilder {
        // Recovery stays out of the way: the client's retry resolves the Send.
        recovery_grace: std::time::Duration::from_secs(3_600),
        ..StackBuilder::default()
    }
    .start()
    .await;
    stack.fund(SENDER, 1_000).await;
    let ledger = stack.ledger_db.connect().await.unwrap();
    ledger
        .batch_execute("ALTER TABLE entries RENAME TO entries_away")
        .await
        .unwrap();
    let channel = Stack::channel_to(stack.address(0));
    let request = || Call::Send {
        user: Some(SENDER),
        suffix: None,
        request: good_send("key-ledger-broken"),
    };
    let status = call(&channel, request())
        .await
        .expect_err("Send answered without a ledger");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("payment system unavailable (ref "),
        "{status:?}"
    );
    assert_no_sql_text("Send", &status);

    ledger
        .batch_execute("ALTER TABLE entries_away RENAME TO entries")
        .await
        .unwrap();
    call(&channel, request())
        .await
        .expect("the retried Send, ledger whole again");
    assert_eq!(stack.ledger.balance(SENDER).await.unwrap(), 0);
    stack.drain_settlement().await;
    stack.check_money().await;
}

/// A column that drifted from the code (here `claims.amount_cents` no longer
/// an i64) is an error of the request that names nothing of the database to
/// the client, never a panic of the server (`--open-strategy rowlock` read
/// it with `Row::get`); once the column is back, the same Open answers the
/// same share and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rowlock_schema_drift_is_an_error_not_a_panic() {
    let mut stack = StackBuilder {
        strategy: redcell_cell::OpenStrategy::Rowlock,
        ..StackBuilder::default()
    }
    .start()
    .await;
    let envelope = stack
        .send("drift", pb::EnvelopeKind::Lucky, 1_000, 10)
        .await;
    let open = pb::OpenRequest {
        envelope_id: envelope.id.clone(),
    };
    let first = stack
        .client(0, "alice")
        .open(open.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status(), pb::ShareStatus::Available);
    let orders = stack.orders.connect().await.unwrap();
    orders
        .batch_execute("ALTER TABLE claims ALTER COLUMN amount_cents TYPE numeric")
        .await
        .unwrap();
    let status = stack
        .client(0, "alice")
        .open(open.clone())
        .await
        .expect_err("an Open that cannot read its own claim");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().starts_with("internal error (ref "),
        "{status:?}"
    );
    assert_no_sql_text("Open", &status);

    orders
        .batch_execute("ALTER TABLE claims ALTER COLUMN amount_cents TYPE bigint")
        .await
        .unwrap();
    let again = stack
        .client(0, "alice")
        .open(open)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "the same share, once the column is back");
    stack.drain_settlement().await;
    stack.check_money().await;
}

/// CellHistory's cursor is client input passed on by the router: an
/// out-of-range time (it overflowed the driver's timestamp encoding) and a
/// `before_id` with a NUL or letters (it reached SQL) are refused at the
/// edge, naming the field; a valid cursor answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_history_cursors_are_checked_at_the_edge() {
    use redcell_proto::v1::cell_internal_client::CellInternalClient;

    let stack = StackBuilder::default().start().await;
    let channel = Stack::channel_to(stack.address(0));
    let mut client = CellInternalClient::with_interceptor(channel, crate::stack::as_user("router"));
    let request =
        |before: Option<prost_types::Timestamp>, before_id: &str| pb::CellHistoryRequest {
            user: "alice".into(),
            direction: pb::HistoryDirection::Sent.into(),
            before,
            before_id: before_id.into(),
            limit: 10,
        };
    let far = prost_types::Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    };
    for (bad, field) in [
        (request(Some(far), ""), "before"),
        (request(None, "123\u{0}456"), "before_id"),
        (request(None, "12ab"), "before_id"),
        (request(None, &"9".repeat(24)), "before_id"),
    ] {
        let status = client.cell_history(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }
    let fine = client
        .cell_history(request(None, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(fine.entries.is_empty());
}

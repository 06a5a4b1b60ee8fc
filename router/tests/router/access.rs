//! Who may call what (DESIGN.md §4, §6): clients reach the router only with a
//! valid bearer token whose `sub` is the user; each user has a rate limit of
//! their own; cells serve routers only (the internal credential); and the
//! router carries the W3C trace context to the cell.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use redcell_proto::internal::{AsUser, INTERNAL_METADATA, USER_METADATA};
use redcell_proto::token::{BearerToken, mint_hs256};
use redcell_proto::v1::{
    self as pb, cell_internal_client::CellInternalClient, red_envelope_client::RedEnvelopeClient,
    red_envelope_server::RedEnvelope, red_envelope_server::RedEnvelopeServer,
};
use redcell_router::traceparent::TraceParent;
use serde::Serialize;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    Code, Request, Response, Status,
    transport::{Channel, server::TcpIncoming},
};

use crate::stack::{Builder, CELLS, HS_KEY, INTERNAL_TOKEN, Stack, topology_text};

/// Another HS256 key, as long as the real one: a token signed with it is forged.
const OTHER_HS_KEY: &[u8] = b"not-the-redcell-hs256-key-0123456789abc";

/// RFC 4648 §5 base64url without padding, for hand-built tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// An HS256 token with exactly these claims (mint_hs256 refuses bad subjects
/// and past expiries, so tests that need them sign by hand).
fn hs256(key: &[u8], sub: &str, iat: u64, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub, iat, exp },
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

/// Every credential the router must refuse, each naming what is wrong with
/// it, all for the user "alice" where they name one.
fn bad_credentials() -> Vec<(&'static str, Option<String>)> {
    let now = jsonwebtoken::get_current_timestamp();
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload =
        b64url(format!(r#"{{"sub":"alice","iat":{now},"exp":{}}}"#, now + 600).as_bytes());
    let alg_none = format!("{header}.{payload}.");
    vec![
        ("no authorization", None),
        ("basic scheme", Some("Basic x".to_owned())),
        ("garbage bearer", Some("Bearer garbage".to_owned())),
        (
            "signed with another key",
            Some(format!(
                "Bearer {}",
                mint_hs256(OTHER_HS_KEY, "alice", 3600).unwrap()
            )),
        ),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        (
            // 120 s past exp: well beyond the 30 s leeway.
            "expired",
            Some(format!(
                "Bearer {}",
                hs256(HS_KEY, "alice", now - 3720, now - 120)
            )),
        ),
        (
            "subject with a space",
            Some(format!(
                "Bearer {}",
                hs256(HS_KEY, "alice smith", now, now + 600)
            )),
        ),
        (
            "subject with a slash",
            Some(format!(
                "Bearer {}",
                hs256(HS_KEY, "../alice", now, now + 600)
            )),
        ),
        (
            "subject too long",
            Some(format!(
                "Bearer {}",
                hs256(HS_KEY, &"a".repeat(65), now, now + 600)
            )),
        ),
        (
            "empty subject",
            Some(format!("Bearer {}", hs256(HS_KEY, "", now, now + 600))),
        ),
    ]
}

/// The call failed with `code` (`what` names it in the panic); its status,
/// for checks of the message. Shared with hostile.rs.
pub(crate) fn assert_code<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    what: &str,
) -> Status {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

/// `SELECT count(*)` of `table` summed over every cell's order DB.
async fn rows_everywhere(stack: &Stack, table: &str) -> i64 {
    let mut total = 0;
    for cell in &stack.cells {
        let client = cell.orders.connect().await.unwrap();
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        total += count;
    }
    total
}

fn send_request(key: &str, total: i64, count: u32) -> pb::SendRequest {
    pb::SendRequest {
        total_cents: total,
        count,
        kind: pb::EnvelopeKind::Lucky.into(),
        greeting: "恭喜发财".into(),
        recipients: Vec::new(),
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_valid_token_gets_through_and_its_sub_is_the_user() {
    let mut stack = Builder::default().start().await;
    // Alice can pay: a Send that got through would succeed and show.
    stack.fund("alice", 10_000).await;
    let credentials = bad_credentials();

    for (index, (what, authorization)) in credentials.iter().enumerate() {
        let mut client = stack.client_with(authorization.as_deref(), None);
        assert_code(
            client
                .send(send_request(&format!("bad-{index}"), 1_000, 4))
                .await,
            Code::Unauthenticated,
            &format!("Send with {what}"),
        );
        assert_code(
            client
                .history(pb::HistoryRequest {
                    direction: pb::HistoryDirection::Sent.into(),
                    page_token: String::new(),
                    page_size: 0,
                })
                .await,
            Code::Unauthenticated,
            &format!("History with {what}"),
        );
    }
    assert_eq!(rows_everywhere(&stack, "envelopes").await, 0, "no envelope");
    assert_eq!(rows_everywhere(&stack, "send_requests").await, 0);
    assert_eq!(
        stack.ledger.balance("alice").await.unwrap(),
        10_000,
        "no debit"
    );

    // A valid token: the envelope's sender is the token's sub.
    let envelope = stack
        .client("alice")
        .send(send_request("good", 1_000, 4))
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    assert_eq!(envelope.sender, "alice");
    let cell = stack.cell_of(&envelope.id);
    let row = stack
        .cell(&cell)
        .orders
        .connect()
        .await
        .unwrap()
        .query_one(
            "SELECT sender FROM envelopes WHERE id = $1",
            &[&envelope.id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "alice",
        "sender recorded in {cell}"
    );

    for (what, authorization) in &credentials {
        let mut client = stack.client_with(authorization.as_deref(), None);
        assert_code(
            client
                .open(pb::OpenRequest {
                    envelope_id: envelope.id.clone(),
                })
                .await,
            Code::Unauthenticated,
            &format!("Open with {what}"),
        );
        assert_code(
            client
                .grab(pb::GrabRequest {
                    envelope_id: envelope.id.clone(),
                })
                .await,
            Code::Unauthenticated,
            &format!("Grab with {what}"),
        );
        assert_code(
            client
                .get(pb::GetRequest {
                    envelope_id: envelope.id.clone(),
                    page_token: String::new(),
                    page_size: 0,
                })
                .await,
            Code::Unauthenticated,
            &format!("Get with {what}"),
        );
        assert_code(
            client
                .history(pb::HistoryRequest {
                    direction: pb::HistoryDirection::Received.into(),
                    page_token: String::new(),
                    page_size: 0,
                })
                .await,
            Code::Unauthenticated,
            &format!("History RECEIVED with {what}"),
        );
    }
    assert_eq!(rows_everywhere(&stack, "envelopes").await, 1);
    assert_eq!(rows_everywhere(&stack, "claims").await, 0, "no claim");
    assert_eq!(rows_everywhere(&stack, "transfers").await, 0, "no transfer");

    // The opener is the token's sub too.
    let opened = stack
        .client("bob")
        .open(pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.status(), pb::ShareStatus::Available);
    let row = stack
        .cell(&cell)
        .orders
        .connect()
        .await
        .unwrap()
        .query_one(
            "SELECT user_id, amount_cents FROM claims WHERE envelope_id = $1",
            &[&envelope.id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "bob");
    assert_eq!(row.get::<_, i64>(1), opened.amount_cents);
    stack.check_money().await;
}

fn bearer(user: &str) -> BearerToken {
    BearerToken::new(&mint_hs256(HS_KEY, user, 3600).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_has_a_rate_limit_of_their_own() {
    let mut stack = Builder {
        rate_per_user: 1,
        rate_burst: 3,
        ..Builder::default()
    }
    .start()
    .await;
    let envelope = stack.send("sender", "limited", 1_000, 10).await;
    // One connection, already open, for both users: the quick Grabs below
    // take milliseconds, far inside the 1 s refill.
    let channel = Channel::from_shared(format!("http://{}", stack.router_address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut alice = RedEnvelopeClient::with_interceptor(channel.clone(), bearer("alice"));
    let mut bob = RedEnvelopeClient::with_interceptor(channel, bearer("bob"));
    let grab = || pb::GrabRequest {
        envelope_id: envelope.id.clone(),
    };
    for attempt in 1..=3 {
        let reply = alice.grab(grab()).await;
        let reply = reply.unwrap_or_else(|status| panic!("grab {attempt}: {status:?}"));
        assert_eq!(reply.into_inner().status(), pb::ShareStatus::Available);
    }
    let status = assert_code(
        alice.grab(grab()).await,
        Code::ResourceExhausted,
        "4th grab",
    );
    assert!(
        status.message().contains("rate limit"),
        "names the rate limit: {status:?}"
    );
    for attempt in 1..=3 {
        let reply = bob.grab(grab()).await;
        let reply = reply.unwrap_or_else(|status| panic!("bob's grab {attempt}: {status:?}"));
        assert_eq!(reply.into_inner().status(), pb::ShareStatus::Available);
    }
    stack.check_money().await;
}

fn cell_channel(address: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_serve_routers_only() {
    let mut stack = Builder::default().start().await;
    let envelope = stack.send("alice", "direct", 1_000, 5).await;
    let cell = stack.cell_of(&envelope.id);
    let channel = cell_channel(stack.cell(&cell).servers[0].address);
    let grab = || pb::GrabRequest {
        envelope_id: envelope.id.clone(),
    };
    let open = || pb::OpenRequest {
        envelope_id: envelope.id.clone(),
    };
    let history = || pb::CellHistoryRequest {
        user: "alice".into(),
        direction: pb::HistoryDirection::Sent.into(),
        before: None,
        before_id: String::new(),
        limit: 0,
    };
    let wrong_tokens = [
        "not-the-internal-token-0123".to_owned(),
        // A prefix and an extension of the right one.
        INTERNAL_TOKEN[..INTERNAL_TOKEN.len() - 1].to_owned(),
        format!("{INTERNAL_TOKEN}x"),
        INTERNAL_TOKEN.to_uppercase(),
    ];
    let mut interceptors = vec![("no credential", AsUser::new("mallory").unwrap())];
    for token in &wrong_tokens {
        interceptors.push((
            "a wrong credential",
            AsUser::new("mallory")
                .unwrap()
                .with_internal(token)
                .unwrap(),
        ));
    }
    for (what, interceptor) in interceptors {
        let mut client = RedEnvelopeClient::with_interceptor(channel.clone(), interceptor.clone());
        assert_code(
            client.grab(grab()).await,
            Code::Unauthenticated,
            &format!("Grab with {what}"),
        );
        assert_code(
            client.open(open()).await,
            Code::Unauthenticated,
            &format!("Open with {what}"),
        );
        assert_code(
            client.send(send_request("direct", 1_000, 5)).await,
            Code::Unauthenticated,
            &format!("Send with {what}"),
        );
        let mut internal = CellInternalClient::with_interceptor(channel.clone(), interceptor);
        assert_code(
            internal.cell_history(history()).await,
            Code::Unauthenticated,
            &format!("CellHistory with {what}"),
        );
    }
    assert_eq!(rows_everywhere(&stack, "envelopes").await, 1);
    assert_eq!(rows_everywhere(&stack, "claims").await, 0);

    // With the routers' credential the same calls are served.
    let router_like = AsUser::new("mallory")
        .unwrap()
        .with_internal(INTERNAL_TOKEN)
        .unwrap();
    let mut client = RedEnvelopeClient::with_interceptor(channel.clone(), router_like.clone());
    let reply = client.grab(grab()).await.unwrap().into_inner();
    assert_eq!(reply.status(), pb::ShareStatus::Available);
    let mut internal = CellInternalClient::with_interceptor(channel, router_like);
    let slice = internal.cell_history(history()).await.unwrap().into_inner();
    let ids: Vec<&str> = slice
        .entries
        .iter()
        .map(|entry| entry.envelope.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, [envelope.id.as_str()]);
    stack.check_money().await;
}

/// What one call to the recording server carried.
#[derive(Debug, Clone)]
struct Recorded {
    method: &'static str,
    traceparent: Vec<String>,
    user: Option<String>,
    internal: Option<String>,
    authorization: bool,
    /// The deadline the router gave the cell (`grpc-timeout`).
    timeout: Option<Duration>,
}

/// A stand-in logic server that records the metadata routers send it.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    fn record<T>(&self, method: &'static str, request: &Request<T>) {
        let metadata = request.metadata();
        let text = |key: &str| {
            metadata
                .get(key)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        let recorded = Recorded {
            method,
            traceparent: metadata
                .get_all("traceparent")
                .iter()
                .map(|value| value.to_str().unwrap().to_owned())
                .collect(),
            user: text(USER_METADATA),
            internal: text(INTERNAL_METADATA),
            authorization: metadata.get("authorization").is_some(),
            timeout: redcell_router::deadline::client_timeout(metadata),
        };
        self.calls.lock().unwrap().push(recorded);
    }

    fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

#[tonic::async_trait]
impl RedEnvelope for Recorder {
    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        self.record("send", &request);
        Err(Status::unimplemented("recorder"))
    }

    async fn grab(
        &self,
        request: Request<pb::GrabRequest>,
    ) -> Result<Response<pb::GrabResponse>, Status> {
        self.record("grab", &request);
        Ok(Response::new(pb::GrabResponse {
            status: pb::ShareStatus::Available.into(),
        }))
    }

    async fn open(
        &self,
        request: Request<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenResponse>, Status> {
        self.record("open", &request);
        Err(Status::unimplemented("recorder"))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.record("get", &request);
        Err(Status::unimplemented("recorder"))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.record("history", &request);
        Err(Status::unimplemented("recorder"))
    }
}

/// A running recorder; stopped when dropped.
struct RecordingServer {
    address: SocketAddr,
    recorder: Recorder,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn start_recorder() -> RecordingServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let recorder = Recorder::default();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            "redcell.v1.RedEnvelope",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let (stop, stopped) = oneshot::channel::<()>();
    let service = RedEnvelopeServer::new(recorder.clone());
    let task = tokio::spawn(async move {
        // The reporter lives as long as the server.
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(service)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
    });
    RecordingServer {
        address,
        recorder,
        stop: Some(stop),
        task,
    }
}

/// A well-formed ID of cell n1 (region 1, epoch 00, suffix 042).
const N1_ENVELOPE: &str = "2601221000000000001042";
const CLIENT_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_PARENT_ID: &str = "b7ad6b7169203331";

/// The single call the recorder saw since the last take.
fn only_call(recorder: &Recorder) -> Recorded {
    let calls = recorder.take();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = calls.into_iter().next().unwrap();
    assert_eq!(call.method, "grab");
    assert_eq!(call.traceparent.len(), 1, "one traceparent: {call:?}");
    call
}

/// A stack whose cell n1 is the recording server, SERVING for the router.
async fn stack_with_recorder_as_n1() -> (Stack, RecordingServer) {
    let mut stack = Builder::default().start().await;
    let recording = start_recorder().await;
    assert_eq!(CELLS[0].0, "n1");
    let mut layout = stack.layout();
    for cell in &mut layout {
        if cell.0 == "n1" {
            cell.2 = vec![recording.address];
        }
    }
    let text = topology_text(&layout, &[], "{}", "{}");
    stack.rewrite_topology(&text).await;
    let address = recording.address.to_string();
    for attempt in 0.. {
        if stack.router.directory.is_serving(&address) {
            break;
        }
        assert!(attempt < 300, "the router never saw the recorder SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stack.cell_of(N1_ENVELOPE), "n1");
    (stack, recording)
}

fn grab_n1() -> pb::GrabRequest {
    pb::GrabRequest {
        envelope_id: N1_ENVELOPE.into(),
    }
}

/// The cell gets what is left of the call's deadline: the router's budget
/// (10 s in the test stack), or the client's own `grpc-timeout` if shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_reaches_the_cell() {
    let (stack, recording) = stack_with_recorder_as_n1().await;
    stack.client("alice").grab(grab_n1()).await.unwrap();
    let own = only_call(&recording.recorder).timeout.unwrap();
    assert!(
        own <= Duration::from_secs(10) && own > Duration::from_secs(5),
        "{own:?}"
    );
    for client_timeout in [Duration::from_millis(1_500), Duration::from_secs(60)] {
        let mut request = tonic::Request::new(grab_n1());
        request.set_timeout(client_timeout);
        stack.client("alice").grab(request).await.unwrap();
        let sent = only_call(&recording.recorder).timeout.unwrap();
        assert!(
            sent <= client_timeout.min(Duration::from_secs(10)) && sent > Duration::ZERO,
            "client {client_timeout:?}: the cell got {sent:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_user_and_credential_reach_the_cell() {
    let (stack, recording) = stack_with_recorder_as_n1().await;
    let grab = || pb::GrabRequest {
        envelope_id: N1_ENVELOPE.into(),
    };

    // The client's trace continues: same trace id and flags, a new parent id
    // (the router's hop).
    let incoming = format!("00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01");
    let reply = stack
        .client_traced("alice", &incoming)
        .grab(grab())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status(), pb::ShareStatus::Available);
    let call = only_call(&recording.recorder);
    let header = &call.traceparent[0];
    let sent = TraceParent::parse(header).unwrap_or_else(|| panic!("invalid: {header}"));
    assert!(header.starts_with("00-"), "{header}");
    assert_eq!(sent.trace_id_hex(), CLIENT_TRACE_ID, "{header}");
    assert_ne!(sent.parent_id_hex(), CLIENT_PARENT_ID, "{header}");
    assert!(sent.is_sampled(), "{header}");
    assert_eq!(call.user.as_deref(), Some("alice"), "the token's sub");
    assert_eq!(call.internal.as_deref(), Some(INTERNAL_TOKEN));
    assert!(!call.authorization, "the bearer token stays at the router");

    // Each hop gets a parent id of its own.
    stack
        .client_traced("alice", &incoming)
        .grab(grab())
        .await
        .unwrap();
    let again = TraceParent::parse(&only_call(&recording.recorder).traceparent[0]).unwrap();
    assert_eq!(again.trace_id_hex(), CLIENT_TRACE_ID);
    assert_ne!(again.parent_id_hex(), sent.parent_id_hex());

    // No incoming trace, or one that is not valid: a fresh trace each time.
    let mut trace_ids = vec![CLIENT_TRACE_ID.to_owned()];
    let invalid = [
        format!("00-{}-{CLIENT_PARENT_ID}-01", "0".repeat(32)),
        format!(
            "00-{}-{CLIENT_PARENT_ID}-01",
            CLIENT_TRACE_ID.to_uppercase()
        ),
        "garbage".to_owned(),
    ];
    let mut clients = vec![
        ("none", stack.client("bob")),
        ("none again", stack.client("bob")),
    ];
    for value in &invalid {
        clients.push((value.as_str(), stack.client_traced("bob", value)));
    }
    for (what, mut client) in clients {
        let reply = client.grab(grab()).await.unwrap().into_inner();
        assert_eq!(reply.status(), pb::ShareStatus::Available, "{what}");
        let call = only_call(&recording.recorder);
        let header = &call.traceparent[0];
        let fresh = TraceParent::parse(header)
            .unwrap_or_else(|| panic!("incoming {what}: sent an invalid {header}"));
        assert!(header.starts_with("00-"), "{what}: {header}");
        assert!(
            !trace_ids.contains(&fresh.trace_id_hex()),
            "incoming {what}: trace id {header} is not fresh ({trace_ids:?})"
        );
        trace_ids.push(fresh.trace_id_hex());
        assert_eq!(call.user.as_deref(), Some("bob"), "{what}");
        assert_eq!(call.internal.as_deref(), Some(INTERNAL_TOKEN), "{what}");
    }
}

/// Found from outside: a bearer token over hyper's default 16 KiB header list
/// reached the client as `UNKNOWN` (HTTP 431). Up to the router's header list
/// limit (128 KiB) an oversized token is the authenticator's to refuse:
/// `UNAUTHENTICATED`, and nothing happens. Beyond it HTTP/2 itself refuses the
/// call before the router's code runs (README documents what clients see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_bearer_token_is_unauthenticated_not_unknown() {
    let mut stack = Builder::default().start().await;
    stack.fund("alice", 10_000).await;
    let good = mint_hs256(HS_KEY, "alice", 3600).unwrap();
    for size in [20 * 1024, 100 * 1024] {
        // A real token padded out, and plain junk, of `size` bytes.
        for token in [format!("{good}{}", "a".repeat(size)), "a".repeat(size)] {
            let mut client = stack.client_with(Some(&format!("Bearer {token}")), None);
            assert_code(
                client
                    .send(send_request(&format!("huge-{size}"), 1_000, 4))
                    .await,
                Code::Unauthenticated,
                &format!("Send with a {size}-byte token"),
            );
            assert_code(
                client
                    .open(pb::OpenRequest {
                        envelope_id: "2601221000000000001003".into(),
                    })
                    .await,
                Code::Unauthenticated,
                &format!("Open with a {size}-byte token"),
            );
        }
    }
    // Past the header list limit: refused by HTTP/2, whatever code the
    // client library makes of it; the router keeps serving.
    let beyond = format!("Bearer {}", "a".repeat(256 * 1024));
    let refused = stack
        .client_with(Some(&beyond), None)
        .send(send_request("huge-beyond", 1_000, 4))
        .await;
    eprintln!(
        "a 256 KiB token: {:?}",
        refused.as_ref().map(|_| ()).map_err(Status::code)
    );
    assert!(refused.is_err());
    assert_eq!(rows_everywhere(&stack, "envelopes").await, 0, "no envelope");
    assert_eq!(stack.ledger.balance("alice").await.unwrap(), 10_000);
    let envelope = stack
        .client("alice")
        .send(send_request("good", 1_000, 4))
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    assert_eq!(envelope.sender, "alice");
    stack.check_money().await;
}

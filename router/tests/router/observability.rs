//! Observability (issue 14 item 6, DESIGN §9): what the admin port, the trace
//! exporter and the logs show after a known workload, and that the shipped
//! alert rules and dashboard name only metrics the binaries export.
//!
//! The metrics test runs the usual stack (cells on runtimes of their own) and
//! scrapes `/metrics` over HTTP. The trace and log tests need every span and
//! log line of both router and cell in one subscriber, scoped to the test: a
//! one-cell fleet runs on the test thread's current-thread runtime with the
//! subscriber set as that thread's default. The OTLP receiver (the
//! collector's `TraceService`) and the exporter's channel live on a second
//! runtime, so flushing spans from the test thread cannot wait on itself.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value,
    trace::v1::Span,
};
use redcell_cell::{CellConfig, metrics::CellMetrics};
use redcell_lifecycle::{
    admin,
    telemetry::{self, LogFormat},
};
use redcell_payments::PgLedger;
use redcell_proto::{
    token::mint_hs256,
    v1::{self as pb, red_envelope_client::RedEnvelopeClient},
};
use redcell_router::{
    RouterConfig,
    auth::{Authenticator, VerifierKey},
    metrics::RouterMetrics,
};
use redcell_topology::Topology;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Response, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::stack::{Builder, HS_KEY, INTERNAL_TOKEN, LEDGER_TEMPLATE, ORDERS_TEMPLATE};

// ---------------------------------------------------------------------------
// Alert rules and dashboard: well formed, and only exported metric names.
// ---------------------------------------------------------------------------

const ALERTS: &str = include_str!("../../../observability/alerts.yaml");
const DASHBOARD: &str = include_str!("../../../observability/dashboard.json");

/// Every series name the cell and router binaries can export, plus what
/// `cellctl reconcile --metrics-file` writes.
fn exported_names() -> BTreeSet<String> {
    let mut names = CellMetrics::new("n1").registry().exported_names();
    names.extend(RouterMetrics::new("north").registry().exported_names());
    names.extend(
        redcell_lifecycle::metrics::RECONCILE_SERIES
            .iter()
            .map(|name| (*name).to_owned()),
    );
    names
}

#[test]
fn alert_rules_are_well_formed_and_name_only_exported_metrics() {
    let exported = exported_names();
    let document: serde_yaml::Value = serde_yaml::from_str(ALERTS).unwrap();
    let groups = document["groups"].as_sequence().expect("groups: a list");
    let mut alerts = BTreeSet::new();
    let mut rules = 0;
    for group in groups {
        let group_name = group["name"].as_str().expect("every group has a name");
        for rule in group["rules"].as_sequence().expect("rules: a list") {
            let alert = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("{group_name}: a rule without `alert`"));
            assert!(alerts.insert(alert.to_owned()), "{alert}: named twice");
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no expr"));
            check_promql(alert, expr, &exported);
            if let Some(wait) = rule.get("for") {
                let wait = wait.as_str().unwrap_or_default();
                assert!(
                    is_duration(wait),
                    "{alert}: `for: {wait}` is not a duration"
                );
            }
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["page", "warn", "info"].contains(&severity),
                "{alert}: severity {severity:?} is not page, warn or info"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{alert}: no summary"
            );
            rules += 1;
        }
    }
    // What issue 14 item 4 asks to be paged for, each by its alert.
    for wanted in [
        "RedcellCellDatabaseDown",
        "RedcellCellOutOfMintPool",
        "RedcellOutboxBacklogGrowing",
        "RedcellSettlementLagOverAMinute",
        "RedcellPendingSendsPastRecoveryGrace",
        "RedcellReconcileDiscrepancy",
        "RedcellCellErrorRatio",
        "RedcellRouterErrorRatio",
        "RedcellRouterShedding",
    ] {
        assert!(alerts.contains(wanted), "no alert {wanted}");
    }
    println!(
        "alert rules: {rules} checked against {} exported series",
        exported.len()
    );
}

#[test]
fn the_dashboard_names_only_exported_metrics_and_covers_the_fleet_view() {
    let exported = exported_names();
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels: a list");
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a target's expr");
            used.extend(check_promql(title, expr, &exported));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]
            .as_str()
            .filter(|q| q.starts_with("label_values"))
        {
            used.extend(check_promql("templating", query, &exported));
        }
    }
    // Issue 14 item 4: per-cell rate, errors, p50/p99, lane depth, batch size,
    // outbox backlog, settlement lag, pool per region.
    for wanted in [
        "redcell_cell_requests_total",
        "redcell_cell_request_duration_seconds_bucket",
        "redcell_cell_lane_queue_depth",
        "redcell_cell_lane_batch_size_bucket",
        "redcell_cell_outbox_backlog",
        "redcell_cell_settlement_lag_seconds",
        "redcell_router_mint_pool_cells",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
}

/// A PromQL sanity check (promtool is not on this machine, and no PromQL
/// parser is worth its build here): brackets and quotes balance, range
/// selectors hold durations, label matchers are `label op "value"`, and every
/// `redcell_` name is an exported series. Returns the names used.
fn check_promql(context: &str, expr: &str, exported: &BTreeSet<String>) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut stack = Vec::new();
    let mut names = BTreeSet::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        match c {
            '"' | '\'' => {
                let end = chars[index + 1..]
                    .iter()
                    .position(|&d| d == c)
                    .unwrap_or_else(|| panic!("{context}: unclosed string in {expr}"));
                index += end + 1;
            }
            '(' | '{' | '[' => {
                if c == '[' {
                    let end = chars[index..]
                        .iter()
                        .position(|&d| d == ']')
                        .unwrap_or_else(|| panic!("{context}: unclosed [ in {expr}"));
                    let range: String = chars[index + 1..index + end].iter().collect();
                    assert!(
                        is_duration(&range),
                        "{context}: range [{range}] is not a duration in {expr}"
                    );
                }
                if c == '{' {
                    let end = chars[index..]
                        .iter()
                        .position(|&d| d == '}')
                        .unwrap_or_else(|| panic!("{context}: unclosed {{ in {expr}"));
                    let matchers: String = chars[index + 1..index + end].iter().collect();
                    check_matchers(context, &matchers, expr);
                }
                stack.push(c);
            }
            ')' | '}' | ']' => {
                let open = stack.pop();
                let expected = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                assert_eq!(open, Some(expected), "{context}: unbalanced {c} in {expr}");
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = index;
                while index + 1 < chars.len()
                    && (chars[index + 1].is_ascii_alphanumeric()
                        || chars[index + 1] == '_'
                        || chars[index + 1] == ':')
                {
                    index += 1;
                }
                let word: String = chars[start..=index].iter().collect();
                if word.starts_with("redcell_") {
                    assert!(
                        exported.contains(&word),
                        "{context}: {word} is not exported by any binary (expr: {expr})"
                    );
                    names.insert(word);
                }
            }
            _ => {}
        }
        index += 1;
    }
    assert!(stack.is_empty(), "{context}: unclosed {stack:?} in {expr}");
    assert!(
        !names.is_empty(),
        "{context}: names no redcell metric: {expr}"
    );
    let trimmed = expr.trim_end();
    assert!(
        !trimmed.ends_with(['+', '-', '*', '/', '>', '<', '=']),
        "{context}: ends with an operator: {expr}"
    );
    names
}

/// `label op "value", ...` (op: = != =~ !~).
fn check_matchers(context: &str, matchers: &str, expr: &str) {
    for matcher in split_outside_quotes(matchers) {
        let matcher = matcher.trim();
        if matcher.is_empty() {
            continue;
        }
        let op_at = matcher
            .find(['=', '!'])
            .unwrap_or_else(|| panic!("{context}: matcher {matcher:?} has no operator in {expr}"));
        let (label, rest) = matcher.split_at(op_at);
        let label = label.trim();
        assert!(
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{context}: bad label name {label:?} in {expr}"
        );
        let value = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op))
            .unwrap_or_else(|| panic!("{context}: bad operator in {matcher:?} of {expr}"))
            .trim();
        assert!(
            value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
            "{context}: value of {label} is not a quoted string in {expr}"
        );
    }
}

fn split_outside_quotes(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (index, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A Prometheus duration: one or more `<number><unit>` (ms s m h d w y).
fn is_duration(text: &str) -> bool {
    let mut rest = text.trim();
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|unit| rest.starts_with(unit))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

// ---------------------------------------------------------------------------
// /metrics after a known workload.
// ---------------------------------------------------------------------------

/// `name{labels} value` lines of a scrape, summed over the series that
/// carry every `(label, value)` of `want`.
fn sample(scrape: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = match series.split_once('{') {
                Some((series_name, labels)) => (series_name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let labels: HashMap<&str, &str> = split_outside_quotes(labels)
                .into_iter()
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key.trim(), value.trim().trim_matches('"')))
                })
                .collect();
            want.iter()
                .all(|(key, value)| labels.get(key) == Some(value))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn serve_admin(
    metrics: Arc<redcell_lifecycle::metrics::Metrics>,
    cancel: &CancellationToken,
) -> SocketAddr {
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(admin::serve(listener, metrics, cancel.child_token()));
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_request_counters_move_by_exactly_the_calls_made_by_code() {
    let mut stack = Builder::default().start().await;
    let cancel = CancellationToken::new();
    let router_admin = serve_admin(stack.router.metrics.registry().clone(), &cancel).await;
    let mut cell_admins = Vec::new();
    for cell in &stack.cells {
        for server in &cell.servers {
            cell_admins.push(serve_admin(server.metrics.registry().clone(), &cancel).await);
        }
    }
    let scrape_cells = || async {
        let mut scrapes = Vec::new();
        for address in &cell_admins {
            scrapes.push(admin::scrape(*address).await.unwrap());
        }
        scrapes
    };
    let router_count = |scrape: &str, method: &str, code: &str| {
        sample(
            scrape,
            "redcell_router_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    let cells_count = |scrapes: &[String], method: &str, code: &str| -> f64 {
        scrapes
            .iter()
            .map(|scrape| {
                sample(
                    scrape,
                    "redcell_cell_requests_total",
                    &[("method", method), ("code", code)],
                )
            })
            .sum()
    };
    let router_before = admin::scrape(router_admin).await.unwrap();
    let cells_before = scrape_cells().await;

    // The workload: 3 Sends, 4 Opens that take a share, 2 Opens of a
    // malformed ID (refused by the router itself), 1 Get without a token.
    let mut envelopes = Vec::new();
    for n in 0..3 {
        envelopes.push(
            stack
                .send("obs-alice", &format!("obs-send-{n}"), 1_000, 10)
                .await,
        );
    }
    for n in 0..4 {
        let reply = stack
            .client(&format!("obs-opener-{n}"))
            .open(pb::OpenRequest {
                envelope_id: envelopes[0].id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.amount_cents > 0, "open {n} took no share: {reply:?}");
    }
    for _ in 0..2 {
        let refused = stack
            .client("obs-opener-0")
            .open(pb::OpenRequest {
                envelope_id: "not-an-id".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }
    let refused = stack
        .client_with(None, None)
        .get(pb::GetRequest {
            envelope_id: envelopes[0].id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let router_after = admin::scrape(router_admin).await.unwrap();
    let cells_after = scrape_cells().await;
    let router_moved = |method: &str, code: &str| {
        router_count(&router_after, method, code) - router_count(&router_before, method, code)
    };
    let cells_moved = |method: &str, code: &str| {
        cells_count(&cells_after, method, code) - cells_count(&cells_before, method, code)
    };
    println!(
        "router: Send OK +{}, Open OK +{}, Open INVALID_ARGUMENT +{}, Get UNAUTHENTICATED +{}; cells: Send OK +{}, Open OK +{}",
        router_moved("RedEnvelope/Send", "OK"),
        router_moved("RedEnvelope/Open", "OK"),
        router_moved("RedEnvelope/Open", "INVALID_ARGUMENT"),
        router_moved("RedEnvelope/Get", "UNAUTHENTICATED"),
        cells_moved("RedEnvelope/Send", "OK"),
        cells_moved("RedEnvelope/Open", "OK"),
    );
    assert_eq!(router_moved("RedEnvelope/Send", "OK"), 3.0);
    assert_eq!(router_moved("RedEnvelope/Open", "OK"), 4.0);
    assert_eq!(router_moved("RedEnvelope/Open", "INVALID_ARGUMENT"), 2.0);
    assert_eq!(router_moved("RedEnvelope/Get", "UNAUTHENTICATED"), 1.0);
    assert_eq!(router_moved("RedEnvelope/Get", "OK"), 0.0);
    // What the router passed on, each cell server counted once.
    assert_eq!(cells_moved("RedEnvelope/Send", "OK"), 3.0);
    assert_eq!(cells_moved("RedEnvelope/Open", "OK"), 4.0);
    assert_eq!(cells_moved("RedEnvelope/Open", "INVALID_ARGUMENT"), 0.0);
    // Latency is recorded once per call too.
    let router_latency_count = sample(
        &router_after,
        "redcell_router_request_duration_seconds_count",
        &[("method", "RedEnvelope/Open")],
    ) - sample(
        &router_before,
        "redcell_router_request_duration_seconds_count",
        &[("method", "RedEnvelope/Open")],
    );
    assert_eq!(router_latency_count, 6.0);
    // The router's view of the fleet: both regions' pools whole.
    assert_eq!(
        sample(
            &router_after,
            "redcell_router_mint_pool_cells",
            &[("pool_region", "north")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &router_after,
            "redcell_router_mint_pool_cells",
            &[("pool_region", "south")]
        ),
        2.0
    );
    // Every cell labels its series, and its DB is up.
    for (scrape, cell) in cells_after.iter().zip(stack.cells.iter().map(|c| c.name)) {
        assert_eq!(
            sample(scrape, "redcell_cell_db_up", &[("cell", cell)]),
            1.0,
            "{cell}: db_up"
        );
    }
    // Four Opens of one envelope went through its lane in at least one batch.
    let batches: f64 = cells_after
        .iter()
        .map(|scrape| sample(scrape, "redcell_cell_lane_batch_size_count", &[]))
        .sum();
    let opened: f64 = cells_after
        .iter()
        .map(|scrape| sample(scrape, "redcell_cell_lane_batch_size_sum", &[]))
        .sum();
    println!("lane batches: {batches}, Opens in them: {opened}");
    assert!(
        batches >= 1.0 && opened >= 4.0,
        "batches {batches}, opens {opened}"
    );
    cancel.cancel();
}

// ---------------------------------------------------------------------------
// One cell and one router on the test thread, for traces and logs.
// ---------------------------------------------------------------------------

const DSN_PASSWORD: &str = "dsn-Pa55word-never-logged";

/// A bearer token and optional traceparent on every call.
#[derive(Clone)]
struct Headers {
    authorization: AsciiMetadataValue,
    traceparent: Option<AsciiMetadataValue>,
}

impl Interceptor for Headers {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        if let Some(value) = &self.traceparent {
            request.metadata_mut().insert("traceparent", value.clone());
        }
        Ok(request)
    }
}

type Client = RedEnvelopeClient<InterceptedService<Channel, Headers>>;

struct OneCell {
    router: SocketAddr,
    ledger: PgLedger,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl OneCell {
    fn client(&self, authorization: &str, traceparent: Option<&str>) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.router))
            .unwrap()
            .connect_lazy();
        RedEnvelopeClient::with_interceptor(
            channel,
            Headers {
                authorization: authorization.parse().unwrap(),
                traceparent: traceparent.map(|value| value.parse().unwrap()),
            },
        )
    }
}

/// Cell n1 (the whole north region) with a DSN carrying a password (trust
/// authentication ignores it), and a router, on the current runtime.
async fn one_cell() -> OneCell {
    let shared = redcell_harness::shared().await.unwrap();
    for (template, script) in [
        (ORDERS_TEMPLATE, redcell_migrations::ORDER_DB),
        (LEDGER_TEMPLATE, redcell_migrations::LEDGER),
    ] {
        shared
            .ensure_template(template, &[&redcell_migrations::script(script)])
            .await
            .unwrap();
    }
    let with_password = |dsn: &str| {
        dsn.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{DSN_PASSWORD}@"),
            1,
        )
    };
    let orders = shared.clone_database(ORDERS_TEMPLATE).await.unwrap();
    let ledger_db = shared.clone_database(LEDGER_TEMPLATE).await.unwrap();
    let (orders_dsn, ledger_dsn) = (with_password(&orders.dsn), with_password(&ledger_db.dsn));
    assert!(orders_dsn.contains(DSN_PASSWORD));
    // The databases outlive the test's servers (dropped with the process).
    std::mem::forget(orders);
    std::mem::forget(ledger_db);

    let cell_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cell_address = cell_listener.local_addr().unwrap();
    let text = format!(
        "version: 1\nregions: [north]\ncells:\n  - name: n1\n    region: north\n    status: active\n    servers: [\"{cell_address}\"]\n    db: \"{orders_dsn}\"\nepochs:\n  - id: 0\n    ranges:\n      north: {{ n1: \"000-999\" }}\nminting:\n  epoch: 0\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cells.yaml");
    std::fs::write(&path, &text).unwrap();
    let topology = Topology::parse(&text).unwrap();

    let stop = CancellationToken::new();
    let mut config = CellConfig::new("n1", Arc::new(topology.clone())).unwrap();
    config.internal_token = Some(INTERNAL_TOKEN.to_owned());
    config.workers.interval = Duration::from_millis(50);
    config.workers.health_interval = Duration::from_millis(50);
    let ledger = PgLedger::connect(&ledger_dsn, 4).unwrap();
    let cell_stop = stop.clone();
    tokio::spawn(redcell_cell::run(
        cell_listener,
        config,
        ledger.clone(),
        async move { cell_stop.cancelled().await },
    ));

    let router_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = router_listener.local_addr().unwrap();
    let north = topology.region_digit("north").unwrap();
    let auth = Authenticator::new(VerifierKey::Hs256(HS_KEY.to_vec())).unwrap();
    let mut config = RouterConfig::new(path, topology, north, auth, INTERNAL_TOKEN.to_owned());
    config.health_interval = Duration::from_millis(50);
    config.cell_timeout = Duration::from_secs(10);
    let router_stop = stop.clone();
    let (handle, serve) = redcell_router::start(router_listener, config, async move {
        router_stop.cancelled().await
    });
    tokio::spawn(serve);
    for attempt in 0.. {
        if handle.directory.is_serving(&cell_address.to_string()) {
            break;
        }
        assert!(attempt < 400, "the cell never became SERVING");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    OneCell {
        router,
        ledger,
        _dir: dir,
        stop,
    }
}

/// A Send by `sender` and an Open by `opener`, both through the router.
async fn send_and_open(fleet: &OneCell, sender: &str, opener: &str, traceparent: Option<&str>) {
    fleet
        .ledger
        .deposit(&format!("deposit:{sender}"), sender, 5_000)
        .await
        .unwrap();
    let bearer = |user: &str| format!("Bearer {}", mint_hs256(HS_KEY, user, 3600).unwrap());
    let envelope = fleet
        .client(&bearer(sender), traceparent)
        .send(pb::SendRequest {
            total_cents: 1_000,
            count: 3,
            kind: pb::EnvelopeKind::Lucky.into(),
            greeting: "trace me".into(),
            recipients: Vec::new(),
            idempotency_key: format!("{sender}-send"),
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    let opened = fleet
        .client(&bearer(opener), traceparent)
        .open(pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(opened.amount_cents > 0, "{opened:?}");
}

// ---------------------------------------------------------------------------
// Traces: an in-process OTLP receiver.
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| match &value.value {
            Some(any_value::Value::StringValue(text)) => Some(text.clone()),
            Some(any_value::Value::IntValue(number)) => Some(number.to_string()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the test named `name` alone in a child process of this test binary
/// and returns true when the caller *is* that child (and should run the
/// body). The trace and log tests install a thread-scoped `tracing`
/// subscriber; `tracing` caches each callsite's interest process-wide, so a
/// callsite first hit by a concurrent test on a thread without a subscriber
/// can stay disabled for this one (seen in the full test binary: no spans,
/// six log lines). A process of their own gives them a clean `tracing` state.
fn in_own_process(name: &str) -> bool {
    const CHILD: &str = "REDCELL_OBSERVABILITY_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .expect("the test binary runs again");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{name} in its own process failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{name} did not run in its own process:\n{text}"
    );
    false
}

#[test]
fn a_trace_holds_router_and_cell_spans_under_the_callers_trace_id() {
    if !in_own_process(
        "observability::a_trace_holds_router_and_cell_spans_under_the_callers_trace_id",
    ) {
        return;
    }
    let collector = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Receiver::default();
    let endpoint = collector.block_on({
        let receiver = receiver.clone();
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(receiver))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
            );
            format!("http://{address}")
        }
    });
    let (subscriber, exporter, refused) = {
        let _entered = collector.enter();
        telemetry::subscriber(
            "test",
            LogFormat::Text,
            std::io::sink,
            tracing_subscriber::EnvFilter::new("warn"),
            Some(&endpoint),
        )
    };
    assert_eq!(refused, None);
    assert!(exporter.exporting());
    let _default = tracing::subscriber::set_default(subscriber);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fleet = one_cell().await;
        send_and_open(&fleet, "trace-alice", "trace-bob", Some(&traceparent)).await;
        fleet.stop.cancel();
    });

    // The spans of the trace, once the exporter delivered them.
    let mut in_trace = Vec::new();
    for attempt in 0.. {
        exporter.flush();
        in_trace = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| hex(&span.trace_id) == trace_id)
            .cloned()
            .collect::<Vec<_>>();
        // Every span the assertions look for: each call's server span in
        // router and cell, the two attempts, the cell's debit.
        let seen: BTreeSet<(String, String)> = in_trace
            .iter()
            .map(|span| {
                let component = attribute(span, "redcell.component").unwrap_or_default();
                (span.name.clone(), component)
            })
            .collect();
        let complete = ["RedEnvelope/Send", "RedEnvelope/Open"]
            .iter()
            .flat_map(|method| ["router", "cell"].map(|c| (method.to_string(), c.to_owned())))
            .chain([("ledger_call".to_owned(), String::new())])
            .all(|wanted| seen.contains(&wanted))
            && in_trace
                .iter()
                .filter(|span| span.name == "cell_call")
                .count()
                >= 2;
        if complete || attempt == 50 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let describe: Vec<String> = in_trace
        .iter()
        .map(|span| {
            format!(
                "{} [{}] span {} parent {}",
                span.name,
                attribute(span, "redcell.component").unwrap_or_default(),
                hex(&span.span_id),
                hex(&span.parent_span_id)
            )
        })
        .collect();
    println!("spans of trace {trace_id}:\n  {}", describe.join("\n  "));
    let by_id: BTreeMap<String, &Span> = in_trace.iter().map(|s| (hex(&s.span_id), s)).collect();
    for method in ["RedEnvelope/Send", "RedEnvelope/Open"] {
        let server = |component: &str| {
            in_trace
                .iter()
                .find(|span| {
                    span.name == method
                        && attribute(span, "redcell.component").as_deref() == Some(component)
                })
                .unwrap_or_else(|| panic!("no {component} span for {method}: {describe:#?}"))
        };
        let (router, cell) = (server("router"), server("cell"));
        // The router's span continues the caller's trace ...
        assert_eq!(hex(&router.parent_span_id), caller_span, "{method}");
        // ... and the cell's is a child of the router's attempt, which is a
        // child of the router's span.
        let attempt = by_id
            .get(&hex(&cell.parent_span_id))
            .unwrap_or_else(|| panic!("{method}: the cell span's parent is not in the trace"));
        assert_eq!(attempt.name, "cell_call", "{method}");
        assert_eq!(
            hex(&attempt.parent_span_id),
            hex(&router.span_id),
            "{method}"
        );
    }
    // The cell's own work for the Send (its debit) is in the same trace.
    assert!(
        in_trace
            .iter()
            .any(|span| span.name == "ledger_call"
                && attribute(span, "op").as_deref() == Some("debit")),
        "no ledger debit span in the trace: {describe:#?}"
    );
    drop(exporter);
    collector.shutdown_background();
}

// ---------------------------------------------------------------------------
// Logs: JSON, and no secret at debug level.
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn debug_logs_are_json_and_never_show_a_token_a_dsn_password_or_the_internal_credential() {
    if !in_own_process(
        "observability::debug_logs_are_json_and_never_show_a_token_a_dsn_password_or_the_internal_credential",
    ) {
        return;
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let (subscriber, _telemetry, _) = telemetry::subscriber(
        "test",
        LogFormat::Json,
        move || writer.clone(),
        tracing_subscriber::EnvFilter::new("debug"),
        None,
    );
    let _default = tracing::subscriber::set_default(subscriber);
    let alice_token = mint_hs256(HS_KEY, "logs-alice", 3600).unwrap();
    let forged =
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.forged-signature-never-logged";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fleet = one_cell().await;
        send_and_open(&fleet, "logs-alice", "logs-bob", None).await;
        // A forged token and a well-formed one for a call that fails.
        let refused = fleet
            .client(forged, None)
            .open(pb::OpenRequest {
                envelope_id: "x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = fleet
            .client(&format!("Bearer {alice_token}"), None)
            .get(pb::GetRequest {
                envelope_id: "1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        // Let workers (settlement of the Open) log a pass or two.
        tokio::time::sleep(Duration::from_millis(300)).await;
        fleet.stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    println!(
        "captured {} log lines ({} bytes) at debug",
        lines.len(),
        logs.len()
    );
    assert!(lines.len() > 20, "too few lines to mean anything: {logs}");
    for line in &lines {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(
            parsed["level"].is_string() && parsed["fields"].is_object(),
            "{line}"
        );
    }
    let alice_signature = alice_token.rsplit('.').next().unwrap();
    let secrets = [
        ("alice's bearer token", alice_token.as_str()),
        ("alice's token signature", alice_signature),
        ("the forged token", forged.trim_start_matches("Bearer ")),
        ("the internal credential", INTERNAL_TOKEN),
        ("the DSN password", DSN_PASSWORD),
        ("the HS256 key", std::str::from_utf8(HS_KEY).unwrap()),
    ];
    for (what, secret) in secrets {
        if let Some(line) = lines.iter().find(|line| line.contains(secret)) {
            panic!("{what} appears in the logs: {line}");
        }
    }
    // Both servers' lines and a dependency's debug lines (HTTP/2) were
    // captured: the absence above means something. (tokio-postgres logs
    // through the `log` crate, which no binary bridges: it logs nothing.)
    for target in ["redcell_router", "redcell_cell", "h2"] {
        assert!(
            logs.contains(&format!("\"target\":\"{target}")),
            "no log line of {target}"
        );
    }
}

// ---------------------------------------------------------------------------
// The binary: --admin-listen and --log-format as an operator uses them.
// ---------------------------------------------------------------------------

/// The `router` process serves `/metrics` on `--admin-listen` (its own calls
/// counted there, the topology it serves shown), logs JSON lines with
/// `--log-format json`, and still stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_binary_serves_metrics_on_its_admin_port_and_logs_json() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("cells.yaml");
    std::fs::write(&topology, include_str!("../../../cells.yaml")).unwrap();
    let key = dir.path().join("hs.key");
    std::fs::write(&key, HS_KEY).unwrap();
    let stderr = dir.path().join("stderr");
    let (listen, admin_address) = (free(), free());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_router"))
        .arg("--topology")
        .arg(&topology)
        .args(["--listen", &listen.to_string(), "--region", "north"])
        .arg("--jwt-hs256-key-file")
        .arg(&key)
        .args(["--internal-token", INTERNAL_TOKEN])
        .args(["--admin-listen", &admin_address.to_string()])
        .args(["--log-format", "json"])
        .env_remove(telemetry::OTLP_ENDPOINT_ENV)
        .env_remove("REDCELL_LOG_JSON")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let channel = Channel::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect_lazy();
    let mut checked = false;
    for _ in 0..200 {
        let request = HealthCheckRequest {
            service: "redcell.v1.RedEnvelope".into(),
        };
        if HealthClient::new(channel.clone())
            .check(request)
            .await
            .is_ok()
        {
            checked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scraped = admin::scrape(admin_address).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();

    assert!(checked, "the router never answered a health check");
    let scraped = scraped.unwrap();
    let health_ok = sample(
        &scraped,
        "redcell_router_requests_total",
        &[
            ("method", "Health/Check"),
            ("code", "OK"),
            ("region", "north"),
        ],
    );
    assert!(
        health_ok >= 1.0,
        "the health call is not counted:\n{scraped}"
    );
    assert_eq!(
        sample(
            &scraped,
            "redcell_router_topology_version",
            &[("region", "north")]
        ),
        1.0,
        "{scraped}"
    );
    assert_eq!(exit.code(), Some(0));
    let logs = std::fs::read_to_string(&stderr).unwrap();
    assert!(logs.contains("admin endpoint serving /metrics"), "{logs}");
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
    }
}

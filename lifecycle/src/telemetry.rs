//! Logs and traces, set up alike for every binary.
//!
//! * **Logs**: `tracing`'s fmt output on stderr, text or JSON lines
//!   (`--log-format`), filtered by `RUST_LOG` (default `info`).
//! * **Traces**: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the `tracing` spans
//!   of redcell's own crates go to that collector over OTLP/gRPC, in batches
//!   from a background thread. When it is not set no exporter exists and no
//!   span is converted: nothing is exported and nothing is paid for it.
//! * **Propagation**: W3C `traceparent`, extracted from incoming gRPC metadata
//!   ([`crate::rpc`]) and injected into outgoing calls ([`inject_current`]),
//!   so one trace id follows a request from router to cell.
//!
//! The exporter is built inside the tokio runtime (its gRPC channel lives
//! there); [`Telemetry`] flushes what is buffered when it is dropped.

use std::{net::SocketAddr, time::Duration};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::Targets, fmt::MakeWriter, layer::SubscriberExt,
};

/// The environment variable that turns trace export on (the OpenTelemetry
/// convention every collector's documentation uses).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How long the last batch of spans may take to leave at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Crates whose spans are exported: redcell's own, not its dependencies'.
const TRACED_CRATES: &[&str] = &[
    "redcell_cell",
    "redcell_router",
    "redcell_lifecycle",
    "redcell_payments",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// The observability flags every server binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(long, env = "REDCELL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Shorthand for `--log-format json` (manifests set REDCELL_LOG_JSON).
    #[arg(long, env = "REDCELL_LOG_JSON", hide = true)]
    pub log_json: bool,
    /// Address of the admin HTTP endpoint serving Prometheus `/metrics`
    /// (e.g. 127.0.0.1:9464); none by default.
    #[arg(long, env = "REDCELL_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

impl TelemetryArgs {
    pub fn format(&self) -> LogFormat {
        if self.log_json {
            LogFormat::Json
        } else {
            self.log_format
        }
    }
}

impl Default for TelemetryArgs {
    fn default() -> TelemetryArgs {
        TelemetryArgs {
            log_format: LogFormat::Text,
            log_json: false,
            admin_listen: None,
        }
    }
}

/// Keeps the trace exporter alive; dropping it flushes the spans still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends every finished span now (tests read the collector right after).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "spans not flushed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            eprintln!("trace exporter shutdown: {error}");
        }
    }
}

/// Installs the global subscriber for `service` (`cell`, `router`). Call once,
/// first thing in `main`, inside the tokio runtime (`Runtime::enter`): the
/// OTLP exporter's channel is created on it.
pub fn init(service: &str, format: LogFormat) -> Telemetry {
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV)
        .ok()
        .filter(|value| !value.trim().is_empty());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (subscriber, telemetry, refused) = subscriber(
        service,
        format,
        std::io::stderr,
        filter,
        endpoint.as_deref(),
    );
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        eprintln!("{service}: a tracing subscriber was already installed");
    }
    match (refused, telemetry.exporting()) {
        (Some(error), _) => {
            tracing::error!(%error, "{OTLP_ENDPOINT_ENV}: traces are not exported");
        }
        (None, true) => {
            tracing::info!(endpoint = endpoint.as_deref(), "exporting traces over OTLP")
        }
        (None, false) => {}
    }
    telemetry
}

/// The subscriber [`init`] installs, built without installing it (tests scope
/// it to their own thread with `tracing::subscriber::set_default`). With an
/// endpoint, spans of redcell's crates are exported to it; when the exporter
/// cannot be built, logging still works and the reason is returned.
pub fn subscriber<W>(
    service: &str,
    format: LogFormat,
    writer: W,
    filter: EnvFilter,
    otlp_endpoint: Option<&str>,
) -> (Box<dyn Subscriber + Send + Sync>, Telemetry, Option<String>)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![logs];
    let mut telemetry = Telemetry::default();
    let mut refused = None;
    if let Some(endpoint) = otlp_endpoint {
        match tracer_provider(service, endpoint) {
            Ok(provider) => {
                let targets = TRACED_CRATES
                    .iter()
                    .fold(Targets::new(), |targets, target| {
                        targets.with_target(*target, tracing::Level::INFO)
                    });
                layers.push(
                    tracing_opentelemetry::layer()
                        .with_tracer(provider.tracer("redcell"))
                        .with_tracked_inactivity(false)
                        .with_filter(targets)
                        .boxed(),
                );
                telemetry.provider = Some(provider);
            }
            Err(error) => refused = Some(error),
        }
    }
    (
        Box::new(Registry::default().with(layers)),
        telemetry,
        refused,
    )
}

fn tracer_provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| error.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(format!("redcell-{service}"))
                .build(),
        )
        .build())
}

/// Makes `span` a child of the W3C `traceparent` in `headers`, if there is one
/// and spans are exported (otherwise there is nothing to attach it to).
pub fn set_parent_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.get("traceparent").is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to do.
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's context as `traceparent` into outgoing gRPC
/// metadata. `false` when spans are not exported (no context to send): the
/// caller then propagates the trace its own way.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) -> bool {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return false;
    }
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
    true
}

/// The current span's trace id (32 hex digits), when spans are exported.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

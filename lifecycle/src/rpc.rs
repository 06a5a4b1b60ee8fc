//! Every gRPC call a server answers, measured and traced in one place: a tower
//! layer on the tonic server (`Server::builder().layer(RpcLayer::new(..))`).
//!
//! Per call it opens a `grpc` span (a child of the caller's `traceparent`, so
//! router and cell spans share one trace), counts the call by method and gRPC
//! code and records its latency. The code is the `grpc-status` of a
//! trailers-only response (every error tonic answers) or OK (a unary reply,
//! whose status travels in trailers after the body: all redcell RPCs are
//! unary). An error from the layers below the handlers (the router's load
//! shedder) counts as its status and in `unhandled`.
//!
//! Labels stay bounded: the method label is `Service/Method` of a call that
//! was implemented; any path the server does not serve (`UNIMPLEMENTED`) is
//! counted under `method="unimplemented"`, so a scanner cannot grow the series.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use prometheus::{HistogramVec, IntCounter, IntCounterVec};
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::{LATENCY_BUCKETS, Metrics};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request metrics of one server (`component` is `cell` or `router`).
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    /// `cell` or `router`: the `redcell.component` attribute of every span.
    component: String,
    requests: IntCounterVec,
    duration: HistogramVec,
    unhandled: Option<IntCounter>,
}

impl RpcMetrics {
    /// Registers `redcell_<component>_requests_total{method,code}` and
    /// `redcell_<component>_request_duration_seconds{method}`.
    pub fn new(metrics: &Metrics, component: &str, unhandled: Option<IntCounter>) -> RpcMetrics {
        RpcMetrics {
            component: component.to_owned(),
            requests: metrics.counter_vec(
                &format!("redcell_{component}_requests_total"),
                "gRPC calls answered, by method (Service/Method) and gRPC status code",
                &["method", "code"],
            ),
            duration: metrics.histogram_vec(
                &format!("redcell_{component}_request_duration_seconds"),
                "Time to answer a gRPC call, by method",
                &["method"],
                LATENCY_BUCKETS,
            ),
            unhandled,
        }
    }

    /// Calls of `method` answered with `code` so far (tests).
    pub fn requests(&self, method: &str, code: Code) -> u64 {
        self.requests
            .get_metric_with_label_values(&[method, code_name(code)])
            .map(|counter| counter.get())
            .unwrap_or(0)
    }

    fn record(&self, method: &str, code: Code, started: Instant) {
        let method = if code == Code::Unimplemented {
            "unimplemented"
        } else {
            method
        };
        self.requests
            .with_label_values(&[method, code_name(code)])
            .inc();
        self.duration
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: Arc<RpcMetrics>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<RpcMetrics>) -> RpcLayer {
        RpcLayer { metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B, R> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            redcell.component = %self.metrics.component,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        crate::telemetry::set_parent_from(&span, request.headers());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let record_span = span.clone();
        Box::pin(
            async move {
                let result = future.await.map_err(Into::into);
                let code = match &result {
                    Ok(response) => status_of(response.headers()),
                    Err(error) => {
                        if let Some(unhandled) = &metrics.unhandled {
                            unhandled.inc();
                        }
                        error
                            .downcast_ref::<tonic::Status>()
                            .map_or(Code::Unknown, tonic::Status::code)
                    }
                };
                metrics.record(&method, code, started);
                record_span.record("rpc.grpc.status_code", code as i32);
                if is_server_fault(code) {
                    record_span.record("otel.status_code", "ERROR");
                }
                result
            }
            .instrument(span),
        )
    }
}

/// `Service/Method` of a gRPC path `/package.Service/Method`.
fn method_of(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let service = service.rsplit('.').next().unwrap_or(service);
    match parts.next() {
        Some(method) => format!("{service}/{method}"),
        None => "unimplemented".to_owned(),
    }
}

fn status_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// Codes that say the server failed, not the caller (a span marked as error).
fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
            | Code::DeadlineExceeded
    )
}

/// The code's name as the gRPC spec spells it (`OK`, `UNAVAILABLE`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_short_and_bounded() {
        assert_eq!(
            method_of("/redcell.v1.RedEnvelope/Open"),
            "RedEnvelope/Open"
        );
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), "Health/Check");
        assert_eq!(method_of("/nonsense"), "unimplemented");
    }

    #[test]
    fn trailers_only_status_is_read_and_absent_means_ok() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_of(&headers), Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(status_of(&headers), Code::Unavailable);
    }
}

//! The calls a gRPC server takes, as a tower layer: counted by method and gRPC code and timed
//! to their response headers, and — where traces are exported — given a span that continues the
//! caller's W3C trace context when it arrives sampled (calls without a decision are sampled at
//! a ratio).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prometheus::{HistogramVec, IntCounterVec, Registry};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::logging::TRACE_TARGET;
use crate::metrics;

/// The metric families every API's [`GrpcCalls`] shares.
#[derive(Debug, Clone)]
pub struct GrpcCallMetrics {
    calls: IntCounterVec,
    duration: HistogramVec,
}

impl GrpcCallMetrics {
    /// `<prefix>_grpc_requests_total{api,method,code}` and
    /// `<prefix>_grpc_request_duration_seconds{api,method}`, registered in `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> Result<Self, prometheus::Error> {
        Ok(Self {
            calls: metrics::counter_vec(
                registry,
                &format!("{prefix}_grpc_requests_total"),
                "gRPC calls taken, by API, method and gRPC code.",
                &["api", "method", "code"],
            )?,
            duration: metrics::latency_histogram_vec(
                registry,
                &format!("{prefix}_grpc_request_duration_seconds"),
                "Time from a gRPC call to its response headers (for a unary call, its answer).",
                &["api", "method"],
            )?,
        })
    }
}

/// Counts and traces the calls of one API of a gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcCalls {
    api: &'static str,
    /// `package.Service` names counted by method; a call to any other is `unknown`.
    services: &'static [&'static str],
    metrics: Option<GrpcCallMetrics>,
    sampling: Option<f64>,
    /// Path prefixes never traced (long-lived watch streams, whose span would say nothing).
    untraced: &'static [&'static str],
}

impl GrpcCalls {
    /// Neither counted nor traced until told.
    pub fn new(api: &'static str, services: &'static [&'static str]) -> Self {
        Self {
            api,
            services,
            metrics: None,
            sampling: None,
            untraced: &[],
        }
    }

    /// Counted in `metrics`.
    pub fn counted(mut self, metrics: &GrpcCallMetrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Traced, calls without a caller's decision sampled at `sampling` (`None`: not traced),
    /// but never those whose path starts with one of `untraced`.
    pub fn traced(mut self, sampling: Option<f64>, untraced: &'static [&'static str]) -> Self {
        self.sampling = sampling;
        self.untraced = untraced;
        self
    }

    /// `Service/Method` of a path of one of the API's services. Any method name may come in,
    /// but only those a service implements are answered with another code than
    /// UNIMPLEMENTED, which is counted as `unknown`: the label stays bounded.
    fn method(&self, path: &str) -> Option<String> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if !self.services.contains(&service) || method.is_empty() {
            return None;
        }
        let short = service.rsplit('.').next().unwrap_or(service);
        Some(format!("{short}/{method}"))
    }

    /// The span of a call to `path` with `headers`, if it is recorded.
    fn span(&self, path: &str, headers: &http::HeaderMap) -> Option<tracing::Span> {
        let ratio = self.sampling?;
        if self.untraced.iter().any(|prefix| path.starts_with(prefix)) {
            return None;
        }
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let caller = parent.span().span_context().clone();
        let sampled = if caller.is_valid() {
            caller.is_sampled()
        } else {
            rand::random::<f64>() < ratio
        };
        if !sampled {
            return None;
        }
        // `/package.Service/Method`
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or((path, ""));
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "grpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
        );
        if caller.is_valid() {
            // Fails only when no exporter is installed, and then nothing is recorded anyway.
            let _ = span.set_parent(parent);
        }
        Some(span)
    }

    /// A call is over with `code`.
    fn ended(
        &self,
        method: Option<&str>,
        code: i32,
        started: Instant,
        span: Option<&tracing::Span>,
    ) {
        if let Some(metrics) = &self.metrics {
            let method = match method {
                Some(method) if code != tonic_code::UNIMPLEMENTED => method,
                _ => "unknown",
            };
            metrics
                .calls
                .with_label_values(&[self.api, method, tonic_code::name(code)])
                .inc();
            metrics
                .duration
                .with_label_values(&[self.api, method])
                .observe(started.elapsed().as_secs_f64());
        }
        if let Some(span) = span {
            span.record("rpc.grpc.status_code", code);
            if tonic_code::is_server_fault(code) {
                span.record("otel.status_code", "error");
            }
        }
    }
}

impl<S> tower::Layer<S> for GrpcCalls {
    type Service = GrpcCallsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCallsService {
            inner,
            calls: self.clone(),
        }
    }
}

/// A gRPC service whose calls are counted and traced (see [`GrpcCalls`]).
#[derive(Debug, Clone)]
pub struct GrpcCallsService<S> {
    inner: S,
    calls: GrpcCalls,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for GrpcCallsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let calls = self.calls.clone();
        let method = calls.method(request.uri().path());
        let span = calls.span(request.uri().path(), request.headers());
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = match &span {
                Some(span) => call.instrument(span.clone()).await,
                None => call.await,
            };
            // A failed call answers with its status in the headers (trailers-only); a
            // successful unary one sends headers, its message, then `grpc-status: 0`.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                Err(_) => tonic_code::UNKNOWN,
            };
            calls.ended(method.as_deref(), code, started, span.as_ref());
            result
        })
    }
}

/// The gRPC status names, by code (`OK` is 0).
pub const GRPC_CODE_NAMES: [&str; 17] = tonic_code::NAMES;

/// gRPC status codes as the wire carries them, without depending on tonic here.
mod tonic_code {
    pub const UNKNOWN: i32 = 2;
    pub const UNIMPLEMENTED: i32 = 12;

    /// The gRPC status names, by code.
    pub const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// The code's name; a code outside the 17 is `UNKNOWN`, as gRPC reads it.
    pub fn name(code: i32) -> &'static str {
        usize::try_from(code)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .unwrap_or("UNKNOWN")
    }

    /// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS: the
    /// server's fault, as OpenTelemetry's conventions mark a server span's error.
    pub fn is_server_fault(code: i32) -> bool {
        matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &[&str] = &["weft.identity.v1.Identity", "weft.admin.v1.Admin"];

    #[test]
    fn methods_are_a_bounded_label() {
        let calls = GrpcCalls::new("proxy", SERVICES);
        assert_eq!(
            calls
                .method("/weft.identity.v1.Identity/Certify")
                .as_deref(),
            Some("Identity/Certify")
        );
        assert_eq!(calls.method("/evil.Service/Method"), None);
        assert_eq!(calls.method("/weft.admin.v1.Admin/"), None);
        assert_eq!(calls.method("no-slash"), None);
        assert_eq!(tonic_code::name(0), "OK");
        assert_eq!(tonic_code::name(99), "UNKNOWN");
        assert_eq!(tonic_code::name(-1), "UNKNOWN");
    }

    #[test]
    fn untraced_paths_unsampled_callers_and_no_exporter_get_no_span() {
        let mut unsampled = http::HeaderMap::new();
        unsampled.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
        );
        let calls = GrpcCalls::new("proxy", SERVICES).traced(Some(1.0), &["/weft.discovery."]);
        assert!(
            calls
                .span(
                    "/weft.discovery.v1.Discovery/Watch",
                    &http::HeaderMap::new()
                )
                .is_none()
        );
        assert!(
            calls
                .span("/weft.identity.v1.Identity/Certify", &unsampled)
                .is_none()
        );
        assert!(
            GrpcCalls::new("proxy", SERVICES)
                .span(
                    "/weft.identity.v1.Identity/Certify",
                    &http::HeaderMap::new()
                )
                .is_none()
        );
    }
}

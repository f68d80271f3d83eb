//! The proxy's metrics. Label sets are resolved once per connection or route, so recording a
//! request is an atomic increment, a histogram observation, and its status code's counter
//! (found among the few its label set has seen); a body whose length is not declared (and a
//! gRPC response, for its status) is watched until it ends.

mod peer_tcp;
mod responses;

use std::sync::Arc;
use std::time::Duration;

use http::Response;

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use weft_telemetry::metrics;

pub use self::peer_tcp::{Metered, PeerTcpMetrics, UNAUTHENTICATED, UNMESHED};
use self::responses::ResponseCounters;
use crate::body_end::Counted;
use crate::http_util::Body;

/// Which side of the proxy traffic came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From another proxy, to the local app.
    Inbound,
    /// From the local app, to another proxy.
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Why the outbound side refused to send something anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The destination is inside the mesh's networks and discovery has not placed it: sending
    /// it in plaintext could leak what the mesh must encrypt.
    DiscoveryUnavailable,
    /// Discovery knows the destination but it has no endpoint to send to.
    NoEndpoint,
    /// The endpoint (or, outside the mesh, the destination) could not be reached.
    PeerUnreachable,
    /// An opaque connection came with no original destination.
    NoDestination,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DiscoveryUnavailable => "discovery_unavailable",
            Self::NoEndpoint => "no_endpoint",
            Self::PeerUnreachable => "unreachable",
            Self::NoDestination => "no_destination",
        }
    }
}

/// Why the inbound side refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundRefusal {
    /// Too many handshakes were in progress.
    Handshakes,
    /// The handshake (TLS and transport header) took too long.
    HandshakeTimeout,
    /// The peer's identity holds its limit of connections.
    IdentityConnections,
    /// The peer presented no identity.
    NoIdentity,
    /// A plaintext client on a strict port.
    Plaintext,
    /// A TCP connection authorization denied.
    Unauthorized,
    /// A stream detected as opaque on a port that takes HTTP began like a text request.
    NotHttp,
    /// No app port and no original destination.
    NoTarget,
    /// The original destination is one of the proxy's own ports.
    OwnPort,
    /// The original destination is not one of the pod's addresses.
    NotLocal,
}

impl InboundRefusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshakes => "handshakes",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::IdentityConnections => "identity_connections",
            Self::NoIdentity => "no_identity",
            Self::Plaintext => "plaintext",
            Self::Unauthorized => "unauthorized",
            Self::NotHttp => "not_http",
            Self::NoTarget => "no_target",
            Self::OwnPort => "own_port",
            Self::NotLocal => "not_local",
        }
    }
}

/// Every metric family the proxy exports.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    responses: IntCounterVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    latency: HistogramVec,
    errors: IntCounterVec,
    tcp_open: IntGaugeVec,
    tcp_opened: IntCounterVec,
    tcp_bytes: IntCounterVec,
    peer_tcp: PeerTcpMetrics,
    tls_failures: IntCounterVec,
    tls_handshakes: IntCounterVec,
    route_requests: IntCounterVec,
    backend_responses: IntCounterVec,
    backend_latency: HistogramVec,
    route_retries: IntCounterVec,
    route_budget_exhausted: IntCounterVec,
    endpoint_ejections: IntCounterVec,
    endpoints_ejected: IntGaugeVec,
    discovery_updates: IntCounterVec,
    discovery_last_applied: IntGauge,
    discovery_watches: IntGauge,
    outbound_refused: IntCounterVec,
    inbound_refused: IntCounterVec,
    inbound_authz: IntCounterVec,
    inbound_rate_limited: IntCounterVec,
    /// When the current leaf expires, in Unix seconds.
    pub cert_expiry: IntGauge,
    /// Certificate requests by result.
    pub cert_renewals: IntCounterVec,
}

/// The labels every request metric carries.
const REQUEST_LABELS: &[&str] = &["direction", "peer_identity", "destination", "route"];

/// What one set of request metrics is labelled with.
#[derive(Debug, Clone, Copy)]
pub struct RequestLabels<'a> {
    /// Which side of the proxy.
    pub direction: Direction,
    /// Inbound, the client's identity; outbound, the destination's.
    pub peer: &'a str,
    /// The Service (outbound) or app address (inbound).
    pub destination: &'a str,
    /// The route the request matched; empty where there are no routes.
    pub route: &'a str,
}

impl<'a> RequestLabels<'a> {
    /// Labels without a route.
    pub fn new(direction: Direction, peer: &'a str, destination: &'a str) -> Self {
        Self {
            direction,
            peer,
            destination,
            route: "",
        }
    }

    fn values(&self) -> [&'a str; 4] {
        [
            self.direction.as_str(),
            self.peer,
            self.destination,
            self.route,
        ]
    }
}

/// The counters of one (direction, peer, destination, route) label set.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    by_class: [IntCounter; 6],
    latency: Histogram,
    responses: ResponseCounters,
    request_bytes: IntCounter,
}

/// The attempts of one backend, by result, and their latency.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    by_class: [IntCounter; 6],
    failed: IntCounter,
    cancelled: IntCounter,
    latency: Histogram,
}

/// How an attempt to a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Its response headers came.
    Answered(http::StatusCode),
    /// The endpoint could not be reached, or the exchange broke.
    Failed,
    /// It was dropped before it ended: a timeout above it ran out, or the client gave up.
    Cancelled,
}

impl BackendMetrics {
    /// Records an attempt that ended as `end` after `elapsed`.
    pub fn record(&self, end: AttemptEnd, elapsed: Duration) {
        match end {
            AttemptEnd::Answered(status) => self.by_class[status_class(status)].inc(),
            AttemptEnd::Failed => self.failed.inc(),
            AttemptEnd::Cancelled => self.cancelled.inc(),
        }
        self.latency.observe(elapsed.as_secs_f64());
    }
}

/// Status class labels, in the order [`status_class`] indexes them.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// The index of `status`'s class in [`CLASSES`].
fn status_class(status: http::StatusCode) -> usize {
    match status.as_u16() / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        5 => 4,
        _ => 5,
    }
}

/// Why a request was retried (its discriminant indexes a route's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// An HTTP status the route retries.
    Status,
    /// A gRPC status the route retries.
    GrpcStatus,
    /// The endpoint could not be reached.
    Connect,
    /// The exchange broke after the request may have been sent.
    Stream,
    /// An attempt ran out of time.
    Timeout,
}

impl RetryReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::GrpcStatus => "grpc_status",
            Self::Connect => "connect",
            Self::Stream => "stream",
            Self::Timeout => "timeout",
        }
    }
}

/// One route's retry counters by reason, each created when first used.
#[derive(Debug, Clone)]
pub struct RouteRetries(Arc<RetriesOfRoute>);

#[derive(Debug)]
struct RetriesOfRoute {
    vec: IntCounterVec,
    destination: String,
    route: String,
    by_reason: [std::sync::OnceLock<IntCounter>; 5],
}

impl RouteRetries {
    /// Counts one retry.
    pub fn inc(&self, reason: RetryReason) {
        let of = &self.0;
        of.by_reason[reason as usize]
            .get_or_init(|| {
                of.vec
                    .with_label_values(&[of.destination.as_str(), &of.route, reason.as_str()])
            })
            .inc();
    }
}

/// Counts an open connection until dropped.
#[derive(Debug)]
pub struct OpenConnection(IntGauge);

// === impl ProxyMetrics ===

impl ProxyMetrics {
    /// Registers the proxy's metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            requests: metrics::counter_vec(
                registry,
                "weft_http_requests_total",
                "HTTP requests, by direction, peer identity, destination, route (outbound, the route matched; empty where none) and response status class.",
                &[
                    "direction",
                    "peer_identity",
                    "destination",
                    "route",
                    "status_class",
                ],
            )?,
            responses: metrics::counter_vec(
                registry,
                "weft_http_responses_total",
                "HTTP responses, by direction, peer identity, destination, route, status code and gRPC status (empty for other responses, none for a gRPC response that ended without one); counted when a gRPC response ends, when any other's headers arrive.",
                &[
                    "direction",
                    "peer_identity",
                    "destination",
                    "route",
                    "status_code",
                    "grpc_status",
                ],
            )?,
            request_bytes: metrics::counter_vec(
                registry,
                "weft_http_request_bytes_total",
                "HTTP request body bytes, by direction, peer identity, destination and route: a body of declared length when it starts, any other as it passes.",
                REQUEST_LABELS,
            )?,
            response_bytes: metrics::counter_vec(
                registry,
                "weft_http_response_bytes_total",
                "HTTP response body bytes, by direction, peer identity, destination and route: a body of declared length when it starts, any other when it ends.",
                REQUEST_LABELS,
            )?,
            errors: metrics::counter_vec(
                registry,
                "weft_outbound_errors_total",
                "Requests to a meshed destination the proxy answered itself, by destination and reason: timeout, rate_limited, connect, stream, saturated, no_endpoints, no_backends, no_route.",
                &["destination", "reason"],
            )?,
            latency: metrics::latency_histogram_vec(
                registry,
                "weft_http_request_duration_seconds",
                "Time from request to response headers, by direction, peer identity, destination and route.",
                REQUEST_LABELS,
            )?,
            tcp_open: metrics::gauge_vec(
                registry,
                "weft_tcp_open_connections",
                "Connections open now.",
                &["direction"],
            )?,
            tcp_opened: metrics::counter_vec(
                registry,
                "weft_tcp_connections_total",
                "Connections accepted, by protocol detected.",
                &["direction", "protocol"],
            )?,
            tcp_bytes: metrics::counter_vec(
                registry,
                "weft_tcp_transferred_bytes_total",
                "Bytes forwarded on opaque TCP connections, by direction of travel.",
                &["direction", "flow"],
            )?,
            peer_tcp: PeerTcpMetrics::register(registry)?,
            inbound_authz: metrics::counter_vec(
                registry,
                "weft_inbound_authz_total",
                "Inbound authorization decisions (allow, deny, audit: allowed but would have been denied), by the AuthorizationPolicy or default that decided.",
                &["policy", "decision"],
            )?,
            inbound_rate_limited: metrics::counter_vec(
                registry,
                "weft_inbound_rate_limited_total",
                "Inbound requests refused (429) by the workload's rate limits, by limit.",
                &["limit"],
            )?,
            tls_failures: metrics::counter_vec(
                registry,
                "weft_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason: certificate (unverifiable or absent), peer_alert (the peer refused ours), alpn, protocol, io (the connection broke), other.",
                &["direction", "reason"],
            )?,
            route_requests: metrics::counter_vec(
                registry,
                "weft_route_requests_total",
                "Requests matched to a route (one per request, however many attempts).",
                &["destination", "route"],
            )?,
            backend_responses: metrics::counter_vec(
                registry,
                "weft_backend_responses_total",
                "Attempts sent to a backend (each retry is one), by backend and result: the response's status class, error (unreachable, or the exchange broke), or cancelled (a timeout ran out first, or the client gave up).",
                &["backend", "status_class"],
            )?,
            backend_latency: metrics::latency_histogram_vec(
                registry,
                "weft_backend_response_duration_seconds",
                "Time from an attempt sent to a backend to its response headers, or to its failure.",
                &["backend"],
            )?,
            route_retries: metrics::counter_vec(
                registry,
                "weft_route_retries_total",
                "Retries sent, by route and reason: status (an HTTP status the route retries), grpc_status, connect (the endpoint could not be reached), stream (the exchange broke) or timeout (the attempt ran out of time; these two for idempotent requests only).",
                &["destination", "route", "reason"],
            )?,
            route_budget_exhausted: metrics::counter_vec(
                registry,
                "weft_route_retry_budget_exhausted_total",
                "Retries not sent because the retry budget was spent.",
                &["destination", "route"],
            )?,
            endpoint_ejections: metrics::counter_vec(
                registry,
                "weft_endpoint_ejections_total",
                "Endpoints ejected by circuit breaking, by backend and by the route whose own breaker did it (empty: the service's).",
                &["backend", "route"],
            )?,
            endpoints_ejected: metrics::gauge_vec(
                registry,
                "weft_endpoints_ejected",
                "Endpoints ejected now, by backend and breaker (route, or empty for the service's).",
                &["backend", "route"],
            )?,
            discovery_updates: metrics::counter_vec(
                registry,
                "weft_discovery_updates_total",
                "Discovery snapshots received, by result (applied or rejected).",
                &["result"],
            )?,
            discovery_last_applied: metrics::gauge(
                registry,
                "weft_discovery_last_update_timestamp_seconds",
                "When the proxy last applied a discovery snapshot, in seconds since the Unix epoch (0: never).",
            )?,
            discovery_watches: metrics::gauge(
                registry,
                "weft_discovery_watches",
                "Destinations the proxy watches now (bounded by WEFT_PROXY_MAX_DESTINATIONS).",
            )?,
            outbound_refused: metrics::counter_vec(
                registry,
                "weft_outbound_refused_total",
                "Outbound connections and requests refused rather than sent, by reason.",
                &["reason"],
            )?,
            inbound_refused: metrics::counter_vec(
                registry,
                "weft_inbound_refused_total",
                "Inbound connections refused before reaching the app, by reason.",
                &["reason"],
            )?,
            tls_handshakes: metrics::counter_vec(
                registry,
                "weft_tls_handshakes_total",
                "TLS handshakes completed, by the cipher suite and key exchange they settled on.",
                &["direction", "cipher_suite", "key_exchange"],
            )?,
            cert_expiry: metrics::gauge(
                registry,
                "weft_identity_cert_expiry_timestamp_seconds",
                "When the proxy's current certificate expires, in seconds since the Unix epoch.",
            )?,
            cert_renewals: metrics::counter_vec(
                registry,
                "weft_identity_cert_requests_total",
                "Certificate requests to the control plane, by result.",
                &["result"],
            )?,
        })
    }

    /// The request metrics for one label set; call once per connection or route.
    pub fn requests(&self, labels: &RequestLabels<'_>) -> RequestMetrics {
        let values = labels.values();
        let [direction, peer, destination, route] = values;
        RequestMetrics {
            by_class: CLASSES.map(|class| {
                self.requests
                    .with_label_values(&[direction, peer, destination, route, class])
            }),
            latency: self.latency.with_label_values(&values),
            responses: ResponseCounters::new(
                self.responses.clone(),
                values.map(str::to_string),
                self.response_bytes.with_label_values(&values),
            ),
            request_bytes: self.request_bytes.with_label_values(&values),
        }
    }

    /// A request to `destination` the proxy answered itself, for `reason`.
    pub fn outbound_error(&self, destination: &str, reason: &str) {
        self.errors.with_label_values(&[destination, reason]).inc();
    }

    /// Requests of one route.
    pub fn route_requests(&self, destination: &str, route: &str) -> IntCounter {
        self.route_requests.with_label_values(&[destination, route])
    }

    /// What one backend's attempts get.
    pub fn backend(&self, backend: &str) -> BackendMetrics {
        let counter = |class: &str| self.backend_responses.with_label_values(&[backend, class]);
        BackendMetrics {
            by_class: CLASSES.map(counter),
            failed: counter("error"),
            cancelled: counter("cancelled"),
            latency: self.backend_latency.with_label_values(&[backend]),
        }
    }

    /// Retries of one route.
    pub fn route_retries(&self, destination: &str, route: &str) -> RouteRetries {
        RouteRetries(Arc::new(RetriesOfRoute {
            vec: self.route_retries.clone(),
            destination: destination.to_string(),
            route: route.to_string(),
            by_reason: Default::default(),
        }))
    }

    /// Retries of one route refused by the budget.
    pub fn route_budget_exhausted(&self, destination: &str, route: &str) -> IntCounter {
        self.route_budget_exhausted
            .with_label_values(&[destination, route])
    }

    /// Ejections in one backend, by the breaker of `route` (when the route has its own) or of
    /// the service.
    pub fn endpoint_ejections(&self, backend: &str, route: Option<&str>) -> IntCounter {
        self.endpoint_ejections
            .with_label_values(&[backend, route.unwrap_or("")])
    }

    /// Endpoints ejected now in one backend, by the breaker of `route` or of the service.
    pub fn endpoints_ejected(&self, backend: &str, route: Option<&str>) -> IntGauge {
        self.endpoints_ejected
            .with_label_values(&[backend, route.unwrap_or("")])
    }

    /// The number of destinations watched changed to `watched`.
    pub fn discovery_watches(&self, watched: usize) {
        self.discovery_watches
            .set(i64::try_from(watched).unwrap_or(i64::MAX));
    }

    /// A discovery snapshot applied (`true`) or rejected.
    pub fn discovery_update(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.discovery_updates.with_label_values(&[result]).inc();
        if applied {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            self.discovery_last_applied
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }

    /// Counts an outbound connection or request refused for `reason`.
    pub fn refused(&self, reason: Refusal) {
        self.outbound_refused
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts an inbound connection refused for `reason`.
    pub fn inbound_refused(&self, reason: InboundRefusal) {
        self.inbound_refused
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts an inbound authorization decision.
    pub fn inbound_authz(&self, policy: &str, decision: &str) {
        self.inbound_authz
            .with_label_values(&[policy, decision])
            .inc();
    }

    /// Counts an inbound request refused by the `limit` (`total`, `per_identity`) rate limit.
    pub fn inbound_rate_limited(&self, limit: &str) {
        self.inbound_rate_limited.with_label_values(&[limit]).inc();
    }

    /// Counts a new connection as open until the returned guard drops.
    pub fn open_connection(&self, direction: Direction, protocol: &str) -> OpenConnection {
        self.tcp_opened
            .with_label_values(&[direction.as_str(), protocol])
            .inc();
        let gauge = self.tcp_open.with_label_values(&[direction.as_str()]);
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Connections with peers, by identity.
    pub fn peer_tcp(&self) -> &PeerTcpMetrics {
        &self.peer_tcp
    }

    /// Records bytes copied on an opaque connection.
    pub fn tcp_bytes(&self, direction: Direction, to_peer: u64, from_peer: u64) {
        let label = direction.as_str();
        self.tcp_bytes
            .with_label_values(&[label, "sent"])
            .inc_by(to_peer);
        self.tcp_bytes
            .with_label_values(&[label, "received"])
            .inc_by(from_peer);
    }

    /// Counts a completed handshake of `connection`.
    pub fn tls_handshake(&self, direction: Direction, connection: &rustls::CommonState) {
        let suite = connection
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        let group = connection
            .negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str())
            .unwrap_or("unknown");
        self.tls_handshakes
            .with_label_values(&[direction.as_str(), suite, group])
            .inc();
    }

    /// Counts a failed TLS handshake, by why `error` says it failed.
    pub fn tls_failure(&self, direction: Direction, error: &std::io::Error) {
        self.tls_failures
            .with_label_values(&[direction.as_str(), tls_failure_reason(error)])
            .inc();
    }
}

/// A bounded label for why a handshake failed.
fn tls_failure_reason(error: &std::io::Error) -> &'static str {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "io";
    };
    match tls {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            "certificate"
        }
        rustls::Error::AlertReceived(_) => "peer_alert",
        rustls::Error::NoApplicationProtocol => "alpn",
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_) => "protocol",
        _ => "other",
    }
}

// === impl RequestMetrics ===

impl RequestMetrics {
    /// `body` of a request, its bytes counted as they pass (an empty one is left alone).
    pub fn count_request(&self, body: Body) -> Body {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        if body.is_end_stream() {
            return body;
        }
        // A body of known length is counted now (it may be cut short: then over-counted).
        if let Some(length) = body.size_hint().exact() {
            self.request_bytes.inc_by(length);
            return body;
        }
        let bytes = self.request_bytes.clone();
        Counted::new(body, move |len| bytes.inc_by(len)).boxed_unsync()
    }

    /// Records one response (its headers arrived `elapsed` after the request): its class and
    /// latency now, its status code now or, for gRPC, with its status when it ends.
    pub fn record(&self, response: Response<Body>, elapsed: Duration) -> Response<Body> {
        self.by_class[status_class(response.status())].inc();
        self.latency.observe(elapsed.as_secs_f64());
        self.responses.count(response)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

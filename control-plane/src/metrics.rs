//! The control plane's metrics.

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use weft_telemetry::metrics;

/// Counters and histograms the services update.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Certify calls by outcome (`ok` or the gRPC code name).
    pub certify_requests: IntCounterVec,
    /// Time to verify a CSR and sign it.
    pub certify_duration: Histogram,
    /// Join tokens created.
    pub join_tokens_created: IntCounterVec,
    /// When the issuer expires.
    pub issuer_expiry: IntGauge,
    /// When the earliest trust anchor of the bundle expires.
    pub trust_anchor_expiry: IntGauge,
    /// Discovery watch requests, by result (`opened`, `exhausted`, `invalid`).
    pub discovery_watches: IntCounterVec,
    /// Discovery watch streams open now.
    pub discovery_watches_open: IntGauge,
    /// Connections closed before their handshake, by the bound they hit.
    pub connections_refused: IntCounterVec,
    /// 1 while this replica holds the leader Lease (it alone writes route status).
    pub leader: IntGauge,
    /// Route status writes to the API server.
    pub route_status_writes: IntCounter,
    /// Snapshots pushed to proxies, by kind (outbound, inbound, mesh).
    pub discovery_pushes: IntCounterVec,
    /// From a change (or a new watch) to its snapshot queued for the proxy, by kind.
    pub discovery_push_duration: HistogramVec,
    /// Policy store operations, by operation.
    pub store_duration: HistogramVec,
}

impl Metrics {
    /// Registers the control plane's metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            certify_requests: metrics::counter_vec(
                registry,
                "weft_control_certify_requests_total",
                "Certify calls, by result.",
                &["result"],
            )?,
            certify_duration: metrics::latency_histogram(
                registry,
                "weft_control_certify_duration_seconds",
                "Time to authenticate, verify and sign one CSR.",
            )?,
            join_tokens_created: metrics::counter_vec(
                registry,
                "weft_control_join_tokens_created_total",
                "Join tokens issued, by namespace.",
                &["namespace"],
            )?,
            issuer_expiry: metrics::gauge(
                registry,
                "weft_control_issuer_expiry_timestamp_seconds",
                "When the issuer certificate expires, in seconds since the Unix epoch.",
            )?,
            trust_anchor_expiry: metrics::gauge(
                registry,
                "weft_control_trust_anchor_expiry_timestamp_seconds",
                "When the earliest trust anchor of the bundle expires, in seconds since the Unix epoch.",
            )?,
            discovery_watches: metrics::counter_vec(
                registry,
                "weft_control_discovery_watches_total",
                "Discovery watch requests, by result (opened, exhausted, invalid).",
                &["result"],
            )?,
            discovery_watches_open: metrics::gauge(
                registry,
                "weft_control_discovery_watches_open",
                "Discovery watch streams open now.",
            )?,
            connections_refused: metrics::counter_vec(
                registry,
                "weft_control_connections_refused_total",
                "Connections to the API ports closed before or at their handshake, by reason.",
                &["reason"],
            )?,
            leader: metrics::gauge(
                registry,
                "weft_control_leader",
                "1 while this replica holds the leader Lease and writes route status, else 0.",
            )?,
            route_status_writes: metrics::counter(
                registry,
                "weft_control_route_status_writes_total",
                "Route status written to the Kubernetes API server.",
            )?,
            discovery_pushes: metrics::counter_vec(
                registry,
                "weft_control_discovery_pushes_total",
                "Snapshots pushed to proxies, by kind (outbound, inbound, mesh): a policy change's fan-out is the pushes it causes.",
                &["kind"],
            )?,
            discovery_push_duration: metrics::latency_histogram_vec(
                registry,
                "weft_control_discovery_push_duration_seconds",
                "From a change the control plane sees (or a new watch) to its snapshot computed and queued for the proxy, by kind.",
                &["kind"],
            )?,
            store_duration: metrics::latency_histogram_vec(
                registry,
                "weft_control_store_operation_duration_seconds",
                "Policy store operations (get, list, apply, delete, watch), on whichever backend holds the policy.",
                &["operation"],
            )?,
        })
    }
}

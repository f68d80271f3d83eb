//! The policy resources as users write them, Kubernetes-shaped: `apiVersion`, `kind`,
//! `metadata`, `spec`. Routing follows the Gateway API (`HTTPRoute`, `GRPCRoute`, GAMMA style:
//! `parentRefs` to a Service); Weft's own kinds cover services and workloads off Kubernetes and
//! what the Gateway API lacks (`ServicePolicy`).
//!
//! Fields a type does not know are not refused: parsing reports them as warnings (see
//! `Resource::parse_reporting`), as a Gateway API implementation reports what it ignores.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use weft_api::inbound::{DefaultAuthorization, Mode};

use super::Kind;
use super::duration::GatewayDuration;
use super::net::{Address, Cidr, Port};
use super::retry_code::{GrpcStatus, HttpStatus, RetryCode};

/// `apiVersion` of Weft's own kinds.
pub const WEFT_API_VERSION: &str = "policy.weft.io/v1alpha1";
/// `apiVersion` of the Gateway API kinds.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the store; sent back on apply to update only that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Set by the store when the resource is first created (RFC 3339, UTC); a value sent on
    /// apply is ignored. Older routes win precedence ties, as in the Gateway API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

/// A whole manifest of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
}

// === Service and Workload (policy.weft.io/v1alpha1) ===

/// A service off Kubernetes: the workloads its selector picks, on its ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "Service",
    root = "ServiceCrd",
    namespaced,
    doc = "A service off Kubernetes: the Workloads its selector picks, on its ports."
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Workload labels that pick the service's endpoints.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// Every endpoint is a foreign SPIFFE workload (see `Workload.spec.foreignSpiffe`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub foreign_spiffe: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: Port,
    /// The workloads' port (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<Port>,
    /// Default: detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<ServiceAppProtocol>,
    /// A Kubernetes Service's target port given by name: each Pod resolves it to the number
    /// of its own port of that name. Only the cluster's Services have one (see `cluster`).
    #[serde(skip)]
    pub target_port_name: Option<String>,
}

impl ServicePort {
    /// The port `workload` serves this Service port on: the target port, the workload's port
    /// of the target port's name (`None` when it has none), or the Service port itself.
    pub fn target_on(&self, workload: &WorkloadSpec) -> Option<Port> {
        match (&self.target_port_name, self.target_port) {
            (Some(name), _) => workload
                .ports
                .iter()
                .find(|p| p.name.as_ref() == Some(name))
                .map(|p| p.port),
            (None, target) => Some(target.unwrap_or(self.port)),
        }
    }
}

/// What a Service port speaks, in the words of Kubernetes' `appProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceAppProtocol {
    /// HTTP/1.1.
    #[serde(rename = "http")]
    Http,
    /// HTTP/2.
    #[serde(rename = "grpc")]
    Grpc,
    /// HTTP/2 without TLS.
    #[serde(rename = "kubernetes.io/h2c")]
    H2c,
    /// Opaque: forwarded as TCP, never parsed.
    #[serde(rename = "tcp")]
    Tcp,
}

/// One instance of an app with its proxy, off Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "Workload",
    root = "WorkloadCrd",
    namespaced,
    doc = "One instance of an app with its weft-proxy, off Kubernetes.",
    shortname = "wl"
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// The workload's IP address.
    pub address: Address,
    /// The identity its proxy's certificate carries.
    pub identity: String,
    /// The port of the workload's weft-proxy inbound listener; omit when traffic to the app's
    /// ports is intercepted on the workload's side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_port: Option<Port>,
    #[serde(default)]
    pub ports: Vec<WorkloadPort>,
    /// Relative share of its services' traffic (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The workload is a SPIFFE workload of the trust domain whose TLS stack is not Weft's (an
    /// Envoy sidecar, a SPIRE-enabled service): proxies reach it with standard mTLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub foreign_spiffe: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: Port,
}

// === HTTPRoute and GRPCRoute (gateway.networking.k8s.io/v1) ===

/// A reference to the Service a route attaches to (GAMMA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// For a Service parent (GAMMA), the name of the port the route attaches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
}

/// A Service to send to, with its share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// How a path is matched (Gateway API `HTTPPathMatch.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

/// How a header, a query parameter or a gRPC method is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ValueMatchType {
    Exact,
    RegularExpression,
}

/// HTTPRoute and GRPCRoute: one shape, told apart by what their rules match on (`M`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(
    serialize = "M: Serialize, M::RetryCode: Serialize",
    deserialize = "M: Deserialize<'de>, M::RetryCode: Deserialize<'de>"
))]
pub struct RouteSpec<M: RouteMatchKind> {
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default = "Vec::new")]
    pub rules: Vec<RouteRule<M>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(
    serialize = "M: Serialize, M::RetryCode: Serialize",
    deserialize = "M: Deserialize<'de>, M::RetryCode: Deserialize<'de>"
))]
pub struct RouteRule<M: RouteMatchKind> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<M>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry<M::RetryCode>>,
}

/// What a route's rules match on: HTTP requests or gRPC calls.
pub trait RouteMatchKind {
    /// What its retries are triggered by.
    type RetryCode: RetryCode + std::fmt::Debug + Clone + PartialEq;
}

impl<M: RouteMatchKind> RouteSpec<M> {
    /// The first thing in the route Weft cannot do yet, as a field and why. A Gateway API
    /// implementation does not accept such a route (`Accepted=False`, `UnsupportedValue`)
    /// rather than serve it without what it asks for.
    pub fn unsupported(&self) -> Option<(String, String)> {
        self.rules.iter().enumerate().find_map(|(i, rule)| {
            rule.filters.iter().enumerate().find_map(|(j, filter)| {
                (!SUPPORTED_FILTERS.contains(&filter.kind.as_str())).then(|| {
                    (
                        format!("spec.rules[{i}].filters[{j}].type"),
                        format!(
                            "{:?} is not supported yet (supported: {})",
                            filter.kind,
                            SUPPORTED_FILTERS.join(", ")
                        ),
                    )
                })
            })
        })
    }
}

pub type HttpRouteSpec = RouteSpec<HttpRouteMatch>;
pub type GrpcRouteSpec = RouteSpec<GrpcRouteMatch>;

impl RouteMatchKind for HttpRouteMatch {
    type RetryCode = HttpStatus;
}

impl RouteMatchKind for GrpcRouteMatch {
    type RetryCode = GrpcStatus;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NamedValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<NamedValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// Absent: `PathPrefix`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<PathMatchType>,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedValueMatch {
    /// Absent: `Exact`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueMatchType>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTimeouts {
    /// The whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<GatewayDuration>,
    /// Each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<GatewayDuration>,
}

/// Gateway API retry (GEP-1731): HTTP statuses for HTTPRoute, gRPC statuses (`UNAVAILABLE` or
/// 14) for GRPCRoute; connect failures are always retried when a retry is configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRetry<C> {
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<C>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<GatewayDuration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier` or `RequestMirror`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// Filters of the Gateway API Weft does not apply yet, kept as written: a route using one
    /// is not served, and its status says so (`Accepted=False`, `UnsupportedValue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "urlRewrite")]
    pub url_rewrite: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<serde_json::Value>,
}

/// The filter types Weft applies.
pub const SUPPORTED_FILTERS: [&str; 3] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: BackendRef,
    /// Requests mirrored, in percent (default: all); or `fraction`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<MirrorFraction>,
}

/// A share of requests as `numerator / denominator` (default denominator 100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorFraction {
    pub numerator: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NamedValueMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// Absent: `Exact`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueMatchType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

// === ServicePolicy (policy.weft.io/v1alpha1) ===

/// What the Gateway API lacks, attached to a Service (or to one route of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "ServicePolicy",
    root = "ServicePolicyCrd",
    namespaced,
    doc = "Traffic policy the Gateway API lacks (retry budget, load balancer, circuit breaker, connect timeout, rate limit, opaque ports, tracing and access logs), attached to a Service or a route.",
    shortname = "sp"
)]
#[serde(rename_all = "camelCase")]
pub struct ServicePolicySpec {
    pub target_ref: PolicyTargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<GatewayDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<Port>,
    /// How callers' proxies trace and log requests to the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<ServiceTelemetry>,
}

/// Tracing and access logs for requests to one Service, decided by its callers' proxies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTelemetry {
    /// The share (0 to 1) of requests without a caller's decision that are traced, instead of
    /// the proxy's `WEFT_PROXY_TRACE_SAMPLING` (only where the proxy exports traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_sampling: Option<f64>,
    /// Write an access-log line per request, whatever the proxy's `WEFT_PROXY_ACCESS_LOG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Absent: a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PolicyTargetKind>,
    pub name: String,
}

/// What a ServicePolicy may attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyTargetKind {
    Service,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    #[serde(rename = "GRPCRoute")]
    GrpcRoute,
}

impl PolicyTargetRef {
    /// The kind of resource the policy attaches to.
    pub fn target_kind(&self) -> Kind {
        match self.kind {
            None | Some(PolicyTargetKind::Service) => Kind::Service,
            Some(PolicyTargetKind::HttpRoute) => Kind::HttpRoute,
            Some(PolicyTargetKind::GrpcRoute) => Kind::GrpcRoute,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries as a fraction of requests (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Retries always allowed per second (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
    /// How long requests count (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<GatewayDuration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(rename = "type")]
    pub kind: LoadBalancerType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancerType {
    /// The default: the endpoint with the least expected latency of two picked at random.
    #[serde(rename = "PeakEWMA")]
    PeakEwma,
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<Ejection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRate {
    pub minimum: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<GatewayDuration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ejection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<GatewayDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<GatewayDuration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

// === InboundDefaults and AuthorizationPolicy (policy.weft.io/v1alpha1) ===

/// How the workloads it selects take inbound traffic where no more specific setting says: the
/// mode (whether plaintext clients are accepted), the authorization default and rate limits.
/// Without a selector it covers its whole namespace; in the root namespace (`weft`) without a
/// selector, the whole mesh. The most specific setting wins: port, workload, namespace, mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "InboundDefaults",
    root = "InboundDefaultsCrd",
    namespaced,
    doc = "How the selected workloads take inbound traffic where nothing more specific says: mode, authorization default, rate limits.",
    plural = "inbounddefaults",
    shortname = "id"
)]
#[serde(rename_all = "camelCase")]
pub struct InboundDefaultsSpec {
    /// Workload labels; empty: every workload of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<DefaultAuthorization>,
    /// Per port: the same settings, for that port alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<InboundPortDefaults>,
    /// Requests per second the workload's inbound side serves, in all and per client identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<InboundRateLimit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundPortDefaults {
    pub port: Port,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<DefaultAuthorization>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundRateLimit {
    /// Every client together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<RateLimit>,
    /// Each client identity (unauthenticated clients share one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_identity: Option<RateLimit>,
}

/// Who may call the workloads it selects, on which ports and HTTP routes. Once any policy
/// covers a port, requests there that no policy allows are denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    root = "AuthorizationPolicyCrd",
    namespaced,
    doc = "Who may call the selected workloads, on which ports and HTTP routes.",
    shortname = "authz",
    shortname = "ap"
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workload labels; empty: every workload of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Workload ports; empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// HTTP requests (any one must match); empty: every request and every TCP connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRouteMatch>,
    /// Clients (any one may call); each source requires all of its fields.
    pub from: Vec<AuthorizationSource>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationSource {
    /// SPIFFE ids, exact or `spiffe://<td>/ns/<ns>/sa/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Namespaces of authenticated clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Clients with no identity (plaintext), which a permissive port accepts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
    /// Client addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<Cidr>,
}

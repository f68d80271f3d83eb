//! What the proxy knows about one destination: its backends and their endpoints, its routes in
//! precedence order, and its policy. Built from a discovery snapshot (checked at the edge, with a
//! precise error the proxy reports back) or from a static route.

mod compile;
pub mod discovery;
mod inbound;
mod matcher;
mod networks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_certs::Identity;

#[cfg(test)]
pub use self::inbound::IdentityPattern;
pub use self::inbound::PortSettings;
pub use self::inbound::{
    AppProtocol, Authorization, DefaultAuthorization, InboundPolicy, Mode, Source,
};
pub use self::matcher::{PathMatch, RequestMatch, ValueMatch};
pub use self::networks::{MeshNetworks, NetworkError};

/// A destination's whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// The snapshot version ("static" for static routes).
    pub version: String,
    /// The Service's `<namespace>/<name>:<port>`, or the static route's authority: a bounded
    /// metrics label.
    pub service: Arc<str>,
    /// Forward bytes, no HTTP.
    pub opaque: bool,
    /// Backends by index; routes refer to them.
    pub backends: Vec<BackendSpec>,
    /// In precedence order; the first that matches a request wins.
    pub routes: Vec<RouteEntry>,
    pub policy: ServicePolicy,
}

/// A set of endpoints: one Service port.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    pub name: Arc<str>,
    pub endpoints: Vec<EndpointSpec>,
}

/// One endpoint to dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub identity: Identity,
    pub weight: u32,
    /// Not a Weft proxy: a SPIFFE workload reached with standard mTLS.
    pub foreign_spiffe: bool,
}

/// One match of one rule of one route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteEntry {
    /// `<namespace>/<name>` of the route, a bounded metrics label; "default" when none applies.
    pub route: Arc<str>,
    pub matches: RequestMatch,
    pub rule: Arc<Rule>,
    /// Overrides the service's breaker for this route's backends.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Overrides the service's budget for this route.
    pub retry_budget: Option<RetryBudget>,
}

/// What happens to a request once matched.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rule {
    /// (backend index, weight).
    pub backends: Vec<(usize, u32)>,
    pub request_timeout: Option<Duration>,
    pub backend_request_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    /// (backend index, percent).
    pub mirror: Option<(usize, u32)>,
}

/// When and how often to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub http_codes: Vec<u16>,
    pub grpc_codes: Vec<u32>,
    /// Also connect failures, resets and per-attempt timeouts.
    pub on_connect_failure: bool,
    pub attempts: u32,
    pub backoff: Duration,
}

/// Header changes (names lowercase).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderModifier {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

/// The service-wide policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServicePolicy {
    pub retry_budget: Option<RetryBudget>,
    pub load_balancer: LoadBalancerKind,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub connect_timeout: Option<Duration>,
    pub rate_limit: Option<RateLimit>,
    pub telemetry: ServiceTelemetry,
}

/// How requests to the Service are traced and logged, where its policy says; `None` leaves the
/// proxy's own configuration in force.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServiceTelemetry {
    /// The share of undecided requests traced (0 to 1).
    pub trace_sampling: Option<f64>,
    pub access_log: Option<bool>,
}

/// Retries allowed: `ratio` of requests, plus `min_per_second`, counted over `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    pub ratio: f32,
    pub min_per_second: u32,
    pub window: Duration,
}

/// How endpoints are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalancerKind {
    /// Power of two choices over peak-EWMA latency times outstanding requests.
    #[default]
    PeakEwma,
    RoundRobin,
}

/// When an endpoint is ejected.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    /// 0: off.
    pub consecutive_failures: u32,
    /// 0: off.
    pub min_success_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

/// Outbound requests per second to the destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Destination {
    /// A destination with one endpoint and no policy: what a static route describes.
    pub fn single(authority: &str, address: SocketAddr, identity: Identity, opaque: bool) -> Self {
        Self {
            version: "static".to_string(),
            service: authority.into(),
            opaque,
            backends: vec![BackendSpec {
                name: authority.into(),
                endpoints: vec![EndpointSpec {
                    address,
                    identity,
                    weight: 1,
                    foreign_spiffe: false,
                }],
            }],
            routes: vec![RouteEntry::default_route()],
            policy: ServicePolicy::default(),
        }
    }
}

impl RouteEntry {
    /// Every request to the first backend: the route of a destination without routes.
    pub fn default_route() -> Self {
        Self {
            route: "default".into(),
            matches: RequestMatch::any(),
            rule: Arc::new(Rule {
                backends: vec![(0, 1)],
                ..Rule::default()
            }),
            circuit_breaker: None,
            retry_budget: None,
        }
    }
}

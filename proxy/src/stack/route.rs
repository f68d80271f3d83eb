//! A destination's stack: its routes in precedence order, each with the layers its rule asks
//! for, built anew for every snapshot over state that outlives snapshots (balancers, budgets).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tower::ServiceExt;
use tower::retry::budget::TpsBudget;

use super::balance::{Balancer, BalancerMetrics};
use super::filters::HeaderFilters;
use super::mirror::Mirror;
use super::rate_limit::TokenBucket;
use super::retry::{self, Policy, RetryMetrics};
use super::split::Split;
use super::timeout::Timeout;
use super::{BoxHttp, HttpRequest, ProxyError, ReplayBody};
use crate::destination::{
    CircuitBreaker, Destination, RateLimit, RequestMatch, RetryBudget, RouteEntry, ServiceTelemetry,
};
use crate::http_util::Body;
use crate::metrics::{Direction, ProxyMetrics, RequestLabels, RequestMetrics};
use crate::observe::Picked;
use crate::transport::{Peer, PeerPool};

/// A backend, and the route whose own circuit breaker it uses (if any).
type BalancerKey = (Arc<str>, Option<Arc<str>>);
/// A budget with the configuration it was made for.
type SharedBudget = (RetryBudget, Arc<TpsBudget>);

/// What outlives a destination's snapshots.
#[derive(Debug)]
pub struct DestinationRuntime {
    pool: PeerPool,
    metrics: ProxyMetrics,
    /// By backend name, and route name when the route has its own circuit breaker.
    balancers: Mutex<HashMap<BalancerKey, Balancer>>,
    /// By route name ("" for the service-wide budget), with the configuration they were made for.
    budgets: Mutex<HashMap<Arc<str>, SharedBudget>>,
    rate_limit: Mutex<Option<Arc<TokenBucket>>>,
    replay_limit: usize,
}

/// The stack of one snapshot of a destination.
pub struct DestinationStack {
    /// The Service, a bounded label.
    pub service: Arc<str>,
    /// The snapshot version this stack was built from.
    pub version: String,
    /// Its connections carry bytes, not HTTP: no protocol detection, no routes.
    pub opaque: bool,
    /// How its requests are traced and logged, where its policy says.
    pub telemetry: ServiceTelemetry,
    /// The Service's own endpoints, for connections forwarded as opaque streams.
    opaque_peers: Vec<Arc<Peer>>,
    routes: Vec<CompiledRoute>,
    rate_limit: Option<Arc<TokenBucket>>,
    /// For requests no route took (refused, or matching none).
    metrics: RequestMetrics,
    /// For the requests the proxy answers itself.
    errors: ProxyMetrics,
    replay_limit: usize,
}

struct CompiledRoute {
    matches: RequestMatch,
    /// Keep request bodies for a retry or a mirror.
    replays: bool,
    service: BoxHttp,
    /// The route's one balancer when the rule asks for nothing else: requests go straight to
    /// it, without cloning and boxing their way through `service` (several allocations per
    /// request, on the path nearly every request takes).
    direct: Option<Balancer>,
    requests: prometheus::IntCounter,
    /// Its requests' responses, latency and bytes.
    metrics: RequestMetrics,
    name: Arc<str>,
}

impl std::fmt::Debug for DestinationStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationStack")
            .field("service", &self.service)
            .field("version", &self.version)
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

// === impl DestinationRuntime ===

impl DestinationRuntime {
    /// State for one destination, dialing through `pool`.
    pub fn new(pool: PeerPool, metrics: ProxyMetrics, replay_limit: usize) -> Self {
        Self {
            pool,
            metrics,
            replay_limit,
            balancers: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            rate_limit: Mutex::new(None),
        }
    }

    /// Builds the stack for `destination`, reusing this runtime's balancers and budgets where
    /// their configuration is unchanged.
    pub fn build(&self, destination: &Destination, peer_identity: &str) -> DestinationStack {
        let service = destination.service.clone();
        let mut used_balancers = Vec::new();
        let routes = destination
            .routes
            .iter()
            .map(|entry| self.route(destination, entry, peer_identity, &mut used_balancers))
            .collect();
        // Balancers no route uses any more go, with their endpoints.
        self.balancers
            .lock()
            .retain(|key, _| used_balancers.contains(key));
        // Peers are lazy handles: nothing is dialed until a stream needs one.
        let opaque_peers = destination
            .backends
            .first()
            .map(|backend| {
                backend
                    .endpoints
                    .iter()
                    .filter(|endpoint| endpoint.weight > 0)
                    .filter_map(|endpoint| {
                        self.pool
                            .peer_with(
                                endpoint.address,
                                &endpoint.identity,
                                super::balance::handshake(endpoint),
                            )
                            .inspect_err(|error| tracing::info!(%error, "endpoint skipped"))
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        DestinationStack {
            service: service.clone(),
            version: destination.version.clone(),
            opaque: destination.opaque,
            telemetry: destination.policy.telemetry,
            opaque_peers,
            routes,
            rate_limit: self.rate_limit(destination.policy.rate_limit),
            metrics: self.metrics.requests(&RequestLabels::new(
                Direction::Outbound,
                peer_identity,
                &service,
            )),
            errors: self.metrics.clone(),
            replay_limit: self.replay_limit,
        }
    }

    fn route(
        &self,
        destination: &Destination,
        entry: &RouteEntry,
        peer_identity: &str,
        used: &mut Vec<BalancerKey>,
    ) -> CompiledRoute {
        let rule = &entry.rule;
        let breaker = entry
            .circuit_breaker
            .clone()
            .or_else(|| destination.policy.circuit_breaker.clone());
        let scope = entry.circuit_breaker.as_ref().map(|_| entry.route.clone());
        let no_backends = || {
            let name = entry.route.clone();
            BoxHttp::new(tower::service_fn(move |_: HttpRequest| {
                let name = name.clone();
                async move { Err(ProxyError::NoBackends(name)) }
            }))
        };
        let mut balancer = |index: usize| -> Option<Balancer> {
            let spec = destination.backends.get(index)?;
            let key = (spec.name.clone(), scope.clone());
            used.push(key.clone());
            let balancer = self.balancer(key, destination, &breaker);
            balancer.update(&spec.endpoints, &self.pool);
            Some(balancer)
        };
        let backends: Vec<(Option<Balancer>, u32)> = rule
            .backends
            .iter()
            .map(|(index, weight)| (balancer(*index), *weight))
            .collect();
        let layered = rule.backend_request_timeout.is_some()
            || rule.retry.is_some()
            || rule.request_timeout.is_some()
            || rule.mirror.is_some()
            || rule.request_headers.is_some()
            || rule.response_headers.is_some();
        // A split of one ignores its weight, as `Split` does.
        let direct = match backends.as_slice() {
            [(Some(only), _)] if !layered => Some(only.clone()),
            _ => None,
        };
        let mut stack = if backends.is_empty() {
            no_backends()
        } else {
            let backends = backends
                .into_iter()
                .map(|(balancer, weight)| (balancer.map_or_else(no_backends, BoxHttp::new), weight))
                .collect();
            BoxHttp::new(Split::new(backends))
        };
        if let Some(after) = rule.backend_request_timeout {
            stack = BoxHttp::new(Timeout::new(stack, after, "backend request"));
        }
        if let Some(config) = &rule.retry {
            let (scope, config_budget) = match &entry.retry_budget {
                Some(budget) => (entry.route.clone(), budget.clone()),
                None => (
                    Arc::from(""),
                    destination
                        .policy
                        .retry_budget
                        .clone()
                        .unwrap_or_else(retry::default_budget),
                ),
            };
            let metrics = RetryMetrics {
                retries: self
                    .metrics
                    .route_retries(&destination.service, &entry.route),
                budget_exhausted: self
                    .metrics
                    .route_budget_exhausted(&destination.service, &entry.route),
            };
            let policy = Policy::new(
                Arc::new(config.clone()),
                self.budget(scope, config_budget),
                metrics,
            );
            stack = BoxHttp::new(tower::retry::Retry::new(policy, stack));
        }
        if let Some(after) = rule.request_timeout {
            stack = BoxHttp::new(Timeout::new(stack, after, "request"));
        }
        if let Some((index, percent)) = rule.mirror {
            let mirror = balancer(index).map_or_else(no_backends, BoxHttp::new);
            stack = BoxHttp::new(Mirror::new(stack, mirror, percent));
        }
        if rule.request_headers.is_some() || rule.response_headers.is_some() {
            stack = BoxHttp::new(HeaderFilters::new(
                stack,
                rule.request_headers.clone(),
                rule.response_headers.clone(),
            ));
        }
        CompiledRoute {
            matches: entry.matches.clone(),
            replays: rule.retry.is_some() || rule.mirror.is_some(),
            service: stack,
            direct,
            requests: self
                .metrics
                .route_requests(&destination.service, &entry.route),
            metrics: self.metrics.requests(&RequestLabels {
                route: &entry.route,
                ..RequestLabels::new(Direction::Outbound, peer_identity, &destination.service)
            }),
            name: entry.route.clone(),
        }
    }

    fn balancer(
        &self,
        key: BalancerKey,
        destination: &Destination,
        breaker: &Option<CircuitBreaker>,
    ) -> Balancer {
        let policy = &destination.policy;
        let mut balancers = self.balancers.lock();
        if let Some(existing) = balancers.get(&key)
            && existing.is_configured_as(policy.load_balancer, breaker, policy.connect_timeout)
        {
            return existing.clone();
        }
        let metrics = BalancerMetrics {
            ejections: self.metrics.endpoint_ejections(&key.0, key.1.as_deref()),
            ejected: self.metrics.endpoints_ejected(&key.0, key.1.as_deref()),
            attempts: self.metrics.backend(&key.0),
        };
        let balancer = Balancer::new(
            key.0.clone(),
            policy.load_balancer,
            breaker.clone(),
            policy.connect_timeout,
            metrics,
        );
        balancers.insert(key, balancer.clone());
        balancer
    }

    fn budget(&self, scope: Arc<str>, config: RetryBudget) -> Arc<TpsBudget> {
        let mut budgets = self.budgets.lock();
        if let Some((existing, budget)) = budgets.get(&scope)
            && *existing == config
        {
            return budget.clone();
        }
        let budget = retry::budget(&config);
        budgets.insert(scope, (config, budget.clone()));
        budget
    }

    fn rate_limit(&self, limit: Option<RateLimit>) -> Option<Arc<TokenBucket>> {
        let mut current = self.rate_limit.lock();
        match (limit, current.as_ref()) {
            (None, _) => *current = None,
            (Some(limit), Some(bucket)) if bucket.limit() == limit => {}
            (Some(limit), _) => *current = Some(Arc::new(TokenBucket::new(limit))),
        }
        current.clone()
    }
}

// === impl DestinationStack ===

impl DestinationStack {
    /// The endpoint for one opaque connection: any of the Service's own, at random.
    pub fn opaque_peer(&self) -> Option<Arc<Peer>> {
        match self.opaque_peers.len() {
            0 => None,
            n => self.opaque_peers.get(rand::random_range(0..n)).cloned(),
        }
    }

    /// Sends one request through the first route that matches it.
    pub async fn handle(&self, request: http::Request<Body>) -> http::Response<Body> {
        let started = Instant::now();
        let route = match self.select(&request) {
            Ok(route) => route,
            Err(error) => return self.answer(&self.metrics, error, started),
        };
        let request = request.map(|body| route.metrics.count_request(body));
        match self.send(route, request).await {
            Ok(response) => route.metrics.record(response, started.elapsed()),
            Err(error) => self.answer(&route.metrics, error, started),
        }
    }

    /// The proxy's own answer to a request it could not send, for `error`.
    fn answer(
        &self,
        metrics: &RequestMetrics,
        error: ProxyError,
        started: Instant,
    ) -> http::Response<Body> {
        self.errors.outbound_error(&self.service, error.reason());
        metrics.record(error.into_response(), started.elapsed())
    }

    /// The route for `request`, unless the destination's rate limit refuses it.
    fn select(&self, request: &http::Request<Body>) -> Result<&CompiledRoute, ProxyError> {
        if let Some(bucket) = &self.rate_limit
            && !bucket.try_acquire()
        {
            return Err(ProxyError::RateLimited(bucket.limit().per_second));
        }
        let route = self
            .routes
            .iter()
            .find(|route| route.matches.matches(request))
            .ok_or_else(|| ProxyError::NoMatch(self.service.clone()))?;
        route.requests.inc();
        Picked::route(request, &route.name);
        Ok(route)
    }

    async fn send(
        &self,
        route: &CompiledRoute,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, ProxyError> {
        if let Some(balancer) = &route.direct {
            return balancer.send(request.map(ReplayBody::streaming_only)).await;
        }
        let request = if route.replays {
            let (parts, body) = request.into_parts();
            http::Request::from_parts(parts, ReplayBody::buffer(body, self.replay_limit).await)
        } else {
            request.map(ReplayBody::streaming_only)
        };
        route.service.clone().oneshot(request).await
    }
}

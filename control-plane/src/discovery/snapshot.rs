//! What one destination looks like to a proxy, computed from the policy state: the Service that
//! answers to it, its endpoints, the routes attached to it (flattened into precedence order) and
//! its policy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use weft_api::discovery as pb;

use super::names::ClusterDomain;
use crate::policy::{
    BackendRef, GatewayDuration, GrpcRouteMatch, HeaderModifier, HttpRouteMatch, Key, Kind,
    LoadBalancerType, NamedValueMatch, PathMatchType, Resource, RouteFilter, RouteMatchKind,
    RouteRetry, RouteSpec, RouteTimeouts, ServicePolicySpec, ServiceSpec, Spec, ValueMatchType,
    grpc_code,
};
use crate::policy_store::PolicyState;

/// Destinations whose snapshot is kept per revision at most: a proxy naming ever new destinations
/// cannot grow the cache without bound (past it, snapshots are computed but not kept).
const MAX_CACHED: usize = 10_000;
/// Backoff before the first retry when a route names none.
const DEFAULT_RETRY_BACKOFF_MS: u64 = 25;

/// Snapshots computed at the current revision, shared by every watcher of a destination: a
/// change watched by a thousand proxies is computed once per destination.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    cluster_domain: ClusterDomain,
    entries: Mutex<(u64, HashMap<String, Arc<pb::OutboundSnapshot>>)>,
}

impl SnapshotCache {
    /// An empty cache resolving Service names under `cluster_domain`.
    pub fn new(cluster_domain: ClusterDomain) -> Self {
        Self {
            cluster_domain,
            entries: Mutex::default(),
        }
    }

    /// The snapshot of `destination` in `state` (its version left empty).
    pub fn outbound(&self, state: &PolicyState, destination: &str) -> Arc<pb::OutboundSnapshot> {
        {
            let entries = self.entries.lock();
            if entries.0 == state.revision
                && let Some(snapshot) = entries.1.get(destination)
            {
                return snapshot.clone();
            }
        }
        let snapshot = Arc::new(outbound_snapshot(state, &self.cluster_domain, destination));
        let mut entries = self.entries.lock();
        if state.revision > entries.0 {
            // A new revision: everything cached is stale.
            *entries = (state.revision, HashMap::new());
        }
        // A watcher still on an older state must not replace the newer cache.
        if state.revision == entries.0 && entries.1.len() < MAX_CACHED {
            entries.1.insert(destination.to_string(), snapshot.clone());
        }
        snapshot
    }
}

/// A Service port a destination resolved to.
struct Target<'a> {
    key: Key,
    spec: &'a ServiceSpec,
    port: u32,
    /// Set when the app dialed one workload by its address (`ip:port`): only that workload is an
    /// endpoint, and the Service's routes do not apply — the app picked its peer itself.
    workload: Option<std::net::IpAddr>,
}

/// The snapshot for `destination` (`host:port`), version left empty.
pub fn outbound_snapshot(
    state: &PolicyState,
    cluster_domain: &ClusterDomain,
    destination: &str,
) -> pb::OutboundSnapshot {
    let Some(target) = resolve(state, cluster_domain, destination) else {
        return pb::OutboundSnapshot::default();
    };
    let mut backends = Backends::new(state);
    backends.index(&target.key, target.port);
    let service_policy = policy_for(state, &target.key);
    let mut entries = Vec::new();
    // A workload dialed by its address: the app picked its peer, the Service's routes do not
    // apply.
    let route_kinds: &[Kind] = if target.workload.is_some() {
        &[]
    } else {
        &[Kind::HttpRoute, Kind::GrpcRoute]
    };
    for &route_kind in route_kinds {
        for stored in state.of_kind(route_kind) {
            let resource = &stored.resource;
            let route_key = resource.key();
            let route_policy = policy_for(state, &route_key);
            let route = |rules: Vec<pb::RouteRule>| pb::Route {
                name: format!("{}/{}", route_key.namespace, route_key.name),
                rules,
                circuit_breaker: route_policy
                    .and_then(|p| p.circuit_breaker.as_ref())
                    .map(circuit_breaker),
                retry_budget: route_policy
                    .and_then(|p| p.retry_budget.as_ref())
                    .map(retry_budget),
            };
            let at = RouteAt {
                target: &target,
                resource,
                route: &route,
            };
            match &resource.spec {
                Spec::HttpRoute(spec) => entries.extend(at.entries(spec, &mut backends)),
                Spec::GrpcRoute(spec) => entries.extend(at.entries(spec, &mut backends)),
                _ => {}
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let opaque = target
        .spec
        .ports
        .iter()
        .any(|p| p.port == target.port && p.app_protocol.as_deref() == Some("tcp"))
        || service_policy.is_some_and(|p| p.opaque_ports.contains(&target.port));
    pb::OutboundSnapshot {
        version: String::new(),
        found: true,
        service: format!(
            "{}/{}:{}",
            target.key.namespace, target.key.name, target.port
        ),
        opaque,
        backends: backends.into_messages(target.workload),
        routes: entries.into_iter().map(|(_, route)| route).collect(),
        policy: service_policy.map(|p| pb::ServicePolicy {
            retry_budget: p.retry_budget.as_ref().map(retry_budget),
            load_balancer: p.load_balancer.as_ref().map(|lb| pb::LoadBalancer {
                kind: if lb.kind == LoadBalancerType::RoundRobin {
                    pb::load_balancer::Kind::RoundRobin
                } else {
                    pb::load_balancer::Kind::PeakEwma
                } as i32,
            }),
            circuit_breaker: p.circuit_breaker.as_ref().map(circuit_breaker),
            connect_timeout: p.connect_timeout.as_ref().and_then(proto_duration),
            rate_limit: p.rate_limit.as_ref().map(|r| pb::RateLimit {
                requests_per_second: r.requests_per_second,
                burst: r.burst.unwrap_or(r.requests_per_second),
            }),
        }),
    }
}

/// The Service port a destination names: `<name>.<namespace>[.svc[.<cluster domain>]]:<port>`.
fn resolve<'a>(
    state: &'a PolicyState,
    cluster_domain: &ClusterDomain,
    destination: &str,
) -> Option<Target<'a>> {
    if let Ok(addr) = destination.parse::<std::net::SocketAddr>() {
        return resolve_workload(state, addr);
    }
    let (host, port) = destination.rsplit_once(':')?;
    let port: u32 = port.parse().ok()?;
    let host = host.to_ascii_lowercase();
    let service = cluster_domain.service(&host)?;
    let key = Key::new(Kind::Service, service.namespace, service.name);
    let stored = state.get(&key)?;
    let Spec::Service(spec) = &stored.resource.spec else {
        return None;
    };
    spec.ports.iter().any(|p| p.port == port).then_some(Target {
        key,
        spec,
        port,
        workload: None,
    })
}

/// A workload's address and one of its ports, as an intercepted connection names it: the
/// Service port whose target that is, on a Service that selects the workload (the first by
/// namespace and name when several do).
fn resolve_workload(state: &PolicyState, addr: std::net::SocketAddr) -> Option<Target<'_>> {
    let port = u32::from(addr.port());
    state.of_kind(Kind::Workload).find_map(|workload| {
        let Spec::Workload(spec) = &workload.resource.spec else {
            return None;
        };
        if spec.address.parse::<std::net::IpAddr>().ok()? != addr.ip() {
            return None;
        }
        if !spec.ports.is_empty() && !spec.ports.iter().any(|p| p.port == port) {
            return None;
        }
        state.of_kind(Kind::Service).find_map(|service| {
            let Spec::Service(svc) = &service.resource.spec else {
                return None;
            };
            if service.resource.namespace() != workload.resource.namespace()
                || !selects(&svc.selector, &workload.resource.meta.labels)
            {
                return None;
            }
            let service_port = svc
                .ports
                .iter()
                .find(|p| p.target_port.unwrap_or(p.port) == port)?;
            Some(Target {
                key: service.resource.key(),
                spec: svc,
                port: service_port.port,
                workload: Some(addr.ip()),
            })
        })
    })
}

/// The ServicePolicy that targets `target`, if any (the first by name).
pub(super) fn policy_for<'a>(
    state: &'a PolicyState,
    target: &Key,
) -> Option<&'a ServicePolicySpec> {
    state.of_kind(Kind::ServicePolicy).find_map(|stored| {
        let Spec::ServicePolicy(spec) = &stored.resource.spec else {
            return None;
        };
        (spec.target_ref.target_kind() == target.kind
            && stored.resource.namespace() == target.namespace
            && spec.target_ref.name == target.name)
            .then_some(&**spec)
    })
}

pub(super) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The backends a snapshot refers to, by index.
struct Backends<'a> {
    state: &'a PolicyState,
    order: Vec<(Key, u32)>,
}

impl<'a> Backends<'a> {
    fn new(state: &'a PolicyState) -> Self {
        Self {
            state,
            order: Vec::new(),
        }
    }

    fn index(&mut self, service: &Key, port: u32) -> u32 {
        let entry = (service.clone(), port);
        let position = self
            .order
            .iter()
            .position(|b| *b == entry)
            .unwrap_or_else(|| {
                self.order.push(entry);
                self.order.len() - 1
            });
        position as u32
    }

    fn backend_ref(&mut self, namespace: &str, default_port: u32, backend: &BackendRef) -> u32 {
        let key = Key::new(
            Kind::Service,
            backend.namespace.as_deref().unwrap_or(namespace),
            &backend.name,
        );
        self.index(&key, backend.port.unwrap_or(default_port))
    }

    /// A rule without its matches: backends, timeouts, retry and filters.
    fn rule(
        &mut self,
        namespace: &str,
        port: u32,
        backend_refs: &[BackendRef],
        filters: &[RouteFilter],
        timeouts: Option<&RouteTimeouts>,
        retry: Option<pb::Retry>,
    ) -> pb::RouteRule {
        let backends = backend_refs
            .iter()
            .map(|b| pb::WeightedBackend {
                backend: self.backend_ref(namespace, port, b),
                weight: b.weight.unwrap_or(1),
            })
            .collect();
        let mut rule = pb::RouteRule {
            backends,
            request_timeout: timeouts
                .and_then(|t| t.request.as_ref())
                .and_then(proto_duration),
            backend_request_timeout: timeouts
                .and_then(|t| t.backend_request.as_ref())
                .and_then(proto_duration),
            retry,
            ..Default::default()
        };
        for filter in filters {
            if let Some(m) = &filter.request_header_modifier {
                rule.request_headers = Some(header_modifier(m));
            }
            if let Some(m) = &filter.response_header_modifier {
                rule.response_headers = Some(header_modifier(m));
            }
            if let Some(mirror) = &filter.request_mirror {
                rule.mirror_backend = Some(self.backend_ref(namespace, port, &mirror.backend_ref));
                rule.mirror_percent = mirror.percent;
            }
        }
        rule
    }

    /// The backends in index order; with `only`, the first (the target Service) keeps just the
    /// endpoints at that address.
    fn into_messages(self, only: Option<std::net::IpAddr>) -> Vec<pb::Backend> {
        let state = self.state;
        self.order
            .into_iter()
            .enumerate()
            .map(|(index, (key, port))| {
                let mut endpoints = endpoints(state, &key, port);
                if let (0, Some(ip)) = (index, only) {
                    endpoints.retain(|e| {
                        e.address
                            .parse::<std::net::SocketAddr>()
                            .is_ok_and(|a| a.ip() == ip)
                    });
                }
                pb::Backend {
                    name: format!("{}/{}:{port}", key.namespace, key.name),
                    endpoints,
                }
            })
            .collect()
    }
}

/// The workloads a Service port sends to.
fn endpoints(state: &PolicyState, service: &Key, port: u32) -> Vec<pb::Endpoint> {
    let Some(stored) = state.get(service) else {
        return Vec::new();
    };
    let Spec::Service(spec) = &stored.resource.spec else {
        return Vec::new();
    };
    let Some(service_port) = spec.ports.iter().find(|p| p.port == port) else {
        return Vec::new();
    };
    let target_port = service_port.target_port.unwrap_or(port);
    state
        .of_kind(Kind::Workload)
        .filter(|w| {
            w.resource.namespace() == service.namespace
                && selects(&spec.selector, &w.resource.meta.labels)
        })
        .filter_map(|w| {
            let Spec::Workload(workload) = &w.resource.spec else {
                return None;
            };
            let serves_port =
                workload.ports.is_empty() || workload.ports.iter().any(|p| p.port == target_port);
            let dial_port = workload.proxy_port.unwrap_or(target_port);
            let address = match workload.address.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, u16::try_from(dial_port).ok()?).to_string(),
                Err(_) => return None,
            };
            serves_port.then(|| pb::Endpoint {
                address,
                identity: workload.identity.clone(),
                weight: workload.weight.unwrap_or(1),
                labels: w.resource.meta.labels.clone().into_iter().collect(),
                foreign_spiffe: workload.foreign_spiffe || spec.foreign_spiffe,
            })
        })
        .collect()
}

/// Gateway API precedence of one match: exact paths before prefixes (longest first) before
/// regular expressions, then a method, then more header matches, then more query matches; ties
/// go to the older route (RFC 3339 timestamps of one format sort in time order), then to the
/// route's `namespace/name`, then to the rule's order.
type Precedence = (
    u8,
    std::cmp::Reverse<usize>,
    u8,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    String,
    String,
    usize,
    usize,
);

fn precedence(
    m: Option<&pb::RouteMatch>,
    route: &Resource,
    rule: usize,
    index: usize,
) -> Precedence {
    let (rank, length) = match m.and_then(|m| m.path.as_ref()) {
        Some(path) => match pb::string_match::Kind::try_from(path.kind) {
            Ok(pb::string_match::Kind::Exact) => (0, path.value.len()),
            Ok(pb::string_match::Kind::Regex) => (2, 0),
            _ => (1, path.value.len()),
        },
        None => (1, 1),
    };
    let method = u8::from(m.is_none_or(|m| m.method.is_empty()));
    let headers = m.map_or(0, |m| m.headers.len());
    let queries = m.map_or(0, |m| m.query_params.len());
    (
        rank,
        std::cmp::Reverse(length),
        method,
        std::cmp::Reverse(headers),
        std::cmp::Reverse(queries),
        route.meta.creation_timestamp.clone().unwrap_or_default(),
        format!("{}/{}", route.namespace(), route.meta.name),
        rule,
        index,
    )
}

/// How the proxy matches what a route's rules match on.
trait ToRouteMatch: RouteMatchKind {
    fn to_route_match(&self) -> pb::RouteMatch;
}

impl ToRouteMatch for HttpRouteMatch {
    fn to_route_match(&self) -> pb::RouteMatch {
        http_match(self)
    }
}

impl ToRouteMatch for GrpcRouteMatch {
    fn to_route_match(&self) -> pb::RouteMatch {
        grpc_match(self)
    }
}

/// One route resource, and the target Service port it may be attached to.
struct RouteAt<'a, R> {
    target: &'a Target<'a>,
    resource: &'a Resource,
    /// Makes the proxy's route of some of its rules.
    route: &'a R,
}

impl<R: Fn(Vec<pb::RouteRule>) -> pb::Route> RouteAt<'_, R> {
    /// The route's entries when it is attached to the target's port: one per rule and match.
    fn entries<M: ToRouteMatch>(
        &self,
        spec: &RouteSpec<M>,
        backends: &mut Backends<'_>,
    ) -> Vec<(Precedence, pb::Route)> {
        let (target, resource) = (self.target, self.resource);
        let attached = spec.parent_refs.iter().any(|p| {
            p.name == target.key.name
                && p.namespace.as_deref().unwrap_or(resource.namespace()) == target.key.namespace
                && p.port.is_none_or(|port| port == target.port)
        });
        if !attached {
            return Vec::new();
        }
        let mut entries = Vec::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            let common = backends.rule(
                resource.namespace(),
                target.port,
                &rule.backend_refs,
                &rule.filters,
                rule.timeouts.as_ref(),
                rule.retry.as_ref().map(|r| retry(r, M::GRPC)),
            );
            let matches = rule.matches.iter().map(M::to_route_match).collect();
            entries.extend(split_by_match(self.route, common, matches, resource, i));
        }
        entries
    }
}

/// One entry per match, so the proxy can walk all routes' matches in precedence order.
fn split_by_match(
    route: &impl Fn(Vec<pb::RouteRule>) -> pb::Route,
    common: pb::RouteRule,
    matches: Vec<pb::RouteMatch>,
    resource: &Resource,
    rule: usize,
) -> Vec<(Precedence, pb::Route)> {
    if matches.is_empty() {
        return vec![(precedence(None, resource, rule, 0), route(vec![common]))];
    }
    matches
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let order = precedence(Some(&m), resource, rule, i);
            let mut single = common.clone();
            single.matches = vec![m];
            (order, route(vec![single]))
        })
        .collect()
}

fn string_match(kind: pb::string_match::Kind, value: &str) -> pb::StringMatch {
    pb::StringMatch {
        kind: kind as i32,
        value: value.to_string(),
    }
}

/// Header names are case-insensitive (sent lowercase); query parameter names are not.
fn named(matches: &[NamedValueMatch], lowercase: bool) -> Vec<pb::NamedMatch> {
    matches
        .iter()
        .map(|m| pb::NamedMatch {
            name: if lowercase {
                m.name.to_ascii_lowercase()
            } else {
                m.name.clone()
            },
            value: Some(string_match(
                if m.kind == Some(ValueMatchType::RegularExpression) {
                    pb::string_match::Kind::Regex
                } else {
                    pb::string_match::Kind::Exact
                },
                &m.value,
            )),
        })
        .collect()
}

pub(super) fn http_match(m: &HttpRouteMatch) -> pb::RouteMatch {
    pb::RouteMatch {
        path: m.path.as_ref().map(|p| {
            let kind = match p.kind {
                Some(PathMatchType::Exact) => pb::string_match::Kind::Exact,
                Some(PathMatchType::RegularExpression) => pb::string_match::Kind::Regex,
                None | Some(PathMatchType::PathPrefix) => pb::string_match::Kind::Prefix,
            };
            string_match(kind, &p.value)
        }),
        method: m.method.clone().unwrap_or_default(),
        headers: named(&m.headers, true),
        query_params: named(&m.query_params, false),
    }
}

/// gRPC methods are HTTP/2 paths `/<service>/<method>`.
fn grpc_match(m: &GrpcRouteMatch) -> pb::RouteMatch {
    let path = m.method.as_ref().map(|method| {
        let service = method.service.as_deref();
        let name = method.method.as_deref();
        if method.kind == Some(ValueMatchType::RegularExpression) {
            let pattern = format!(
                "^/(?:{})/(?:{})$",
                service.unwrap_or("[^/]+"),
                name.unwrap_or("[^/]+")
            );
            return string_match(pb::string_match::Kind::Regex, &pattern);
        }
        match (service, name) {
            (Some(service), Some(name)) => {
                string_match(pb::string_match::Kind::Exact, &format!("/{service}/{name}"))
            }
            (Some(service), None) => {
                string_match(pb::string_match::Kind::Prefix, &format!("/{service}/"))
            }
            (None, Some(name)) => string_match(
                pb::string_match::Kind::Regex,
                &format!("^/[^/]+/{}$", regex::escape(name)),
            ),
            (None, None) => string_match(pb::string_match::Kind::Prefix, "/"),
        }
    });
    pb::RouteMatch {
        path,
        method: String::new(),
        headers: named(&m.headers, true),
        query_params: Vec::new(),
    }
}

fn retry(retry: &RouteRetry, grpc: bool) -> pb::Retry {
    let (codes, grpc_codes) = if grpc {
        (
            Vec::new(),
            retry.codes.iter().filter_map(grpc_code).collect(),
        )
    } else {
        (
            retry
                .codes
                .iter()
                .filter_map(|c| c.as_u64())
                .map(|c| c as u32)
                .collect(),
            Vec::new(),
        )
    };
    pb::Retry {
        codes,
        grpc_codes,
        on_connect_failure: true,
        attempts: retry.attempts.unwrap_or(1),
        backoff: retry.backoff.as_ref().and_then(proto_duration).or_else(|| {
            prost_types::Duration::try_from(std::time::Duration::from_millis(
                DEFAULT_RETRY_BACKOFF_MS,
            ))
            .ok()
        }),
    }
}

fn header_modifier(m: &HeaderModifier) -> pb::HeaderModifier {
    pb::HeaderModifier {
        set: m
            .set
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

fn retry_budget(budget: &crate::policy::RetryBudget) -> pb::RetryBudget {
    pb::RetryBudget {
        ratio: budget.ratio.unwrap_or(0.2),
        min_retries_per_second: budget.min_retries_per_second.unwrap_or(10),
        window: budget
            .window
            .as_ref()
            .and_then(proto_duration)
            .or_else(|| prost_types::Duration::try_from(std::time::Duration::from_secs(10)).ok()),
    }
}

fn circuit_breaker(breaker: &crate::policy::CircuitBreaker) -> pb::CircuitBreaker {
    let rate = breaker.success_rate.as_ref();
    let ejection = breaker.ejection.as_ref();
    pb::CircuitBreaker {
        consecutive_failures: breaker.consecutive_failures.unwrap_or(0),
        min_success_rate: rate.map_or(0.0, |r| r.minimum),
        min_requests: rate.and_then(|r| r.min_requests).unwrap_or(20),
        window: rate
            .and_then(|r| r.window.as_ref())
            .and_then(proto_duration),
        base_ejection: ejection
            .and_then(|e| e.base.as_ref())
            .and_then(proto_duration),
        max_ejection: ejection
            .and_then(|e| e.max.as_ref())
            .and_then(proto_duration),
    }
}

/// `None` only past prost's range (~292 billion years), which the policy bounds never reach.
fn proto_duration(value: &GatewayDuration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(value.get()).ok()
}

#[cfg(test)]
mod tests;

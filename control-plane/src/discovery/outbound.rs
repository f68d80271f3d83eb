//! What one destination looks like to a proxy, resolved from the policy state: the Service port
//! that answers to it, the backends its routes send to and their endpoints, the routes attached
//! to it (one entry per match, in precedence order) and its policy. Domain values only: the
//! wire form is made from them in [`super::wire`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::names::ClusterDomain;
use super::request_match::{Precedence, RequestMatch, precedence};
use crate::cluster::SliceEndpoint;
use crate::policy::{
    BackendRef, HeaderModifier, Key, Kind, Port, Resource, RetryCode, RetryOn, RouteFilter,
    RouteMatchKind, RouteRetry, RouteSpec, RouteTimeouts, ServiceAppProtocol, ServicePolicySpec,
    ServiceSpec, Spec,
};
use crate::policy_store::PolicyState;

/// A destination resolved to a Service port.
#[derive(Debug)]
pub struct Outbound<'a> {
    /// The Service the destination names (or whose port a dialed workload serves).
    pub service: Key,
    /// Its port the destination names.
    pub port: Port,
    /// Forwarded as opaque TCP: `appProtocol: tcp`, or listed in the policy's `opaquePorts`.
    pub opaque: bool,
    /// Indexed by the routes; the target Service port is the first.
    pub backends: Vec<Backend<'a>>,
    /// In precedence order.
    pub routes: Vec<RouteEntry<'a>>,
    /// The ServicePolicy attached to the Service.
    pub policy: Option<&'a ServicePolicySpec>,
}

/// A Service port traffic may be sent to, and the workloads behind it.
#[derive(Debug)]
pub struct Backend<'a> {
    pub service: Key,
    pub port: Port,
    /// The selected workloads that serve the port, at the address their peers dial.
    pub endpoints: Vec<Endpoint<'a>>,
}

/// A workload as its peers dial it.
#[derive(Debug)]
pub struct Endpoint<'a> {
    /// The workload's proxy port when it has one, else the Service's target port.
    pub address: SocketAddr,
    /// The identity its certificate must carry.
    pub identity: &'a str,
    /// Its share of the Service's traffic.
    pub weight: u32,
    pub labels: &'a BTreeMap<String, String>,
    /// Reached with standard mTLS, without Weft's transport header.
    pub foreign_spiffe: bool,
}

/// One match of one rule of an attached route.
#[derive(Debug)]
pub struct RouteEntry<'a> {
    /// The route resource.
    pub route: Key,
    /// The ServicePolicy attached to the route itself.
    pub policy: Option<&'a ServicePolicySpec>,
    pub rule: Rule<'a>,
}

/// What a rule does with the requests it matches.
#[derive(Debug, Clone)]
pub struct Rule<'a> {
    /// `None`: every request.
    pub matched: Option<RequestMatch>,
    pub backends: Vec<WeightedBackend>,
    pub timeouts: Option<&'a RouteTimeouts>,
    pub retry: Option<Retry>,
    pub request_headers: Option<&'a HeaderModifier>,
    pub response_headers: Option<&'a HeaderModifier>,
    pub mirror: Option<Mirror>,
}

/// A backend by its index in [`Outbound::backends`], with its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightedBackend {
    pub index: u32,
    pub weight: u32,
}

/// When and how often a rule retries; connect failures are always retried.
#[derive(Debug, Clone)]
pub struct Retry {
    pub on: RetryOn,
    pub attempts: u32,
    pub backoff: Duration,
}

impl Retry {
    fn of<C: RetryCode>(spec: &RouteRetry<C>) -> Self {
        Self {
            on: C::retry_on(&spec.codes),
            attempts: spec.attempts(),
            backoff: spec.backoff(),
        }
    }
}

/// A copy of each request (or `percent` of them) sent to a backend, its answer dropped.
#[derive(Debug, Clone, Copy)]
pub struct Mirror {
    pub backend: u32,
    pub percent: Option<u32>,
}

/// A Service port a destination resolved to.
struct Target<'a> {
    key: Key,
    spec: &'a ServiceSpec,
    port: Port,
    /// Set when the app dialed one workload by its address (`ip:port`): only that workload is an
    /// endpoint, and the Service's routes do not apply — the app picked its peer itself.
    workload: Option<IpAddr>,
}

impl Target<'_> {
    /// The name of the Service port the destination names, if it has one.
    fn port_name(&self) -> Option<&str> {
        self.spec
            .ports
            .iter()
            .find(|p| p.port == self.port)
            .and_then(|p| p.name.as_deref())
    }
}

/// What `destination` (`host:port`) resolves to, if it names a Service port or a workload's.
pub fn resolve<'a>(
    state: &'a PolicyState,
    cluster_domain: &ClusterDomain,
    destination: &str,
) -> Option<Outbound<'a>> {
    let target = target(state, cluster_domain, destination)?;
    if unmeshed_only(state, &target) {
        return None;
    }
    let mut backends = Backends::new(state);
    backends.index(&target.key, target.port);
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
            let at = RouteAt {
                target: &target,
                resource: &stored.resource,
                policy: policy_for(state, &stored.resource.key()),
            };
            match &stored.resource.spec {
                Spec::HttpRoute(spec) => entries.extend(at.entries(spec, &mut backends)),
                Spec::GrpcRoute(spec) => entries.extend(at.entries(spec, &mut backends)),
                _ => {}
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let policy = policy_for(state, &target.key);
    let opaque = target
        .spec
        .ports
        .iter()
        .any(|p| p.port == target.port && p.app_protocol == Some(ServiceAppProtocol::Tcp))
        || policy.is_some_and(|p| p.opaque_ports.contains(&target.port));
    Some(Outbound {
        opaque,
        backends: backends.resolve(target.workload),
        routes: entries.into_iter().map(|(_, entry)| entry).collect(),
        policy,
        service: target.key,
        port: target.port,
    })
}

/// The Service port a destination names: `<name>.<namespace>[.svc[.<cluster domain>]]:<port>`.
fn target<'a>(
    state: &'a PolicyState,
    cluster_domain: &ClusterDomain,
    destination: &str,
) -> Option<Target<'a>> {
    if let Ok(addr) = destination.parse::<SocketAddr>() {
        return cluster_ip_target(state, addr)
            .or_else(|| endpoint_target(state, addr))
            .or_else(|| workload_target(state, addr));
    }
    let (host, port) = destination.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().and_then(Port::new)?;
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

/// A cluster Service's cluster IP and one of its ports.
fn cluster_ip_target(state: &PolicyState, addr: SocketAddr) -> Option<Target<'_>> {
    let key = state.cluster.service_at(addr.ip())?;
    let (key, spec) = service_spec(state, key)?;
    let port = Port::new(addr.port())?;
    spec.ports.iter().any(|p| p.port == port).then_some(Target {
        key,
        spec,
        port,
        workload: None,
    })
}

/// A meshed Pod dialed by its address (through a headless Service, or directly): the port of a
/// Service of the Pod's own namespace whose EndpointSlices list that address on that port (the
/// first by name when several do). Slices of other namespaces are not asked: anyone may write
/// a slice listing any address.
fn endpoint_target(state: &PolicyState, addr: SocketAddr) -> Option<Target<'_>> {
    let pod = state.cluster.pod_at(addr.ip())?;
    pod.workload.as_ref()?;
    state
        .cluster
        .services_listing(addr.ip())
        .iter()
        .filter(|key| key.namespace == pod.namespace)
        .find_map(|key| {
            let (key, spec) = service_spec(state, key)?;
            let service_port = spec.ports.iter().find(|p| {
                state
                    .cluster_endpoints(&key, p.name.as_deref().unwrap_or_default())
                    .is_some_and(|endpoints| endpoints.iter().any(|(at, _)| *at == addr))
            })?;
            Some(Target {
                port: service_port.port,
                key,
                spec,
                workload: Some(addr.ip()),
            })
        })
}

/// Whether a cluster Service port (or the one endpoint of it dialed) is served only by Pods
/// without a proxy: not Weft's to route. Placed outside the mesh, it is sent to in plaintext as
/// the app asked; with some Pods meshed, only those are sent to.
fn unmeshed_only(state: &PolicyState, target: &Target<'_>) -> bool {
    let port_name = target.port_name().unwrap_or_default();
    let Some(listed) = state.cluster_endpoints(&target.key, port_name) else {
        return false;
    };
    let mut dialed = listed
        .iter()
        .filter(|(at, _)| target.workload.is_none_or(|ip| at.ip() == ip))
        .peekable();
    dialed.peek().is_some() && dialed.all(|(_, endpoint)| endpoint.workload.is_none())
}

/// A Service's key and spec, as served.
fn service_spec<'a>(state: &'a PolicyState, key: &Key) -> Option<(Key, &'a ServiceSpec)> {
    match &state.get(key)?.resource.spec {
        Spec::Service(spec) => Some((key.clone(), spec)),
        _ => None,
    }
}

/// A workload's address and one of its ports, as an intercepted connection names it: the
/// Service port whose target that is, on a Service that selects the workload (the first by
/// namespace and name when several do).
fn workload_target(state: &PolicyState, addr: SocketAddr) -> Option<Target<'_>> {
    let port = Port::new(addr.port())?;
    state.of_kind(Kind::Workload).find_map(|workload| {
        let Spec::Workload(spec) = &workload.resource.spec else {
            return None;
        };
        if spec.address.ip() != addr.ip() {
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
            let service_port = svc.ports.iter().find(|p| p.target_on(spec) == Some(port))?;
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

/// The backends an outbound view refers to, by index.
struct Backends<'a> {
    state: &'a PolicyState,
    order: Vec<(Key, Port)>,
}

impl<'a> Backends<'a> {
    fn new(state: &'a PolicyState) -> Self {
        Self {
            state,
            order: Vec::new(),
        }
    }

    fn index(&mut self, service: &Key, port: Port) -> u32 {
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

    fn backend_ref(&mut self, namespace: &str, default_port: Port, backend: &BackendRef) -> u32 {
        let key = Key::new(
            Kind::Service,
            backend.namespace.as_deref().unwrap_or(namespace),
            &backend.name,
        );
        self.index(&key, backend.port.unwrap_or(default_port))
    }

    /// A rule without its matches: backends, timeouts, retry and filters.
    fn rule<'r>(
        &mut self,
        namespace: &str,
        port: Port,
        backend_refs: &[BackendRef],
        filters: &'r [RouteFilter],
        timeouts: Option<&'r RouteTimeouts>,
        retry: Option<Retry>,
    ) -> Rule<'r> {
        let backends = backend_refs
            .iter()
            .map(|b| WeightedBackend {
                index: self.backend_ref(namespace, port, b),
                weight: b.weight(),
            })
            .collect();
        let mut rule = Rule {
            matched: None,
            backends,
            timeouts,
            retry,
            request_headers: None,
            response_headers: None,
            mirror: None,
        };
        for filter in filters {
            if let Some(m) = &filter.request_header_modifier {
                rule.request_headers = Some(m);
            }
            if let Some(m) = &filter.response_header_modifier {
                rule.response_headers = Some(m);
            }
            if let Some(mirror) = &filter.request_mirror {
                rule.mirror = Some(Mirror {
                    backend: self.backend_ref(namespace, port, &mirror.backend_ref),
                    percent: mirror.percent(),
                });
            }
        }
        rule
    }

    /// The backends in index order; with `only`, the first (the target Service) keeps just the
    /// endpoints at that address.
    fn resolve(self, only: Option<IpAddr>) -> Vec<Backend<'a>> {
        let state = self.state;
        self.order
            .into_iter()
            .enumerate()
            .map(|(index, (service, port))| {
                let mut endpoints = endpoints(state, &service, port);
                if let (0, Some(ip)) = (index, only) {
                    endpoints.retain(|e| e.address.ip() == ip);
                }
                Backend {
                    service,
                    port,
                    endpoints,
                }
            })
            .collect()
    }
}

/// The workloads a Service port sends to.
fn endpoints<'a>(state: &'a PolicyState, service: &Key, port: Port) -> Vec<Endpoint<'a>> {
    let Some(stored) = state.get(service) else {
        return Vec::new();
    };
    let Spec::Service(spec) = &stored.resource.spec else {
        return Vec::new();
    };
    let Some(service_port) = spec.ports.iter().find(|p| p.port == port) else {
        return Vec::new();
    };
    if let Some(listed) =
        state.cluster_endpoints(service, service_port.name.as_deref().unwrap_or_default())
    {
        return listed
            .into_iter()
            .filter_map(|(address, listed)| slice_endpoint(state, address, listed))
            .collect();
    }
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
            let target_port = service_port.target_on(workload)?;
            let serves_port =
                workload.ports.is_empty() || workload.ports.iter().any(|p| p.port == target_port);
            let dial_port = workload.proxy_port.unwrap_or(target_port);
            serves_port.then(|| Endpoint {
                address: SocketAddr::new(workload.address.ip(), dial_port.get()),
                identity: &workload.identity,
                weight: workload.weight(),
                labels: &w.resource.meta.labels,
                foreign_spiffe: workload.foreign_spiffe || spec.foreign_spiffe,
            })
        })
        .collect()
}

/// An endpoint from a cluster Service's EndpointSlices, when a meshed Pod serves it: dialed at
/// its proxy's inbound port, or at the app's port that its proxy intercepts. An unmeshed one is
/// left out: Weft never sends to it in plaintext from inside a meshed destination.
fn slice_endpoint<'a>(
    state: &'a PolicyState,
    address: SocketAddr,
    listed: &SliceEndpoint,
) -> Option<Endpoint<'a>> {
    let stored = state.get(listed.workload.as_ref()?)?;
    let Spec::Workload(workload) = &stored.resource.spec else {
        return None;
    };
    let port = workload.proxy_port.map_or(address.port(), Port::get);
    Some(Endpoint {
        address: SocketAddr::new(address.ip(), port),
        identity: &workload.identity,
        weight: workload.weight(),
        labels: &stored.resource.meta.labels,
        foreign_spiffe: workload.foreign_spiffe,
    })
}

/// One route resource, and the target Service port it may be attached to.
struct RouteAt<'a, 't> {
    target: &'t Target<'a>,
    resource: &'a Resource,
    policy: Option<&'a ServicePolicySpec>,
}

impl<'a> RouteAt<'a, '_> {
    /// The route's entries when it is attached to the target's port: one per rule and match.
    fn entries<M: RouteMatchKind>(
        &self,
        spec: &'a RouteSpec<M>,
        backends: &mut Backends<'_>,
    ) -> Vec<(Precedence, RouteEntry<'a>)>
    where
        for<'m> RequestMatch: From<&'m M>,
    {
        let (target, resource) = (self.target, self.resource);
        let port_name = target.port_name();
        let attached = spec.parent_refs.iter().any(|p| {
            p.name == target.key.name
                && p.namespace.as_deref().unwrap_or(resource.namespace()) == target.key.namespace
                && p.port.is_none_or(|port| port == target.port)
                && p.section_name
                    .as_deref()
                    .is_none_or(|section| Some(section) == port_name)
        });
        // A route asking for what Weft cannot do is not served by halves.
        if !attached || spec.unsupported().is_some() {
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
                rule.retry.as_ref().map(Retry::of),
            );
            let entry = |order: Precedence, rule: Rule<'a>| {
                let entry = RouteEntry {
                    route: resource.key(),
                    policy: self.policy,
                    rule,
                };
                (order, entry)
            };
            if rule.matches.is_empty() {
                entries.push(entry(precedence(None, resource, i, 0), common));
                continue;
            }
            for (index, m) in rule.matches.iter().enumerate() {
                let matched = RequestMatch::from(m);
                let order = precedence(Some(&matched), resource, i, index);
                let mut single = common.clone();
                single.matched = Some(matched);
                entries.push(entry(order, single));
            }
        }
        entries
    }
}

//! What a proxy's own workload accepts: per port, the mode, the authorization default and the
//! app's protocol; the AuthorizationPolicies that select it; its inbound rate limits.
//!
//! Settings resolve from the most specific place that sets them: an `InboundDefaults` port
//! entry, then its top level, for the workload's own (by selector), then its namespace's (no
//! selector), then the mesh's (no selector, in [`ROOT_NAMESPACE`]). What none sets is left to
//! the proxy's configuration.

use std::collections::BTreeSet;

use weft_api::inbound::AppProtocol;

use super::outbound::{policy_for, selects};
use super::request_match::RequestMatch;
use crate::policy::{
    AuthorizationPolicySpec, DefaultAuthorization, InboundDefaultsSpec, InboundPortDefaults,
    InboundRateLimit, Key, Kind, Mode, Port, RateLimit, ServiceAppProtocol, ServicePort, Spec,
};
use crate::policy_store::{PolicyState, Stored};

/// The namespace whose selector-less `InboundDefaults` cover the whole mesh: the control
/// plane's own (its identity is `spiffe://<td>/ns/weft/sa/weft-control`).
pub const ROOT_NAMESPACE: &str = "weft";

/// The inbound policy of one port, or of every port, of the workloads an identity runs as.
#[derive(Debug)]
pub struct Inbound<'a> {
    /// The port asked for is forwarded as opaque TCP.
    pub opaque: bool,
    /// Asked for every port: those forwarded as opaque TCP.
    pub opaque_ports: Vec<Port>,
    /// Where no port entry says otherwise.
    pub defaults: Settings,
    /// The ports some policy says something of.
    pub ports: Vec<InboundPort>,
    pub authorizations: Vec<Authorization<'a>>,
    pub rate_limit: Option<RateLimits<'a>>,
}

/// Mode and authorization default; `None` leaves it to the proxy's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub mode: Option<Mode>,
    pub authorization: Option<DefaultAuthorization>,
}

/// What policy says of one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundPort {
    pub port: Port,
    pub settings: Settings,
    /// Declared by a selecting Service's `appProtocol`.
    pub app_protocol: Option<AppProtocol>,
}

/// An AuthorizationPolicy that selects the workloads.
#[derive(Debug)]
pub struct Authorization<'a> {
    pub policy: Key,
    pub spec: &'a AuthorizationPolicySpec,
    /// The spec's HTTP matches, as the proxy matches requests.
    pub http: Vec<RequestMatch>,
}

/// Each limit from the nearest level that sets it.
#[derive(Debug)]
pub struct RateLimits<'a> {
    pub total: Option<&'a RateLimit>,
    pub per_identity: Option<&'a RateLimit>,
}

/// The inbound policy of `port` (`None`: every port) on the workloads `identity` runs as.
pub fn resolve<'a>(state: &'a PolicyState, identity: &str, port: Option<Port>) -> Inbound<'a> {
    let workloads: Vec<&Stored> = state
        .of_kind(Kind::Workload)
        .filter(|w| matches!(&w.resource.spec, Spec::Workload(spec) if spec.identity == identity))
        .collect();
    let opaque_ports = opaque_target_ports(state, &workloads);
    let levels = defaults_levels(state, &workloads);
    let mut listed: BTreeSet<Port> = levels
        .iter()
        .flat_map(|level| level.ports.iter().map(|p| p.port))
        .collect();
    let app_protocols = app_protocols(state, &workloads);
    listed.extend(app_protocols.iter().map(|(port, _)| *port));
    let ports = listed
        .into_iter()
        .map(|port| InboundPort {
            port,
            settings: settings(&levels, Some(port)),
            app_protocol: app_protocols
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, protocol)| *protocol),
        })
        .collect();
    let nearest = |pick: fn(&InboundRateLimit) -> Option<&RateLimit>| {
        levels
            .iter()
            .find_map(|level| level.rate_limit.as_ref().and_then(pick))
    };
    let total = nearest(|limit| limit.total.as_ref());
    let per_identity = nearest(|limit| limit.per_identity.as_ref());
    Inbound {
        opaque: port.is_some_and(|port| opaque_ports.contains(&port)),
        opaque_ports: if port.is_none() {
            opaque_ports.into_iter().collect()
        } else {
            Vec::new()
        },
        defaults: settings(&levels, None),
        ports,
        authorizations: authorizations(state, &workloads),
        rate_limit: (total.is_some() || per_identity.is_some()).then_some(RateLimits {
            total,
            per_identity,
        }),
    }
}

/// The `InboundDefaults` that apply, most specific first: the workloads' own, their
/// namespaces', the mesh's. Within a level, the first by name.
fn defaults_levels<'a>(
    state: &'a PolicyState,
    workloads: &[&'a Stored],
) -> Vec<&'a InboundDefaultsSpec> {
    let all: Vec<(&str, &InboundDefaultsSpec)> = state
        .of_kind(Kind::InboundDefaults)
        .filter_map(|stored| match &stored.resource.spec {
            Spec::InboundDefaults(spec) => Some((stored.resource.namespace(), spec)),
            _ => None,
        })
        .collect();
    let own = all.iter().find(|(namespace, spec)| {
        workloads.iter().any(|w| {
            w.resource.namespace() == *namespace && selects(&spec.selector, &w.resource.meta.labels)
        })
    });
    let namespace = all.iter().find(|(namespace, spec)| {
        spec.selector.is_empty()
            && workloads
                .iter()
                .any(|w| w.resource.namespace() == *namespace)
    });
    let mesh = all
        .iter()
        .find(|(namespace, spec)| spec.selector.is_empty() && *namespace == ROOT_NAMESPACE);
    let mut levels: Vec<&InboundDefaultsSpec> = Vec::new();
    for (_, spec) in [own, namespace, mesh].into_iter().flatten() {
        if !levels.iter().any(|l| std::ptr::eq(*l, *spec)) {
            levels.push(spec);
        }
    }
    levels
}

/// Mode and authorization for `port` (or the workload's default), each from the most specific
/// level that sets it.
fn settings(levels: &[&InboundDefaultsSpec], port: Option<Port>) -> Settings {
    let mode = most_specific(levels, |level| match port {
        Some(port) => port_defaults(level, port)
            .and_then(|p| p.mode)
            .or(level.mode),
        None => level.mode,
    });
    let authorization = most_specific(levels, |level| match port {
        Some(port) => port_defaults(level, port)
            .and_then(|p| p.authorization)
            .or(level.authorization),
        None => level.authorization,
    });
    Settings {
        mode,
        authorization,
    }
}

fn port_defaults(level: &InboundDefaultsSpec, port: Port) -> Option<&InboundPortDefaults> {
    level.ports.iter().find(|p| p.port == port)
}

/// The first level (most specific first) that sets a value.
fn most_specific<T>(
    levels: &[&InboundDefaultsSpec],
    value: impl Fn(&InboundDefaultsSpec) -> Option<T>,
) -> Option<T> {
    levels.iter().find_map(|level| value(level))
}

/// The AuthorizationPolicies of the workloads' namespaces that select them (or all of the
/// namespace), by name.
fn authorizations<'a>(state: &'a PolicyState, workloads: &[&Stored]) -> Vec<Authorization<'a>> {
    state
        .of_kind(Kind::AuthorizationPolicy)
        .filter_map(|stored| {
            let Spec::AuthorizationPolicy(spec) = &stored.resource.spec else {
                return None;
            };
            let applies = workloads.iter().any(|w| {
                w.resource.namespace() == stored.resource.namespace()
                    && (spec.selector.is_empty()
                        || selects(&spec.selector, &w.resource.meta.labels))
            });
            applies.then(|| Authorization {
                policy: stored.resource.key(),
                spec,
                http: spec.http.iter().map(RequestMatch::from).collect(),
            })
        })
        .collect()
}

/// Each workload port a selecting Service declares an HTTP protocol for: `http` is HTTP/1.1,
/// `grpc` and `kubernetes.io/h2c` are HTTP/2.
fn app_protocols(state: &PolicyState, workloads: &[&Stored]) -> Vec<(Port, AppProtocol)> {
    let mut found = Vec::new();
    for_each_service_port(state, workloads, |_, service_port, port| {
        let protocol = match service_port.app_protocol {
            Some(ServiceAppProtocol::Http) => AppProtocol::Http1,
            Some(ServiceAppProtocol::Grpc | ServiceAppProtocol::H2c) => AppProtocol::Http2,
            Some(ServiceAppProtocol::Tcp) | None => return,
        };
        if !found.iter().any(|(p, _)| *p == port) {
            found.push((port, protocol));
        }
    });
    found
}

/// The workload ports the Services selecting the workloads make opaque: `appProtocol: tcp`, or
/// listed in the Service's ServicePolicy `opaquePorts`.
fn opaque_target_ports(state: &PolicyState, workloads: &[&Stored]) -> BTreeSet<Port> {
    let mut ports = BTreeSet::new();
    for_each_service_port(state, workloads, |service, port, target| {
        let opaque = port.app_protocol == Some(ServiceAppProtocol::Tcp)
            || policy_for(state, &service.resource.key())
                .is_some_and(|p| p.opaque_ports.contains(&port.port));
        if opaque {
            ports.insert(target);
        }
    });
    ports
}

/// Calls `each` with every port of every Service that selects one of the workloads, and the
/// workload's port it targets there.
fn for_each_service_port<'a>(
    state: &'a PolicyState,
    workloads: &[&Stored],
    mut each: impl FnMut(&'a Stored, &'a ServicePort, Port),
) {
    for workload in workloads {
        let Spec::Workload(spec) = &workload.resource.spec else {
            continue;
        };
        for service in state.of_kind(Kind::Service) {
            let Spec::Service(svc) = &service.resource.spec else {
                continue;
            };
            if service.resource.namespace() == workload.resource.namespace()
                && selects(&svc.selector, &workload.resource.meta.labels)
            {
                for port in &svc.ports {
                    if let Some(target) = port.target_on(spec) {
                        each(service, port, target);
                    }
                }
            }
        }
    }
}

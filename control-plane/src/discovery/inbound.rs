//! What a proxy's own workload accepts: per port, the mode, the authorization default and the
//! app's protocol; the AuthorizationPolicies that select it; its inbound rate limits.
//!
//! Settings resolve from the most specific place that sets them: an `InboundDefaults` port
//! entry, then its top level, for the workload's own (by selector), then its namespace's (no
//! selector), then the mesh's (no selector, in [`ROOT_NAMESPACE`]). What none sets is left to
//! the proxy's configuration.

use std::collections::BTreeSet;

use weft_api::discovery as pb;

use super::snapshot::{http_match, policy_for, selects};
use crate::policy::{
    AuthorizationPolicySpec, InboundDefaultsSpec, InboundPortDefaults, InboundRateLimit, Kind,
    RateLimit, ServicePort, Spec,
};
use crate::policy_store::{PolicyState, Stored};

/// The namespace whose selector-less `InboundDefaults` cover the whole mesh: the control
/// plane's own (its identity is `spiffe://<td>/ns/weft/sa/weft-control`).
pub const ROOT_NAMESPACE: &str = "weft";

/// The inbound policy of `port` (0: every port) on the workloads `identity` runs as.
pub fn inbound_snapshot(state: &PolicyState, identity: &str, port: u32) -> pb::InboundSnapshot {
    let workloads: Vec<&Stored> = state
        .of_kind(Kind::Workload)
        .filter(|w| matches!(&w.resource.spec, Spec::Workload(spec) if spec.identity == identity))
        .collect();
    let opaque_ports = opaque_target_ports(state, &workloads);
    let levels = defaults_levels(state, &workloads);
    let mut listed: BTreeSet<u32> = levels
        .iter()
        .flat_map(|level| level.ports.iter().map(|p| p.port))
        .collect();
    let app_protocols = app_protocols(state, &workloads);
    listed.extend(app_protocols.iter().map(|(port, _)| *port));
    let ports = listed
        .into_iter()
        .map(|port| pb::InboundPort {
            port,
            settings: Some(settings(&levels, Some(port))),
            app_protocol: app_protocols
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, protocol)| protocol.to_string())
                .unwrap_or_default(),
        })
        .collect();
    // Each limit from the nearest level that sets it, as for the other settings.
    let nearest = |pick: fn(&InboundRateLimit) -> Option<&RateLimit>| {
        levels
            .iter()
            .find_map(|level| level.rate_limit.as_ref().and_then(pick))
            .map(rate)
    };
    let total = nearest(|limit| limit.total.as_ref());
    let per_identity = nearest(|limit| limit.per_identity.as_ref());
    let rate_limit = (total.is_some() || per_identity.is_some()).then_some(pb::InboundRateLimit {
        total,
        per_identity,
    });
    pb::InboundSnapshot {
        version: String::new(),
        opaque: port != 0 && opaque_ports.contains(&port),
        opaque_ports: if port == 0 {
            opaque_ports.into_iter().collect()
        } else {
            Vec::new()
        },
        defaults: Some(settings(&levels, None)),
        ports,
        authorizations: authorizations(state, &workloads),
        rate_limit,
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
fn settings(levels: &[&InboundDefaultsSpec], port: Option<u32>) -> pb::InboundSettings {
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
    pb::InboundSettings {
        mode: mode.map_or_else(String::new, |m| m.as_str().to_string()),
        authorization: authorization.map_or_else(String::new, |a| a.as_str().to_string()),
    }
}

fn port_defaults(level: &InboundDefaultsSpec, port: u32) -> Option<&InboundPortDefaults> {
    level.ports.iter().find(|p| p.port == port)
}

/// The first level (most specific first) that sets a value.
fn most_specific<T>(
    levels: &[&InboundDefaultsSpec],
    value: impl Fn(&InboundDefaultsSpec) -> Option<T>,
) -> Option<T> {
    levels.iter().find_map(|level| value(level))
}

fn rate(limit: &RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        requests_per_second: limit.requests_per_second,
        burst: limit.burst.unwrap_or(limit.requests_per_second),
    }
}

/// The AuthorizationPolicies of the workloads' namespaces that select them (or all of the
/// namespace), by name.
fn authorizations(state: &PolicyState, workloads: &[&Stored]) -> Vec<pb::Authorization> {
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
            applies.then(|| authorization(stored, spec))
        })
        .collect()
}

fn authorization(stored: &Stored, spec: &AuthorizationPolicySpec) -> pb::Authorization {
    pb::Authorization {
        name: format!(
            "{}/{}",
            stored.resource.namespace(),
            stored.resource.meta.name
        ),
        ports: spec.ports.clone(),
        http: spec.http.iter().map(http_match).collect(),
        sources: spec
            .from
            .iter()
            .map(|source| pb::AuthorizationSource {
                identities: source.identities.clone(),
                namespaces: source.namespaces.clone(),
                unauthenticated: source.unauthenticated,
                cidrs: source.cidrs.clone(),
            })
            .collect(),
    }
}

/// Each workload port a selecting Service declares an HTTP protocol for: `http` is HTTP/1.1,
/// `grpc` and `kubernetes.io/h2c` are HTTP/2.
fn app_protocols(state: &PolicyState, workloads: &[&Stored]) -> Vec<(u32, &'static str)> {
    let mut found = Vec::new();
    for_each_service_port(state, workloads, |_, service_port| {
        let port = service_port.target_port.unwrap_or(service_port.port);
        let protocol = match service_port.app_protocol.as_deref() {
            Some("http") => "http",
            Some("grpc" | "kubernetes.io/h2c") => "http2",
            _ => return,
        };
        if !found.iter().any(|(p, _)| *p == port) {
            found.push((port, protocol));
        }
    });
    found
}

/// The workload ports the Services selecting the workloads make opaque: `appProtocol: tcp`, or
/// listed in the Service's ServicePolicy `opaquePorts`.
fn opaque_target_ports(state: &PolicyState, workloads: &[&Stored]) -> BTreeSet<u32> {
    let mut ports = BTreeSet::new();
    for_each_service_port(state, workloads, |service, port| {
        let opaque = port.app_protocol.as_deref() == Some("tcp")
            || policy_for(state, &service.resource.key())
                .is_some_and(|p| p.opaque_ports.contains(&port.port));
        if opaque {
            ports.insert(port.target_port.unwrap_or(port.port));
        }
    });
    ports
}

/// Calls `each` with every port of every Service that selects one of the workloads.
fn for_each_service_port<'a>(
    state: &'a PolicyState,
    workloads: &[&Stored],
    mut each: impl FnMut(&'a Stored, &'a ServicePort),
) {
    for workload in workloads {
        for service in state.of_kind(Kind::Service) {
            let Spec::Service(svc) = &service.resource.spec else {
                continue;
            };
            if service.resource.namespace() == workload.resource.namespace()
                && selects(&svc.selector, &workload.resource.meta.labels)
            {
                for port in &svc.ports {
                    each(service, port);
                }
            }
        }
    }
}

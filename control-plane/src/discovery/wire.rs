//! The discovery protocol's messages, made from resolved domain values: the one place that
//! knows the protobuf shapes. Resolution and precedence happen before, in `outbound` and
//! `inbound`.

use std::time::Duration;

use weft_api::discovery as pb;

use super::inbound::{Authorization, Inbound, InboundPort, Settings};
use super::outbound::{Backend, Endpoint, Outbound, Retry, RouteEntry, Rule};
use super::request_match::{NamedMatch, RequestMatch, TextMatch};
use crate::policy::{
    CircuitBreaker, GatewayDuration, HeaderModifier, Key, LoadBalancerType, Port, RateLimit,
    RetryBudget, RetryOn, ServicePolicySpec, SuccessRate,
};

/// The snapshot of a destination that resolved (`None`: not found); version left empty.
pub fn outbound(resolved: Option<&Outbound<'_>>) -> pb::OutboundSnapshot {
    let Some(outbound) = resolved else {
        return pb::OutboundSnapshot::default();
    };
    pb::OutboundSnapshot {
        version: String::new(),
        found: true,
        service: service_port(&outbound.service, outbound.port),
        opaque: outbound.opaque,
        backends: outbound.backends.iter().map(backend).collect(),
        routes: outbound.routes.iter().map(route).collect(),
        policy: outbound.policy.map(service_policy),
    }
}

/// A workload's inbound snapshot; version left empty.
pub fn inbound(inbound: &Inbound<'_>) -> pb::InboundSnapshot {
    pb::InboundSnapshot {
        version: String::new(),
        opaque: inbound.opaque,
        opaque_ports: inbound.opaque_ports.iter().map(|&p| u32::from(p)).collect(),
        defaults: Some(settings(inbound.defaults)),
        ports: inbound.ports.iter().map(inbound_port).collect(),
        authorizations: inbound.authorizations.iter().map(authorization).collect(),
        rate_limit: inbound
            .rate_limit
            .as_ref()
            .map(|limits| pb::InboundRateLimit {
                total: limits.total.map(rate_limit),
                per_identity: limits.per_identity.map(rate_limit),
            }),
    }
}

/// `namespace/name:port`, how the proxy names a Service port in metrics and logs.
fn service_port(service: &Key, port: Port) -> String {
    format!("{}/{}:{port}", service.namespace, service.name)
}

fn backend(backend: &Backend<'_>) -> pb::Backend {
    pb::Backend {
        name: service_port(&backend.service, backend.port),
        endpoints: backend.endpoints.iter().map(endpoint).collect(),
    }
}

fn endpoint(endpoint: &Endpoint<'_>) -> pb::Endpoint {
    pb::Endpoint {
        address: endpoint.address.to_string(),
        identity: endpoint.identity.to_string(),
        weight: endpoint.weight,
        labels: endpoint
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        foreign_spiffe: endpoint.foreign_spiffe,
    }
}

fn route(entry: &RouteEntry<'_>) -> pb::Route {
    pb::Route {
        name: format!("{}/{}", entry.route.namespace, entry.route.name),
        rules: vec![rule(&entry.rule)],
        circuit_breaker: entry
            .policy
            .and_then(|p| p.circuit_breaker.as_ref())
            .map(circuit_breaker),
        retry_budget: entry
            .policy
            .and_then(|p| p.retry_budget.as_ref())
            .map(retry_budget),
    }
}

fn rule(rule: &Rule<'_>) -> pb::RouteRule {
    pb::RouteRule {
        matches: rule.matched.iter().map(request_match).collect(),
        backends: rule
            .backends
            .iter()
            .map(|b| pb::WeightedBackend {
                backend: b.index,
                weight: b.weight,
            })
            .collect(),
        request_timeout: rule
            .timeouts
            .and_then(|t| t.request.as_ref())
            .and_then(gateway_duration),
        backend_request_timeout: rule
            .timeouts
            .and_then(|t| t.backend_request.as_ref())
            .and_then(gateway_duration),
        retry: rule.retry.as_ref().map(retry),
        request_headers: rule.request_headers.map(header_modifier),
        response_headers: rule.response_headers.map(header_modifier),
        mirror_backend: rule.mirror.map(|m| m.backend),
        mirror_percent: rule.mirror.and_then(|m| m.percent),
    }
}

fn request_match(m: &RequestMatch) -> pb::RouteMatch {
    pb::RouteMatch {
        path: m.path.as_ref().map(text_match),
        method: m.method.clone().unwrap_or_default(),
        headers: m.headers.iter().map(named_match).collect(),
        query_params: m.query_params.iter().map(named_match).collect(),
    }
}

fn text_match(m: &TextMatch) -> pb::StringMatch {
    let (kind, value) = match m {
        TextMatch::Exact(v) => (pb::string_match::Kind::Exact, v),
        TextMatch::Prefix(v) => (pb::string_match::Kind::Prefix, v),
        TextMatch::Regex(v) => (pb::string_match::Kind::Regex, v),
    };
    pb::StringMatch {
        kind: kind as i32,
        value: value.clone(),
    }
}

fn named_match(m: &NamedMatch) -> pb::NamedMatch {
    pb::NamedMatch {
        name: m.name.clone(),
        value: Some(text_match(&m.value)),
    }
}

fn retry(retry: &Retry) -> pb::Retry {
    let (codes, grpc_codes) = match &retry.on {
        RetryOn::HttpStatuses(statuses) => {
            (statuses.iter().map(|&s| u32::from(s)).collect(), Vec::new())
        }
        RetryOn::GrpcStatuses(statuses) => (Vec::new(), statuses.clone()),
    };
    pb::Retry {
        codes,
        grpc_codes,
        on_connect_failure: true,
        attempts: retry.attempts,
        backoff: proto_duration(retry.backoff),
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

fn service_policy(policy: &ServicePolicySpec) -> pb::ServicePolicy {
    pb::ServicePolicy {
        retry_budget: policy.retry_budget.as_ref().map(retry_budget),
        load_balancer: policy.load_balancer.as_ref().map(|lb| pb::LoadBalancer {
            kind: match lb.kind {
                LoadBalancerType::RoundRobin => pb::load_balancer::Kind::RoundRobin,
                LoadBalancerType::PeakEwma => pb::load_balancer::Kind::PeakEwma,
            } as i32,
        }),
        circuit_breaker: policy.circuit_breaker.as_ref().map(circuit_breaker),
        connect_timeout: policy.connect_timeout.as_ref().and_then(gateway_duration),
        rate_limit: policy.rate_limit.as_ref().map(rate_limit),
        telemetry: policy
            .telemetry
            .as_ref()
            .map(|telemetry| pb::ServiceTelemetry {
                trace_sampling: telemetry.trace_sampling,
                access_log: telemetry.access_log,
            }),
    }
}

fn retry_budget(budget: &RetryBudget) -> pb::RetryBudget {
    pb::RetryBudget {
        ratio: budget.ratio(),
        min_retries_per_second: budget.min_retries_per_second(),
        window: proto_duration(budget.window()),
    }
}

fn circuit_breaker(breaker: &CircuitBreaker) -> pb::CircuitBreaker {
    let rate = breaker.success_rate.as_ref();
    let ejection = breaker.ejection.as_ref();
    pb::CircuitBreaker {
        consecutive_failures: breaker.consecutive_failures(),
        min_success_rate: rate.map_or(0.0, |r| r.minimum),
        min_requests: rate.map_or(SuccessRate::DEFAULT_MIN_REQUESTS, |r| r.min_requests()),
        window: rate
            .and_then(|r| r.window.as_ref())
            .and_then(gateway_duration),
        base_ejection: ejection
            .and_then(|e| e.base.as_ref())
            .and_then(gateway_duration),
        max_ejection: ejection
            .and_then(|e| e.max.as_ref())
            .and_then(gateway_duration),
    }
}

fn rate_limit(limit: &RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        requests_per_second: limit.requests_per_second,
        burst: limit.burst(),
    }
}

fn settings(settings: Settings) -> pb::InboundSettings {
    pb::InboundSettings {
        mode: settings
            .mode
            .map_or_else(String::new, |m| m.as_str().to_string()),
        authorization: settings
            .authorization
            .map_or_else(String::new, |a| a.as_str().to_string()),
    }
}

fn inbound_port(port: &InboundPort) -> pb::InboundPort {
    pb::InboundPort {
        port: port.port.into(),
        settings: Some(settings(port.settings)),
        app_protocol: port
            .app_protocol
            .map_or_else(String::new, |p| p.as_str().to_string()),
    }
}

fn authorization(authorization: &Authorization<'_>) -> pb::Authorization {
    let spec = authorization.spec;
    pb::Authorization {
        name: format!(
            "{}/{}",
            authorization.policy.namespace, authorization.policy.name
        ),
        ports: spec.ports.iter().map(|&p| u32::from(p)).collect(),
        http: authorization.http.iter().map(request_match).collect(),
        sources: spec
            .from
            .iter()
            .map(|source| pb::AuthorizationSource {
                identities: source.identities.clone(),
                namespaces: source.namespaces.clone(),
                unauthenticated: source.unauthenticated,
                cidrs: source.cidrs.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    }
}

fn gateway_duration(value: &GatewayDuration) -> Option<prost_types::Duration> {
    proto_duration(value.get())
}

/// `None` only past prost's range (~292 billion years), which the policy bounds never reach.
fn proto_duration(value: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(value).ok()
}

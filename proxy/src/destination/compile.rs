//! Discovery snapshots into destinations: every field checked, with the path of the first bad
//! one, so the proxy can report exactly why it rejected a version (and keep the last good one).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::{Regex, RegexBuilder};
use weft_api::discovery as pb;

use super::matcher::{PathMatch, ValueMatch};
use super::{
    BackendSpec, CircuitBreaker, Destination, EndpointSpec, HeaderModifier, LoadBalancerKind,
    RateLimit, RequestMatch, RetryBudget, RetryPolicy, RouteEntry, Rule, ServicePolicy,
    ServiceTelemetry,
};

/// Compiled regexes are capped: they run on every request.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// Why a snapshot was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CompileError {
    pub field: String,
    pub reason: String,
}

pub(super) fn error(field: impl Into<String>, reason: impl Into<String>) -> CompileError {
    CompileError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Destination {
    /// Compiles `snapshot`, refusing one with more than `max_endpoints` endpoints in all: what a
    /// destination may make the proxy hold (balancers, peers, connections) is bounded.
    pub fn compile(
        snapshot: &pb::OutboundSnapshot,
        max_endpoints: usize,
    ) -> Result<Self, CompileError> {
        let endpoints: usize = snapshot.backends.iter().map(|b| b.endpoints.len()).sum();
        if endpoints > max_endpoints {
            return Err(error(
                "backends",
                format!(
                    "{endpoints} endpoints, more than this proxy takes ({max_endpoints}, WEFT_PROXY_MAX_ENDPOINTS)"
                ),
            ));
        }
        Self::try_from(snapshot)
    }
}

impl TryFrom<&pb::OutboundSnapshot> for Destination {
    type Error = CompileError;

    fn try_from(snapshot: &pb::OutboundSnapshot) -> Result<Self, CompileError> {
        let backends = snapshot
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| backend(&format!("backends[{i}]"), b))
            .collect::<Result<Vec<_>, _>>()?;
        if backends.is_empty() {
            return Err(error(
                "backends",
                "a found destination needs its own backend",
            ));
        }
        let mut routes = Vec::with_capacity(snapshot.routes.len().max(1));
        for (i, route) in snapshot.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let name: Arc<str> = route.name.as_str().into();
            let circuit_breaker = route
                .circuit_breaker
                .as_ref()
                .map(|b| circuit_breaker(&format!("{at}.circuit_breaker"), b))
                .transpose()?;
            let retry_budget = route
                .retry_budget
                .as_ref()
                .map(|b| retry_budget(&format!("{at}.retry_budget"), b))
                .transpose()?;
            for (j, r) in route.rules.iter().enumerate() {
                let at = format!("{at}.rules[{j}]");
                let rule = Arc::new(rule(&at, r, backends.len())?);
                let matches = if r.matches.is_empty() {
                    vec![RequestMatch::any()]
                } else {
                    r.matches
                        .iter()
                        .enumerate()
                        .map(|(k, m)| request_match(&format!("{at}.matches[{k}]"), m))
                        .collect::<Result<_, _>>()?
                };
                for matches in matches {
                    routes.push(RouteEntry {
                        route: name.clone(),
                        matches,
                        rule: rule.clone(),
                        circuit_breaker: circuit_breaker.clone(),
                        retry_budget: retry_budget.clone(),
                    });
                }
            }
        }
        if routes.is_empty() {
            routes.push(RouteEntry::default_route());
        }
        let policy = snapshot
            .policy
            .as_ref()
            .map(|p| service_policy("policy", p))
            .transpose()?
            .unwrap_or_default();
        Ok(Destination {
            version: snapshot.version.clone(),
            service: snapshot.service.as_str().into(),
            opaque: snapshot.opaque,
            backends,
            routes,
            policy,
        })
    }
}

fn backend(at: &str, backend: &pb::Backend) -> Result<BackendSpec, CompileError> {
    let endpoints = backend
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let field = format!("{at}.endpoints[{i}]");
            Ok(EndpointSpec {
                address: e.address.parse().map_err(|_| {
                    error(
                        format!("{field}.address"),
                        format!("{:?} is not ip:port", e.address),
                    )
                })?,
                identity: e
                    .identity
                    .parse()
                    .map_err(|err: weft_certs::IdentityError| {
                        error(format!("{field}.identity"), err.to_string())
                    })?,
                // Weight 0 drains an endpoint: it stays known but gets no new requests.
                weight: e.weight,
                foreign_spiffe: e.foreign_spiffe,
            })
        })
        .collect::<Result<Vec<_>, CompileError>>()?;
    Ok(BackendSpec {
        name: backend.name.as_str().into(),
        endpoints,
    })
}

fn rule(at: &str, rule: &pb::RouteRule, backends: usize) -> Result<Rule, CompileError> {
    let index = |field: String, i: u32| {
        let i = i as usize;
        (i < backends)
            .then_some(i)
            .ok_or_else(|| error(field, format!("backend {i} does not exist")))
    };
    let weighted = rule
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Ok((
                index(format!("{at}.backends[{i}].backend"), b.backend)?,
                b.weight,
            ))
        })
        .collect::<Result<Vec<_>, CompileError>>()?;
    if !weighted.is_empty() && weighted.iter().all(|(_, w)| *w == 0) {
        return Err(error(format!("{at}.backends"), "weights are all zero"));
    }
    Ok(Rule {
        backends: weighted,
        request_timeout: rule
            .request_timeout
            .map(|d| duration(&format!("{at}.request_timeout"), d))
            .transpose()?
            .filter(|d| !d.is_zero()),
        backend_request_timeout: rule
            .backend_request_timeout
            .map(|d| duration(&format!("{at}.backend_request_timeout"), d))
            .transpose()?
            .filter(|d| !d.is_zero()),
        retry: rule
            .retry
            .as_ref()
            .map(|r| retry(&format!("{at}.retry"), r))
            .transpose()?,
        request_headers: rule
            .request_headers
            .as_ref()
            .map(|m| header_modifier(&format!("{at}.request_headers"), m))
            .transpose()?,
        response_headers: rule
            .response_headers
            .as_ref()
            .map(|m| header_modifier(&format!("{at}.response_headers"), m))
            .transpose()?,
        mirror: rule
            .mirror_backend
            .map(|b| {
                Ok::<_, CompileError>((
                    index(format!("{at}.mirror_backend"), b)?,
                    rule.mirror_percent.unwrap_or(100).min(100),
                ))
            })
            .transpose()?,
    })
}

pub(super) fn request_match(at: &str, m: &pb::RouteMatch) -> Result<RequestMatch, CompileError> {
    let path = m
        .path
        .as_ref()
        .map(|p| {
            let field = format!("{at}.path");
            match pb::string_match::Kind::try_from(p.kind) {
                Ok(pb::string_match::Kind::Exact) => Ok(PathMatch::Exact(p.value.clone())),
                Ok(pb::string_match::Kind::Prefix) => Ok(PathMatch::Prefix(p.value.clone())),
                Ok(pb::string_match::Kind::Regex) => Ok(PathMatch::Regex(regex(&field, &p.value)?)),
                _ => Err(error(field, "unknown match kind")),
            }
        })
        .transpose()?;
    let method = (!m.method.is_empty())
        .then(|| {
            Method::from_bytes(m.method.as_bytes())
                .map_err(|_| error(format!("{at}.method"), "not a method"))
        })
        .transpose()?;
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let field = format!("{at}.headers[{i}]");
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| error(format!("{field}.name"), "not a header name"))?;
            Ok((name, value_match(&field, h.value.as_ref())?))
        })
        .collect::<Result<_, CompileError>>()?;
    let query = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            Ok((
                q.name.clone(),
                value_match(&format!("{at}.query_params[{i}]"), q.value.as_ref())?,
            ))
        })
        .collect::<Result<_, CompileError>>()?;
    Ok(RequestMatch {
        path,
        method,
        headers,
        query,
    })
}

fn value_match(at: &str, value: Option<&pb::StringMatch>) -> Result<ValueMatch, CompileError> {
    let value = value.ok_or_else(|| error(format!("{at}.value"), "missing"))?;
    match pb::string_match::Kind::try_from(value.kind) {
        Ok(pb::string_match::Kind::Regex) => Ok(ValueMatch::Regex(regex(
            &format!("{at}.value"),
            &value.value,
        )?)),
        _ => Ok(ValueMatch::Exact(value.value.clone())),
    }
}

fn regex(at: &str, pattern: &str) -> Result<Regex, CompileError> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            // The message draws the pattern over several lines; the last one says why.
            let message = e.to_string();
            let reason = message
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or(&message);
            error(
                at,
                format!("regular expression does not compile: {}", reason.trim()),
            )
        })
}

fn retry(at: &str, retry: &pb::Retry) -> Result<RetryPolicy, CompileError> {
    let http_codes = retry
        .codes
        .iter()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| error(format!("{at}.codes"), format!("{c} is not an HTTP status")))
        })
        .collect::<Result<_, _>>()?;
    Ok(RetryPolicy {
        http_codes,
        grpc_codes: retry.grpc_codes.clone(),
        on_connect_failure: retry.on_connect_failure,
        attempts: retry.attempts.min(10),
        backoff: retry
            .backoff
            .map(|d| duration(&format!("{at}.backoff"), d))
            .transpose()?
            .unwrap_or(Duration::from_millis(25)),
    })
}

fn header_modifier(at: &str, m: &pb::HeaderModifier) -> Result<HeaderModifier, CompileError> {
    let pairs = |field: &str, map: &std::collections::HashMap<String, String>| {
        let mut pairs = map
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    error(
                        format!("{at}.{field}"),
                        format!("{name:?} is not a header name"),
                    )
                })?;
                let value = HeaderValue::from_str(value)
                    .map_err(|_| error(format!("{at}.{field}"), format!("bad value for {name}")))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        // Maps arrive in any order; sort so equal snapshots compile equal.
        pairs.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok::<_, CompileError>(pairs)
    };
    Ok(HeaderModifier {
        set: pairs("set", &m.set)?,
        add: pairs("add", &m.add)?,
        remove: m
            .remove
            .iter()
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    error(
                        format!("{at}.remove"),
                        format!("{name:?} is not a header name"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

fn service_policy(at: &str, p: &pb::ServicePolicy) -> Result<ServicePolicy, CompileError> {
    Ok(ServicePolicy {
        retry_budget: p
            .retry_budget
            .as_ref()
            .map(|b| retry_budget(&format!("{at}.retry_budget"), b))
            .transpose()?,
        load_balancer: match p
            .load_balancer
            .as_ref()
            .map(|lb| pb::load_balancer::Kind::try_from(lb.kind))
        {
            Some(Ok(pb::load_balancer::Kind::RoundRobin)) => LoadBalancerKind::RoundRobin,
            _ => LoadBalancerKind::PeakEwma,
        },
        circuit_breaker: p
            .circuit_breaker
            .as_ref()
            .map(|b| circuit_breaker(&format!("{at}.circuit_breaker"), b))
            .transpose()?,
        connect_timeout: p
            .connect_timeout
            .map(|d| duration(&format!("{at}.connect_timeout"), d))
            .transpose()?
            .filter(|d| !d.is_zero()),
        rate_limit: p
            .rate_limit
            .as_ref()
            .map(|r| {
                (r.requests_per_second > 0)
                    .then_some(RateLimit {
                        per_second: r.requests_per_second,
                        burst: r.burst.max(1),
                    })
                    .ok_or_else(|| {
                        error(
                            format!("{at}.rate_limit.requests_per_second"),
                            "must be at least 1",
                        )
                    })
            })
            .transpose()?,
        telemetry: p
            .telemetry
            .as_ref()
            .map(|t| telemetry(&format!("{at}.telemetry"), t))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn telemetry(at: &str, t: &pb::ServiceTelemetry) -> Result<ServiceTelemetry, CompileError> {
    if let Some(ratio) = t.trace_sampling
        && !(0.0..=1.0).contains(&ratio)
    {
        return Err(error(format!("{at}.trace_sampling"), "must be from 0 to 1"));
    }
    Ok(ServiceTelemetry {
        trace_sampling: t.trace_sampling,
        access_log: t.access_log,
    })
}

fn retry_budget(at: &str, b: &pb::RetryBudget) -> Result<RetryBudget, CompileError> {
    // tower's budget accepts 1–60 s windows and ratios up to 1000: clamp rather than reject.
    let window = b
        .window
        .map(|d| duration(&format!("{at}.window"), d))
        .transpose()?
        .unwrap_or(Duration::from_secs(10))
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    if !(0.0..=1000.0).contains(&b.ratio) {
        return Err(error(format!("{at}.ratio"), "must be between 0 and 1000"));
    }
    Ok(RetryBudget {
        ratio: b.ratio as f32,
        min_per_second: b.min_retries_per_second.min(1_000_000),
        window,
    })
}

fn circuit_breaker(at: &str, b: &pb::CircuitBreaker) -> Result<CircuitBreaker, CompileError> {
    let base = b
        .base_ejection
        .map(|d| duration(&format!("{at}.base_ejection"), d))
        .transpose()?
        .unwrap_or(Duration::from_secs(10));
    Ok(CircuitBreaker {
        consecutive_failures: b.consecutive_failures,
        min_success_rate: b.min_success_rate.clamp(0.0, 1.0),
        min_requests: b.min_requests,
        window: b
            .window
            .map(|d| duration(&format!("{at}.window"), d))
            .transpose()?
            .unwrap_or(Duration::from_secs(10)),
        base_ejection: base,
        max_ejection: b
            .max_ejection
            .map(|d| duration(&format!("{at}.max_ejection"), d))
            .transpose()?
            .unwrap_or(Duration::from_secs(300))
            .max(base),
    })
}

/// No duration in a snapshot may exceed this: far above anything the control plane accepts, and
/// far below what would overflow a deadline computed from it.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration; zero means "none" wherever a timeout is optional (as the Gateway API says).
fn duration(at: &str, d: prost_types::Duration) -> Result<Duration, CompileError> {
    let d = Duration::try_from(d).map_err(|_| error(at, "not a positive duration"))?;
    if d > MAX_DURATION {
        return Err(error(
            at,
            format!("must be at most {}s", MAX_DURATION.as_secs()),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> pb::OutboundSnapshot {
        pb::OutboundSnapshot {
            version: "3".into(),
            found: true,
            service: "shop/api:8080".into(),
            backends: vec![pb::Backend {
                name: "shop/api:8080".into(),
                endpoints: vec![pb::Endpoint {
                    address: "127.0.0.1:7143".into(),
                    identity: "spiffe://cluster.local/ns/shop/sa/api".into(),
                    weight: 1,
                    labels: Default::default(),
                    foreign_spiffe: false,
                }],
            }],
            routes: vec![pb::Route {
                name: "shop/r".into(),
                rules: vec![pb::RouteRule {
                    matches: vec![pb::RouteMatch {
                        path: Some(pb::StringMatch {
                            kind: pb::string_match::Kind::Regex as i32,
                            value: "/orders/[0-9]+".into(),
                        }),
                        ..Default::default()
                    }],
                    backends: vec![pb::WeightedBackend {
                        backend: 0,
                        weight: 1,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_compiles_and_its_regexes_are_anchored() {
        let destination = Destination::try_from(&snapshot()).unwrap();
        assert_eq!(destination.routes.len(), 1);
        let request = http::Request::get("/orders/7").body(()).unwrap();
        assert!(destination.routes[0].matches.matches(&request));
        let longer = http::Request::get("/x/orders/7").body(()).unwrap();
        assert!(!destination.routes[0].matches.matches(&longer));
    }

    #[test]
    fn zero_timeouts_mean_none() {
        let mut zero = snapshot();
        zero.routes[0].rules[0].request_timeout = Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        let destination = Destination::try_from(&zero).unwrap();
        assert_eq!(destination.routes[0].rule.request_timeout, None);
    }

    #[test]
    fn durations_beyond_any_policy_are_refused() {
        let forever = prost_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        };
        let mut bad = snapshot();
        bad.routes[0].rules[0].request_timeout = Some(forever);
        let err = Destination::try_from(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("routes[0].rules[0].request_timeout: must be at most"),
            "{err}"
        );
        let mut bad = snapshot();
        bad.policy = Some(pb::ServicePolicy {
            circuit_breaker: Some(pb::CircuitBreaker {
                consecutive_failures: 1,
                base_ejection: Some(forever),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = Destination::try_from(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("policy.circuit_breaker.base_ejection: must be at most"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_snapshot_names_the_field() {
        let mut bad = snapshot();
        bad.routes[0].rules[0].backends[0].backend = 4;
        let err = Destination::try_from(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "routes[0].rules[0].backends[0].backend: backend 4 does not exist"
        );
        let mut bad = snapshot();
        bad.backends[0].endpoints[0].address = "nowhere".into();
        let err = Destination::try_from(&bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("backends[0].endpoints[0].address"),
            "{err}"
        );
        let mut bad = snapshot();
        if let Some(path) = bad.routes[0].rules[0].matches[0].path.as_mut() {
            path.value = "(".into();
        }
        let err = Destination::try_from(&bad).unwrap_err();
        assert!(err.to_string().contains("does not compile"), "{err}");
    }
}

//! Semantic checks of one resource, each error naming the field; and the references between
//! resources, which the store checks against everything else it holds.

use std::time::Duration;

use super::duration::{GatewayDuration, format_duration};
use super::{
    BackendRef, DEFAULT_NAMESPACE, GrpcRouteMatch, HeaderModifier, HttpRouteMatch, Key, Kind,
    NamedValueMatch, ObjectMeta, PathMatchType, Resource, RouteFilter, RouteMatchKind, RouteRetry,
    RouteSpec, RouteTimeouts, ServicePolicySpec, Spec, ValueMatchType,
};

/// A failed check: the field and why.
pub(super) type Failure = (String, String);

/// Regexes bigger than this once compiled are refused: they come from users, and run per request.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// More retries than this per request only amplify an outage.
const MAX_RETRY_ATTEMPTS: u32 = 10;
/// The largest weight of a backend or workload: shares stay exact in 32-bit sums.
const MAX_WEIGHT: u32 = 1_000_000;

/// The durations each field allows. Every bound keeps a proxy's arithmetic (deadlines, ejection
/// backoff doubling, token buckets) far from overflow, and none is shorter than anything useful.
mod bounds {
    use std::time::Duration;

    /// (min, max, whether 0s means "none").
    pub type Range = (Duration, Duration, bool);

    const MS: Duration = Duration::from_millis(1);
    const SECOND: Duration = Duration::from_secs(1);
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    /// `timeouts.request` and `timeouts.backendRequest`.
    pub const TIMEOUT: Range = (MS, Duration::from_secs(24 * 3600), true);
    /// `retry.backoff`.
    pub const RETRY_BACKOFF: Range = (MS, MINUTE, true);
    /// `retryBudget.window`: the proxy counts requests over it.
    pub const BUDGET_WINDOW: Range = (SECOND, MINUTE, false);
    /// `circuitBreaker.successRate.window`.
    pub const RATE_WINDOW: Range = (SECOND, HOUR, false);
    /// `circuitBreaker.ejection.base`: doubled on each ejection in a row.
    pub const EJECTION_BASE: Range = (MS, HOUR, false);
    /// `circuitBreaker.ejection.max`.
    pub const EJECTION_MAX: Range = (MS, Duration::from_secs(24 * 3600), false);
    /// `connectTimeout`.
    pub const CONNECT_TIMEOUT: Range = (MS, Duration::from_secs(300), false);
}
pub(super) fn names_are_valid(resource: &Resource) -> bool {
    check_meta(&resource.meta).is_ok()
}

pub(super) fn check(resource: &Resource) -> Result<(), Failure> {
    check_meta(&resource.meta)?;
    match &resource.spec {
        Spec::Service(spec) => {
            if spec.ports.is_empty() {
                return fail("spec.ports", "a Service needs at least one port");
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, port) in spec.ports.iter().enumerate() {
                if !seen.insert(port.port) {
                    return fail(
                        &format!("spec.ports[{i}].port"),
                        &format!("port {} is listed twice", port.port),
                    );
                }
            }
            Ok(())
        }
        Spec::Workload(spec) => {
            let identity = spec
                .identity
                .parse::<weft_certs::Identity>()
                .map_err(|e| ("spec.identity".to_string(), e.to_string()))?;
            // As on Kubernetes, where a pod's ServiceAccount lives in its namespace: the
            // namespace's policies and defaults are what apply to that identity.
            if identity.namespace() != resource.namespace() {
                return fail(
                    "spec.identity",
                    &format!(
                        "{identity} belongs to namespace {:?}, not {:?}: a Workload lives in its identity's namespace",
                        identity.namespace(),
                        resource.namespace()
                    ),
                );
            }
            if let Some(weight) = spec.weight {
                check_count("spec.weight", weight, 0, MAX_WEIGHT)?;
            }
            Ok(())
        }
        Spec::HttpRoute(spec) => check_route(spec),
        Spec::GrpcRoute(spec) => check_route(spec),
        Spec::ServicePolicy(spec) => check_service_policy(spec),
        Spec::InboundDefaults(spec) => super::inbound::check_inbound_defaults(spec),
        Spec::AuthorizationPolicy(spec) => super::inbound::check_authorization_policy(spec),
    }
}

pub(super) fn references(resource: &Resource) -> Vec<(String, Key)> {
    let ns = resource.namespace();
    let service = |name: &str, namespace: &Option<String>| {
        Key::new(Kind::Service, namespace.as_deref().unwrap_or(ns), name)
    };
    let mut refs = Vec::new();
    let mut route_refs = |parents: &[super::ParentRef],
                          rules: Vec<(&[BackendRef], &[RouteFilter])>| {
        for (i, parent) in parents.iter().enumerate() {
            refs.push((
                format!("spec.parentRefs[{i}]"),
                service(&parent.name, &parent.namespace),
            ));
        }
        for (i, (backends, filters)) in rules.into_iter().enumerate() {
            for (j, backend) in backends.iter().enumerate() {
                refs.push((
                    format!("spec.rules[{i}].backendRefs[{j}]"),
                    service(&backend.name, &backend.namespace),
                ));
            }
            for (j, filter) in filters.iter().enumerate() {
                if let Some(mirror) = &filter.request_mirror {
                    refs.push((
                        format!("spec.rules[{i}].filters[{j}].requestMirror.backendRef"),
                        service(&mirror.backend_ref.name, &mirror.backend_ref.namespace),
                    ));
                }
            }
        }
    };
    fn rule_refs<M: RouteMatchKind>(spec: &RouteSpec<M>) -> Vec<(&[BackendRef], &[RouteFilter])> {
        spec.rules
            .iter()
            .map(|r| (r.backend_refs.as_slice(), r.filters.as_slice()))
            .collect()
    }
    match &resource.spec {
        Spec::HttpRoute(spec) => route_refs(&spec.parent_refs, rule_refs(spec)),
        Spec::GrpcRoute(spec) => route_refs(&spec.parent_refs, rule_refs(spec)),
        Spec::ServicePolicy(spec) => {
            refs.push((
                "spec.targetRef".to_string(),
                Key::new(spec.target_ref.target_kind(), ns, &spec.target_ref.name),
            ));
        }
        Spec::Service(_)
        | Spec::Workload(_)
        | Spec::InboundDefaults(_)
        | Spec::AuthorizationPolicy(_) => {}
    }
    refs
}

pub(super) fn fail<T>(field: &str, reason: &str) -> Result<T, Failure> {
    Err((field.to_string(), reason.to_string()))
}

pub(super) fn check_meta(meta: &ObjectMeta) -> Result<(), Failure> {
    let name = &meta.name;
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid_name {
        return fail(
            "metadata.name",
            &format!(
                "{name:?} must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
            ),
        );
    }
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    if !is_dns_label(namespace) {
        return fail(
            "metadata.namespace",
            &format!("{namespace:?} must be a DNS label"),
        );
    }
    Ok(())
}

/// A Kubernetes namespace name.
pub(super) fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// A token bucket: requests per second and burst, both bounded.
pub(super) fn check_rate(at: &str, limit: &super::RateLimit) -> Result<(), Failure> {
    check_count(
        &format!("{at}.requestsPerSecond"),
        limit.requests_per_second,
        1,
        1_000_000,
    )?;
    if let Some(burst) = limit.burst {
        check_count(&format!("{at}.burst"), burst, 1, 10_000_000)?;
    }
    Ok(())
}

/// A duration within `range`, naming the range when it is not.
fn check_duration(
    field: &str,
    value: &GatewayDuration,
    range: bounds::Range,
) -> Result<Duration, Failure> {
    let parsed = value.get();
    let (min, max, zero_means_none) = range;
    if (zero_means_none && parsed.is_zero()) || (min..=max).contains(&parsed) {
        return Ok(parsed);
    }
    let none = if zero_means_none {
        " (or 0s for none)"
    } else {
        ""
    };
    fail(
        field,
        &format!(
            "{:?} must be between {} and {}{none}",
            value.as_str(),
            format_duration(min),
            format_duration(max)
        ),
    )
}

/// A count within `min..=max`.
pub(super) fn check_count(field: &str, value: u32, min: u32, max: u32) -> Result<(), Failure> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    fail(field, &format!("{value} must be between {min} and {max}"))
}

/// A fraction within `min..=max` (which NaN never is).
fn check_fraction(field: &str, value: f64, min: f64, max: f64) -> Result<(), Failure> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    fail(field, &format!("{value} must be between {min} and {max}"))
}

fn check_regex(field: &str, pattern: &str) -> Result<(), Failure> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(|_| ())
        .map_err(|e| {
            (
                field.to_string(),
                format!("regular expression does not compile: {}", regex_reason(&e)),
            )
        })
}

/// The regex crate's message draws the pattern over several lines; its last line says why.
fn regex_reason(error: &regex::Error) -> String {
    let message = error.to_string();
    let last = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&message);
    last.trim().trim_start_matches("error: ").to_string()
}

fn check_parents(parents: &[super::ParentRef]) -> Result<(), Failure> {
    if parents.is_empty() {
        return fail("spec.parentRefs", "a route needs a parent Service");
    }
    for (i, parent) in parents.iter().enumerate() {
        if parent.kind.as_deref().is_some_and(|k| k != "Service") {
            return fail(
                &format!("spec.parentRefs[{i}].kind"),
                "only Service parents are supported (GAMMA)",
            );
        }
    }
    Ok(())
}

fn check_named_matches(at: &str, matches: &[NamedValueMatch], header: bool) -> Result<(), Failure> {
    for (i, m) in matches.iter().enumerate() {
        let field = format!("{at}[{i}]");
        if header && http::HeaderName::from_bytes(m.name.as_bytes()).is_err() {
            return fail(
                &format!("{field}.name"),
                &format!("{:?} is not a header name", m.name),
            );
        }
        if m.kind == Some(ValueMatchType::RegularExpression) {
            check_regex(&format!("{field}.value"), &m.value)?;
        }
    }
    Ok(())
}

/// The checks of a route's matches, by what they match on.
trait CheckMatch: RouteMatchKind {
    fn check(&self, at: &str) -> Result<(), Failure>;
}

impl CheckMatch for HttpRouteMatch {
    fn check(&self, at: &str) -> Result<(), Failure> {
        check_http_match(at, self)
    }
}

impl CheckMatch for GrpcRouteMatch {
    fn check(&self, at: &str) -> Result<(), Failure> {
        check_grpc_match(at, self)
    }
}

fn check_route<M: CheckMatch>(spec: &RouteSpec<M>) -> Result<(), Failure> {
    check_parents(&spec.parent_refs)?;
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            m.check(&format!("{at}.matches[{j}]"))?;
        }
        check_rule_common(
            &at,
            &rule.filters,
            &rule.backend_refs,
            rule.timeouts.as_ref(),
        )?;
        if let Some(retry) = &rule.retry {
            check_retry(&format!("{at}.retry"), retry)?;
        }
    }
    Ok(())
}

pub(super) fn check_http_match(at: &str, m: &HttpRouteMatch) -> Result<(), Failure> {
    if let Some(path) = &m.path {
        match path.kind {
            None | Some(PathMatchType::PathPrefix) | Some(PathMatchType::Exact) => {
                if !path.value.starts_with('/') {
                    return fail(
                        &format!("{at}.path.value"),
                        &format!("{:?} must start with /", path.value),
                    );
                }
            }
            Some(PathMatchType::RegularExpression) => {
                check_regex(&format!("{at}.path.value"), &path.value)?;
            }
        }
    }
    if let Some(method) = &m.method
        && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return fail(
            &format!("{at}.method"),
            &format!("{method:?} is not an HTTP method"),
        );
    }
    check_named_matches(&format!("{at}.headers"), &m.headers, true)?;
    check_named_matches(&format!("{at}.queryParams"), &m.query_params, false)
}

fn check_grpc_match(at: &str, m: &GrpcRouteMatch) -> Result<(), Failure> {
    if let Some(method) = &m.method {
        if method.service.is_none() && method.method.is_none() {
            return fail(
                &format!("{at}.method"),
                "needs a service, a method, or both",
            );
        }
        match method.kind {
            None | Some(ValueMatchType::Exact) => {
                for (name, value) in [("service", &method.service), ("method", &method.method)] {
                    if value
                        .as_deref()
                        .is_some_and(|v| v.is_empty() || v.contains('/'))
                    {
                        return fail(
                            &format!("{at}.method.{name}"),
                            "must be non-empty and contain no '/'",
                        );
                    }
                }
            }
            Some(ValueMatchType::RegularExpression) => {
                for (name, value) in [("service", &method.service), ("method", &method.method)] {
                    if let Some(value) = value {
                        check_regex(&format!("{at}.method.{name}"), value)?;
                    }
                }
            }
        }
    }
    check_named_matches(&format!("{at}.headers"), &m.headers, true)
}

fn check_rule_common(
    at: &str,
    filters: &[RouteFilter],
    backends: &[BackendRef],
    timeouts: Option<&RouteTimeouts>,
) -> Result<(), Failure> {
    for (i, backend) in backends.iter().enumerate() {
        let field = format!("{at}.backendRefs[{i}]");
        if backend.kind.as_deref().is_some_and(|k| k != "Service") {
            return fail(
                &format!("{field}.kind"),
                "only Service backends are supported",
            );
        }
        if let Some(weight) = backend.weight {
            check_count(&format!("{field}.weight"), weight, 0, MAX_WEIGHT)?;
        }
    }
    if !backends.is_empty() && backends.iter().all(|b| b.weight == Some(0)) {
        return fail(
            &format!("{at}.backendRefs"),
            "weights are all zero: no request could be sent anywhere",
        );
    }
    for (i, filter) in filters.iter().enumerate() {
        let field = format!("{at}.filters[{i}]");
        match filter.kind.as_str() {
            "RequestHeaderModifier" => {
                let modifier = filter.request_header_modifier.as_ref().ok_or_else(|| {
                    (
                        format!("{field}.requestHeaderModifier"),
                        "must be set for this type".to_string(),
                    )
                })?;
                check_header_modifier(&format!("{field}.requestHeaderModifier"), modifier)?;
            }
            "ResponseHeaderModifier" => {
                let modifier = filter.response_header_modifier.as_ref().ok_or_else(|| {
                    (
                        format!("{field}.responseHeaderModifier"),
                        "must be set for this type".to_string(),
                    )
                })?;
                check_header_modifier(&format!("{field}.responseHeaderModifier"), modifier)?;
            }
            "RequestMirror" => {
                let mirror = filter.request_mirror.as_ref().ok_or_else(|| {
                    (
                        format!("{field}.requestMirror"),
                        "must be set for this type".to_string(),
                    )
                })?;
                if let Some(percent) = mirror.percent {
                    check_count(&format!("{field}.requestMirror.percent"), percent, 0, 100)?;
                }
                if let Some(fraction) = &mirror.fraction {
                    let at = format!("{field}.requestMirror.fraction");
                    if mirror.percent.is_some() {
                        return fail(&at, "set percent or fraction, not both");
                    }
                    let denominator = fraction.denominator.unwrap_or(100);
                    if denominator == 0 || fraction.numerator > denominator {
                        return fail(
                            &at,
                            "must be a share between 0 and 1 (numerator ≤ denominator, denominator > 0)",
                        );
                    }
                    // The proxy mirrors whole percents: a share it cannot honour exactly is
                    // refused, never rounded into mirroring more or less than asked.
                    if (u64::from(fraction.numerator) * 100) % u64::from(denominator) != 0 {
                        return fail(
                            &at,
                            &format!(
                                "{}/{denominator} is not a whole percent; Weft mirrors whole percents",
                                fraction.numerator
                            ),
                        );
                    }
                }
            }
            // Not refused: the route is kept and reported not accepted (see
            // `RouteSpec::unsupported`), as the Gateway API asks of an implementation.
            _ => {}
        }
    }
    if let Some(timeouts) = timeouts {
        let request = timeouts
            .request
            .as_ref()
            .map(|t| check_duration(&format!("{at}.timeouts.request"), t, bounds::TIMEOUT))
            .transpose()?;
        let backend = timeouts
            .backend_request
            .as_ref()
            .map(|t| check_duration(&format!("{at}.timeouts.backendRequest"), t, bounds::TIMEOUT))
            .transpose()?;
        if let (Some(request), Some(backend)) = (request, backend)
            && !request.is_zero()
            && backend > request
        {
            return fail(
                &format!("{at}.timeouts.backendRequest"),
                "must not be longer than timeouts.request",
            );
        }
    }
    Ok(())
}

fn check_header_modifier(at: &str, modifier: &HeaderModifier) -> Result<(), Failure> {
    for (list, values) in [("set", &modifier.set), ("add", &modifier.add)] {
        for (i, header) in values.iter().enumerate() {
            if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                return fail(
                    &format!("{at}.{list}[{i}].name"),
                    &format!("{:?} is not a header name", header.name),
                );
            }
            if http::HeaderValue::from_str(&header.value).is_err() {
                return fail(
                    &format!("{at}.{list}[{i}].value"),
                    "is not a valid header value",
                );
            }
        }
    }
    for (i, name) in modifier.remove.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return fail(
                &format!("{at}.remove[{i}]"),
                &format!("{name:?} is not a header name"),
            );
        }
    }
    Ok(())
}

fn check_retry<C>(at: &str, retry: &RouteRetry<C>) -> Result<(), Failure> {
    if let Some(attempts) = retry.attempts {
        check_count(&format!("{at}.attempts"), attempts, 0, MAX_RETRY_ATTEMPTS)?;
    }
    if let Some(backoff) = &retry.backoff {
        check_duration(&format!("{at}.backoff"), backoff, bounds::RETRY_BACKOFF)?;
    }
    Ok(())
}

fn check_service_policy(spec: &ServicePolicySpec) -> Result<(), Failure> {
    if let Some(budget) = &spec.retry_budget {
        if let Some(ratio) = budget.ratio {
            check_fraction("spec.retryBudget.ratio", ratio, 0.0, 10.0)?;
        }
        if let Some(per_second) = budget.min_retries_per_second {
            check_count(
                "spec.retryBudget.minRetriesPerSecond",
                per_second,
                0,
                100_000,
            )?;
        }
        if let Some(window) = &budget.window {
            check_duration("spec.retryBudget.window", window, bounds::BUDGET_WINDOW)?;
        }
    }
    if let Some(breaker) = &spec.circuit_breaker {
        if let Some(failures) = breaker.consecutive_failures {
            check_count(
                "spec.circuitBreaker.consecutiveFailures",
                failures,
                1,
                100_000,
            )
            .map_err(|(field, reason)| (field, format!("{reason} (omit it to turn it off)")))?;
        }
        if let Some(rate) = &breaker.success_rate {
            check_fraction(
                "spec.circuitBreaker.successRate.minimum",
                rate.minimum,
                0.0,
                1.0,
            )?;
            if let Some(min_requests) = rate.min_requests {
                check_count(
                    "spec.circuitBreaker.successRate.minRequests",
                    min_requests,
                    1,
                    1_000_000,
                )?;
            }
            if let Some(window) = &rate.window {
                check_duration(
                    "spec.circuitBreaker.successRate.window",
                    window,
                    bounds::RATE_WINDOW,
                )?;
            }
        }
        if let Some(ejection) = &breaker.ejection {
            let base = ejection
                .base
                .as_ref()
                .map(|d| {
                    check_duration(
                        "spec.circuitBreaker.ejection.base",
                        d,
                        bounds::EJECTION_BASE,
                    )
                })
                .transpose()?;
            let max = ejection
                .max
                .as_ref()
                .map(|d| {
                    check_duration("spec.circuitBreaker.ejection.max", d, bounds::EJECTION_MAX)
                })
                .transpose()?;
            if let (Some(base), Some(max)) = (base, max)
                && base > max
            {
                return fail(
                    "spec.circuitBreaker.ejection.max",
                    "must not be shorter than ejection.base",
                );
            }
        }
    }
    if let Some(timeout) = &spec.connect_timeout {
        check_duration("spec.connectTimeout", timeout, bounds::CONNECT_TIMEOUT)?;
    }
    if let Some(limit) = &spec.rate_limit {
        check_rate("spec.rateLimit", limit)?;
    }
    if let Some(telemetry) = &spec.telemetry {
        if spec.target_ref.target_kind() != Kind::Service {
            return fail(
                "spec.telemetry",
                "applies to a Service's requests: target the Service, not a route",
            );
        }
        if let Some(ratio) = telemetry.trace_sampling {
            check_fraction("spec.telemetry.traceSampling", ratio, 0.0, 1.0)?;
        }
    }
    Ok(())
}

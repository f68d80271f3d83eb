//! Checks of the inbound kinds: `InboundDefaults` and `AuthorizationPolicy`.

use std::collections::BTreeSet;

use super::validate::{Failure, check_http_match, check_rate, fail, is_dns_label};
use super::{AuthorizationPolicySpec, InboundDefaultsSpec};

/// More rules than this on one policy is a mistake, and each is evaluated per request.
const MAX_MATCHES: usize = 64;
const MAX_SOURCES: usize = 64;

pub(super) fn check_inbound_defaults(spec: &InboundDefaultsSpec) -> Result<(), Failure> {
    let mut seen = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if !seen.insert(port.port) {
            return fail(
                &format!("{at}.port"),
                &format!("port {} is listed twice", port.port),
            );
        }
    }
    if let Some(limit) = &spec.rate_limit {
        if limit.total.is_none() && limit.per_identity.is_none() {
            return fail("spec.rateLimit", "set total, perIdentity, or both");
        }
        if let Some(total) = &limit.total {
            check_rate("spec.rateLimit.total", total)?;
        }
        if let Some(per_identity) = &limit.per_identity {
            check_rate("spec.rateLimit.perIdentity", per_identity)?;
        }
    }
    Ok(())
}

pub(super) fn check_authorization_policy(spec: &AuthorizationPolicySpec) -> Result<(), Failure> {
    if spec.http.len() > MAX_MATCHES {
        return fail("spec.http", &format!("at most {MAX_MATCHES} matches"));
    }
    for (i, m) in spec.http.iter().enumerate() {
        check_http_match(&format!("spec.http[{i}]"), m)?;
    }
    if spec.from.is_empty() {
        return fail(
            "spec.from",
            "name at least one source: a policy that allows nobody is the default deny",
        );
    }
    if spec.from.len() > MAX_SOURCES {
        return fail("spec.from", &format!("at most {MAX_SOURCES} sources"));
    }
    for (i, source) in spec.from.iter().enumerate() {
        let at = format!("spec.from[{i}]");
        let names_identity = !source.identities.is_empty() || !source.namespaces.is_empty();
        if !names_identity && !source.unauthenticated && source.cidrs.is_empty() {
            return fail(&at, "set identities, namespaces, unauthenticated or cidrs");
        }
        if names_identity && source.unauthenticated {
            return fail(
                &format!("{at}.unauthenticated"),
                "a source with identities or namespaces requires authentication; put unauthenticated clients in a source of their own",
            );
        }
        for (j, identity) in source.identities.iter().enumerate() {
            check_identity_pattern(&format!("{at}.identities[{j}]"), identity)?;
        }
        for (j, namespace) in source.namespaces.iter().enumerate() {
            if !is_dns_label(namespace) {
                return fail(
                    &format!("{at}.namespaces[{j}]"),
                    &format!("{namespace:?} must be a DNS label"),
                );
            }
        }
    }
    Ok(())
}

/// A SPIFFE id, or one whose service account is `*` (every one of the namespace).
fn check_identity_pattern(field: &str, pattern: &str) -> Result<(), Failure> {
    let exact = match pattern.strip_suffix("/sa/*") {
        Some(namespace) => format!("{namespace}/sa/any"),
        None => pattern.to_string(),
    };
    exact
        .parse::<weft_certs::Identity>()
        .map(|_| ())
        .map_err(|e| {
            (
                field.to_string(),
                format!("{pattern:?}: {e} (or spiffe://<td>/ns/<ns>/sa/* for a whole namespace)"),
            )
        })
}

//! Service names as apps write them, matched exactly: `<svc>.<ns>`, `<svc>.<ns>.svc` and
//! `<svc>.<ns>.svc.<cluster-domain>`, nothing else. A looser match would let a name an
//! outsider controls (`payments.prod.svc.evil.example`) reach the internal Service.

use std::fmt;
use std::str::FromStr;

/// The DNS suffix of the cluster's Service names (`cluster.local` unless configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDomain(String);

/// Why a cluster domain was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a DNS domain (lowercase labels of letters, digits and '-', separated by '.')"
)]
pub struct ClusterDomainError(String);

/// A Service a host name designates: its name and namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceName<'a> {
    /// The Service's name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
}

// === impl ClusterDomain ===

impl ClusterDomain {
    /// The Service that `host` (lowercase, without port) names, if it has one of the three
    /// accepted forms. One trailing dot (the absolute form of the same name) is allowed.
    pub fn service<'a>(&self, host: &'a str) -> Option<ServiceName<'a>> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let (name, rest) = host.split_once('.')?;
        let (namespace, rest) = match rest.split_once('.') {
            Some((namespace, rest)) => (namespace, Some(rest)),
            None => (rest, None),
        };
        if !is_label(name) || !is_label(namespace) {
            return None;
        }
        let exact = match rest {
            None | Some("svc") => true,
            Some(rest) => rest
                .strip_prefix("svc.")
                .is_some_and(|domain| domain == self.0),
        };
        exact.then_some(ServiceName { name, namespace })
    }
}

impl Default for ClusterDomain {
    fn default() -> Self {
        Self("cluster.local".to_string())
    }
}

impl FromStr for ClusterDomain {
    type Err = ClusterDomainError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let domain = value.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(is_label) {
            return Err(ClusterDomainError(value.to_string()));
        }
        Ok(Self(domain))
    }
}

impl fmt::Display for ClusterDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS label as Kubernetes names namespaces and Services (RFC 1123).
fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_forms_name_a_service() {
        let domain: ClusterDomain = "corp.internal".parse().unwrap();
        let api = Some(ServiceName {
            name: "api",
            namespace: "shop",
        });
        for host in [
            "api.shop",
            "api.shop.svc",
            "api.shop.svc.corp.internal",
            "api.shop.svc.corp.internal.",
        ] {
            assert_eq!(domain.service(host), api, "{host}");
        }
        for host in [
            "api.shop.svc.cluster.local",
            "api.shop.svc.corp.internal.evil",
            "api.shop.svc.corp",
            "api.shop.svc.evil.corp.internal",
            "api.shop.evil",
            "api",
            "api..shop",
            "-api.shop",
        ] {
            assert_eq!(domain.service(host), None, "{host}");
        }
    }

    #[test]
    fn a_cluster_domain_must_be_a_dns_domain() {
        assert_eq!(
            "Cluster.Local.".parse::<ClusterDomain>().unwrap(),
            ClusterDomain::default()
        );
        for bad in ["", "a..b", "-a.b", "a b", "a_b.local"] {
            assert!(bad.parse::<ClusterDomain>().is_err(), "{bad}");
        }
    }
}

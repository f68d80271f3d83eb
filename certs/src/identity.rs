//! SPIFFE identities of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest DNS label; namespaces and service accounts are Kubernetes DNS labels.
const MAX_LABEL_LEN: usize = 63;
/// The longest trust domain SPIFFE allows.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a Weft identity or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string does not start with `spiffe://`.
    #[error("identity {0:?} does not start with spiffe://")]
    Scheme(String),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error(
        "identity {0:?} must have the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Path(String),
    /// The trust domain has characters or a length SPIFFE does not allow.
    #[error(
        "trust domain {0:?} must be 1-255 characters of a-z, 0-9, '-' and '.', not starting or ending with '.' or '-'"
    )]
    TrustDomain(String),
    /// The namespace or service account is not a DNS label.
    #[error(
        "{what} {value:?} must be a DNS label: 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    Label {
        /// "namespace" or "service account".
        what: &'static str,
        /// The rejected value.
        value: String,
    },
}

/// A SPIFFE trust domain such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// The namespace and service account are DNS labels and the trust domain is a DNS-style name, so
/// every identity also has a DNS form (see [`Identity::dns_name`]) that rustls can carry as a
/// server name. Identities are shared (cloning is a reference count), since every connection and
/// error carries one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<Parts>);

#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

// === impl TrustDomain ===

impl TrustDomain {
    /// The default trust domain.
    pub fn cluster_local() -> Self {
        Self("cluster.local".to_string())
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let valid_edges = !s.starts_with(['.', '-']) && !s.ends_with(['.', '-']);
        if s.is_empty()
            || s.len() > MAX_TRUST_DOMAIN_LEN
            || !valid_chars
            || !valid_edges
            || s.contains("..")
        {
            return Err(IdentityError::TrustDomain(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl Identity ===

impl Identity {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_label("namespace", namespace)?;
        validate_label("service account", service_account)?;
        Ok(Self(Arc::new(Parts {
            trust_domain,
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })))
    }

    /// The trust domain this identity belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.0.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }

    /// The DNS-style name `<sa>.<ns>.serviceaccount.identity.<trust-domain>`, carried in leaf
    /// certificates as a DNS SAN and used as the TLS server name when dialing a peer.
    pub fn dns_name(&self) -> String {
        format!(
            "{}.{}.serviceaccount.identity.{}",
            self.0.service_account, self.0.namespace, self.0.trust_domain
        )
    }

    /// Parses the DNS-style name produced by [`Identity::dns_name`].
    pub fn from_dns_name(name: &str) -> Result<Self, IdentityError> {
        let invalid = || IdentityError::Path(name.to_string());
        let (service_account, rest) = name.split_once('.').ok_or_else(invalid)?;
        let (namespace, rest) = rest.split_once('.').ok_or_else(invalid)?;
        let trust_domain = rest
            .strip_prefix("serviceaccount.identity.")
            .ok_or_else(invalid)?;
        Self::new(trust_domain.parse()?, namespace, service_account)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(s.to_string()))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Path(s.to_string()))?;
        let trust_domain = trust_domain.parse()?;
        let mut segments = path.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) => {
                Self::new(trust_domain, namespace, service_account)
            }
            _ => Err(IdentityError::Path(s.to_string())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.0.trust_domain, self.0.namespace, self.0.service_account
        )
    }
}

fn validate_label(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let valid_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if value.is_empty()
        || value.len() > MAX_LABEL_LEN
        || !valid_chars
        || value.starts_with('-')
        || value.ends_with('-')
    {
        return Err(IdentityError::Label {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_and_dns_form() {
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "cart");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(
            id.dns_name(),
            "cart.shop.serviceaccount.identity.cluster.local"
        );
        assert_eq!(Identity::from_dns_name(&id.dns_name()).unwrap(), id);
    }

    #[test]
    fn rejects_malformed_identities_with_the_reason() {
        let cases = [
            (
                "http://cluster.local/ns/a/sa/b",
                "does not start with spiffe://",
            ),
            ("spiffe://cluster.local", "must have the form"),
            ("spiffe://cluster.local/ns/a/sa", "must have the form"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "must have the form"),
            ("spiffe://cluster.local/sa/b/ns/a", "must have the form"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "trust domain"),
            ("spiffe:///ns/a/sa/b", "trust domain"),
            ("spiffe://cluster.local/ns/A/sa/b", "namespace"),
            ("spiffe://cluster.local/ns/a/sa/-b", "service account"),
            ("spiffe://cluster.local/ns//sa/b", "namespace"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Identity>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input}: {err}");
        }
        let long = format!("spiffe://cluster.local/ns/{}/sa/b", "a".repeat(64));
        assert!(long.parse::<Identity>().is_err());
    }

    #[test]
    fn dns_form_must_carry_the_identity_marker() {
        assert!(Identity::from_dns_name("cart.shop.svc.cluster.local").is_err());
        assert!(Identity::from_dns_name("cart").is_err());
    }
}

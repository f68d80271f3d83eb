//! What the control plane says of the proxy's own workload: how each port takes traffic, who may
//! call it, and how fast. Compiled from the inbound snapshot, every field checked.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use ipnet::IpNet;
use weft_api::discovery as pb;
pub use weft_api::inbound::{AppProtocol, DefaultAuthorization, Mode};
use weft_certs::{Identity, TrustDomain};

use super::compile::{CompileError, error, request_match};
use super::{RateLimit, RequestMatch};

/// A port's settings; `None` leaves it to the proxy's configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortSettings {
    pub mode: Option<Mode>,
    pub authorization: Option<DefaultAuthorization>,
    pub app_protocol: Option<AppProtocol>,
}

/// The workload's inbound policy, as a domain value.
#[derive(Debug, Clone, Default)]
pub struct InboundPolicy {
    /// Ports whose traffic is opaque TCP.
    pub opaque_ports: BTreeSet<u16>,
    /// For ports `ports` does not list.
    pub defaults: PortSettings,
    pub ports: BTreeMap<u16, PortSettings>,
    pub authorizations: Vec<Authorization>,
    /// Every client together, and each client identity.
    pub rate_limit: (Option<RateLimit>, Option<RateLimit>),
}

/// One AuthorizationPolicy: who may call which ports and requests.
#[derive(Debug, Clone)]
pub struct Authorization {
    /// `<namespace>/<name>`: a bounded metrics label.
    pub name: String,
    /// Empty: every port.
    pub ports: BTreeSet<u16>,
    /// Empty: every request and connection.
    pub http: Vec<RequestMatch>,
    pub sources: Vec<Source>,
}

/// Clients one source allows: every field set must hold.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub identities: Vec<IdentityPattern>,
    pub namespaces: Vec<String>,
    pub unauthenticated: bool,
    pub cidrs: Vec<IpNet>,
}

/// An identity, or every identity of a namespace (`spiffe://<td>/ns/<ns>/sa/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    Exact(Identity),
    Namespace {
        trust_domain: TrustDomain,
        namespace: String,
    },
}

// === impl InboundPolicy ===

impl InboundPolicy {
    /// The settings of `port`: its own, else the workload's.
    pub fn port(&self, port: u16) -> PortSettings {
        let own = self.ports.get(&port).copied().unwrap_or_default();
        PortSettings {
            mode: own.mode.or(self.defaults.mode),
            authorization: own.authorization.or(self.defaults.authorization),
            app_protocol: own.app_protocol,
        }
    }
}

impl TryFrom<&pb::InboundSnapshot> for InboundPolicy {
    type Error = CompileError;

    fn try_from(snapshot: &pb::InboundSnapshot) -> Result<Self, CompileError> {
        let opaque_ports = snapshot
            .opaque_ports
            .iter()
            .enumerate()
            .map(|(i, &p)| port(&format!("opaque_ports[{i}]"), p))
            .collect::<Result<_, _>>()?;
        let defaults = settings("defaults", snapshot.defaults.as_ref())?;
        let mut ports = BTreeMap::new();
        for (i, entry) in snapshot.ports.iter().enumerate() {
            let at = format!("ports[{i}]");
            let mut settings = settings(&at, entry.settings.as_ref())?;
            settings.app_protocol = match entry.app_protocol.as_str() {
                "" => None,
                word => Some(
                    word.parse::<AppProtocol>()
                        .map_err(|reason| error(format!("{at}.app_protocol"), reason))?,
                ),
            };
            ports.insert(port(&format!("{at}.port"), entry.port)?, settings);
        }
        let authorizations = snapshot
            .authorizations
            .iter()
            .enumerate()
            .map(|(i, a)| authorization(&format!("authorizations[{i}]"), a))
            .collect::<Result<_, _>>()?;
        let limits = snapshot.rate_limit.as_ref();
        let rate_limit = (
            rate(limits.and_then(|l| l.total.as_ref())),
            rate(limits.and_then(|l| l.per_identity.as_ref())),
        );
        Ok(Self {
            opaque_ports,
            defaults,
            ports,
            authorizations,
            rate_limit,
        })
    }
}

fn port(at: &str, value: u32) -> Result<u16, CompileError> {
    u16::try_from(value)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| error(at, format!("{value} is not a port")))
}

fn settings(at: &str, pb: Option<&pb::InboundSettings>) -> Result<PortSettings, CompileError> {
    let Some(pb) = pb else {
        return Ok(PortSettings::default());
    };
    Ok(PortSettings {
        mode: optional(&pb.mode)
            .map(str::parse)
            .transpose()
            .map_err(|reason: String| error(format!("{at}.mode"), reason))?,
        authorization: optional(&pb.authorization)
            .map(str::parse)
            .transpose()
            .map_err(|reason: String| error(format!("{at}.authorization"), reason))?,
        app_protocol: None,
    })
}

fn optional(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

fn rate(pb: Option<&pb::RateLimit>) -> Option<RateLimit> {
    pb.filter(|r| r.requests_per_second > 0).map(|r| RateLimit {
        per_second: r.requests_per_second,
        burst: r.burst.max(1),
    })
}

fn authorization(at: &str, pb: &pb::Authorization) -> Result<Authorization, CompileError> {
    let ports = pb
        .ports
        .iter()
        .enumerate()
        .map(|(i, &p)| port(&format!("{at}.ports[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let http = pb
        .http
        .iter()
        .enumerate()
        .map(|(i, m)| request_match(&format!("{at}.http[{i}]"), m))
        .collect::<Result<_, _>>()?;
    let sources = pb
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| source(&format!("{at}.sources[{i}]"), s))
        .collect::<Result<_, _>>()?;
    Ok(Authorization {
        name: pb.name.clone(),
        ports,
        http,
        sources,
    })
}

fn source(at: &str, pb: &pb::AuthorizationSource) -> Result<Source, CompileError> {
    let identities = pb
        .identities
        .iter()
        .enumerate()
        .map(|(i, id)| {
            id.parse()
                .map_err(|reason: String| error(format!("{at}.identities[{i}]"), reason))
        })
        .collect::<Result<_, _>>()?;
    let cidrs = pb
        .cidrs
        .iter()
        .enumerate()
        .map(|(i, cidr)| {
            cidr.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
                error(
                    format!("{at}.cidrs[{i}]"),
                    format!("{cidr:?} is not a CIDR"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Source {
        identities,
        namespaces: pb.namespaces.clone(),
        unauthenticated: pb.unauthenticated,
        cidrs,
    })
}

// === impl IdentityPattern ===

impl FromStr for IdentityPattern {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if let Some(namespace) = value.strip_suffix("/sa/*") {
            // Checked as a whole identity, with a stand-in service account.
            let any: Identity = format!("{namespace}/sa/any")
                .parse()
                .map_err(|e| format!("{value:?}: {e}"))?;
            return Ok(Self::Namespace {
                trust_domain: any.trust_domain().clone(),
                namespace: any.namespace().to_string(),
            });
        }
        value
            .parse::<Identity>()
            .map(Self::Exact)
            .map_err(|e| format!("{value:?}: {e}"))
    }
}

impl IdentityPattern {
    pub fn matches(&self, identity: &Identity) -> bool {
        match self {
            Self::Exact(exact) => exact == identity,
            Self::Namespace {
                trust_domain,
                namespace,
            } => identity.trust_domain() == trust_domain && identity.namespace() == namespace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> pb::InboundSnapshot {
        pb::InboundSnapshot {
            defaults: Some(pb::InboundSettings {
                mode: "strict".into(),
                authorization: "deny".into(),
            }),
            ports: vec![pb::InboundPort {
                port: 8080,
                settings: Some(pb::InboundSettings {
                    mode: String::new(),
                    authorization: "audit".into(),
                }),
                app_protocol: "http".into(),
            }],
            authorizations: vec![pb::Authorization {
                name: "shop/web".into(),
                ports: vec![8080],
                http: Vec::new(),
                sources: vec![pb::AuthorizationSource {
                    identities: vec!["spiffe://cluster.local/ns/ops/sa/*".into()],
                    cidrs: vec!["10.0.0.0/8".into()],
                    ..Default::default()
                }],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_compiles_port_settings_over_the_defaults() {
        let policy = InboundPolicy::try_from(&snapshot()).unwrap();
        let port = policy.port(8080);
        assert_eq!(port.mode, Some(Mode::Strict));
        assert_eq!(port.authorization, Some(DefaultAuthorization::Audit));
        assert_eq!(port.app_protocol, Some(AppProtocol::Http1));
        assert_eq!(
            policy.port(9090).authorization,
            Some(DefaultAuthorization::Deny)
        );
        assert_eq!(policy.authorizations[0].sources[0].cidrs.len(), 1);
    }

    #[test]
    fn a_bad_snapshot_is_refused_naming_the_field() {
        type Spoil = fn(&mut pb::InboundSnapshot);
        let cases: [(Spoil, &str); 4] = [
            (
                |s| s.defaults.as_mut().unwrap().mode = "lax".into(),
                "defaults.mode",
            ),
            (|s| s.ports[0].port = 70000, "ports[0].port"),
            (
                |s| s.authorizations[0].sources[0].identities[0] = "spiffe://x/y".into(),
                "authorizations[0].sources[0].identities[0]",
            ),
            (
                |s| s.ports[0].app_protocol = "smtp".into(),
                "ports[0].app_protocol",
            ),
        ];
        for (spoil, field) in cases {
            let mut bad = snapshot();
            spoil(&mut bad);
            let error = InboundPolicy::try_from(&bad).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }
}

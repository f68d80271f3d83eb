//! What the inbound side accepts, and from whom: the proxy's configuration and the policy
//! discovery pushes for the workload. Per port: whether it is opaque, whether plaintext clients
//! are accepted (mode), what the app speaks; per request or connection: authorization.
//!
//! Authorization, as users of Istio's ALLOW policies expect: once any AuthorizationPolicy covers
//! a port, only what one of them allows passes there; on a port none covers, the default
//! decides. With the default `audit`, whatever would have been denied passes and is counted.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::sync::watch;
use weft_certs::Identity;

use crate::destination::{
    AppProtocol, Authorization, DefaultAuthorization, InboundPolicy, Mode, Source,
};

/// How long a connection waits for the first inbound policy from the control plane.
const FIRST_POLICY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where inbound traffic may go, and how it must arrive, by configuration.
#[derive(Debug, Clone)]
pub struct InboundPorts {
    /// The app's port, for connections that came to the inbound port directly.
    pub app_port: Option<u16>,
    /// Ports that take opaque TCP without detection.
    pub opaque_ports: BTreeSet<u16>,
    /// The proxy's own ports, which a peer must never reach through us.
    pub own_ports: Vec<u16>,
    /// The default where neither the control plane nor an AuthorizationPolicy says
    /// (`WEFT_PROXY_DEFAULT_INBOUND_POLICY`).
    pub default_authorization: DefaultAuthorization,
    /// The mode where the control plane does not say (`WEFT_PROXY_INBOUND_MODE`); unset: the
    /// one the default authorization implies.
    pub mode: Option<Mode>,
}

impl Default for InboundPorts {
    fn default() -> Self {
        Self {
            app_port: None,
            opaque_ports: BTreeSet::new(),
            own_ports: Vec::new(),
            default_authorization: DefaultAuthorization::AllAuthenticated,
            mode: None,
        }
    }
}

/// Who is calling: the verified identity (none for a plaintext client) and the address.
#[derive(Debug, Clone)]
pub struct Client {
    pub identity: Option<Identity>,
    pub addr: IpAddr,
}

/// Whether addresses are inside the mesh's networks (for `cluster-authenticated`).
pub type InCluster = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The configuration and the pushed policy together.
#[derive(Clone)]
pub struct Policy {
    /// By configuration.
    pub ports: InboundPorts,
    /// From discovery; `None` inside until the control plane answers.
    pushed: Option<watch::Receiver<Option<Arc<InboundPolicy>>>>,
    in_cluster: InCluster,
}

/// How one port takes traffic, everything resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortView {
    pub opaque: bool,
    pub default: DefaultAuthorization,
    pub app_protocol: Option<AppProtocol>,
}

/// An authorization decision and what it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    /// The AuthorizationPolicy that allowed, or `default:<default>`.
    pub policy: &'a str,
    /// `allow`, `deny` or `audit`.
    pub label: &'static str,
    /// Why it was (or, under audit, would have been) denied.
    pub reason: Option<String>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// `ports` by configuration, what discovery pushes through `pushed` (if it runs), and which
    /// addresses are the cluster's.
    pub fn new(
        ports: InboundPorts,
        pushed: Option<watch::Receiver<Option<Arc<InboundPolicy>>>>,
        in_cluster: InCluster,
    ) -> Self {
        Self {
            ports,
            pushed,
            in_cluster,
        }
    }

    /// The pushed policy, waiting a moment for the control plane's first answer (none: the
    /// configuration alone decides).
    pub async fn current(&self) -> Option<Arc<InboundPolicy>> {
        let mut pushed = self.pushed.clone()?;
        let answered =
            tokio::time::timeout(FIRST_POLICY_TIMEOUT, pushed.wait_for(Option::is_some)).await;
        match answered {
            Ok(Ok(policy)) => policy.clone(),
            _ => None,
        }
    }

    /// The pushed policy as it is now.
    pub fn latest(&self) -> Option<Arc<InboundPolicy>> {
        self.pushed.as_ref().and_then(|p| p.borrow().clone())
    }

    /// A receiver that wakes when the pushed policy changes.
    pub fn changes(&self) -> Option<watch::Receiver<Option<Arc<InboundPolicy>>>> {
        self.pushed.clone()
    }

    /// How `port` takes traffic under `pushed`.
    pub fn port(&self, pushed: Option<&InboundPolicy>, port: u16) -> PortView {
        let settings = pushed.map(|p| p.port(port)).unwrap_or_default();
        let default = settings
            .authorization
            .unwrap_or(self.ports.default_authorization);
        PortView {
            opaque: self.ports.opaque_ports.contains(&port)
                || pushed.is_some_and(|p| p.opaque_ports.contains(&port)),
            default,
            app_protocol: settings.app_protocol,
        }
    }

    /// Whether `port` takes plaintext clients: as set (pushed, else configured), else wherever
    /// unauthenticated clients could be allowed — by the default (`all-unauthenticated`,
    /// `audit`), or by an AuthorizationPolicy covering the port with a source that needs no
    /// identity (a kubelet's `/healthz` under a `deny` default).
    pub fn mode(&self, pushed: Option<&InboundPolicy>, port: u16) -> Mode {
        let settings = pushed.map(|p| p.port(port)).unwrap_or_default();
        if let Some(mode) = settings.mode.or(self.ports.mode) {
            return mode;
        }
        let default = settings
            .authorization
            .unwrap_or(self.ports.default_authorization);
        let a_policy_takes_anyone = pushed.is_some_and(|p| {
            p.authorizations
                .iter()
                .filter(|a| a.ports.is_empty() || a.ports.contains(&port))
                .flat_map(|a| &a.sources)
                .any(|s| {
                    s.unauthenticated
                        || (s.identities.is_empty()
                            && s.namespaces.is_empty()
                            && !s.cidrs.is_empty())
                })
        });
        if a_policy_takes_anyone {
            Mode::Permissive
        } else {
            default.implied_mode()
        }
    }

    /// Completes once a change of the pushed policy no longer allows what `client` opened
    /// (`request`'s head, or with none a TCP connection) on `port`, with the reason; each
    /// re-check is counted through `count`. Never completes without discovery.
    pub async fn until_denied(
        &self,
        port: u16,
        client: &Client,
        request: Option<&Request<()>>,
        count: impl Fn(&Decision<'_>),
    ) -> String {
        let Some(mut changes) = self.changes() else {
            return std::future::pending().await;
        };
        changes.borrow_and_update();
        while changes.changed().await.is_ok() {
            let latest = self.latest();
            let decision = self.authorize(latest.as_deref(), port, client, request);
            count(&decision);
            if !decision.allowed {
                return decision.reason.unwrap_or_default();
            }
        }
        std::future::pending().await
    }

    /// Whether `client` may send `request` (or, with none, open a TCP connection) to `port`.
    pub fn authorize<'a, B>(
        &self,
        pushed: Option<&'a InboundPolicy>,
        port: u16,
        client: &Client,
        request: Option<&Request<B>>,
    ) -> Decision<'a> {
        let default = self.port(pushed, port).default;
        let covering = || {
            pushed
                .map(|p| p.authorizations.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(move |a: &&Authorization| a.ports.is_empty() || a.ports.contains(&port))
        };
        let denied = |policy: &'a str, reason: String| {
            if default == DefaultAuthorization::Audit {
                Decision {
                    allowed: true,
                    policy,
                    label: "audit",
                    reason: Some(reason),
                }
            } else {
                Decision {
                    allowed: false,
                    policy,
                    label: "deny",
                    reason: Some(reason),
                }
            }
        };
        if covering().next().is_some() {
            let allowing = covering().find(|a| {
                let applies = a.http.is_empty()
                    || request.is_some_and(|r| a.http.iter().any(|m| m.matches(r)));
                applies && a.sources.iter().any(|s| self.source_allows(s, client))
            });
            return match allowing {
                Some(a) => Decision {
                    allowed: true,
                    policy: &a.name,
                    label: "allow",
                    reason: None,
                },
                None => denied(
                    DefaultAuthorization::Deny.label(),
                    format!(
                        "no AuthorizationPolicy allows {} on port {port}",
                        ClientName(client)
                    ),
                ),
            };
        }
        let policy = default.label();
        let authenticated = client.identity.is_some();
        let allowed = match default {
            DefaultAuthorization::Deny => false,
            DefaultAuthorization::AllAuthenticated => authenticated,
            DefaultAuthorization::ClusterAuthenticated => {
                authenticated && (self.in_cluster)(client.addr)
            }
            DefaultAuthorization::AllUnauthenticated | DefaultAuthorization::Audit => true,
        };
        if allowed {
            Decision {
                allowed,
                policy,
                label: "allow",
                reason: None,
            }
        } else {
            let reason = format!(
                "the default {} does not allow {} on port {port}",
                default.as_str(),
                ClientName(client)
            );
            denied(policy, reason)
        }
    }

    /// Every field the source sets holds for `client`. A client without an identity passes
    /// only a source that says `unauthenticated` or names its network.
    fn source_allows(&self, source: &Source, client: &Client) -> bool {
        if client.identity.is_none() && !source.unauthenticated && source.cidrs.is_empty() {
            return false;
        }
        if !source.identities.is_empty() {
            let Some(identity) = &client.identity else {
                return false;
            };
            if !source.identities.iter().any(|p| p.matches(identity)) {
                return false;
            }
        }
        if !source.namespaces.is_empty() {
            let Some(identity) = &client.identity else {
                return false;
            };
            if !source.namespaces.iter().any(|n| n == identity.namespace()) {
                return false;
            }
        }
        if !source.cidrs.is_empty() {
            let addr = client.addr.to_canonical();
            if !source.cidrs.iter().any(|net| net.contains(&addr)) {
                return false;
            }
        }
        true
    }
}

/// A client as a denial names it.
struct ClientName<'a>(&'a Client);

impl fmt::Display for ClientName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.identity {
            Some(identity) => write!(f, "{identity}"),
            None => write!(f, "unauthenticated {}", self.0.addr),
        }
    }
}

#[cfg(test)]
mod tests;

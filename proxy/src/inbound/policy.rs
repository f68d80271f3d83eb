//! What the inbound side accepts, and where it may forward: the proxy's configuration and the
//! policy discovery pushes for the workload. Authorization decisions will live here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::destination::InboundPolicy;

/// How long a connection waits for the first inbound policy from the control plane.
const FIRST_POLICY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where inbound traffic may go, and how it must arrive, by configuration.
#[derive(Debug, Clone, Default)]
pub struct InboundPorts {
    /// The app's port, for connections that came to the inbound port directly.
    pub app_port: Option<u16>,
    /// Ports that take opaque TCP. Every other port takes only HTTP, so every request reaches
    /// the app through the path that stamps `weft-client-id`: a peer cannot skip it by
    /// announcing an opaque stream and speaking HTTP inside.
    pub opaque_ports: BTreeSet<u16>,
    /// The proxy's own ports, which a peer must never reach through us.
    pub own_ports: Vec<u16>,
}

/// The configuration and the pushed policy together.
#[derive(Debug, Clone)]
pub struct Policy {
    /// By configuration.
    pub ports: InboundPorts,
    /// From discovery; `None` inside until the control plane answers.
    pushed: Option<watch::Receiver<Option<Arc<InboundPolicy>>>>,
}

impl Policy {
    /// `ports` by configuration, and what discovery pushes through `pushed` (if it runs).
    pub fn new(
        ports: InboundPorts,
        pushed: Option<watch::Receiver<Option<Arc<InboundPolicy>>>>,
    ) -> Self {
        Self { ports, pushed }
    }

    /// Whether `port` takes opaque streams: listed in the configuration, or made opaque by the
    /// pushed policy (waiting a moment for the control plane's first answer; none: no).
    pub async fn accepts_opaque(&self, port: u16) -> bool {
        if self.ports.opaque_ports.contains(&port) {
            return true;
        }
        let Some(pushed) = &self.pushed else {
            return false;
        };
        let mut pushed = pushed.clone();
        let answered =
            tokio::time::timeout(FIRST_POLICY_TIMEOUT, pushed.wait_for(Option::is_some)).await;
        matches!(answered, Ok(Ok(policy)) if policy.as_ref().is_some_and(|p| p.opaque_ports.contains(&port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_port_is_opaque_by_configuration_or_by_pushed_policy() {
        let ports = InboundPorts {
            opaque_ports: [5432].into(),
            ..InboundPorts::default()
        };
        let (tx, rx) = watch::channel(None);
        let policy = Policy::new(ports, Some(rx));
        assert!(policy.accepts_opaque(5432).await);
        // No answer yet: not opaque, after a bounded wait.
        assert!(!policy.accepts_opaque(6379).await);
        tx.send_replace(Some(Arc::new(InboundPolicy {
            opaque_ports: [6379].into(),
        })));
        assert!(policy.accepts_opaque(6379).await);
        assert!(!policy.accepts_opaque(8080).await);
    }
}

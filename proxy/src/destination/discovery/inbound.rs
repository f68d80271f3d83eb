//! The proxy's own inbound policy: which of its workload's ports take opaque streams. One watch
//! for every port, so a peer naming ports cannot make the proxy watch (or remember) anything.

use std::collections::BTreeSet;
use std::sync::Arc;

use weft_api::discovery::{InboundSnapshot, WatchInboundRequest};

use super::{DiscoveryClient, FIRST_SNAPSHOT_TIMEOUT, Inner};

/// How the inbound watch is reported to the control plane (`weftctl proxy-status`).
const INBOUND_RESOURCE: &str = "inbound";

impl DiscoveryClient {
    /// Whether inbound policy makes local `port` opaque (a Service port with appProtocol tcp,
    /// or a ServicePolicy's opaquePorts). `false` while the control plane has not answered.
    pub async fn inbound_opaque(&self, port: u16) -> bool {
        let mut policy = self.inner.inbound.clone();
        let answered =
            tokio::time::timeout(FIRST_SNAPSHOT_TIMEOUT, policy.wait_for(Option::is_some)).await;
        matches!(answered, Ok(Ok(ports)) if ports.as_ref().is_some_and(|p| p.contains(&port)))
    }
}

impl Inner {
    /// Keeps the workload's inbound policy as pushed, until drained.
    pub(super) async fn run_inbound(&self) {
        let open = || async {
            let mut grpc = self.grpc.clone();
            // Port 0: every port of the workload, in one snapshot.
            grpc.watch_inbound(WatchInboundRequest { port: 0 })
                .await
                .map(tonic::Response::into_inner)
        };
        self.follow(open, |snapshot| self.apply_inbound(snapshot))
            .await;
    }

    fn apply_inbound(&self, snapshot: &InboundSnapshot) {
        let ports: Result<BTreeSet<u16>, _> = snapshot
            .opaque_ports
            .iter()
            .map(|&port| u16::try_from(port).map_err(|_| port))
            .collect();
        let error = match ports {
            Ok(ports) => {
                self.inbound_tx.send_replace(Some(Arc::new(ports)));
                self.metrics.discovery_update(true);
                String::new()
            }
            Err(port) => {
                self.metrics.discovery_update(false);
                tracing::warn!(version = %snapshot.version, port, "rejected inbound snapshot; keeping the last one");
                format!("opaque_ports: {port} is not a port")
            }
        };
        self.report(INBOUND_RESOURCE, &snapshot.version, error);
    }
}

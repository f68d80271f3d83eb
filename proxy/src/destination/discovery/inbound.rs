//! The proxy's own inbound policy, for every port of its workload in one watch: a peer naming
//! ports cannot make the proxy watch (or remember) anything.

use std::sync::Arc;

use weft_api::discovery::{InboundSnapshot, WatchInboundRequest};

use tokio::sync::watch;

use super::{DiscoveryClient, Inner};
use crate::destination::InboundPolicy;

/// How the inbound watch is reported to the control plane (`weftctl proxy-status`).
const INBOUND_RESOURCE: &str = "inbound";

impl DiscoveryClient {
    /// The workload's inbound policy as the control plane pushes it; `None` until it answers.
    pub fn inbound_policy(&self) -> watch::Receiver<Option<Arc<InboundPolicy>>> {
        self.inner.inbound.clone()
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
        let error = match InboundPolicy::try_from(snapshot) {
            Ok(policy) => {
                self.inbound_tx.send_replace(Some(Arc::new(policy)));
                self.metrics.discovery_update(true);
                String::new()
            }
            Err(error) => {
                self.metrics.discovery_update(false);
                tracing::warn!(version = %snapshot.version, %error, "rejected inbound snapshot; keeping the last one");
                error.to_string()
            }
        };
        self.report(INBOUND_RESOURCE, &snapshot.version, error);
    }
}

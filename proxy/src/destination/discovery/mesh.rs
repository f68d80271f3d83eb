//! The mesh as a whole: its networks, pushed to every proxy.

use std::sync::Arc;

use weft_api::discovery::MeshSnapshot;
use weft_certs::TrustAnchors;

use super::Inner;
use crate::destination::MeshNetworks;

/// How the mesh watch is reported to the control plane (`weftctl proxy-status`).
const MESH_RESOURCE: &str = "mesh";

impl Inner {
    /// Keeps the mesh's networks as pushed, until drained.
    pub(super) async fn run_mesh(&self) {
        let open = || async {
            let mut grpc = self.grpc.clone();
            grpc.watch_mesh(self.whereabouts.clone())
                .await
                .map(tonic::Response::into_inner)
        };
        self.follow(open, |snapshot| self.apply_mesh(snapshot))
            .await;
    }

    fn apply_mesh(&self, snapshot: &MeshSnapshot) {
        let error = match self.parse_mesh(snapshot) {
            Ok((networks, anchors)) => {
                self.mesh.store(Some(Arc::new(networks)));
                if let Some(anchors) = anchors {
                    self.trust.set(anchors);
                }
                self.metrics.discovery_update(true);
                String::new()
            }
            Err(error) => {
                self.metrics.discovery_update(false);
                tracing::warn!(version = %snapshot.version, %error, "rejected mesh snapshot; keeping the last one");
                error
            }
        };
        self.report(MESH_RESOURCE, &snapshot.version, error);
    }

    /// The snapshot's networks, and its trust bundle if it carries one: anchors of our own
    /// trust domain (a bundle of another would cut the proxy off from the whole mesh).
    fn parse_mesh(
        &self,
        snapshot: &MeshSnapshot,
    ) -> Result<(MeshNetworks, Option<TrustAnchors>), String> {
        let networks = MeshNetworks::parse(snapshot.networks.iter().map(String::as_str))
            .map_err(|e| format!("networks: {e}"))?;
        if snapshot.trust_anchors_pem.is_empty() {
            return Ok((networks, None));
        }
        let anchors = TrustAnchors::from_pem(snapshot.trust_anchors_pem.as_bytes())
            .map_err(|e| format!("trust_anchors_pem: {e}"))?;
        let ours = self.trust.anchors();
        if anchors.trust_domain().is_some() && anchors.trust_domain() != ours.trust_domain() {
            return Err(format!(
                "trust_anchors_pem: anchors of trust domain {:?}, not ours ({:?})",
                anchors.trust_domain().map(ToString::to_string),
                ours.trust_domain().map(ToString::to_string)
            ));
        }
        Ok((networks, Some(anchors)))
    }
}

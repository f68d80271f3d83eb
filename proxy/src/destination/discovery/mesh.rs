//! The mesh as a whole: its networks, pushed to every proxy.

use std::sync::Arc;

use weft_api::discovery::{MeshSnapshot, WatchMeshRequest};

use super::Inner;
use crate::destination::MeshNetworks;

/// How the mesh watch is reported to the control plane (`weftctl proxy-status`).
const MESH_RESOURCE: &str = "mesh";

impl Inner {
    /// Keeps the mesh's networks as pushed, until drained.
    pub(super) async fn run_mesh(&self) {
        let open = || async {
            let mut grpc = self.grpc.clone();
            grpc.watch_mesh(WatchMeshRequest {})
                .await
                .map(tonic::Response::into_inner)
        };
        self.follow(open, |snapshot| self.apply_mesh(snapshot))
            .await;
    }

    fn apply_mesh(&self, snapshot: &MeshSnapshot) {
        let parsed = MeshNetworks::parse(snapshot.networks.iter().map(String::as_str));
        let error = match parsed {
            Ok(networks) => {
                self.mesh.store(Some(Arc::new(networks)));
                self.metrics.discovery_update(true);
                String::new()
            }
            Err(error) => {
                self.metrics.discovery_update(false);
                tracing::warn!(version = %snapshot.version, %error, "rejected mesh snapshot; keeping the last one");
                format!("networks: {error}")
            }
        };
        self.report(MESH_RESOURCE, &snapshot.version, error);
    }
}

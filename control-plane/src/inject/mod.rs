//! Sidecar injection: the one implementation behind `weftctl inject`/`uninject` and the
//! admission webhook.
//!
//! Manifests stay `serde_json::Value`s so that every field Weft does not touch — including
//! fields newer than the Kubernetes types compiled in — comes back exactly as it went in; only
//! what Weft adds is built from the typed `k8s-openapi` structs.

mod overrides;
mod pod;
mod settings;
mod workloads;

#[cfg(test)]
mod tests;

pub use overrides::Overrides;
pub use pod::{INBOUND_PORT_NAME, INIT_CONTAINER, PROXY_CONTAINER, PROXY_VERSION_ANNOTATION};
pub use settings::{IdentitySource, InjectSettings, SidecarMode};
pub use workloads::{Outcome, inject_document, uninject_document};

/// The opt-in/opt-out annotation, on a namespace or a pod template.
pub const INJECT_ANNOTATION: &str = "weft.io/inject";

/// Why a manifest cannot be injected, in one line naming the field or annotation at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InjectError(pub String);

/// Whether a pod is to be injected, from its own annotations and its namespace's: the pod's
/// `enabled`/`disabled` wins, else the namespace's `enabled`.
pub fn wanted(
    pod_annotations: Option<&serde_json::Map<String, serde_json::Value>>,
    namespace_annotations: Option<&serde_json::Map<String, serde_json::Value>>,
) -> bool {
    let setting = |annotations: Option<&serde_json::Map<String, serde_json::Value>>| {
        annotations
            .and_then(|a| a.get(INJECT_ANNOTATION))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    match setting(pod_annotations).as_deref() {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => setting(namespace_annotations).as_deref() == Some("enabled"),
    }
}

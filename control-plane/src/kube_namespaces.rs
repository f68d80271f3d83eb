//! Namespaces as the API server has them, kept current by a watch (a kube-runtime reflector):
//! the webhook reads a namespace's `weft.io/inject` from memory, never with a request of its own
//! on the admission path.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Map, Value};
use weft_telemetry::Drain;

use crate::webhook::NamespaceAnnotations;

/// Every namespace's annotations, as of the watch's last event.
#[derive(Debug, Clone)]
pub struct ClusterNamespaces {
    store: Store<Namespace>,
}

impl ClusterNamespaces {
    /// Starts watching namespaces on `drain` (the watch backs off and resumes on its own).
    pub fn watch(client: kube::Client, drain: &Drain) -> Self {
        let (store, writer) = reflector::store();
        let events = watcher(
            kube::Api::<Namespace>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .applied_objects();
        let until = drain.clone();
        drain.spawn(async move {
            let mut events = std::pin::pin!(events);
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => tracing::warn!(%error, "namespace watch"),
                        None => return,
                    },
                    () = until.signaled() => return,
                }
            }
        });
        Self { store }
    }

    /// Waits for the first full list, so that the first reviews see every namespace.
    pub async fn ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}

impl NamespaceAnnotations for ClusterNamespaces {
    fn annotations(&self, namespace: &str) -> Option<Map<String, Value>> {
        let found = self.store.get(&ObjectRef::new(namespace))?;
        let annotations = found.metadata.annotations.as_ref()?;
        Some(
            annotations
                .iter()
                .map(|(key, value)| (key.clone(), Value::String(value.clone())))
                .collect(),
        )
    }
}

//! Services, EndpointSlices and Pods followed with kube-runtime reflectors (list, then watch;
//! a watch broken by 410 Gone lists again), and the cluster view rebuilt from them whenever one
//! changes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use weft_certs::TrustDomain;
use weft_telemetry::Drain;

use super::translate;
use crate::policy_store::PolicyStore;

/// Changes arriving together (a rollout touches a Pod and a slice at once) are taken in one
/// rebuild, made this long after the first of them.
const SETTLE: Duration = Duration::from_millis(50);
/// How often a start still waiting for its first listings says what it waits for.
const WAITING_NOTICE: Duration = Duration::from_secs(10);

/// What every change is reduced to: which kind changed and whether that ended a full listing,
/// or the watch failed (and retries).
type Changes = Pin<Box<dyn Stream<Item = Result<Change, watcher::Error>> + Send>>;

#[derive(Debug, Clone, Copy)]
struct Change {
    kind: usize,
    listed: bool,
}

/// The kinds followed, in the order of [`Change::kind`].
const KINDS: [&str; 3] = ["services", "endpointslices", "pods"];

/// The three reflectors' caches.
struct Caches {
    services: Store<core::Service>,
    slices: Store<discovery::EndpointSlice>,
    pods: Store<core::Pod>,
}

/// Follows the cluster's Services, EndpointSlices and Pods into `policy`'s served state on
/// `drain`. Until each kind has been listed once, the state says the view is pending and
/// discovery answers nothing (a Service it has not seen yet would be placed outside the mesh).
pub fn follow(
    client: kube::Client,
    trust_domain: TrustDomain,
    policy: Arc<PolicyStore>,
    drain: &Drain,
) {
    let (services, services_changes) = reflect(0, kube::Api::all(client.clone()));
    let (slices, slices_changes) = reflect(1, kube::Api::all(client.clone()));
    let (pods, pods_changes) = reflect(2, kube::Api::all(client));
    let caches = Caches {
        services,
        slices,
        pods,
    };
    let mut changes =
        futures_util::stream::select_all([services_changes, slices_changes, pods_changes]);
    let view = View {
        caches,
        trust_domain,
        policy,
        generation: 0,
        listed: [false; KINDS.len()],
    };
    view.policy.expect_cluster();
    let until = drain.clone();
    drain.spawn(async move {
        let mut view = view;
        let mut notice = tokio::time::interval(WAITING_NOTICE);
        notice.tick().await;
        // Before the first listings: wait for them, still driving the watches.
        while !view.unlisted().is_empty() {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(change)) => view.listed[change.kind] |= change.listed,
                    Some(Err(error)) => tracing::warn!(%error, "cluster discovery: watch failed; retrying"),
                    None => return,
                },
                _ = notice.tick() => tracing::warn!(
                    waiting_for = %view.unlisted().join(", "),
                    "cluster discovery: still waiting for the first listing; discovery is not served until then"
                ),
                () = until.signaled() => return,
            }
        }
        view.publish();
        tracing::info!("cluster discovery: Services, EndpointSlices and Pods listed; discovery is served");
        // A burst of changes is taken in one rebuild, at most SETTLE after its first change:
        // a steady stream of changes delays none by more.
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(_)) => {
                        due.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
                    }
                    Some(Err(error)) => tracing::warn!(%error, "cluster discovery: watch failed; retrying"),
                    None => return,
                },
                () = sleep_until(due), if due.is_some() => {
                    due = None;
                    view.publish();
                }
                () = until.signaled() => return,
            }
        }
    });
}

/// Sleeps until `due` (forever without one).
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// A reflector over `api`: its cache, and its changes.
fn reflect<K>(kind: usize, api: kube::Api<K>) -> (Store<K>, Changes)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned,
    K: Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .map(move |event| {
            event.map(|event| Change {
                kind,
                listed: matches!(event, watcher::Event::InitDone),
            })
        });
    (store, Box::pin(changes))
}

/// The caches, and what was last served from them.
struct View {
    caches: Caches,
    trust_domain: TrustDomain,
    policy: Arc<PolicyStore>,
    generation: u64,
    /// Which kinds have been listed in full once.
    listed: [bool; KINDS.len()],
}

impl View {
    /// The kinds not listed yet.
    fn unlisted(&self) -> Vec<&'static str> {
        KINDS
            .iter()
            .zip(self.listed)
            .filter(|(_, listed)| !listed)
            .map(|(kind, _)| *kind)
            .collect()
    }

    /// Rebuilds the view and serves it, if it differs from the one served.
    fn publish(&mut self) {
        let mut next = translate(
            &self.caches.services.state(),
            &self.caches.slices.state(),
            &self.caches.pods.state(),
            &self.trust_domain,
        );
        next.generation = self.generation + 1;
        if self.policy.set_cluster(next) {
            self.generation += 1;
        }
    }
}

//! The Kubernetes backend: Weft's kinds as its custom resources (`policy.weft.io/v1alpha1`) and
//! the routes as the Gateway API's own, in the API server, so `kubectl apply` and `weftctl
//! apply` change the same policy.
//!
//! The API server numbers every change with one revision (etcd's) and guards each write with
//! the object's `resourceVersion`, which is this contract already. Where it differs:
//! - It has no transaction over several objects. A write of several checks every expectation
//!   first (a conflict found then writes nothing) and writes them one by one; one refused
//!   midway (another writer got in between) undoes those done, best effort, and watchers may
//!   see the partial change for that moment.
//! - Changes are learnt from one watch per kind (kube's watcher: relists after 410 Gone,
//!   bookmarks, backoff), kept in a bounded log for watches that resume from a revision. A
//!   change this backend has just written may reach a watch on its live side rather than in
//!   its backlog; one at or before the revision asked for never does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
    Preconditions,
};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{broadcast, oneshot};
use tokio::task::AbortHandle;

use super::{
    Event, Expected, Listing, ResourceStore, Stored, Watch, WatchError, WriteError, Written,
};
use crate::policy::{Key, Kind, Resource};
use crate::store::StoreError;

/// Changes kept for watches that resume from a past revision.
const EVENT_LOG: usize = 4096;
/// Objects per page of a list.
const PAGE: u32 = 500;

/// Policy resources in a Kubernetes API server.
pub struct Kubernetes {
    client: kube::Client,
    runtime: Handle,
    /// Held while a change is logged and announced, and across a watch's start, so no change
    /// falls between a watch's backlog and its receiver.
    changes: Arc<Mutex<Changes>>,
    events: broadcast::Sender<Event>,
    followers: Vec<AbortHandle>,
}

#[derive(Debug, Default)]
struct Changes {
    /// Every change after this revision is in `log` or still on its way from the API server.
    floor: u64,
    /// The highest revision seen.
    latest: u64,
    log: VecDeque<Event>,
}

/// What one kind's follower reports once: its first listing done, or why it failed.
type Synced = oneshot::Sender<Result<(), String>>;

// === impl Kubernetes ===

impl Kubernetes {
    /// Follows every kind through `client` and returns once each is listed; an API server
    /// that refuses (Weft's or the Gateway API's CRDs not installed, no permission) is an
    /// error naming the kind.
    pub async fn connect(client: kube::Client) -> Result<Self, StoreError> {
        let (events, _) = broadcast::channel(EVENT_LOG);
        let changes = Arc::new(Mutex::new(Changes::default()));
        let mut followers = Vec::new();
        let mut synced = Vec::new();
        for kind in Kind::ALL {
            let (tx, rx) = oneshot::channel();
            let api = Api::all_with(client.clone(), &api_resource(kind));
            let follower = follow(api, kind, changes.clone(), events.clone(), tx);
            followers.push(tokio::spawn(follower).abort_handle());
            synced.push(rx);
        }
        // Built first so that a failure below stops the followers (on drop).
        let store = Self {
            client,
            runtime: Handle::current(),
            changes,
            events,
            followers,
        };
        for rx in synced {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(StoreError::Kubernetes(reason)),
                Err(_) => {
                    return Err(StoreError::Kubernetes(
                        "a watch ended before its first listing".to_string(),
                    ));
                }
            }
        }
        // Each kind's watch started at its own listing's revision, none later than this one:
        // every change after it reaches the log.
        let revision = store.current_revision().await?;
        let mut changes = store.changes.lock();
        changes.floor = revision;
        changes.latest = changes.latest.max(revision);
        drop(changes);
        Ok(store)
    }

    fn api(&self, key: &Key) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &key.namespace, &api_resource(key.kind))
    }

    /// The API server's revision now: a list's, read from etcd.
    async fn current_revision(&self) -> Result<u64, StoreError> {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &api_resource(Kind::Service));
        let page = api
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|e| api_error(Kind::Service, &e))?;
        parse_version(page.metadata.resource_version.as_deref())
    }

    async fn read(&self, key: &Key) -> Result<Option<DynamicObject>, StoreError> {
        self.api(key)
            .get_opt(&key.name)
            .await
            .map_err(|e| api_error(key.kind, &e))
    }

    /// Lists one kind into `into`; the listing's revision (`u64::MAX` for route kinds the
    /// API server does not serve: no routes).
    async fn list_kind(&self, kind: Kind, into: &mut Vec<Stored>) -> Result<u64, StoreError> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &api_resource(kind));
        let mut params = ListParams::default().limit(PAGE);
        let mut revision = None;
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(error) if not_served(&error) && is_route(kind) => return Ok(u64::MAX),
                Err(error) => return Err(api_error(kind, &error)),
            };
            if revision.is_none() {
                revision = Some(parse_version(page.metadata.resource_version.as_deref())?);
            }
            for object in page.items {
                match decode(kind, object) {
                    Ok(stored) => into.push(stored),
                    Err(reason) => tracing::warn!(%reason, "ignoring a resource Weft cannot read"),
                }
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        Ok(revision.unwrap_or(0))
    }

    async fn apply_all(&self, puts: Vec<(Resource, Expected)>) -> Result<Written, WriteError> {
        let mut found = Vec::with_capacity(puts.len());
        for (resource, expected) in &puts {
            let key = resource.key();
            let current = self.read(&key).await?;
            let version = current.as_ref().map(version_of).transpose()?;
            expected
                .check(version)
                .map_err(|(stored, sent)| WriteError::Conflict { key, stored, sent })?;
            found.push(current);
        }
        let mut written = Written::default();
        let mut done: Vec<(Key, Option<DynamicObject>, u64)> = Vec::new();
        for ((resource, expected), current) in puts.into_iter().zip(found) {
            let key = resource.key();
            let api = self.api(&key);
            let mut object = to_object(&resource)?;
            if let Some(current) = &current {
                // A replace is whole: what other controllers keep in the metadata stays.
                object.metadata.resource_version = current.metadata.resource_version.clone();
                object.metadata.finalizers = current.metadata.finalizers.clone();
                object.metadata.owner_references = current.metadata.owner_references.clone();
            }
            let outcome = match &current {
                None => api.create(&PostParams::default(), &object).await,
                Some(_) => {
                    api.replace(&key.name, &PostParams::default(), &object)
                        .await
                }
            };
            let refused = match outcome {
                Ok(object) => match decode(key.kind, object) {
                    Ok(stored) => {
                        done.push((key, current, stored.resource_version));
                        written.stored.push(stored);
                        continue;
                    }
                    Err(reason) => StoreError::Kubernetes(reason).into(),
                },
                Err(error) => self.write_error(key, expected, &error).await,
            };
            self.undo(done).await;
            return Err(refused);
        }
        written.revision = written
            .stored
            .iter()
            .map(|s| s.resource_version)
            .max()
            .unwrap_or(0);
        Ok(written)
    }

    /// Puts back what a refused batch had written, newest first: created objects deleted,
    /// replaced ones restored, each only if nobody changed it since.
    async fn undo(&self, done: Vec<(Key, Option<DynamicObject>, u64)>) {
        for (key, previous, version) in done.into_iter().rev() {
            let api = self.api(&key);
            let outcome = match previous {
                None => api
                    .delete(&key.name, &precondition(version))
                    .await
                    .map(|_| ()),
                Some(mut previous) => {
                    previous.metadata.resource_version = Some(version.to_string());
                    api.replace(&key.name, &PostParams::default(), &previous)
                        .await
                        .map(|_| ())
                }
            };
            if let Err(error) = outcome {
                tracing::warn!(%key, %error, "cannot undo part of a refused write");
            }
        }
    }

    /// A refused write as the contract says it: a conflict with the version found now.
    async fn write_error(&self, key: Key, expected: Expected, error: &kube::Error) -> WriteError {
        let raced = match error {
            kube::Error::Api(status) => {
                status.code == 409 || (status.code == 404 && !not_served(error))
            }
            _ => false,
        };
        if raced {
            let stored = match self.read(&key).await {
                Ok(Some(object)) => version_of(&object).unwrap_or(0),
                _ => 0,
            };
            let sent = match expected {
                Expected::Version(version) => version,
                Expected::Any | Expected::Absent => 0,
            };
            return WriteError::Conflict { key, stored, sent };
        }
        api_error(key.kind, error).into()
    }

    async fn delete_one(&self, key: &Key, expected: Expected) -> Result<u64, WriteError> {
        let current = self
            .read(key)
            .await?
            .ok_or_else(|| WriteError::NotFound(key.clone()))?;
        let version = version_of(&current)?;
        expected
            .check(Some(version))
            .map_err(|(stored, sent)| WriteError::Conflict {
                key: key.clone(),
                stored,
                sent,
            })?;
        match self
            .api(key)
            .delete(&key.name, &precondition(version))
            .await
        {
            // What the answer carries differs (the object, its last state, or a Status): the
            // revision now is at or after the delete, whichever it was.
            Ok(_) => Ok(self.current_revision().await?),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                Err(WriteError::NotFound(key.clone()))
            }
            Err(error) => Err(self.write_error(key.clone(), expected, &error).await),
        }
    }
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        for follower in &self.followers {
            follower.abort();
        }
    }
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kubernetes")
    }
}

impl ResourceStore for Kubernetes {
    fn get(&self, key: &Key) -> Result<Option<Stored>, StoreError> {
        self.runtime.block_on(async {
            match self.read(key).await? {
                Some(object) => decode(key.kind, object)
                    .map(Some)
                    .map_err(StoreError::Kubernetes),
                None => Ok(None),
            }
        })
    }

    fn list(&self) -> Result<Listing, StoreError> {
        self.runtime.block_on(async {
            let mut resources = Vec::new();
            // The oldest of the kinds' revisions: a watch from it misses none of them.
            let mut revision = u64::MAX;
            for kind in Kind::ALL {
                revision = revision.min(self.list_kind(kind, &mut resources).await?);
            }
            if revision == u64::MAX {
                revision = self.current_revision().await?;
            }
            Ok(Listing {
                revision,
                resources,
            })
        })
    }

    fn apply(&self, puts: Vec<(Resource, Expected)>) -> Result<Written, WriteError> {
        self.runtime.block_on(self.apply_all(puts))
    }

    fn delete(&self, key: &Key, expected: Expected) -> Result<u64, WriteError> {
        self.runtime.block_on(self.delete_one(key, expected))
    }

    fn watch(&self, since: u64) -> Result<Watch, WatchError> {
        let changes = self.changes.lock();
        if since != 0 && since < changes.floor {
            return Err(WatchError::Gone {
                since,
                oldest: changes.floor + 1,
            });
        }
        let mut backlog: Vec<Event> = changes
            .log
            .iter()
            .filter(|e| since != 0 && e.revision > since)
            .cloned()
            .collect();
        backlog.sort_by_key(|e| e.revision);
        Ok(Watch {
            backlog,
            live: self.events.subscribe(),
        })
    }
}

// === impl Changes ===

impl Changes {
    fn record(&mut self, events: &broadcast::Sender<Event>, event: Event) {
        self.latest = self.latest.max(event.revision);
        if self.log.len() >= EVENT_LOG
            && let Some(oldest) = self.log.pop_front()
        {
            // Kinds' changes arrive interleaved: what was dropped is at or before this.
            self.floor = self.floor.max(oldest.revision);
        }
        self.log.push_back(event.clone());
        let _ = events.send(event);
    }
}

/// Follows one kind for as long as the backend lives: every change is logged and announced.
/// After a relist (the watch fell too far behind: 410 Gone) what changed meanwhile is
/// announced as the difference, and resumes from before the relist are told to list again.
async fn follow(
    api: Api<DynamicObject>,
    kind: Kind,
    changes: Arc<Mutex<Changes>>,
    events: broadcast::Sender<Event>,
    synced: Synced,
) {
    let mut synced = Some(synced);
    let mut known: HashMap<Key, Stored> = HashMap::new();
    let mut listing: HashMap<Key, Stored> = HashMap::new();
    let probe = api.clone();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let change = match item {
            Err(error) => {
                let reason = watch_failure(kind, &error);
                match synced.take() {
                    // Routes are optional: without the Gateway API's CRDs there are none, until
                    // they are installed (the watcher keeps retrying).
                    Some(tx) if optional(kind, &error) => {
                        tracing::warn!(%reason, "no routes until the Gateway API's CRDs are installed");
                        let _ = tx.send(Ok(()));
                    }
                    Some(tx) => {
                        let _ = tx.send(Err(reason));
                        return;
                    }
                    None => tracing::debug!(%reason, "following the API server; retrying"),
                }
                continue;
            }
            Ok(change) => change,
        };
        match change {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(object) => {
                let key = key_of(kind, &object);
                match readable(kind, object) {
                    Some(stored) => {
                        listing.insert(stored.resource.key(), stored);
                    }
                    // Unreadable now: what was served stays, rather than being deleted.
                    None => {
                        if let Some(stored) = key.and_then(|key| known.get(&key)) {
                            listing.insert(stored.resource.key(), stored.clone());
                        }
                    }
                }
            }
            watcher::Event::InitDone => {
                let listed = std::mem::take(&mut listing);
                if synced.is_none() {
                    // The relist's own revision: the etcd revision moves with every object in
                    // the cluster, so the listed objects' versions may be far behind it.
                    let now = probe
                        .list(&ListParams::default().limit(1))
                        .await
                        .ok()
                        .and_then(|page| {
                            parse_version(page.metadata.resource_version.as_deref()).ok()
                        });
                    announce_difference(&known, &listed, now, &changes, &events);
                }
                known = listed;
                if let Some(tx) = synced.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            watcher::Event::Apply(object) => {
                if let Some(stored) = readable(kind, object) {
                    known.insert(stored.resource.key(), stored.clone());
                    let revision = stored.resource_version;
                    changes.lock().record(
                        &events,
                        Event {
                            deleted: false,
                            stored,
                            revision,
                        },
                    );
                }
            }
            watcher::Event::Delete(object) => {
                // An object deleted while unreadable goes with the version last served of it.
                let served = key_of(kind, &object).and_then(|key| known.remove(&key));
                let revision = version_of(&object).ok();
                if let Some(stored) = readable(kind, object).or(served) {
                    known.remove(&stored.resource.key());
                    let revision = revision.unwrap_or(stored.resource_version);
                    changes.lock().record(
                        &events,
                        Event {
                            deleted: true,
                            stored,
                            revision,
                        },
                    );
                }
            }
        }
    }
}

/// Announces what a relist found changed since the last one, and moves the floor past it: the
/// changes in between were never seen one by one.
fn announce_difference(
    known: &HashMap<Key, Stored>,
    listed: &HashMap<Key, Stored>,
    now: Option<u64>,
    changes: &Mutex<Changes>,
    events: &broadcast::Sender<Event>,
) {
    let mut changes = changes.lock();
    let newest = listed
        .values()
        .map(|s| s.resource_version)
        .max()
        .unwrap_or(0)
        .max(changes.latest)
        .max(now.unwrap_or(0));
    for (key, stored) in listed {
        if known.get(key).map(|k| k.resource_version) != Some(stored.resource_version) {
            let event = Event {
                deleted: false,
                stored: stored.clone(),
                revision: stored.resource_version,
            };
            changes.record(events, event);
        }
    }
    for (key, stored) in known {
        if !listed.contains_key(key) {
            let event = Event {
                deleted: true,
                stored: stored.clone(),
                revision: newest,
            };
            changes.record(events, event);
        }
    }
    changes.floor = changes.floor.max(newest);
}

/// The resource, or `None` with a warning: an object Weft cannot read (written with kubectl
/// past what the CRD's schema checks) must not stop the rest of the policy.
fn readable(kind: Kind, object: DynamicObject) -> Option<Stored> {
    decode(kind, object)
        .inspect_err(|reason| tracing::warn!(%reason, "ignoring a resource Weft cannot read"))
        .ok()
}

fn key_of(kind: Kind, object: &DynamicObject) -> Option<Key> {
    Some(Key::new(
        kind,
        object.metadata.namespace.as_deref()?,
        object.metadata.name.as_deref()?,
    ))
}

/// The resource `object` is, or why Weft cannot read it.
pub(crate) fn decode(kind: Kind, object: DynamicObject) -> Result<Stored, String> {
    let name = format!(
        "{kind} {}/{}",
        object.metadata.namespace.as_deref().unwrap_or_default(),
        object.metadata.name.as_deref().unwrap_or_default()
    );
    let resource_version = version_of(&object).map_err(|e| format!("{name}: {e}"))?;
    let mut manifest = serde_json::to_value(&object).map_err(|e| format!("{name}: {e}"))?;
    // Items of a list may come without their type.
    manifest["apiVersion"] = kind.api_version().into();
    manifest["kind"] = kind.as_str().into();
    let mut resource = Resource::parse(&manifest, &name).map_err(|e| e.to_string())?;
    resource.meta.resource_version = None;
    Ok(Stored {
        resource: Arc::new(resource),
        resource_version,
    })
}

fn to_object(resource: &Resource) -> Result<DynamicObject, StoreError> {
    serde_json::from_value(resource.to_json(0))
        .map_err(|e| StoreError::Kubernetes(format!("{}: {e}", resource.key())))
}

fn version_of(object: &DynamicObject) -> Result<u64, StoreError> {
    parse_version(object.metadata.resource_version.as_deref())
}

/// The API server's resourceVersions are opaque by contract and etcd revisions in fact; Weft
/// orders by them, so one that is not a number is refused rather than guessed at.
fn parse_version(version: Option<&str>) -> Result<u64, StoreError> {
    let version = version.unwrap_or_default();
    version.parse().map_err(|_| {
        StoreError::Kubernetes(format!(
            "resourceVersion {version:?} is not a number; Weft needs an etcd-backed API server"
        ))
    })
}

fn precondition(version: u64) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some(version.to_string()),
            uid: None,
        }),
        ..DeleteParams::default()
    }
}

fn api_error(kind: Kind, error: &kube::Error) -> StoreError {
    StoreError::Kubernetes(format!("{kind}: {}{}", describe(error), hint(kind, error)))
}

fn watch_failure(kind: Kind, error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(error) | watcher::Error::WatchStartFailed(error) => {
            format!("{kind}: {}{}", describe(error), hint(kind, error))
        }
        _ => format!("{kind}: {error}"),
    }
}

/// The API server's answer in one line (kube's own display repeats it in debug form).
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "the API server answered {} {}",
            status.code,
            if status.message.is_empty() {
                &status.reason
            } else {
                &status.message
            }
        ),
        error => error.to_string(),
    }
}

fn is_route(kind: Kind) -> bool {
    matches!(kind, Kind::HttpRoute | Kind::GrpcRoute)
}

/// Whether a failure to list `kind` means only that there are none: the Gateway API's CRDs
/// are not installed.
fn optional(kind: Kind, error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::InitialListFailed(error) if not_served(error)) && is_route(kind)
}

/// Whether the API server serves no such resource at all (its CRD is not installed), rather
/// than lacking one object of it.
fn not_served(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 404 && status.message.contains("could not find the requested resource"))
}

/// What to do about a kind the API server does not serve.
fn hint(kind: Kind, error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(_) if not_served(error) => match kind {
            Kind::HttpRoute | Kind::GrpcRoute => {
                " (are the Gateway API CRDs installed? kubectl apply -f the standard-install.yaml of gateway-api)"
            }
            _ => " (are Weft's CRDs installed? weftctl install --crds | kubectl apply -f -)",
        },
        kube::Error::Api(status) if status.code == 403 => {
            " (weft-control's ServiceAccount needs get, list, watch, create, update and delete on it)"
        }
        _ => "",
    }
}

/// Where the API server serves a kind.
pub(crate) fn api_resource(kind: Kind) -> ApiResource {
    let (group, version) = kind
        .api_version()
        .split_once('/')
        .unwrap_or(("", kind.api_version()));
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind.as_str()),
        plural(kind),
    )
}

/// The resource name of a kind in its API group (`kubectl get <plural>`).
fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "services",
        Kind::Workload => "workloads",
        Kind::HttpRoute => "httproutes",
        Kind::GrpcRoute => "grpcroutes",
        Kind::ServicePolicy => "servicepolicies",
        Kind::InboundDefaults => "inbounddefaults",
        Kind::AuthorizationPolicy => "authorizationpolicies",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::api::{Patch, PatchParams};

    use super::*;
    use crate::policy::crds;
    use crate::policy_store::{PolicyStore, followed};
    use crate::resource_store::conformance;
    use weft_tests::fake_apiserver::FakeApiServer;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_api_server_keeps_the_store_contract() {
        weft_tests::init();
        let runtime = runtime();
        conformance::run(&|| {
            let api = runtime.block_on(FakeApiServer::start());
            let client = runtime.block_on(api.client());
            let store = runtime.block_on(Kubernetes::connect(client)).unwrap();
            (Box::new(store), Box::new(api))
        });
    }

    #[test]
    fn each_kind_is_served_where_its_crd_says() {
        for crd in crds::definitions() {
            let names = &crd.spec.names;
            let kind = Kind::from_manifest(&names.kind).unwrap();
            assert_eq!(plural(kind), names.plural);
            assert_eq!(kind.api_version(), format!("{}/v1alpha1", crd.spec.group));
        }
    }

    /// What kubectl would do: write straight to the API server.
    async fn kubectl_apply(client: &kube::Client, manifest: serde_json::Value) {
        let resource = Resource::parse(&manifest, "test").unwrap();
        let key = resource.key();
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &key.namespace, &api_resource(key.kind));
        let object: DynamicObject = serde_json::from_value(manifest).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap();
    }

    async fn kubectl_delete(client: &kube::Client, key: &Key) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &key.namespace, &api_resource(key.kind));
        api.delete(&key.name, &DeleteParams::default())
            .await
            .unwrap();
    }

    fn route(name: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "parentRefs": [{"kind": "Service", "group": "policy.weft.io", "name": "api"}],
                "rules": [{"backendRefs": [{"kind": "Service", "group": "policy.weft.io", "name": "api", "port": 8080}]}],
            },
        })
    }

    async fn served(store: &PolicyStore, key: &Key, present: bool) {
        let mut state = store.subscribe_state();
        let shown = state.wait_for(|s| s.get(key).is_some() == present);
        tokio::time::timeout(Duration::from_secs(10), shown)
            .await
            .unwrap_or_else(|_| {
                panic!("{key} never {}", if present { "served" } else { "removed" })
            })
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_kubectl_changes_is_served_and_a_410_relists_and_converges() {
        weft_tests::init();
        let api = FakeApiServer::start().await;
        let client = api.client().await;
        let backend = Kubernetes::connect(client.clone()).await.unwrap();
        let backend: Arc<dyn ResourceStore> = Arc::new(backend);
        let store = followed(backend.clone()).await;

        let service = conformance::service("shop", "api", 8080);
        kubectl_apply(&client, service.to_json(0)).await;
        served(&store, &service.key(), true).await;
        kubectl_apply(&client, route("first")).await;
        let first = Key::new(Kind::HttpRoute, "shop", "first");
        served(&store, &first, true).await;

        // The cluster's revision runs ahead of the policy's (other objects change too), then
        // the API server forgets its history: every watch ends with 410 Gone and lists again.
        // What changes around it is served all the same.
        for n in 0..20 {
            api.kubectl_apply(&format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: unrelated-{n}, namespace: shop}}\ndata: {{}}\n"
            ))
            .await;
        }
        api.compact().await;
        kubectl_delete(&client, &first).await;
        kubectl_apply(&client, route("second")).await;
        served(&store, &first, false).await;
        served(&store, &Key::new(Kind::HttpRoute, "shop", "second"), true).await;
        // A watch from before the relist would miss what it only saw as a difference.
        let resumed = backend.watch(1);
        assert!(
            matches!(resumed, Err(WatchError::Gone { since: 1, .. })),
            "{resumed:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_route_made_unreadable_keeps_being_served_until_it_is_deleted() {
        weft_tests::init();
        let api = FakeApiServer::start().await;
        let client = api.client().await;
        let store = followed(Arc::new(Kubernetes::connect(client.clone()).await.unwrap())).await;
        let service = conformance::service("shop", "api", 8080);
        kubectl_apply(&client, service.to_json(0)).await;
        kubectl_apply(&client, route("r")).await;
        let key = Key::new(Kind::HttpRoute, "shop", "r");
        served(&store, &key, true).await;
        let before = store.state().get(&key).unwrap().resource_version;
        // kubectl writes a weight no CRD schema of this API server stops: Weft cannot read it.
        let mut broken = route("r");
        broken["spec"]["rules"][0]["backendRefs"][0]["weight"] = serde_json::json!("heavy");
        let routes: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "shop", &api_resource(Kind::HttpRoute));
        let object: DynamicObject = serde_json::from_value(broken).unwrap();
        routes
            .patch(
                "r",
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap();
        // Another change after it, so the broken one has certainly been seen.
        kubectl_apply(&client, route("later")).await;
        served(&store, &Key::new(Kind::HttpRoute, "shop", "later"), true).await;
        assert_eq!(store.state().get(&key).unwrap().resource_version, before);
        // Deleted while unreadable: what was served of it goes too.
        kubectl_delete(&client, &key).await;
        served(&store, &key, false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_gateway_api_crds_there_are_no_routes_and_a_route_says_what_to_install() {
        weft_tests::init();
        let api = FakeApiServer::start_with(&[
            "--unserved",
            "httproutes.gateway.networking.k8s.io,grpcroutes.gateway.networking.k8s.io",
        ])
        .await;
        let backend = Arc::new(Kubernetes::connect(api.client().await).await.unwrap());
        let route = Resource::parse(&route("r"), "test").unwrap();
        let service = conformance::service("shop", "api", 8080);
        let outcome = {
            let backend = backend.clone();
            tokio::task::spawn_blocking(move || {
                let listing = backend.list().unwrap();
                let service = backend.apply(vec![(service, Expected::Absent)]);
                let route = backend.apply(vec![(route, Expected::Absent)]);
                (listing, service, route)
            })
            .await
            .unwrap()
        };
        let (listing, service, route) = outcome;
        assert!(listing.resources.is_empty());
        assert!(service.is_ok(), "{service:?}");
        let refused = route.unwrap_err().to_string();
        assert_eq!(
            refused,
            "store (Kubernetes API): HTTPRoute: the API server answered 404 the server could not \
             find the requested resource (are the Gateway API CRDs installed? kubectl apply -f \
             the standard-install.yaml of gateway-api)"
        );
        assert!(refused.contains("Gateway API CRDs"), "{refused}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_weft_s_crds_the_store_does_not_start_and_says_what_to_install() {
        weft_tests::init();
        let api =
            FakeApiServer::start_with(&["--unserved", "authorizationpolicies.policy.weft.io"])
                .await;
        let refused = Kubernetes::connect(api.client().await)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("AuthorizationPolicy"), "{refused}");
        assert!(refused.contains("weftctl install --crds"), "{refused}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_api_server_out_of_reach_is_an_error_naming_the_kind() {
        weft_tests::init();
        let client =
            kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap()))
                .unwrap();
        let refused = Kubernetes::connect(client).await.unwrap_err().to_string();
        assert!(refused.contains("Service"), "{refused}");
    }
}

//! Policy resources: durable in a [`ResourceStore`], served from memory.
//!
//! Every change is validated here against the whole state it would produce, then written to
//! the backend with the versions it was checked against: a change another writer made meanwhile
//! is a conflict, never overwritten, and the conflict reloads this state so the next attempt
//! sees it. The whole state is then published as an immutable snapshot
//! (`watch`), which discovery reads without locking; admin watches read the backend's changes.
//! Changes other writers make (kubectl on the API server, another replica) reach the snapshot
//! through [`PolicyStore::follow`].

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::cluster::{ClusterState, SliceEndpoint};
use crate::policy::{Key, Kind, PolicyError, Resource};
pub use crate::resource_store::{Event, Stored};
use crate::resource_store::{Expected, Listing, ResourceStore, Watch, WatchError, WriteError};
use crate::store::StoreError;

/// Every resource at one revision, and what the cluster says of its Services and Pods.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    pub revision: u64,
    /// The declared resources (what `weftctl apply` and kubectl write).
    pub resources: BTreeMap<Key, Stored>,
    /// On Kubernetes, the cluster's Services and meshed Pods, served beside the declared
    /// resources; a declared one of the same kind and name wins.
    pub cluster: Arc<ClusterState>,
    /// The cluster's view is expected and not there yet: discovery does not answer from a
    /// part of the cluster (a Service not seen yet would be placed outside the mesh).
    pub cluster_pending: bool,
    /// The revision each recently deleted resource was deleted at: an announcement of an older
    /// version arriving late (a backend's stream behind this store's own delete) must not bring
    /// it back.
    pub(crate) deleted: BTreeMap<Key, u64>,
}

/// What an apply did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

/// The outcome of applying one resource.
#[derive(Debug, Clone)]
pub struct Applied {
    pub key: Key,
    pub resource_version: u64,
    pub action: Action,
}

/// Why a change was refused. Nothing is stored when it is.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A manifest is invalid or refers to something that does not exist.
    #[error("{0}")]
    Invalid(#[from] PolicyError),
    /// The write was refused: a conflict, nothing to delete, or the store failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The policy resources.
#[derive(Debug)]
pub struct PolicyStore {
    backend: Arc<dyn ResourceStore>,
    /// Serializes changes, so each reads the state the previous one left.
    writer: Mutex<()>,
    state: watch::Sender<Arc<PolicyState>>,
}

// === impl PolicyState ===

impl PolicyState {
    /// The resources of one kind that are served: the declared ones, then the cluster's.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Stored> {
        let derived = of_kind(self.cluster.resources(), kind)
            .filter(|stored| !self.resources.contains_key(&stored.resource.key()));
        self.declared_of_kind(kind).chain(derived)
    }

    /// One served resource, declared or the cluster's.
    pub fn get(&self, key: &Key) -> Option<&Stored> {
        self.resources.get(key).or_else(|| self.cluster.get(key))
    }

    /// The declared resources of one kind.
    pub fn declared_of_kind(&self, kind: Kind) -> impl Iterator<Item = &Stored> {
        of_kind(&self.resources, kind)
    }

    /// One declared resource.
    pub fn declared(&self, key: &Key) -> Option<&Stored> {
        self.resources.get(key)
    }

    /// A cluster Service's endpoints on its port named `port_name` (see
    /// [`ClusterState::endpoints`]), unless a declared Service of that name replaces it.
    pub fn cluster_endpoints(
        &self,
        service: &Key,
        port_name: &str,
    ) -> Option<Vec<(std::net::SocketAddr, &SliceEndpoint)>> {
        if self.resources.contains_key(service) {
            return None;
        }
        self.cluster.endpoints(service, port_name)
    }

    /// What discovery's snapshots are versioned by: the declared revision and the cluster
    /// view's generation, each only ever growing.
    pub fn served_version(&self) -> (u64, u64) {
        (self.revision, self.cluster.generation)
    }

    /// [`PolicyState::served_version`] as snapshots carry it: the revision alone off
    /// Kubernetes, `<revision>.<generation>` once the cluster is followed.
    pub fn served_version_string(&self) -> String {
        match self.cluster.generation {
            0 => self.revision.to_string(),
            generation => format!("{}.{generation}", self.revision),
        }
    }
}

fn of_kind(resources: &BTreeMap<Key, Stored>, kind: Kind) -> impl Iterator<Item = &Stored> {
    resources
        .range(Key::new(kind, "", "")..)
        .take_while(move |(key, _)| key.kind == kind)
        .map(|(_, stored)| stored)
}

impl From<Listing> for PolicyState {
    fn from(listing: Listing) -> Self {
        Self {
            revision: listing.revision,
            resources: listing
                .resources
                .into_iter()
                .map(|stored| (stored.resource.key(), stored))
                .collect(),
            deleted: BTreeMap::new(),
            cluster: Arc::default(),
            cluster_pending: false,
        }
    }
}

// === impl PolicyStore ===

impl PolicyStore {
    /// Loads every resource from `backend`. In the embedded store a record that no longer
    /// parses is an error naming it: skipped, it would be policy silently lost (a route, an
    /// authorization rule). The Kubernetes backend, whose objects kubectl writes past what a
    /// CRD's schema checks, serves the readable ones and warns of the rest.
    pub fn load(backend: Arc<dyn ResourceStore>) -> Result<Self, StoreError> {
        let (state, _) = watch::channel(Arc::new(PolicyState::from(backend.list()?)));
        Ok(Self {
            backend,
            writer: Mutex::new(()),
            state,
        })
    }

    /// The current state.
    pub fn state(&self) -> Arc<PolicyState> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every new state.
    pub fn subscribe_state(&self) -> watch::Receiver<Arc<PolicyState>> {
        self.state.subscribe()
    }

    /// Changes after `since` that the backend still holds, and a receiver for those to come.
    pub fn watch(&self, since: u64) -> Result<Watch, WatchError> {
        self.backend.watch(since)
    }

    /// Creates or updates `resources`, all or none. Blocking: call from the blocking pool.
    pub fn apply(
        &self,
        resources: Vec<Resource>,
        dry_run: bool,
    ) -> Result<Vec<Applied>, ChangeError> {
        let _writer = self.writer.lock();
        let current = self.state();
        let mut next = (*current).clone();
        let mut results = Vec::new();
        let mut changed = Vec::new();
        for resource in resources {
            let key = resource.key();
            if results.iter().any(|r: &Applied| r.key == key) {
                return Err(PolicyError {
                    resource: key.to_string(),
                    field: "metadata.name".to_string(),
                    reason: "appears twice in one apply".to_string(),
                }
                .into());
            }
            let existing = current.declared(&key);
            if let Some(sent) = resource.meta.resource_version.as_deref() {
                let sent: u64 = sent.parse().map_err(|_| PolicyError {
                    resource: key.to_string(),
                    field: "metadata.resourceVersion".to_string(),
                    reason: format!("{sent:?} is not a resource version"),
                })?;
                let stored = existing.map_or(0, |s| s.resource_version);
                if sent != stored {
                    return Err(WriteError::Conflict { key, stored, sent }.into());
                }
            }
            let mut resource = resource.without_version();
            resource.meta.creation_timestamp = match existing {
                Some(stored) => stored.resource.meta.creation_timestamp.clone(),
                None => Some(now_rfc3339()),
            };
            let action = match existing {
                None => Action::Created,
                Some(stored) if *stored.resource == resource => Action::Unchanged,
                Some(_) => Action::Configured,
            };
            if action != Action::Unchanged {
                let expected =
                    existing.map_or(Expected::Absent, |s| Expected::Version(s.resource_version));
                next.resources.insert(
                    key.clone(),
                    Stored {
                        resource: Arc::new(resource.clone()),
                        resource_version: 0,
                    },
                );
                changed.push((resource, expected));
            }
            results.push(Applied {
                key,
                resource_version: existing.map_or(0, |s| s.resource_version),
                action,
            });
        }
        check_references(&next, changed.iter().map(|(resource, _)| resource))?;
        if changed.is_empty() {
            return Ok(results);
        }
        if dry_run {
            // What the write would make the version: the next revision, as the embedded store
            // assigns it; a backend that numbers otherwise decides at the real write.
            for result in results.iter_mut().filter(|r| r.action != Action::Unchanged) {
                result.resource_version = current.revision + 1;
            }
            return Ok(results);
        }
        let written = self
            .backend
            .apply(changed)
            .inspect_err(|e| self.resync_after(e))?;
        for stored in &written.stored {
            let key = stored.resource.key();
            if let Some(result) = results.iter_mut().find(|r| r.key == key) {
                result.resource_version = stored.resource_version;
            }
        }
        // Merged into the latest state, not replacing it with `next`: a change followed from
        // the backend meanwhile must not be lost.
        self.state.send_if_modified(|state| {
            let mut modified = false;
            for stored in written.stored {
                modified |= observe(state, false, stored, written.revision);
            }
            modified
        });
        Ok(results)
    }

    /// After a conflict the backend knows of a change this state has not seen (another writer
    /// on the same backend): read it, so the next read shows it and the next write can be
    /// checked against it, without waiting for [`PolicyStore::follow`] to bring it.
    fn resync_after(&self, error: &WriteError) {
        if !matches!(error, WriteError::Conflict { .. }) {
            return;
        }
        match self.backend.list() {
            Ok(listing) => {
                self.state
                    .send_if_modified(|state| merge_listing(state, listing));
            }
            Err(error) => tracing::warn!(%error, "cannot reload the policy after a conflict"),
        }
    }

    /// Deletes one resource, only at `expected` version when given. Blocking.
    pub fn delete(&self, key: &Key, expected: Option<u64>) -> Result<u64, ChangeError> {
        let _writer = self.writer.lock();
        let current = self.state();
        let stored = current
            .declared(key)
            .ok_or_else(|| WriteError::NotFound(key.clone()))?;
        if let Some(sent) = expected
            && sent != stored.resource_version
        {
            return Err(WriteError::Conflict {
                key: key.clone(),
                stored: stored.resource_version,
                sent,
            }
            .into());
        }
        let revision = self
            .backend
            .delete(key, Expected::Version(stored.resource_version))
            .inspect_err(|e| self.resync_after(e))?;
        let stored = stored.clone();
        self.state
            .send_if_modified(|state| observe(state, true, stored, revision));
        Ok(revision)
    }

    /// The cluster's view is to come (see [`PolicyState::cluster_pending`]).
    pub fn expect_cluster(&self) {
        self.state
            .send_modify(|state| Arc::make_mut(state).cluster_pending = true);
    }

    /// Serves `cluster` as the cluster's view, unless it serves what the current one does:
    /// whether it replaced it.
    pub fn set_cluster(&self, cluster: ClusterState) -> bool {
        self.state.send_if_modified(|state| {
            if !state.cluster_pending && state.cluster.same_view(&cluster) {
                return false;
            }
            let state = Arc::make_mut(state);
            state.cluster = Arc::new(cluster);
            state.cluster_pending = false;
            true
        })
    }

    /// Follows the backend's changes into the served state until the backend's watch ends:
    /// what another writer changes (kubectl on the API server, another replica) is served as
    /// soon as the backend reports it. A watch that cannot resume lists again.
    pub async fn follow(self: Arc<Self>) {
        loop {
            let since = self.state().revision;
            let mut watch = match self.backend.watch(since) {
                Ok(watch) => watch,
                Err(WatchError::Gone { .. }) => {
                    self.relist().await;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot follow the policy store; retrying");
                    tokio::time::sleep(FOLLOW_RETRY).await;
                    continue;
                }
            };
            for event in watch.backlog {
                self.state.send_if_modified(|state| {
                    observe(state, event.deleted, event.stored, event.revision)
                });
            }
            loop {
                match watch.live.recv().await {
                    Ok(event) => {
                        self.state.send_if_modified(|state| {
                            observe(state, event.deleted, event.stored, event.revision)
                        });
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.relist().await;
                        break;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }

    /// Replaces the served state with a fresh listing (the backend's watch fell behind).
    async fn relist(&self) {
        let backend = self.backend.clone();
        match tokio::task::spawn_blocking(move || backend.list()).await {
            Ok(Ok(listing)) => {
                self.state
                    .send_if_modified(|state| merge_listing(state, listing));
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot list the policy store; retrying");
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
            Err(error) => tracing::warn!(%error, "listing the policy store failed"),
        }
    }
}

/// A store loaded from `backend` and following it (tests of backends that others write to).
#[cfg(test)]
pub(crate) async fn followed(backend: Arc<dyn ResourceStore>) -> Arc<PolicyStore> {
    let store = Arc::new(
        tokio::task::spawn_blocking(move || PolicyStore::load(backend))
            .await
            .expect("the load task ran")
            .expect("the backend lists"),
    );
    tokio::spawn(store.clone().follow());
    store
}

/// How long following waits after the backend failed.
const FOLLOW_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Brings `state` to a listing without undoing what it already shows newer (a change followed
/// while the listing was read): whether `state` changed.
fn merge_listing(state: &mut Arc<PolicyState>, listing: Listing) -> bool {
    let listed: std::collections::BTreeSet<Key> = listing
        .resources
        .iter()
        .map(|stored| stored.resource.key())
        .collect();
    let gone: Vec<Stored> = state
        .resources
        .iter()
        .filter(|(key, stored)| {
            !listed.contains(*key) && stored.resource_version <= listing.revision
        })
        .map(|(_, stored)| stored.clone())
        .collect();
    let mut modified = false;
    for stored in gone {
        modified |= observe(state, true, stored, listing.revision);
    }
    for stored in listing.resources {
        modified |= observe(state, false, stored, listing.revision);
    }
    modified
}

/// Applies one change to `state` unless it already shows it or something newer (a change this
/// store wrote, announced again by the backend); whether `state` changed.
fn observe(state: &mut Arc<PolicyState>, deleted: bool, stored: Stored, revision: u64) -> bool {
    let key = stored.resource.key();
    let present = state.resources.get(&key).map(|s| s.resource_version);
    let applies = if deleted {
        // A resource created again after the delete is newer than it.
        present.is_some_and(|version| version <= revision)
    } else {
        present.is_none_or(|version| version < stored.resource_version)
            && state
                .deleted
                .get(&key)
                .is_none_or(|at| *at < stored.resource_version)
    };
    if !applies {
        if revision > state.revision {
            Arc::make_mut(state).revision = revision;
        }
        return false;
    }
    let state = Arc::make_mut(state);
    if deleted {
        state.resources.remove(&key);
        if state.deleted.len() >= TOMBSTONES
            && let Some(oldest) = state
                .deleted
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(key, _)| key.clone())
        {
            state.deleted.remove(&oldest);
        }
        state.deleted.insert(key, revision);
    } else {
        state.deleted.remove(&key);
        state.resources.insert(key, stored);
    }
    state.revision = state.revision.max(revision);
    true
}

/// Deletions remembered against late announcements; the oldest are forgotten first.
const TOMBSTONES: usize = 4096;

/// Every reference of a changed resource must resolve in the state it would produce.
fn check_references<'a>(
    next: &PolicyState,
    changed: impl Iterator<Item = &'a Resource>,
) -> Result<(), PolicyError> {
    for resource in changed {
        for (field, target) in resource.references() {
            if next.get(&target).is_none() {
                return Err(PolicyError {
                    resource: resource.key().to_string(),
                    field,
                    reason: format!("{target} does not exist"),
                });
            }
        }
    }
    Ok(())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests;

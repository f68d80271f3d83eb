//! Policy resources: durable in the store, served from memory.
//!
//! Every change is one store transaction that moves the revision by one; the resources it
//! touched take that revision as their resource version. The whole state is then published as
//! an immutable snapshot (`watch`), which discovery reads without locking, and as change events,
//! which admin watches stream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

use crate::policy::{Key, Kind, PolicyError, Resource};
use crate::store::{Store, StoreError};

/// Events kept for watches that resume from a past revision.
const EVENT_LOG: usize = 4096;

/// A resource and the revision of its last change.
#[derive(Debug, Clone)]
pub struct Stored {
    pub resource: Arc<Resource>,
    pub resource_version: u64,
}

/// Every resource at one revision.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    pub revision: u64,
    pub resources: BTreeMap<Key, Stored>,
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

/// A change, as admin watches see it.
#[derive(Debug, Clone)]
pub struct Event {
    pub deleted: bool,
    pub stored: Stored,
    pub revision: u64,
}

/// Why a change was refused. Nothing is stored when it is.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A manifest is invalid or refers to something that does not exist.
    #[error("{0}")]
    Invalid(#[from] PolicyError),
    /// The caller's resourceVersion is not the stored one.
    #[error("{key} has resourceVersion {stored}, not {sent}: it changed since you read it")]
    Conflict { key: Key, stored: u64, sent: u64 },
    /// Nothing to delete.
    #[error("{0} does not exist")]
    NotFound(Key),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The policy resources.
#[derive(Debug)]
pub struct PolicyStore {
    store: Store,
    /// Serializes changes, so each reads the state the previous one left.
    writer: Mutex<()>,
    state: watch::Sender<Arc<PolicyState>>,
    events: broadcast::Sender<Event>,
    log: Mutex<VecDeque<Event>>,
}

// === impl PolicyState ===

impl PolicyState {
    /// The resources of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Stored> {
        self.resources
            .range(Key::new(kind, "", "")..)
            .take_while(move |(key, _)| key.kind == kind)
            .map(|(_, stored)| stored)
    }

    /// One resource.
    pub fn get(&self, key: &Key) -> Option<&Stored> {
        self.resources.get(key)
    }
}

// === impl PolicyStore ===

impl PolicyStore {
    /// Loads every resource from `store`. Records that no longer parse are skipped and logged,
    /// never fatal: one bad record must not keep the control plane down.
    pub fn load(store: Store) -> Result<Self, StoreError> {
        let (revision, records) = store.resources()?;
        let mut resources = BTreeMap::new();
        for (key, bytes) in records {
            let parsed = serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|json| {
                    let version = json
                        .pointer("/metadata/resourceVersion")
                        .and_then(|v| v.as_str())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(revision);
                    Resource::parse(&json, &key)
                        .map(|r| (r.without_version(), version))
                        .map_err(|e| e.to_string())
                });
            // A record skipped would be policy silently lost (a route, an authorization rule).
            let (resource, resource_version) =
                parsed.map_err(|reason| StoreError::Unparsable { key, reason })?;
            resources.insert(
                resource.key(),
                Stored {
                    resource: Arc::new(resource),
                    resource_version,
                },
            );
        }
        let (state, _) = watch::channel(Arc::new(PolicyState {
            revision,
            resources,
        }));
        let (events, _) = broadcast::channel(EVENT_LOG);
        Ok(Self {
            store,
            writer: Mutex::new(()),
            state,
            events,
            log: Mutex::new(VecDeque::new()),
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

    /// Events after `since` that are still in the log, and a receiver for those to come.
    /// `None` when `since` is older than the log.
    pub fn events_since(&self, since: u64) -> Option<(Vec<Event>, broadcast::Receiver<Event>)> {
        let log = self.log.lock();
        let receiver = self.events.subscribe();
        if since == 0 {
            return Some((Vec::new(), receiver));
        }
        let oldest = log
            .front()
            .map_or(self.state.borrow().revision + 1, |e| e.revision);
        if since.saturating_add(1) < oldest {
            return None;
        }
        Some((
            log.iter().filter(|e| e.revision > since).cloned().collect(),
            receiver,
        ))
    }

    /// Creates or updates `resources`, all or none. Blocking: call from the blocking pool.
    pub fn apply(
        &self,
        resources: Vec<Resource>,
        dry_run: bool,
    ) -> Result<Vec<Applied>, ChangeError> {
        let _writer = self.writer.lock();
        let current = self.state();
        let revision = current.revision + 1;
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
            let existing = current.get(&key);
            if let Some(sent) = resource.meta.resource_version.as_deref() {
                let sent: u64 = sent.parse().map_err(|_| PolicyError {
                    resource: key.to_string(),
                    field: "metadata.resourceVersion".to_string(),
                    reason: format!("{sent:?} is not a resource version"),
                })?;
                let stored = existing.map_or(0, |s| s.resource_version);
                if sent != stored {
                    return Err(ChangeError::Conflict { key, stored, sent });
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
            let resource_version = match (action, existing) {
                (Action::Unchanged, Some(stored)) => stored.resource_version,
                _ => revision,
            };
            if action != Action::Unchanged {
                let stored = Stored {
                    resource: Arc::new(resource),
                    resource_version,
                };
                next.resources.insert(key.clone(), stored.clone());
                changed.push(stored);
            }
            results.push(Applied {
                key,
                resource_version,
                action,
            });
        }
        check_references(&next, changed.iter().map(|s| &*s.resource))?;
        if dry_run || changed.is_empty() {
            return Ok(results);
        }
        let puts: Vec<(String, Vec<u8>)> = changed
            .iter()
            .map(|s| {
                let json = s.resource.to_json(s.resource_version);
                (record_key(&s.resource.key()), json.to_string().into_bytes())
            })
            .collect();
        self.store.commit_resources(revision, &puts, &[])?;
        next.revision = revision;
        self.publish(
            next,
            changed.into_iter().map(|stored| (false, stored)).collect(),
        );
        Ok(results)
    }

    /// Deletes one resource, only at `expected` version when given. Blocking.
    pub fn delete(&self, key: &Key, expected: Option<u64>) -> Result<u64, ChangeError> {
        let _writer = self.writer.lock();
        let current = self.state();
        let stored = current
            .get(key)
            .cloned()
            .ok_or_else(|| ChangeError::NotFound(key.clone()))?;
        if let Some(sent) = expected
            && sent != stored.resource_version
        {
            return Err(ChangeError::Conflict {
                key: key.clone(),
                stored: stored.resource_version,
                sent,
            });
        }
        let revision = current.revision + 1;
        self.store
            .commit_resources(revision, &[], &[record_key(key)])?;
        let mut next = (*current).clone();
        next.resources.remove(key);
        next.revision = revision;
        self.publish(next, vec![(true, stored)]);
        Ok(revision)
    }

    fn publish(&self, next: PolicyState, changes: Vec<(bool, Stored)>) {
        let revision = next.revision;
        self.state.send_replace(Arc::new(next));
        let mut log = self.log.lock();
        for (deleted, stored) in changes {
            let event = Event {
                deleted,
                stored,
                revision,
            };
            if log.len() == EVENT_LOG {
                log.pop_front();
            }
            log.push_back(event.clone());
            // No receiver is fine: nobody is watching.
            let _ = self.events.send(event);
        }
    }
}

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

fn record_key(key: &Key) -> String {
    format!("{}/{}/{}", key.kind, key.namespace, key.name)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests;

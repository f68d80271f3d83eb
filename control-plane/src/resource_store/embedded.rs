//! The embedded backend: resources in the control plane's redb file, one global revision moved
//! by one per write (every resource a write touches takes it as its version), and the recent
//! changes kept in memory for watches. The change log does not outlive the process: a watch
//! from a revision before the last start is told to list again, as a compacted API server
//! tells it.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{
    Event, Expected, Listing, ResourceStore, Stored, Watch, WatchError, WriteError, Written,
};
use crate::policy::{Key, Resource};
use crate::store::{Store, StoreError};

/// Changes kept for watches that resume from a past revision.
const EVENT_LOG: usize = 4096;

/// Policy resources in the embedded store.
#[derive(Debug)]
pub struct Embedded {
    store: Store,
    /// Held across each write, so the versions it checks are the ones it replaces, and across
    /// a watch's start, so no change falls between its backlog and its receiver.
    changes: Mutex<Changes>,
    events: broadcast::Sender<Event>,
}

#[derive(Debug)]
struct Changes {
    revision: u64,
    log: VecDeque<Event>,
}

// === impl Embedded ===

impl Embedded {
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let revision = store.revision()?;
        let (events, _) = broadcast::channel(EVENT_LOG);
        Ok(Self {
            store,
            changes: Mutex::new(Changes {
                revision,
                log: VecDeque::new(),
            }),
            events,
        })
    }

    /// The stored version of `key`, read from its record alone: a write checks versions
    /// without parsing (and validating) every resource it replaces.
    fn version_of(&self, key: &Key, revision: u64) -> Result<Option<u64>, StoreError> {
        let record = record_key(key);
        let Some(bytes) = self.store.resource(&record)? else {
            return Ok(None);
        };
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Unparsable {
                key: record,
                reason: e.to_string(),
            })?;
        Ok(Some(stored_version(&json, revision)))
    }

    fn get_at(&self, key: &Key, revision: u64) -> Result<Option<Stored>, StoreError> {
        let record = record_key(key);
        match self.store.resource(&record)? {
            Some(bytes) => decode(record, &bytes, revision).map(Some),
            None => Ok(None),
        }
    }
}

impl ResourceStore for Embedded {
    fn get(&self, key: &Key) -> Result<Option<Stored>, StoreError> {
        let revision = self.changes.lock().revision;
        self.get_at(key, revision)
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let (revision, records) = self.store.resources()?;
        let resources = records
            .into_iter()
            .map(|(key, bytes)| decode(key, &bytes, revision))
            .collect::<Result<_, _>>()?;
        Ok(Listing {
            revision,
            resources,
        })
    }

    fn apply(&self, puts: Vec<(Resource, Expected)>) -> Result<Written, WriteError> {
        let mut changes = self.changes.lock();
        if puts.is_empty() {
            return Ok(Written {
                revision: changes.revision,
                stored: Vec::new(),
            });
        }
        let revision = changes.revision + 1;
        let mut records = Vec::with_capacity(puts.len());
        let mut stored = Vec::with_capacity(puts.len());
        for (resource, expected) in puts {
            let key = resource.key();
            let found = self.version_of(&key, changes.revision)?;
            expected
                .check(found)
                .map_err(|(stored, sent)| WriteError::Conflict {
                    key: key.clone(),
                    stored,
                    sent,
                })?;
            let resource = resource.without_version();
            let json = resource.to_json(revision).to_string().into_bytes();
            records.push((record_key(&key), json));
            stored.push(Stored {
                resource: Arc::new(resource),
                resource_version: revision,
            });
        }
        self.store.commit_resources(revision, &records, &[])?;
        changes.revision = revision;
        for written in &stored {
            changes.record(&self.events, false, written.clone());
        }
        Ok(Written { revision, stored })
    }

    fn delete(&self, key: &Key, expected: Expected) -> Result<u64, WriteError> {
        let mut changes = self.changes.lock();
        let stored = self
            .get_at(key, changes.revision)?
            .ok_or_else(|| WriteError::NotFound(key.clone()))?;
        expected
            .check(Some(stored.resource_version))
            .map_err(|(found, sent)| WriteError::Conflict {
                key: key.clone(),
                stored: found,
                sent,
            })?;
        let revision = changes.revision + 1;
        self.store
            .commit_resources(revision, &[], &[record_key(key)])?;
        changes.revision = revision;
        changes.record(&self.events, true, stored);
        Ok(revision)
    }

    fn watch(&self, since: u64) -> Result<Watch, WatchError> {
        let changes = self.changes.lock();
        let live = self.events.subscribe();
        if since == 0 {
            return Ok(Watch {
                backlog: Vec::new(),
                live,
            });
        }
        let oldest = changes
            .log
            .front()
            .map_or(changes.revision + 1, |e| e.revision);
        if since.saturating_add(1) < oldest {
            return Err(WatchError::Gone { since, oldest });
        }
        Ok(Watch {
            backlog: changes
                .log
                .iter()
                .filter(|e| e.revision > since)
                .cloned()
                .collect(),
            live,
        })
    }
}

// === impl Changes ===

impl Changes {
    fn record(&mut self, events: &broadcast::Sender<Event>, deleted: bool, stored: Stored) {
        let event = Event {
            deleted,
            stored,
            revision: self.revision,
        };
        if self.log.len() == EVENT_LOG {
            self.log.pop_front();
        }
        self.log.push_back(event.clone());
        // No receiver is fine: nobody is watching.
        let _ = events.send(event);
    }
}

/// The version a record carries; records written before versions were kept take the revision.
fn stored_version(json: &serde_json::Value, revision: u64) -> u64 {
    json.pointer("/metadata/resourceVersion")
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(revision)
}

fn record_key(key: &Key) -> String {
    format!("{}/{}/{}", key.kind, key.namespace, key.name)
}

/// A stored record back into a resource and its version. A record that no longer parses is an
/// error naming it, never skipped: a record skipped would be policy silently lost (a route, an
/// authorization rule).
fn decode(key: String, bytes: &[u8], revision: u64) -> Result<Stored, StoreError> {
    let parsed = serde_json::from_slice::<serde_json::Value>(bytes)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            let version = stored_version(&json, revision);
            Resource::parse(&json, &key)
                .map(|r| (r.without_version(), version))
                .map_err(|e| e.to_string())
        });
    let (resource, resource_version) =
        parsed.map_err(|reason| StoreError::Unparsable { key, reason })?;
    Ok(Stored {
        resource: Arc::new(resource),
        resource_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> Embedded {
        Embedded::open(Store::open(&dir.path().join("store.redb")).unwrap()).unwrap()
    }

    #[test]
    fn the_embedded_store_keeps_the_contract() {
        super::super::conformance::run(&|| {
            let dir = tempfile::tempdir().unwrap();
            let store = open(&dir);
            (
                Box::new(store) as Box<dyn ResourceStore>,
                Box::new(dir) as _,
            )
        });
    }

    #[test]
    fn a_watch_from_before_a_restart_is_told_to_list_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let service = super::super::conformance::service("shop", "api", 8080);
        store
            .apply(vec![(service.clone(), Expected::Absent)])
            .unwrap();
        store.apply(vec![(service, Expected::Any)]).unwrap();
        drop(store);
        let reopened = open(&dir);
        assert_eq!(reopened.list().unwrap().revision, 2);
        assert!(matches!(
            reopened.watch(1),
            Err(WatchError::Gone { since: 1, .. })
        ));
        assert!(reopened.watch(2).unwrap().backlog.is_empty());
    }
}

//! Objects by resource, one global resource version, and the history watches resume from —
//! the parts of etcd and the API server's watch cache that clients can observe.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::select::Selector;
use crate::status::ApiError;

/// Changes held for watches to resume from; older ones are compacted away (a resume from there
/// gets 410 Gone, as from a real API server).
const HISTORY: usize = 10_000;
/// Changes a slow watch may fall behind by before it is ended with 410 Gone.
const LIVE_BUFFER: usize = 4096;

/// One change to one object.
#[derive(Debug, Clone)]
pub struct Event {
    /// `group/version/plural`.
    pub resource: String,
    pub kind: &'static str,
    pub object: Value,
    pub revision: u64,
}

/// What open watches are told.
#[derive(Debug, Clone)]
pub enum Change {
    Event(Event),
    /// History was dropped: every open watch ends with 410 Gone.
    Compacted,
}

/// Where an object lives: its resource, namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

/// What a list or watch covers: a resource, in one namespace or all, picked by a selector.
#[derive(Debug, Clone)]
pub struct Scope {
    pub resource: String,
    /// Empty: every namespace.
    pub namespace: String,
    pub selector: Selector,
}

impl Scope {
    pub fn contains(&self, event: &Event) -> bool {
        event.resource == self.resource
            && (self.namespace.is_empty()
                || event.object["metadata"]["namespace"].as_str() == Some(&self.namespace))
            && self.selector.matches(&event.object)
    }
}

/// What a list returns: the page, the revision it is at, and where the next page starts.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Value>,
    pub revision: u64,
    pub next: Option<String>,
}

#[derive(Debug)]
pub struct Store {
    revision: u64,
    /// The oldest revision a watch may resume after.
    floor: u64,
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    history: VecDeque<Event>,
    live: broadcast::Sender<Change>,
    uids: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            revision: 1,
            floor: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            live: broadcast::channel(LIVE_BUFFER).0,
            uids: 0,
        }
    }
}

impl Store {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The oldest revision a watch or a continued list may start from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn get(&self, place: &Place) -> Result<Value, ApiError> {
        self.objects
            .get(&place.resource)
            .and_then(|objects| objects.get(&(place.namespace.clone(), place.name.clone())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(place))
    }

    /// Creates `object` at `place` (its name may come from `metadata.generateName`).
    pub fn create(&mut self, mut place: Place, mut object: Value) -> Result<Value, ApiError> {
        if place.name.is_empty() {
            let prefix = meta_str(&object, "generateName").ok_or_else(|| {
                ApiError::invalid("metadata.name: Required value: name or generateName is required")
            })?;
            self.uids += 1;
            place.name = format!("{prefix}{:05x}", self.uids);
        }
        let key = (place.namespace.clone(), place.name.clone());
        if self
            .objects
            .get(&place.resource)
            .is_some_and(|objects| objects.contains_key(&key))
        {
            return Err(ApiError::already_exists(&place));
        }
        self.revision += 1;
        self.uids += 1;
        let meta = metadata(&mut object)?;
        meta.insert("name".into(), json!(place.name));
        if !place.namespace.is_empty() {
            meta.insert("namespace".into(), json!(place.namespace));
        }
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
        );
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        meta.insert("resourceVersion".into(), json!(self.revision.to_string()));
        self.objects
            .entry(place.resource.clone())
            .or_default()
            .insert(key, object.clone());
        self.record(&place.resource, "ADDED", &object);
        Ok(object)
    }

    /// Replaces the object at `place` (only its status when `status_only`), refusing a stale
    /// `metadata.resourceVersion` with 409 Conflict, as optimistic concurrency requires.
    pub fn replace(
        &mut self,
        place: &Place,
        mut object: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let stored = self.get(place)?;
        let stored_version = meta_str(&stored, "resourceVersion").unwrap_or_default();
        if let Some(sent) = meta_str(&object, "resourceVersion")
            && !sent.is_empty()
            && sent != stored_version
        {
            return Err(ApiError::conflict(place));
        }
        let mut updated = stored.clone();
        if status_only {
            match object.get("status") {
                Some(status) => updated["status"] = status.clone(),
                None => {
                    if let Some(o) = updated.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        } else {
            // The status subresource is separate: a write of the object keeps the stored status.
            match stored.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(o) = object.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            let generation = stored["metadata"]["generation"].as_u64().unwrap_or(1);
            let spec_changed = stored.get("spec") != object.get("spec");
            // Server-set metadata stays the server's.
            let kept = stored["metadata"].clone();
            let meta = metadata(&mut object)?;
            for field in ["uid", "creationTimestamp", "name", "namespace"] {
                match kept.get(field) {
                    Some(value) => meta.insert(field.into(), value.clone()),
                    None => meta.remove(field),
                };
            }
            meta.insert(
                "generation".into(),
                json!(generation + u64::from(spec_changed)),
            );
            updated = object;
        }
        if updated == stored {
            return Ok(stored);
        }
        self.revision += 1;
        metadata(&mut updated)?.insert("resourceVersion".into(), json!(self.revision.to_string()));
        self.objects
            .entry(place.resource.clone())
            .or_default()
            .insert(
                (place.namespace.clone(), place.name.clone()),
                updated.clone(),
            );
        self.record(&place.resource, "MODIFIED", &updated);
        Ok(updated)
    }

    /// Deletes the object at `place`; with `precondition`, only at that resourceVersion (409
    /// Conflict otherwise, as the API server's DeleteOptions.preconditions).
    pub fn delete(&mut self, place: &Place, precondition: Option<&str>) -> Result<Value, ApiError> {
        if let Some(expected) = precondition {
            let stored = self.get(place)?;
            if meta_str(&stored, "resourceVersion") != Some(expected) {
                return Err(ApiError::conflict(place));
            }
        }
        let key = (place.namespace.clone(), place.name.clone());
        let mut object = self
            .objects
            .get_mut(&place.resource)
            .and_then(|objects| objects.remove(&key))
            .ok_or_else(|| ApiError::not_found(place))?;
        self.revision += 1;
        metadata(&mut object)?.insert("resourceVersion".into(), json!(self.revision.to_string()));
        self.record(&place.resource, "DELETED", &object);
        Ok(object)
    }

    /// A page of the objects of `resource` (in `namespace`, or all when empty) that `selector`
    /// picks, in namespace and name order, starting after `after`.
    pub fn list(
        &self,
        scope: &Scope,
        limit: Option<usize>,
        after: Option<(String, String)>,
    ) -> Page {
        let mut items = Vec::new();
        let mut next = None;
        if let Some(objects) = self.objects.get(&scope.resource) {
            let picked = objects
                .iter()
                .filter(|((ns, _), _)| scope.namespace.is_empty() || *ns == scope.namespace)
                .filter(|(key, _)| after.as_ref().is_none_or(|after| *key > after))
                .filter(|(_, object)| scope.selector.matches(object))
                .map(|(_, object)| object);
            for object in picked {
                if let Some(last) = items.last()
                    && limit.is_some_and(|limit| items.len() >= limit)
                {
                    // There is more: the next page starts after the last one sent.
                    next = Some(continue_token(self.revision, last));
                    break;
                }
                items.push(object.clone());
            }
        }
        Page {
            items,
            revision: self.revision,
            next,
        }
    }

    /// The changes after `since` that a watch must replay, and the live changes after them; 410
    /// Gone when `since` is older than the history kept. Without `since`, every current object
    /// is replayed as ADDED.
    pub fn watch(
        &self,
        scope: &Scope,
        since: Option<u64>,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Change>), ApiError> {
        let live = self.live.subscribe();
        let backlog = match since {
            None => self
                .list(scope, None, None)
                .items
                .into_iter()
                .map(|object| Event {
                    resource: scope.resource.clone(),
                    kind: "ADDED",
                    object,
                    revision: self.revision,
                })
                .collect(),
            Some(since) if since < self.floor => return Err(ApiError::gone(since, self.floor)),
            Some(since) => self
                .history
                .iter()
                .filter(|e| e.revision > since && scope.contains(e))
                .cloned()
                .collect(),
        };
        Ok((backlog, live))
    }

    /// Drops all history: resumes from before now get 410 Gone, and open watches end with it.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.revision;
        let _ = self.live.send(Change::Compacted);
    }

    fn record(&mut self, resource: &str, kind: &'static str, object: &Value) {
        let event = Event {
            resource: resource.to_string(),
            kind,
            object: object.clone(),
            revision: self.revision,
        };
        if self.history.len() == HISTORY
            && let Some(oldest) = self.history.pop_front()
        {
            self.floor = oldest.revision;
        }
        self.history.push_back(event.clone());
        let _ = self.live.send(Change::Event(event));
    }
}

/// `<revision>/<namespace>/<name>` of the last object sent: where the next page starts.
fn continue_token(revision: u64, last: &Value) -> String {
    let namespace = last["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = last["metadata"]["name"].as_str().unwrap_or_default();
    format!("{revision}/{namespace}/{name}")
}

/// The revision a continue token was issued at, and the key its page ended with.
pub fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    let mut parts = token.splitn(3, '/');
    let revision = parts.next()?.parse().ok()?;
    let namespace = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    Some((revision, (namespace, name)))
}

fn metadata(object: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let Some(fields) = object.as_object_mut() else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    let meta = fields
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::invalid("metadata must be an object"))
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// Now, as Kubernetes writes timestamps: RFC 3339, seconds, UTC.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

//! Where policy resources live durably, behind one contract every backend keeps: the embedded
//! file, or the Kubernetes API server (etcd is the backend to come). The policy layer above
//! (validation, the published state discovery reads) never knows which one it talks to.
//!
//! The contract is the API server's: every resource carries the version of its last change,
//! writes name the version they expect (optimistic concurrency, no locks held by callers), and
//! a watch resumes from a revision or says the revision is gone, so the watcher lists again.
//! The conformance suite (`conformance.rs`) is the contract's executable form: every backend
//! runs it.

mod embedded;
mod kubernetes;
mod timed;

#[cfg(test)]
pub(crate) mod conformance;

use std::sync::Arc;

use tokio::sync::broadcast;

pub use embedded::Embedded;
pub use kubernetes::Kubernetes;
pub(crate) use kubernetes::{api_resource, decode};
pub use timed::Timed;

use crate::policy::{Key, Resource};
use crate::store::StoreError;

/// A resource and the version of its last change.
#[derive(Debug, Clone)]
pub struct Stored {
    pub resource: Arc<Resource>,
    pub resource_version: u64,
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub struct Event {
    pub deleted: bool,
    pub stored: Stored,
    pub revision: u64,
}

/// Every resource, and the revision the listing is at (a watch from it misses nothing).
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub revision: u64,
    pub resources: Vec<Stored>,
}

/// What a write expects to find: the guard of optimistic concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Whatever is there (a blind write).
    Any,
    /// Nothing: the write creates.
    Absent,
    /// The resource at exactly this version.
    Version(u64),
}

/// A write of several resources, committed as one.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The revision the store is at after the write.
    pub revision: u64,
    /// The resources written, with their new versions, in the order given.
    pub stored: Vec<Stored>,
}

/// The backlog of a watch and the receiver of what comes after it.
#[derive(Debug)]
pub struct Watch {
    /// Changes after the revision asked for that the backend has seen, oldest first.
    pub backlog: Vec<Event>,
    /// Changes to come. A backend that learns of changes from streams of its own (the API
    /// server's watches, one per kind) delivers them as they arrive: some may come late, out
    /// of revision order across kinds, or again (one at or before the revision asked for, or
    /// already in the backlog). Consumers apply a change only when its version is newer than
    /// what they hold. A receiver that lags has lost events: list again and watch anew.
    pub live: broadcast::Receiver<Event>,
}

/// Why a write was refused. Nothing is written when it is.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The resource is not at the version the write expected (0: it does not exist).
    #[error("{key} has resourceVersion {stored}, not {sent}: it changed since you read it")]
    Conflict { key: Key, stored: u64, sent: u64 },
    /// Nothing to delete.
    #[error("{0} does not exist")]
    NotFound(Key),
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a watch cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The revision is older than the changes the backend still holds (the API server's
    /// 410 Gone): list again, and watch from the listing's revision.
    #[error("revision {since} is older than the changes kept (from {oldest}); list again")]
    Gone { since: u64, oldest: u64 },
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A durable home for policy resources. Calls may block (a commit is durable when it returns):
/// async callers run them on the blocking pool.
pub trait ResourceStore: Send + Sync + std::fmt::Debug {
    /// One resource, if it exists.
    fn get(&self, key: &Key) -> Result<Option<Stored>, StoreError>;

    /// Every resource.
    fn list(&self) -> Result<Listing, StoreError>;

    /// Creates or replaces `puts`, all or none, each only if it is as expected. The store
    /// assigns the versions; a version sent inside a resource is ignored.
    fn apply(&self, puts: Vec<(Resource, Expected)>) -> Result<Written, WriteError>;

    /// Deletes one resource if it is as expected; returns the revision after the delete.
    fn delete(&self, key: &Key, expected: Expected) -> Result<u64, WriteError>;

    /// Changes after `since` (0: only those to come).
    fn watch(&self, since: u64) -> Result<Watch, WatchError>;
}

impl Expected {
    /// Whether a resource at `stored` (`None`: absent) is what this expects; the version
    /// found otherwise, for the conflict (0 for absent).
    fn check(self, stored: Option<u64>) -> Result<(), (u64, u64)> {
        match (self, stored) {
            (Expected::Any, _) | (Expected::Absent, None) => Ok(()),
            (Expected::Version(sent), Some(found)) if sent == found => Ok(()),
            (Expected::Absent, Some(found)) => Err((found, 0)),
            (Expected::Version(sent), found) => Err((found.unwrap_or(0), sent)),
        }
    }
}

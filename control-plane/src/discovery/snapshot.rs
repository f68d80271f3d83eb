//! The snapshots proxies watch: resolved from the policy state, put in wire form, and cached per
//! revision so a change watched by many proxies is computed once.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use weft_api::discovery as pb;

use super::names::ClusterDomain;
use super::{inbound, outbound, wire};
use crate::policy::Port;
use crate::policy_store::PolicyState;

/// Destinations whose snapshot is kept per revision at most: a proxy naming ever new destinations
/// cannot grow the cache without bound (past it, snapshots are computed but not kept).
const MAX_CACHED: usize = 10_000;

/// What a state's snapshots are versioned by: its revision and cluster generation.
type ServedVersion = (u64, u64);

/// Snapshots computed at the current revision, shared by every watcher of a destination: a
/// change watched by a thousand proxies is computed once per destination.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    cluster_domain: ClusterDomain,
    entries: Mutex<(ServedVersion, HashMap<String, Arc<pb::OutboundSnapshot>>)>,
}

impl SnapshotCache {
    /// An empty cache resolving Service names under `cluster_domain`.
    pub fn new(cluster_domain: ClusterDomain) -> Self {
        Self {
            cluster_domain,
            entries: Mutex::default(),
        }
    }

    /// The snapshot of `destination` in `state` (its version left empty).
    pub fn outbound(&self, state: &PolicyState, destination: &str) -> Arc<pb::OutboundSnapshot> {
        let version = state.served_version();
        {
            let entries = self.entries.lock();
            if entries.0 == version
                && let Some(snapshot) = entries.1.get(destination)
            {
                return snapshot.clone();
            }
        }
        let snapshot = Arc::new(outbound_snapshot(state, &self.cluster_domain, destination));
        let mut entries = self.entries.lock();
        if version > entries.0 {
            // A new version: everything cached is stale.
            *entries = (version, HashMap::new());
        }
        // A watcher still on an older state must not replace the newer cache.
        if version == entries.0 && entries.1.len() < MAX_CACHED {
            entries.1.insert(destination.to_string(), snapshot.clone());
        }
        snapshot
    }
}

/// The snapshot for `destination` (`host:port`), version left empty.
pub fn outbound_snapshot(
    state: &PolicyState,
    cluster_domain: &ClusterDomain,
    destination: &str,
) -> pb::OutboundSnapshot {
    wire::outbound(outbound::resolve(state, cluster_domain, destination).as_ref())
}

/// The inbound policy of `port` (`None`: every port) on the workloads `identity` runs as,
/// version left empty.
pub fn inbound_snapshot(
    state: &PolicyState,
    identity: &str,
    port: Option<Port>,
) -> pb::InboundSnapshot {
    wire::inbound(&inbound::resolve(state, identity, port))
}

#[cfg(test)]
mod tests;

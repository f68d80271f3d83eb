//! The stacks of discovered destinations. Discovery hands out what a destination *is* (domain
//! values); the outbound side builds the per-request stack from it, here, once per snapshot,
//! over a runtime (balancers, budgets, rate limit) that outlives the snapshots of that
//! destination.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::destination::Destination;
use crate::destination::discovery::{Resolution, Resolved};
use crate::metrics::ProxyMetrics;
use crate::stack::{DestinationRuntime, DestinationStack};
use crate::transport::PeerPool;

/// A destination's value and the stack built from it.
type Built = (Arc<Destination>, Arc<DestinationStack>);

/// Runtimes and stacks by destination.
#[derive(Debug)]
pub struct Stacks {
    pool: PeerPool,
    metrics: ProxyMetrics,
    replay_limit: usize,
    /// Destinations kept at most (as many as discovery watches).
    max: usize,
    by_destination: Mutex<HashMap<Arc<str>, Entry>>,
}

#[derive(Debug)]
struct Entry {
    runtime: Arc<DestinationRuntime>,
    built: Option<Built>,
    used: Instant,
}

/// A discovered destination as a connection keeps it: discovery's watch, read afresh on each
/// request so policy updates apply at once, and the stack of the value it last read.
#[derive(Debug)]
pub struct Followed {
    key: Arc<str>,
    resolution: Resolution,
    built: Mutex<Built>,
}

impl Stacks {
    /// Stacks dialing through `pool`, keeping request bodies up to `replay_limit` for retries,
    /// for at most `max` destinations.
    pub fn new(pool: PeerPool, metrics: ProxyMetrics, replay_limit: usize, max: usize) -> Self {
        Self {
            pool,
            metrics,
            replay_limit,
            max: max.max(1),
            by_destination: Mutex::new(HashMap::new()),
        }
    }

    /// The stack of `destination` as discovery gave it for `key`: built once per value, over
    /// the destination's lasting runtime.
    pub fn stack(&self, key: &str, destination: &Arc<Destination>) -> Arc<DestinationStack> {
        let mut by_destination = self.by_destination.lock();
        if !by_destination.contains_key(key) && by_destination.len() >= self.max {
            let oldest = by_destination
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                by_destination.remove(&oldest);
            }
        }
        let entry = by_destination
            .entry(Arc::from(key))
            .or_insert_with(|| Entry {
                runtime: Arc::new(DestinationRuntime::new(
                    self.pool.clone(),
                    self.metrics.clone(),
                    self.replay_limit,
                )),
                built: None,
                used: Instant::now(),
            });
        entry.used = Instant::now();
        if let Some((value, stack)) = &entry.built
            && Arc::ptr_eq(value, destination)
        {
            return stack.clone();
        }
        let stack = Arc::new(entry.runtime.build(destination, ""));
        entry.built = Some((destination.clone(), stack.clone()));
        stack
    }

    /// Keeps following `key` through `resolution`, from `destination` on.
    pub fn follow(
        &self,
        key: &str,
        resolution: Resolution,
        destination: &Arc<Destination>,
    ) -> Followed {
        let stack = self.stack(key, destination);
        Followed {
            key: Arc::from(key),
            resolution,
            built: Mutex::new((destination.clone(), stack)),
        }
    }
}

impl Followed {
    /// The current stack; `None` once discovery no longer has the destination (its watch
    /// ended, or it left the mesh). A pointer comparison per request while nothing changed.
    pub fn current(&self, stacks: &Stacks) -> Option<Arc<DestinationStack>> {
        let Resolved::Found(destination) = self.resolution.current()? else {
            return None;
        };
        let mut built = self.built.lock();
        if !Arc::ptr_eq(&built.0, &destination) {
            *built = (destination.clone(), stacks.stack(&self.key, &destination));
        }
        Some(built.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(port: u16) -> Arc<Destination> {
        Arc::new(Destination::single(
            "api.shop:80",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "spiffe://cluster.local/ns/shop/sa/api".parse().unwrap(),
            false,
        ))
    }

    #[test]
    fn a_stack_is_built_once_per_value_and_destinations_are_bounded() {
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let stacks = Stacks::new(crate::transport::test_support::pool(), metrics, 0, 2);
        let first = destination(1);
        let a = stacks.stack("a:80", &first);
        assert!(Arc::ptr_eq(&a, &stacks.stack("a:80", &first)));
        assert!(!Arc::ptr_eq(&a, &stacks.stack("a:80", &destination(2))));
        stacks.stack("b:80", &first);
        stacks.stack("c:80", &first);
        assert_eq!(stacks.by_destination.lock().len(), 2);
    }
}

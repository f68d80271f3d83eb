//! How many discovery watches the control plane holds open: per proxy identity (a compromised
//! or buggy workload cannot take them all) and in total.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::Status;
use weft_certs::Identity;

/// The watch limits, shared by every stream.
#[derive(Debug)]
pub struct WatchLimits {
    per_identity: usize,
    total: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_identity: HashMap<Identity, usize>,
}

/// One open watch, counted until dropped.
#[derive(Debug)]
pub struct WatchPermit {
    limits: Arc<WatchLimits>,
    identity: Identity,
}

impl WatchLimits {
    /// At most `per_identity` watches for one identity and `total` in all.
    pub fn new(per_identity: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_identity,
            total,
            open: Mutex::default(),
        })
    }

    /// Counts a new watch by `identity`, or refuses it with RESOURCE_EXHAUSTED.
    pub fn admit(self: &Arc<Self>, identity: &Identity) -> Result<WatchPermit, Status> {
        let mut open = self.open.lock();
        if open.total >= self.total {
            return Err(Status::resource_exhausted(format!(
                "the control plane holds its limit of {} discovery watches in total",
                self.total
            )));
        }
        let mine = open.by_identity.entry(identity.clone()).or_default();
        if *mine >= self.per_identity {
            return Err(Status::resource_exhausted(format!(
                "{identity} holds its limit of {} discovery watches per identity",
                self.per_identity
            )));
        }
        *mine += 1;
        open.total += 1;
        Ok(WatchPermit {
            limits: self.clone(),
            identity: identity.clone(),
        })
    }

    /// Watches open now.
    pub fn open(&self) -> usize {
        self.open.lock().total
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.by_identity.get_mut(&self.identity) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.by_identity.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_capped_per_identity_and_in_total_and_freed_on_drop() {
        let limits = WatchLimits::new(2, 3);
        let web: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let api: Identity = "spiffe://cluster.local/ns/shop/sa/api".parse().unwrap();
        let first = limits.admit(&web).unwrap();
        let _second = limits.admit(&web).unwrap();
        let refused = limits.admit(&web).unwrap_err();
        assert!(refused.message().contains("per identity"), "{refused:?}");
        let _third = limits.admit(&api).unwrap();
        let refused = limits.admit(&api).unwrap_err();
        assert!(refused.message().contains("in total"), "{refused:?}");
        drop(first);
        assert_eq!(limits.open(), 2);
        limits.admit(&web).unwrap();
    }
}

//! The workload's inbound rate limits: one bucket for every client together and one per client
//! identity (unauthenticated clients share one), refused (429) rather than queued.

use std::collections::HashMap;

use parking_lot::Mutex;
use weft_certs::Identity;

use crate::destination::RateLimit;
use crate::stack::TokenBucket;

/// Identities with a bucket of their own; past that, the others share one. Clients choose
/// their certificates' identities only within the trust domain, but the map stays bounded.
const MAX_IDENTITY_BUCKETS: usize = 10_000;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Total,
    PerIdentity,
}

/// Buckets for the limits in force, rebuilt when they change.
#[derive(Debug, Default)]
pub struct InboundRateLimits {
    state: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    limits: (Option<RateLimit>, Option<RateLimit>),
    total: Option<TokenBucket>,
    per_identity: HashMap<Option<Identity>, TokenBucket>,
    overflow: Option<TokenBucket>,
}

impl InboundRateLimits {
    /// Takes a token for `client` under `limits` (total, per identity).
    pub fn check(
        &self,
        limits: (Option<RateLimit>, Option<RateLimit>),
        client: Option<&Identity>,
    ) -> Result<(), Limited> {
        if limits == (None, None) {
            return Ok(());
        }
        let mut state = self.state.lock();
        if state.limits != limits {
            *state = Buckets {
                limits,
                total: limits.0.map(TokenBucket::new),
                per_identity: HashMap::new(),
                overflow: limits.1.map(TokenBucket::new),
            };
        }
        if let Some(per_identity) = limits.1 {
            let key = client.cloned();
            let buckets = &mut state.per_identity;
            let bucket = if buckets.contains_key(&key) || buckets.len() < MAX_IDENTITY_BUCKETS {
                buckets
                    .entry(key)
                    .or_insert_with(|| TokenBucket::new(per_identity))
            } else {
                state
                    .overflow
                    .get_or_insert_with(|| TokenBucket::new(per_identity))
            };
            if !bucket.try_acquire() {
                return Err(Limited::PerIdentity);
            }
        }
        if let Some(total) = &state.total
            && !total.try_acquire()
        {
            return Err(Limited::Total);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_identity_has_its_own_bucket_within_the_total() {
        let limits = InboundRateLimits::default();
        let rate = |n| {
            Some(RateLimit {
                per_second: n,
                burst: n,
            })
        };
        let web: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let cart: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        let both = (rate(3), rate(2));
        assert_eq!(limits.check(both, Some(&web)), Ok(()));
        assert_eq!(limits.check(both, Some(&web)), Ok(()));
        assert_eq!(limits.check(both, Some(&web)), Err(Limited::PerIdentity));
        assert_eq!(limits.check(both, Some(&cart)), Ok(()));
        assert_eq!(limits.check(both, None), Err(Limited::Total));
        // New limits: new buckets.
        assert_eq!(limits.check((None, rate(1)), Some(&web)), Ok(()));
        assert_eq!(limits.check((None, None), Some(&web)), Ok(()));
    }
}

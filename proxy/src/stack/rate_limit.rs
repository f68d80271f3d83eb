//! A destination's outbound rate limit: a token bucket, refused (429) rather than queued.

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::destination::RateLimit;

/// Tokens refill at `per_second`, up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            state: Mutex::new((f64::from(limit.burst), Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn try_acquire(&self) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock();
        let (tokens, last) = *state;
        let refilled = tokens
            + now.saturating_duration_since(last).as_secs_f64() * f64::from(self.limit.per_second);
        let tokens = refilled.min(f64::from(self.limit.burst));
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_the_burst_then_the_rate() {
        let bucket = TokenBucket::new(RateLimit {
            per_second: 10,
            burst: 3,
        });
        assert!((0..3).all(|_| bucket.try_acquire()));
        assert!(!bucket.try_acquire());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.try_acquire());
        assert!(!bucket.try_acquire());
    }
}

//! What an optional field means when a manifest leaves it out, in one place: resolution and the
//! wire read these, never the raw `Option`s.

use std::time::Duration;

use super::{BackendRef, CircuitBreaker, RateLimit, RetryBudget, RouteRetry, SuccessRate};

impl BackendRef {
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

impl<C> RouteRetry<C> {
    /// Retries after the first attempt.
    pub fn attempts(&self) -> u32 {
        self.attempts.unwrap_or(1)
    }

    /// Before the first retry.
    pub fn backoff(&self) -> Duration {
        self.backoff
            .as_ref()
            .map_or(Duration::from_millis(25), |b| b.get())
    }
}

impl RetryBudget {
    /// Retries as a fraction of requests.
    pub fn ratio(&self) -> f64 {
        self.ratio.unwrap_or(0.2)
    }

    /// Retries always allowed per second.
    pub fn min_retries_per_second(&self) -> u32 {
        self.min_retries_per_second.unwrap_or(10)
    }

    /// How long requests count.
    pub fn window(&self) -> Duration {
        self.window
            .as_ref()
            .map_or(Duration::from_secs(10), |w| w.get())
    }
}

impl CircuitBreaker {
    /// Failures in a row that eject an endpoint; 0: never for that reason.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.unwrap_or(0)
    }
}

impl SuccessRate {
    /// Requests an endpoint must have served in the window before its rate is judged.
    pub fn min_requests(&self) -> u32 {
        self.min_requests.unwrap_or(20)
    }
}

impl RateLimit {
    /// Requests allowed at once: one second's worth.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

//! What an optional field means when a manifest leaves it out, in one place: resolution and the
//! wire read these, never the raw `Option`s.

use std::time::Duration;

use super::{
    BackendRef, CircuitBreaker, RateLimit, RequestMirror, RetryBudget, RouteRetry, SuccessRate,
    WorkloadSpec,
};

impl WorkloadSpec {
    /// Relative share of its services' traffic.
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

impl BackendRef {
    /// Relative share of the rule's traffic.
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

impl RequestMirror {
    /// Requests mirrored, in percent: all when neither `percent` nor `fraction` says.
    pub fn percent(&self) -> Option<u32> {
        match (&self.percent, &self.fraction) {
            (Some(percent), _) => Some(*percent),
            (None, Some(fraction)) => {
                let denominator = u64::from(fraction.denominator.unwrap_or(100)).max(1);
                u32::try_from(u64::from(fraction.numerator) * 100 / denominator).ok()
            }
            (None, None) => None,
        }
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
    /// When `minRequests` is left out.
    pub const DEFAULT_MIN_REQUESTS: u32 = 20;

    /// Requests an endpoint must have served in the window before its rate is judged.
    pub fn min_requests(&self) -> u32 {
        self.min_requests.unwrap_or(Self::DEFAULT_MIN_REQUESTS)
    }
}

impl RateLimit {
    /// Requests allowed at once: one second's worth.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

//! Retries: only on the route's conditions, only with a replayable body, only within budget.
//!
//! tower's `Retry` drives the attempts; this policy decides. The budget is tower's `TpsBudget`:
//! every request deposits, every retry withdraws, so retries stay within a ratio of requests
//! (plus a small floor per second) however bad the upstream gets.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tower::retry::budget::{Budget, TpsBudget};

use super::{HttpRequest, HttpResponse, ProxyError};
use crate::destination::{RetryBudget, RetryPolicy};

/// The budget when a route retries but names none: 20 % plus 10/s over 10 s (Linkerd's).
pub fn default_budget() -> RetryBudget {
    RetryBudget {
        ratio: 0.2,
        min_per_second: 10,
        window: Duration::from_secs(10),
    }
}

/// A shared budget built from its configuration.
pub fn budget(config: &RetryBudget) -> Arc<TpsBudget> {
    // `compile` already clamped the window to 1–60 s and the ratio to 0–1000, which is what
    // `TpsBudget::new` asserts.
    Arc::new(TpsBudget::new(
        config.window,
        config.min_per_second,
        config.ratio,
    ))
}

/// Counters of one route's retries.
#[derive(Debug, Clone)]
pub struct RetryMetrics {
    pub retries: IntCounter,
    pub budget_exhausted: IntCounter,
}

/// The decision for one request (cloned per request by tower's `Retry`).
#[derive(Clone)]
pub struct Policy {
    config: Arc<RetryPolicy>,
    budget: Arc<TpsBudget>,
    metrics: RetryMetrics,
    attempts_left: u32,
    retried: u32,
    deposited: bool,
}

impl Policy {
    /// A policy for `config`, spending from `budget`.
    pub fn new(config: Arc<RetryPolicy>, budget: Arc<TpsBudget>, metrics: RetryMetrics) -> Self {
        Self {
            attempts_left: config.attempts,
            config,
            budget,
            metrics,
            retried: 0,
            deposited: false,
        }
    }

    fn wants_retry(&self, result: &Result<HttpResponse, ProxyError>) -> bool {
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                if self.config.http_codes.contains(&status) {
                    return true;
                }
                // A gRPC error before any message arrives in the headers (trailers-only).
                response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .is_some_and(|code| self.config.grpc_codes.contains(&code))
            }
            Err(error) => self.config.on_connect_failure && error.is_retryable(),
        }
    }

    fn backoff(&self) -> Duration {
        // Exponential, with full jitter between half and all of it.
        let exponential = self
            .config
            .backoff
            .saturating_mul(2u32.saturating_pow(self.retried.min(10)));
        exponential.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

impl tower::retry::Policy<HttpRequest, HttpResponse, ProxyError> for Policy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut HttpRequest,
        result: &mut Result<HttpResponse, ProxyError>,
    ) -> Option<Self::Future> {
        if self.attempts_left == 0 || !self.wants_retry(result) {
            return None;
        }
        if !self.budget.withdraw() {
            self.metrics.budget_exhausted.inc();
            return None;
        }
        let backoff = self.backoff();
        self.attempts_left -= 1;
        self.retried += 1;
        self.metrics.retries.inc();
        Some(tokio::time::sleep(backoff))
    }

    fn clone_request(&mut self, request: &HttpRequest) -> Option<HttpRequest> {
        if !self.deposited {
            self.deposited = true;
            self.budget.deposit();
        }
        let body = request.body().try_clone()?;
        let mut clone = http::Request::new(body);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}

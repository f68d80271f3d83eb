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
use crate::metrics::{RetryReason, RouteRetries};

/// The longest wait between attempts, unless the route's backoff itself is longer.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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
    pub retries: RouteRetries,
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

    /// Why `result` should be retried, if it should.
    fn wants_retry(
        &self,
        request: &HttpRequest,
        result: &Result<HttpResponse, ProxyError>,
    ) -> Option<RetryReason> {
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                if self.config.http_codes.contains(&status) {
                    return Some(RetryReason::Status);
                }
                // A gRPC error before any message arrives in the headers (trailers-only).
                crate::http_util::grpc_status(response.headers())
                    .is_some_and(|code| self.config.grpc_codes.contains(&code))
                    .then_some(RetryReason::GrpcStatus)
            }
            Err(_) if !self.config.on_connect_failure => None,
            Err(error) if error.is_connect_failure() => Some(RetryReason::Connect),
            Err(error) if error.is_mid_request_failure() && is_idempotent(request.method()) => {
                Some(match error {
                    ProxyError::Timeout { .. } => RetryReason::Timeout,
                    _ => RetryReason::Stream,
                })
            }
            Err(_) => None,
        }
    }

    fn backoff(&self) -> Duration {
        // Exponential, with full jitter between half and all of it.
        let exponential = self
            .config
            .backoff
            .saturating_mul(2u32.saturating_pow(self.retried.min(10)));
        exponential
            .min(MAX_BACKOFF.max(self.config.backoff))
            .mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2): a request that failed mid-way is retried
/// only if it is one of these.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

impl tower::retry::Policy<HttpRequest, HttpResponse, ProxyError> for Policy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut HttpRequest,
        result: &mut Result<HttpResponse, ProxyError>,
    ) -> Option<Self::Future> {
        if self.attempts_left == 0 {
            return None;
        }
        let reason = self.wants_retry(request, result)?;
        if !self.budget.withdraw() {
            self.metrics.budget_exhausted.inc();
            return None;
        }
        let backoff = self.backoff();
        self.attempts_left -= 1;
        self.retried += 1;
        self.metrics.retries.inc(reason);
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
        // What observes the request (its span, its access log) follows every attempt.
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::PeerError;

    fn policy() -> Policy {
        let config = RetryPolicy {
            http_codes: vec![503],
            grpc_codes: vec![14],
            on_connect_failure: true,
            attempts: 2,
            backoff: Duration::from_millis(10),
        };
        let metrics = crate::metrics::ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let metrics = RetryMetrics {
            retries: metrics.route_retries("api", "r"),
            budget_exhausted: metrics.route_budget_exhausted("api", "r"),
        };
        Policy::new(Arc::new(config), budget(&default_budget()), metrics)
    }

    fn request(method: http::Method) -> HttpRequest {
        let mut request = http::Request::new(super::super::ReplayBody::streaming_only(
            crate::http_util::empty_body(),
        ));
        *request.method_mut() = method;
        request
    }

    fn reset() -> ProxyError {
        ProxyError::Stream(PeerError::Http {
            addr: "127.0.0.1:1".parse().unwrap(),
            reason: "reset".into(),
        })
    }

    fn refused() -> ProxyError {
        ProxyError::Connect(PeerError::Dial {
            addr: "127.0.0.1:1".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
            reason: "refused".into(),
        })
    }

    #[test]
    fn connect_failures_are_retried_for_any_method() {
        let p = policy();
        assert_eq!(
            p.wants_retry(&request(http::Method::POST), &Err(refused())),
            Some(RetryReason::Connect)
        );
    }

    #[test]
    fn a_reset_is_retried_only_for_idempotent_methods() {
        let p = policy();
        assert_eq!(
            p.wants_retry(&request(http::Method::GET), &Err(reset())),
            Some(RetryReason::Stream)
        );
        assert_eq!(
            p.wants_retry(&request(http::Method::POST), &Err(reset())),
            None
        );
    }

    #[test]
    fn a_timeout_is_retried_only_for_idempotent_methods_and_named_as_such() {
        let p = policy();
        let timeout = || ProxyError::Timeout {
            what: "backend request",
            after: Duration::from_millis(200),
        };
        assert_eq!(
            p.wants_retry(&request(http::Method::GET), &Err(timeout())),
            Some(RetryReason::Timeout)
        );
        assert_eq!(
            p.wants_retry(&request(http::Method::POST), &Err(timeout())),
            None
        );
    }

    #[test]
    fn configured_statuses_and_grpc_codes_are_retried() {
        let p = policy();
        let mut response = HttpResponse::new(crate::http_util::empty_body());
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            p.wants_retry(&request(http::Method::POST), &Ok(response)),
            Some(RetryReason::Status)
        );
        let mut grpc = HttpResponse::new(crate::http_util::empty_body());
        grpc.headers_mut()
            .insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            p.wants_retry(&request(http::Method::POST), &Ok(grpc)),
            Some(RetryReason::GrpcStatus)
        );
        let ok = HttpResponse::new(crate::http_util::empty_body());
        assert_eq!(p.wants_retry(&request(http::Method::GET), &Ok(ok)), None);
    }

    #[test]
    fn backoff_grows_but_is_capped() {
        let mut p = policy();
        p.retried = 20;
        assert!(p.backoff() <= MAX_BACKOFF);
    }
}

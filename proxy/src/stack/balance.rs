//! Load balancing over one backend's endpoints, with circuit breaking.
//!
//! Power of two choices over peak-EWMA: pick two endpoints at random and send to the one whose
//! latency estimate times (outstanding requests + 1), divided by its weight, is lower. The
//! estimate jumps up to every slower response at once and decays back over ~10 s, so a
//! slowing endpoint loses traffic quickly and regains it gradually. Round robin is the
//! alternative.
//!
//! Why not tower's `p2c::Balance`: it needs exclusive access (`&mut self` readiness) and so a
//! `Buffer` task and channel hop in front of it on every request. Here every connection's task
//! picks directly from shared, lock-light state.
//!
//! Circuit breaking: an endpoint that fails too often in a row (or whose success rate drops
//! below a floor) is ejected for a backoff that doubles on each ejection in a row; once the
//! backoff passes it is probed with real traffic, and one failure ejects it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use super::{HttpRequest, HttpResponse, ProxyError};
use crate::destination::{CircuitBreaker, EndpointSpec, LoadBalancerKind};
use crate::metrics::{AttemptEnd, BackendMetrics};
use crate::observe::Picked;
use crate::transport::{Handshake, Peer, PeerPool};

/// How an endpoint is dialed: a Weft proxy, or a foreign SPIFFE workload.
pub fn handshake(endpoint: &EndpointSpec) -> Handshake {
    if endpoint.foreign_spiffe {
        Handshake::StandardMtls
    } else {
        Handshake::Weft
    }
}

/// No ejection lasts longer, whatever the policy says.
const MAX_EJECTION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Latency assumed for an endpoint with no history: low, so new endpoints get tried.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How fast the latency estimate decays back after a peak.
const DECAY: Duration = Duration::from_secs(10);
/// The latency a failed request counts as, at least.
const FAILURE_PENALTY: Duration = Duration::from_millis(100);

/// A backend's balancer. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Arc<str>,
    kind: LoadBalancerKind,
    breaker: Option<CircuitBreaker>,
    connect_timeout: Option<Duration>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
    metrics: BalancerMetrics,
}

/// Ejection counters of one backend, and what its attempts get.
#[derive(Debug, Clone)]
pub struct BalancerMetrics {
    pub ejections: IntCounter,
    pub ejected: IntGauge,
    pub attempts: BackendMetrics,
}

/// One endpoint and what the balancer knows of it.
#[derive(Debug)]
pub struct Endpoint {
    spec: EndpointSpec,
    peer: Arc<Peer>,
    pending: AtomicU32,
    latency: Mutex<Ewma>,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Ewma {
    cost_ns: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Health {
    consecutive_failures: u32,
    window_start: Instant,
    successes: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    ejections_in_a_row: u32,
    probing: bool,
}

// === impl Balancer ===

impl Balancer {
    /// A balancer for `backend` (no endpoints until [`Balancer::update`]).
    pub fn new(
        backend: Arc<str>,
        kind: LoadBalancerKind,
        breaker: Option<CircuitBreaker>,
        connect_timeout: Option<Duration>,
        metrics: BalancerMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                kind,
                breaker,
                connect_timeout,
                endpoints: ArcSwap::from_pointee(Vec::new()),
                next: AtomicUsize::new(0),
                metrics,
            }),
        }
    }

    /// True when this balancer was built with the same settings.
    pub fn is_configured_as(
        &self,
        kind: LoadBalancerKind,
        breaker: &Option<CircuitBreaker>,
        connect_timeout: Option<Duration>,
    ) -> bool {
        self.inner.kind == kind
            && self.inner.breaker == *breaker
            && self.inner.connect_timeout == connect_timeout
    }

    /// Replaces the endpoint set, keeping the state of endpoints that stay.
    pub fn update(&self, specs: &[EndpointSpec], pool: &PeerPool) {
        let current = self.inner.endpoints.load();
        let mut next = Vec::with_capacity(specs.len());
        let mut ejected = 0;
        for spec in specs {
            if let Some(existing) = current.iter().find(|e| e.spec == *spec) {
                ejected += i64::from(existing.health.lock().ejected_until.is_some());
                next.push(existing.clone());
                continue;
            }
            match pool.peer_with(spec.address, &spec.identity, handshake(spec)) {
                Ok(peer) => next.push(Arc::new(Endpoint::new(spec.clone(), peer))),
                Err(error) => tracing::warn!(%error, "skipping an endpoint"),
            }
        }
        self.inner.metrics.ejected.set(ejected);
        self.inner.endpoints.store(Arc::new(next));
        pool.sweep();
    }

    /// Sends `request` to the endpoint chosen now, recording the outcome.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, ProxyError> {
        let endpoint = self.pick()?;
        Picked::endpoint(&request, &self.inner.backend, &endpoint.spec.identity);
        // Dropped on every path, including when a timeout above cancels this future: the request
        // must leave the pending count, and a cancelled one counts as a failure.
        let mut attempt = Attempt {
            balancer: self,
            endpoint: &endpoint,
            started: Instant::now(),
            failed: None,
            end: None,
        };
        endpoint.pending.fetch_add(1, Ordering::Relaxed);
        let result = endpoint
            .peer
            .send(
                request.map(super::ReplayBody::into_body),
                self.inner.connect_timeout,
            )
            .await
            .map_err(ProxyError::from);
        attempt.failed = Some(match &result {
            Ok(response) => response.status().is_server_error(),
            Err(error) => error.is_endpoint_failure(),
        });
        attempt.end = Some(match &result {
            Ok(response) => AttemptEnd::Answered(response.status()),
            Err(_) => AttemptEnd::Failed,
        });
        result
    }

    fn pick(&self) -> Result<Arc<Endpoint>, ProxyError> {
        let endpoints = self.inner.endpoints.load();
        let now = Instant::now();
        let chosen = match endpoints.len() {
            0 => return Err(ProxyError::NoEndpoints(self.inner.backend.clone())),
            1 => &endpoints[0],
            n => match self.inner.kind {
                LoadBalancerKind::RoundRobin => {
                    let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
                    // The next usable endpoint in turn; any, if none is usable (panic mode).
                    (0..n)
                        .map(|i| &endpoints[(start + i) % n])
                        .find(|e| e.is_usable(now))
                        .unwrap_or(&endpoints[start % n])
                }
                LoadBalancerKind::PeakEwma => {
                    let a = rand::random_range(0..n);
                    let b = (a + rand::random_range(1..n)) % n;
                    let (a, b) = (&endpoints[a], &endpoints[b]);
                    match (a.is_usable(now), b.is_usable(now)) {
                        (true, true) => {
                            if a.cost(now) <= b.cost(now) {
                                a
                            } else {
                                b
                            }
                        }
                        (true, false) => a,
                        (false, true) => b,
                        // Both sampled are ejected: fall back to any usable one, or (when every
                        // endpoint is ejected, where ejecting would only turn errors into
                        // refusals) to one of these ("panic mode").
                        (false, false) => endpoints.iter().find(|e| e.is_usable(now)).unwrap_or(a),
                    }
                }
            },
        };
        // Only a circuit breaker ejects: without one there is nothing to probe, and no lock
        // to take per request.
        if self.inner.breaker.is_some() && chosen.start_probe_if_due(now) {
            self.refresh_ejected_gauge(now);
        }
        Ok(chosen.clone())
    }

    fn record(&self, endpoint: &Endpoint, failed: bool) {
        let Some(breaker) = &self.inner.breaker else {
            return;
        };
        if let Some(duration) = endpoint.record(breaker, failed, Instant::now()) {
            self.inner.metrics.ejections.inc();
            self.refresh_ejected_gauge(Instant::now());
            tracing::info!(backend = %self.inner.backend, endpoint = %endpoint.spec.address, ejected_for = ?duration, "endpoint ejected");
        }
    }

    /// Recounts ejected endpoints; only when one is ejected or comes back, not per request.
    fn refresh_ejected_gauge(&self, now: Instant) {
        let endpoints = self.inner.endpoints.load();
        let ejected = endpoints.iter().filter(|e| !e.is_eligible(now)).count();
        self.inner.metrics.ejected.set(ejected as i64);
    }
}

/// One request to one endpoint, accounted for when it ends however it ends.
struct Attempt<'a> {
    balancer: &'a Balancer,
    endpoint: &'a Endpoint,
    started: Instant,
    /// `None` until the request completes: dropped unfinished, it was cancelled.
    failed: Option<bool>,
    /// How it ended, once it did.
    end: Option<AttemptEnd>,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        self.balancer
            .inner
            .metrics
            .attempts
            .record(self.end.unwrap_or(AttemptEnd::Cancelled), elapsed);
        let failed = self.failed.unwrap_or(true);
        // A failure costs as much as a slow response, so an endpoint that fails fast does not
        // look fast to the balancer.
        self.endpoint.observe_latency(if failed {
            elapsed.max(FAILURE_PENALTY)
        } else {
            elapsed
        });
        self.balancer.record(self.endpoint, failed);
    }
}

impl tower::Service<HttpRequest> for Balancer {
    type Response = HttpResponse;
    type Error = ProxyError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let balancer = self.clone();
        Box::pin(async move { balancer.send(request).await })
    }
}

// === impl Endpoint ===

impl Endpoint {
    fn new(spec: EndpointSpec, peer: Arc<Peer>) -> Self {
        let now = Instant::now();
        Self {
            spec,
            peer,
            pending: AtomicU32::new(0),
            latency: Mutex::new(Ewma {
                cost_ns: DEFAULT_RTT.as_nanos() as f64,
                updated: now,
            }),
            health: Mutex::new(Health {
                consecutive_failures: 0,
                window_start: now,
                successes: 0,
                failures: 0,
                ejected_until: None,
                ejections_in_a_row: 0,
                probing: false,
            }),
        }
    }

    fn is_eligible(&self, now: Instant) -> bool {
        self.health
            .lock()
            .ejected_until
            .is_none_or(|until| until <= now)
    }

    /// Eligible, and not drained (weight 0).
    fn is_usable(&self, now: Instant) -> bool {
        self.spec.weight > 0 && self.is_eligible(now)
    }

    /// An ejected endpoint whose backoff has passed gets one more chance: the next outcome
    /// decides. True when it comes back.
    fn start_probe_if_due(&self, now: Instant) -> bool {
        let mut health = self.health.lock();
        if health.ejected_until.is_some_and(|until| until <= now) {
            health.ejected_until = None;
            health.probing = true;
            return true;
        }
        false
    }

    /// Peak-EWMA cost: latency estimate × (outstanding + 1) ÷ weight.
    fn cost(&self, now: Instant) -> f64 {
        let latency = self.latency.lock();
        let elapsed = now.saturating_duration_since(latency.updated).as_secs_f64();
        let decayed = latency.cost_ns * (-elapsed / DECAY.as_secs_f64()).exp();
        let floor = DEFAULT_RTT.as_nanos() as f64;
        let pending = f64::from(self.pending.load(Ordering::Relaxed) + 1);
        decayed.max(floor) * pending / f64::from(self.spec.weight.max(1))
    }

    fn observe_latency(&self, rtt: Duration) {
        let now = Instant::now();
        let rtt = rtt.as_nanos() as f64;
        let mut latency = self.latency.lock();
        if rtt > latency.cost_ns {
            latency.cost_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(latency.updated).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            latency.cost_ns = latency.cost_ns * w + rtt * (1.0 - w);
        }
        latency.updated = now;
    }

    /// Records an outcome; returns the ejection time if this one ejected the endpoint.
    fn record(&self, breaker: &CircuitBreaker, failed: bool, now: Instant) -> Option<Duration> {
        let mut health = self.health.lock();
        if now.saturating_duration_since(health.window_start) > breaker.window {
            health.window_start = now;
            health.successes = 0;
            health.failures = 0;
        }
        if failed {
            health.failures += 1;
            health.consecutive_failures += 1;
        } else {
            health.successes += 1;
            health.consecutive_failures = 0;
            if health.probing {
                health.probing = false;
                health.ejections_in_a_row = 0;
            }
            return None;
        }
        let too_many_in_a_row = breaker.consecutive_failures > 0
            && health.consecutive_failures >= breaker.consecutive_failures;
        let total = health.successes + health.failures;
        let rate_too_low = breaker.min_success_rate > 0.0
            && total >= breaker.min_requests.max(1)
            && f64::from(health.successes) / f64::from(total) < breaker.min_success_rate;
        if !(health.probing || too_many_in_a_row || rate_too_low) || health.ejected_until.is_some()
        {
            return None;
        }
        let factor = 2u32.saturating_pow(health.ejections_in_a_row.min(16));
        let duration = breaker
            .base_ejection
            .saturating_mul(factor)
            .min(breaker.max_ejection);
        // `compile` bounds policy durations; capped and checked anyway, as an overflow here
        // would abort the proxy.
        let until = now.checked_add(duration.min(MAX_EJECTION)).unwrap_or(now);
        health.ejected_until = Some(until);
        health.ejections_in_a_row += 1;
        health.probing = false;
        health.consecutive_failures = 0;
        health.successes = 0;
        health.failures = 0;
        health.window_start = now;
        Some(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker {
            consecutive_failures: 3,
            min_success_rate: 0.0,
            min_requests: 0,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(4),
        }
    }

    fn endpoint() -> Endpoint {
        let pool = crate::transport::test_support::pool();
        let spec = EndpointSpec {
            address: "127.0.0.1:1".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
            weight: 1,
            foreign_spiffe: false,
        };
        let peer = pool.peer(spec.address, &spec.identity).unwrap();
        Endpoint::new(spec, peer)
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_backs_off() {
        let e = endpoint();
        let b = breaker();
        let now = Instant::now();
        assert_eq!(e.record(&b, true, now), None);
        assert_eq!(e.record(&b, false, now), None, "a success resets the count");
        assert_eq!(e.record(&b, true, now), None);
        assert_eq!(e.record(&b, true, now), None);
        assert_eq!(e.record(&b, true, now), Some(Duration::from_secs(1)));
        assert!(!e.is_eligible(now));
        // The backoff passes; the probe fails: ejected again, for twice as long.
        let later = now + Duration::from_secs(2);
        assert!(e.is_eligible(later));
        e.start_probe_if_due(later);
        assert_eq!(e.record(&b, true, later), Some(Duration::from_secs(2)));
        // Capped at the maximum.
        let later = later + Duration::from_secs(3);
        e.start_probe_if_due(later);
        assert_eq!(e.record(&b, true, later), Some(Duration::from_secs(4)));
        let later = later + Duration::from_secs(5);
        e.start_probe_if_due(later);
        assert_eq!(e.record(&b, true, later), Some(Duration::from_secs(4)));
        // A successful probe restores it fully.
        let later = later + Duration::from_secs(5);
        e.start_probe_if_due(later);
        assert_eq!(e.record(&b, false, later), None);
        assert_eq!(e.health.lock().ejections_in_a_row, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_ejection_time_is_survived() {
        // What `ejection.base: 9223372036854775807s` once made of every proxy: an Instant
        // overflow at the first ejection, aborting the process.
        let e = endpoint();
        let forever = Duration::from_secs(i64::MAX as u64);
        let b = CircuitBreaker {
            base_ejection: forever,
            max_ejection: forever,
            ..breaker()
        };
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(e.record(&b, true, now), None);
        }
        assert!(e.record(&b, true, now).is_some());
        assert!(!e.is_eligible(now + Duration::from_secs(3600)));
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_when_the_success_rate_drops() {
        let e = endpoint();
        let b = CircuitBreaker {
            consecutive_failures: 0,
            min_success_rate: 0.8,
            min_requests: 10,
            ..breaker()
        };
        let now = Instant::now();
        for i in 0..10 {
            let ejected = e.record(&b, i % 3 == 0, now);
            if i < 9 {
                assert_eq!(ejected, None, "request {i}");
            } else {
                // 6 of 10 succeeded: below 80 %.
                assert!(ejected.is_some());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let e = endpoint();
        e.observe_latency(Duration::from_millis(100));
        let now = Instant::now();
        assert!(e.cost(now) >= 99e6);
        tokio::time::advance(Duration::from_secs(20)).await;
        let later = Instant::now();
        assert!(e.cost(later) < 20e6, "{}", e.cost(later));
    }
}

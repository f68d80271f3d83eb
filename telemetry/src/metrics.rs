//! Registering metrics in an explicit registry, with Weft's naming rules.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub use prometheus::Error;

/// Latency buckets in seconds, from 100 µs (a proxy hop on loopback) to 10 s (a timeout).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Registers an integer counter. Names must end in `_total`.
pub fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, Error> {
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} must end in _total"
    );
    let counter = IntCounter::new(name, help)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

/// Registers a labelled integer counter. Names must end in `_total`.
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, Error> {
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} must end in _total"
    );
    let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

/// Registers an integer gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, Error> {
    let gauge = IntGauge::new(name, help)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

/// Registers a labelled integer gauge.
pub fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, Error> {
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

/// Registers a latency histogram in seconds with [`LATENCY_BUCKETS`].
pub fn latency_histogram(registry: &Registry, name: &str, help: &str) -> Result<Histogram, Error> {
    debug_assert!(
        name.ends_with("_seconds"),
        "histogram {name} must end in _seconds"
    );
    let histogram =
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))?;
    registry.register(Box::new(histogram.clone()))?;
    Ok(histogram)
}

/// Registers a labelled latency histogram in seconds with [`LATENCY_BUCKETS`].
pub fn latency_histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<HistogramVec, Error> {
    debug_assert!(
        name.ends_with("_seconds"),
        "histogram {name} must end in _seconds"
    );
    let histogram = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    registry.register(Box::new(histogram.clone()))?;
    Ok(histogram)
}

/// A registry with the process collector (CPU, memory, file descriptors) already in it.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    let _ = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    registry
}

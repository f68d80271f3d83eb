//! Span export over OTLP/gRPC, off the data path: spans go into a bounded queue that a batch
//! processor drains on a thread of its own; what does not fit, or cannot be delivered, is
//! dropped and counted — a collector that is down or slow never holds a request up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
    SpanProcessor, Tracer,
};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Spans waiting for export, at most. A sidecar's span is a few hundred bytes: this bounds the
/// queue's memory to about a megabyte whatever the collector does.
pub const MAX_QUEUED_SPANS: usize = 2048;
/// How long an export may take before its spans count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often queued spans are sent: small batches soon after a request, not one large burst.
const EXPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Where and as whom spans are exported.
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// The OTLP/gRPC collector, e.g. `http://otel-collector.observability:4317`.
    pub endpoint: String,
    /// `service.name` of every span (`weft-proxy`, `weft-control`).
    pub service_name: &'static str,
    /// More resource attributes, e.g. the pod's identity.
    pub attributes: Vec<(&'static str, String)>,
}

/// A running exporter: the tracer spans are recorded with, and its counters.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    counters: SpanCounters,
}

#[derive(Debug, Clone)]
struct SpanCounters {
    exported: IntCounter,
    dropped: IntCounterVec,
    /// Spans handed to the batch processor and not yet exported or dropped.
    queued: Arc<AtomicUsize>,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct TraceExportError {
    endpoint: String,
    reason: String,
}

/// An OTLP/gRPC endpoint as configured: an `http` or `https` URL with a host.
pub fn parse_trace_endpoint(value: &str) -> Result<String, String> {
    let value = value.trim();
    let uri: http::Uri = value.parse().map_err(|e| format!("{value:?}: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(value.to_string()),
        _ => Err(format!(
            "{value:?}: not an OTLP/gRPC endpoint: give a URL such as http://otel-collector:4317"
        )),
    }
}

/// A sampling ratio as configured: 0 to 1.
pub fn parse_trace_sampling(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "{value:?}: a ratio from 0 to 1 (0.01: one request in a hundred)"
        )),
    }
}

impl Traces {
    /// Starts exporting, the exporter's gRPC channel running its tasks on `runtime`.
    pub fn start_on(
        runtime: &tokio::runtime::Runtime,
        export: &TraceExport,
    ) -> Result<Self, TraceExportError> {
        let _entered = runtime.enter();
        Self::start(export)
    }

    /// Starts exporting. Call inside the tokio runtime: the gRPC channel's tasks run on it.
    pub fn start(export: &TraceExport) -> Result<Self, TraceExportError> {
        let error = |reason: String| TraceExportError {
            endpoint: export.endpoint.clone(),
            reason,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(export.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| error(e.to_string()))?;
        let counters = SpanCounters::new().map_err(|e| error(e.to_string()))?;
        let batch = BatchSpanProcessor::builder(CountedExporter {
            inner: exporter,
            counters: counters.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                // Larger than what `Bounded` lets in: the processor itself never drops
                // uncounted.
                .with_max_queue_size(MAX_QUEUED_SPANS * 2)
                .with_scheduled_delay(EXPORT_INTERVAL)
                .build(),
        )
        .build();
        let resource = Resource::builder()
            .with_service_name(export.service_name)
            .with_attributes(
                export
                    .attributes
                    .iter()
                    .map(|(key, value)| opentelemetry::KeyValue::new(*key, value.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batch,
                counters: counters.clone(),
            })
            .with_resource(resource)
            .build();
        Ok(Self { provider, counters })
    }

    /// The tracer the `tracing` layer records spans with.
    pub fn tracer(&self) -> Tracer {
        self.provider.tracer("weft")
    }

    /// Exports the span counters (`weft_trace_spans_exported_total`,
    /// `weft_trace_spans_dropped_total{reason}`) from `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.counters.exported.clone()))?;
        registry.register(Box::new(self.counters.dropped.clone()))
    }

    /// Sends what is queued, waiting at most a few seconds, while the runtime (which the
    /// export needs) keeps running.
    pub async fn finish(self) {
        let _ = tokio::task::spawn_blocking(move || self.shutdown()).await;
    }

    /// Sends what is queued, waiting at most a few seconds. Blocks: call off the runtime's
    /// workers, which the export itself needs.
    fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::debug!(%error, "trace exporter did not shut down cleanly");
        }
    }
}

impl SpanCounters {
    fn new() -> Result<Self, prometheus::Error> {
        let exported = IntCounter::new(
            "weft_trace_spans_exported_total",
            "Spans delivered to the trace collector.",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "weft_trace_spans_dropped_total",
                "Spans recorded but not delivered, by reason: queue_full (the collector is slower than the traffic) or export_failed (it refused or could not be reached).",
            ),
            &["reason"],
        )?;
        // Both series exist from the start, so a rate over them is defined before any drop.
        for reason in ["queue_full", "export_failed"] {
            dropped.with_label_values(&[reason]);
        }
        Ok(Self {
            exported,
            dropped,
            queued: Arc::new(AtomicUsize::new(0)),
        })
    }
}

/// Admits a span to the batch processor only while fewer than [`MAX_QUEUED_SPANS`] wait, so
/// every drop is counted here rather than lost silently inside the processor.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    counters: SpanCounters,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .counters
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < MAX_QUEUED_SPANS).then_some(queued + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            self.counters
                .dropped
                .with_label_values(&["queue_full"])
                .inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what each export delivered or lost, and frees its place in the queue.
#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    counters: SpanCounters,
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let _ = self
            .counters
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                Some(queued.saturating_sub(spans))
            });
        match &result {
            Ok(()) => self.counters.exported.inc_by(spans as u64),
            Err(error) => {
                tracing::debug!(%error, spans, "trace export failed; spans dropped");
                self.counters
                    .dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(spans as u64);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

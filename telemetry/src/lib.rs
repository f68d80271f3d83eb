//! Observability and lifecycle plumbing shared by `weft-proxy` and `weft-control`.
//!
//! Both processes expose the same admin surface (`/live`, `/ready`, `/metrics`, `/log-level`,
//! and optionally `/config` and `/shutdown`) from one small hyper server, keep their metrics in one explicit Prometheus
//! registry passed down by parameter (never the global default), log through `tracing` (with optional JSON access logs on stdout and spans exported over
//! OTLP), and
//! stop through one drain signal that SIGTERM, SIGINT or `/shutdown` trips.

mod admin;
mod drain;
mod grpc_calls;
mod logging;
pub mod metrics;
mod traces;

pub use admin::{AdminServer, ConfigView, Readiness};
pub use drain::{Drain, wait_for_signal};
pub use grpc_calls::{GRPC_CODE_NAMES, GrpcCallMetrics, GrpcCalls, GrpcCallsService};
pub use logging::{
    ACCESS_LOG_TARGET, LogFormat, LogSetup, LoggingGuard, TRACE_TARGET, init_logging,
};
pub use traces::{
    MAX_QUEUED_SPANS, TraceExport, TraceExportError, Traces, parse_trace_endpoint,
    parse_trace_sampling,
};

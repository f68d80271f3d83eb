//! `weft-proxy`, the Weft sidecar.
//!
//! It sits beside an application in its pod. Outbound, it takes the app's plain traffic, detects
//! HTTP/1, HTTP/2 or opaque TCP, and carries it over mutual TLS to the peer's proxy, checking that
//! the peer proves the expected SPIFFE identity. Inbound, it accepts only mTLS from proxies of its
//! trust domain and hands the traffic to the app, telling it who called (`weft-client-id`). Its
//! certificate comes from the control plane, which never sees its key. It depends on
//! `weft-api`, `weft-certs` and `weft-telemetry`, never on the control plane.

mod admin_config;
mod await_ready;
mod body_end;
pub mod config;
mod destination;
mod detect;
mod http_util;
mod identity;
mod inbound;
pub mod init;
mod listen;
mod metrics;
mod observe;
mod orig_dst;
mod outbound;
mod plain_http;
mod prefixed;
mod serve;
mod stack;
mod start;
pub mod static_routes;
mod tap;
mod transport;
mod upgrade;

use weft_telemetry::Drain;

pub use config::{Config, ConfigError};
pub use destination::{MeshNetworks, NetworkError};
pub use inbound::InboundLimits;

/// Hot-path internals, public only for the micro-benchmarks in `weft-bench`; not an API.
#[doc(hidden)]
pub mod internals {
    pub use crate::destination::{
        Authorization, DefaultAuthorization, InboundPolicy, PathMatch, RequestMatch, Source,
        ValueMatch,
    };
    pub use crate::detect::{Protocol, classify};
    pub use crate::http_util::{empty_body, strip_connection_headers};
    pub use crate::inbound::{Client, InboundPorts, Policy};
    pub use crate::metrics::{Direction, ProxyMetrics, RequestLabels, RequestMetrics};
}
pub use start::{Listening, StartError, start};

/// The exit code for bad configuration (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Readiness events a worker takes from the kernel per poll. Tokio's default (1 024) lets a
/// sidecar take every ready socket at once and answer them all in one HTTP/2 write, so under
/// load the requests in flight travel between the two sidecars as one convoy: each side's CPU
/// idles while the other works through the whole batch (both CPUs half idle at full load).
/// Taking a couple at a time sends the first responses on while the rest are still being
/// read, which keeps both sides busy: about +35 % closed-loop throughput for a third more CPU
/// per request at full load (still well under half of Envoy's), and no change at 1 000 req/s
/// (BENCHMARKS.md, "Splitting the convoy").
const IO_EVENTS_PER_TICK: usize = 2;

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder
        .max_io_events_per_tick(IO_EVENTS_PER_TICK)
        .enable_all()
        .build()
}

/// The `weft-proxy` binary: validate configuration, run until SIGTERM, drain, exit.
pub fn main() -> ! {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("init") {
        std::process::exit(init::run(args.skip(1)));
    }
    if args.peek().map(String::as_str) == Some("await-ready") {
        std::process::exit(await_ready::run(args.skip(1)));
    }
    weft_certs::install_default_provider();
    let config = match Config::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => exit_with(EXIT_USAGE, &error),
    };
    let runtime = match runtime(config.workers) {
        Ok(runtime) => runtime,
        Err(error) => exit_with(1, &format!("cannot start the runtime: {error}")),
    };
    // The exporter's gRPC channel runs its tasks on the runtime.
    let traces = config.trace_endpoint.as_ref().map(|endpoint| {
        let export = weft_telemetry::TraceExport {
            endpoint: endpoint.clone(),
            service_name: "weft-proxy",
            attributes: vec![("weft.identity", config.identity.to_string())],
        };
        weft_telemetry::Traces::start_on(&runtime, &export)
            .unwrap_or_else(|error| exit_with(EXIT_USAGE, &error))
    });
    let logging = weft_telemetry::init_logging(weft_telemetry::LogSetup {
        env_var: "WEFT_PROXY_LOG",
        default_filter: "info",
        format: config.log_format,
        // Written when the proxy's setting or a Service's policy asks.
        access_log: true,
        tracer: traces.as_ref().map(weft_telemetry::Traces::tracer),
    });
    let grace = config.shutdown_grace;
    let app_port = config.app_port;
    let code = runtime.block_on(async move {
        let (drain, inbound) = (Drain::new(), Drain::new());
        if let Err(error) = start(config, &drain, &inbound, traces.as_ref()).await {
            let code = if matches!(error, StartError::Bind { .. }) {
                EXIT_USAGE
            } else {
                1
            };
            eprintln!("weft-proxy: {error}");
            return code;
        }
        tokio::select! {
            result = weft_telemetry::wait_for_signal() => {
                if let Err(error) = result {
                    eprintln!("weft-proxy: cannot listen for signals: {error}");
                    return 1;
                }
                // The pod is terminating: take nothing new in, but let the app's own calls out
                // (its shutdown may need them) until the grace period ends, or the app is gone.
                tracing::info!(grace = ?grace, "draining: inbound stopped, outbound serves the app until the grace period ends");
                inbound.trigger();
                tokio::select! {
                    () = tokio::time::sleep(grace) => {}
                    () = app_gone(app_port) => tracing::info!("the app has exited; stopping"),
                    () = drain.signaled() => {}
                }
            }
            // POST /shutdown: the job is done, stop now.
            () = drain.signaled() => inbound.trigger(),
        }
        drain.trigger();
        let finished = async { tokio::join!(drain.wait(), inbound.wait()) };
        if tokio::time::timeout(FINAL_DRAIN, finished).await.is_err() {
            tracing::warn!("drain deadline passed; exiting with requests in flight");
        }
        if let Some(traces) = traces {
            traces.finish().await;
        }
        0
    });
    drop(logging);
    std::process::exit(code)
}

/// After the grace period (or /shutdown), what is still in flight gets this long to finish.
const FINAL_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Completes once the local app no longer accepts connections on `app_port` (never, without
/// one): then nothing in the pod needs its outbound side any more.
async fn app_gone(app_port: Option<u16>) {
    let Some(port) = app_port else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return;
        }
    }
}

fn exit_with(code: i32, error: &dyn std::fmt::Display) -> ! {
    eprintln!("weft-proxy: {error}");
    std::process::exit(code)
}

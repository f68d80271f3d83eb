//! The admin HTTP server: `/live`, `/ready`, `/metrics` and, when enabled, `/shutdown`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::drain::Drain;

/// Answers whether the process can serve traffic now (e.g. "holds a valid certificate").
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves the admin endpoints for one process.
#[derive(Clone)]
pub struct AdminServer {
    registry: Registry,
    ready: Readiness,
    drain: Drain,
    shutdown_endpoint: bool,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("shutdown_endpoint", &self.shutdown_endpoint)
            .finish_non_exhaustive()
    }
}

// === impl AdminServer ===

impl AdminServer {
    /// An admin server exposing `registry`, reporting `ready`, stopping when `drain` triggers.
    pub fn new(registry: Registry, ready: Readiness, drain: Drain) -> Self {
        Self {
            registry,
            ready,
            drain,
            shutdown_endpoint: false,
        }
    }

    /// Enables `POST /shutdown`, which starts draining the process (off by default: anyone who
    /// can reach the admin port could otherwise stop the pod's proxy).
    pub fn with_shutdown_endpoint(mut self, enabled: bool) -> Self {
        self.shutdown_endpoint = enabled;
        self
    }

    /// Accepts connections on `listener` until draining starts.
    pub async fn serve(self, listener: TcpListener) {
        let drain = self.drain.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.signaled() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    // Out of file descriptors, typically: let some connections close first.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = self.clone();
            let conn_drain = drain.clone();
            drain.spawn(async move {
                let service = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(&req)) }
                });
                // The timer enables hyper's header-read timeout, so slow clients cannot pile up.
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service);
                // An idle keep-alive scraper must not hold up the drain.
                let result = conn_drain.drive(conn).await;
                if let Err(error) = result {
                    tracing::debug!(%error, "admin connection ended");
                }
            });
        }
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") if (self.ready)() && !self.drain.is_draining() => {
                text(StatusCode::OK, "ready\n")
            }
            (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            (&Method::GET, "/metrics") => self.metrics(),
            (&Method::POST, "/shutdown") if self.shutdown_endpoint => {
                tracing::info!("shutdown requested through the admin endpoint");
                self.drain.trigger();
                text(StatusCode::ACCEPTED, "shutting down\n")
            }
            (_, "/shutdown") if self.shutdown_endpoint => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use POST /shutdown\n")
            }
            (_, "/live" | "/ready" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready or /metrics\n",
            ),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let encoder = TextEncoder::new();
        let mut body = Vec::with_capacity(16 * 1024);
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut body) {
            tracing::warn!(%error, "cannot encode metrics");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
        }
        let mut response = Response::new(Full::new(Bytes::from(body)));
        if let Ok(value) = encoder.format_type().parse() {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

//! The admin HTTP server: `/live`, `/ready`, `/metrics`, `/log-level` and, when enabled,
//! `/config` and `/shutdown`.
//!
//! What changes the process or shows its configuration (`PUT /log-level`, `/config`) answers
//! only clients on loopback: inside a pod that is the pod itself, or `kubectl port-forward`;
//! anyone else who can reach the admin port (Prometheus, the kubelet) gets 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::drain::Drain;
use crate::logging;

/// Answers whether the process can serve traffic now (e.g. "holds a valid certificate").
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// The process's effective configuration and state as a JSON document, secrets left out.
pub type ConfigView = Arc<dyn Fn() -> String + Send + Sync>;

/// The longest `PUT /log-level` body read.
const MAX_LOG_FILTER: usize = 4096;
/// How long a `PUT /log-level` body may take to arrive once its headers have.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the admin endpoints for one process.
#[derive(Clone)]
pub struct AdminServer {
    registry: Registry,
    ready: Readiness,
    /// `/ready`'s answer at each scrape, so alerts can see a process that is up but not ready.
    ready_gauge: Option<IntGauge>,
    drain: Drain,
    shutdown_endpoint: bool,
    config: Option<ConfigView>,
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
        let ready_gauge = crate::metrics::gauge(
            &registry,
            "weft_ready",
            "1 when the process reports ready on /ready, 0 when it does not.",
        )
        .inspect_err(|error| tracing::warn!(%error, "weft_ready is not exported"))
        .ok();
        Self {
            registry,
            ready,
            ready_gauge,
            drain,
            shutdown_endpoint: false,
            config: None,
        }
    }

    /// Serves `GET /config` from `config`.
    pub fn with_config(mut self, config: ConfigView) -> Self {
        self.config = Some(config);
        self
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
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
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
                    async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
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

    async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
        let local = peer.ip().to_canonical().is_loopback();
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
            (_, "/config") | (&Method::PUT, "/log-level") if !local => text(
                StatusCode::FORBIDDEN,
                "only from the pod itself (loopback), e.g. through kubectl port-forward\n",
            ),
            (&Method::GET, "/config") => match &self.config {
                Some(config) => json(config()),
                None => not_found(),
            },
            (&Method::GET, "/log-level") => match logging::current_filter() {
                Ok(filter) => owned_text(StatusCode::OK, format!("{filter}\n")),
                Err(reason) => owned_text(StatusCode::INTERNAL_SERVER_ERROR, reason + "\n"),
            },
            (&Method::PUT, "/log-level") => self.set_log_level(req).await,
            (_, "/live" | "/ready" | "/metrics" | "/config") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            (_, "/log-level") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET or PUT\n"),
            _ => not_found(),
        }
    }

    /// `PUT /log-level`: the body is the new filter, as the log variable takes it.
    async fn set_log_level<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let read = Limited::new(req.into_body(), MAX_LOG_FILTER).collect();
        let body = match tokio::time::timeout(BODY_DEADLINE, read).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(_)) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "a log filter is at most 4096 bytes\n",
                );
            }
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the filter came too slowly\n"),
        };
        let Ok(directives) = std::str::from_utf8(&body) else {
            return text(StatusCode::BAD_REQUEST, "the filter is not UTF-8\n");
        };
        match logging::set_filter(directives) {
            Ok(filter) => owned_text(StatusCode::OK, format!("{filter}\n")),
            Err(reason) => owned_text(StatusCode::BAD_REQUEST, reason + "\n"),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        if let Some(gauge) = &self.ready_gauge {
            gauge.set(i64::from((self.ready)()));
        }
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

fn not_found() -> Response<Full<Bytes>> {
    text(
        StatusCode::NOT_FOUND,
        "not found: try /live, /ready, /metrics or /log-level\n",
    )
}

fn json(body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn owned_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> AdminServer {
        let config: ConfigView = Arc::new(|| r#"{"identity": "x"}"#.to_string());
        AdminServer::new(Registry::new(), Arc::new(|| true), Drain::new()).with_config(config)
    }

    async fn call(method: Method, path: &str, body: &str, peer: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = server().handle(request, peer.parse().unwrap()).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn configuration_and_the_log_filter_answer_only_the_pod_itself() {
        for (method, path) in [(Method::GET, "/config"), (Method::PUT, "/log-level")] {
            let (status, body) = call(method, path, "debug", "10.0.0.7:40000").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            assert!(body.contains("loopback"), "{body}");
        }
        let (status, body) = call(Method::GET, "/config", "", "127.0.0.1:40000").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"identity": "x"}"#)
        );
        for local in ["[::1]:40000", "[::ffff:127.0.0.1]:40000"] {
            let (status, _) = call(Method::GET, "/config", "", local).await;
            assert_eq!(status, StatusCode::OK, "{local}");
        }
        // Health, metrics and the filter in force stay open to the kubelet and Prometheus.
        for path in ["/metrics", "/live"] {
            let (status, _) = call(Method::GET, path, "", "10.0.0.7:40000").await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        let (status, _) = call(Method::GET, "/log-level", "", "10.0.0.7:40000").await;
        assert_ne!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn a_filter_that_does_not_parse_or_is_too_long_is_refused_with_the_reason() {
        let (status, body) = call(Method::PUT, "/log-level", "   ", "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.starts_with("empty"), "{body}");
        let (status, body) = call(Method::PUT, "/log-level", "info,x=loud", "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.contains("\"info,x=loud\" is not a log filter"),
            "{body}"
        );
        let long = "info,".repeat(1000);
        let (status, _) = call(Method::PUT, "/log-level", &long, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, _) = call(Method::DELETE, "/log-level", "", "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
}

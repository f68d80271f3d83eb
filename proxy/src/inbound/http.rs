//! Inbound HTTP: requests from a peer proxy, stamped with its verified identity and forwarded to
//! the app over pooled local connections, as HTTP/1 when the client spoke HTTP/1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use weft_certs::Identity;

use crate::http_util::{Body, CLIENT_ID, ORIG_PROTO, boxed, error_response};
use crate::metrics::{Direction, ProxyMetrics, RequestMetrics};

type AppClient = Client<AppConnectorService, Body>;
/// Connects to the app whatever the request's URI says: the URI keeps the authority the client
/// used, which the app should see.
type AppConnectorService =
    tower::util::BoxCloneSyncService<Uri, TokioIo<TcpStream>, std::io::Error>;

/// Clients to the local app, one pool per app port and protocol.
#[derive(Debug)]
pub struct InboundHttp {
    metrics: ProxyMetrics,
    clients: Mutex<HashMap<SocketAddr, AppClients>>,
}

#[derive(Debug, Clone)]
struct AppClients {
    http1: AppClient,
    http2: AppClient,
}

/// Per-connection state: who the peer is, as a header value and as metrics labels.
#[derive(Debug, Clone)]
pub struct InboundConnection {
    client_id: HeaderValue,
    clients: AppClients,
    metrics: Arc<RequestMetrics>,
}

impl InboundHttp {
    /// Forwarding state with metrics in `metrics`.
    pub fn new(metrics: ProxyMetrics) -> Self {
        Self {
            metrics,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// State for one connection from `peer`, forwarding to `app`.
    pub fn connection(&self, peer: &Identity, app: SocketAddr) -> InboundConnection {
        let peer_id = peer.to_string();
        let client_id =
            HeaderValue::from_str(&peer_id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let clients = self
            .clients
            .lock()
            .entry(app)
            .or_insert_with(|| AppClients::new(app))
            .clone();
        let destination = format!("127.0.0.1:{}", app.port());
        InboundConnection {
            client_id,
            clients,
            metrics: Arc::new(
                self.metrics
                    .requests(Direction::Inbound, &peer_id, &destination),
            ),
        }
    }
}

impl AppClients {
    fn new(app: SocketAddr) -> Self {
        let connect =
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: Uri| async move {
                let tcp = TcpStream::connect(app).await?;
                let _ = tcp.set_nodelay(true);
                Ok::<_, std::io::Error>(TokioIo::new(tcp))
            }));
        let http1 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connect.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_adaptive_window(true)
            .build(connect);
        Self { http1, http2 }
    }
}

impl InboundConnection {
    /// Forwards one request to the app.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let response = self.forward(request).await;
        self.metrics.record(response.status(), started.elapsed());
        response
    }

    async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        // Only the identity this proxy verified may appear here.
        parts.headers.remove(CLIENT_ID);
        parts.headers.insert(CLIENT_ID, self.client_id.clone());
        let client = match parts.headers.remove(ORIG_PROTO) {
            Some(orig) => {
                parts.version = if orig.as_bytes() == b"HTTP/1.0" {
                    Version::HTTP_10
                } else {
                    Version::HTTP_11
                };
                if let Some(authority) = parts.uri.authority()
                    && let Ok(host) = HeaderValue::from_str(authority.as_str())
                {
                    parts.headers.insert(HOST, host);
                }
                &self.clients.http1
            }
            None => &self.clients.http2,
        };
        let request = Request::from_parts(parts, boxed(body));
        match client.request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                parts.version = Version::HTTP_2;
                Response::from_parts(parts, boxed(body))
            }
            Err(error) => {
                tracing::info!(%error, "app request failed");
                error_response(StatusCode::BAD_GATEWAY, format!("app unreachable: {error}"))
            }
        }
    }
}

//! Inbound HTTP: requests from a peer proxy, stamped with its verified identity and forwarded to
//! the app over pooled local connections, as HTTP/1 when the client spoke HTTP/1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use parking_lot::Mutex;
use weft_certs::Identity;

use crate::http_util::{Body, CLIENT_ID, ORIG_PROTO, boxed, error_response, remove_weft_headers};
use crate::metrics::{Direction, ProxyMetrics, RequestMetrics};
use crate::plain_http::{PlainHttp, PlainHttpError};

/// Clients to the local app, one pool per app address.
#[derive(Debug)]
pub struct InboundHttp {
    metrics: ProxyMetrics,
    apps: Mutex<HashMap<SocketAddr, Arc<PlainHttp>>>,
}

/// Per-connection state: who the peer is, as a header value and as metrics labels.
#[derive(Debug)]
pub struct InboundConnection {
    client_id: HeaderValue,
    app: Arc<PlainHttp>,
    metrics: RequestMetrics,
}

impl InboundHttp {
    /// Forwarding state with metrics in `metrics`.
    pub fn new(metrics: ProxyMetrics) -> Self {
        Self {
            metrics,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// State for one connection from `peer`, forwarding to `app`.
    pub fn connection(&self, peer: &Identity, app: SocketAddr) -> Arc<InboundConnection> {
        let peer_id = peer.to_string();
        let client_id =
            HeaderValue::from_str(&peer_id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let clients = self
            .apps
            .lock()
            .entry(app)
            .or_insert_with(|| Arc::new(PlainHttp::new(app)))
            .clone();
        Arc::new(InboundConnection {
            client_id,
            app: clients,
            metrics: self
                .metrics
                .requests(Direction::Inbound, &peer_id, &app.to_string()),
        })
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
        // HTTP/1 rode the HTTP/2 hop marked with weft-orig-proto; restore it (PlainHttp puts the
        // authority back into Host). Without the mark it was HTTP/2 from the start.
        if let Some(orig) = parts.headers.get(ORIG_PROTO) {
            parts.version = if orig.as_bytes() == b"HTTP/1.0" {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
        }
        // Only the identity this proxy verified may reach the app, under no other spelling.
        remove_weft_headers(&mut parts.headers);
        parts.headers.insert(CLIENT_ID, self.client_id.clone());
        let request = Request::from_parts(parts, boxed(body));
        match self.app.send(request).await {
            Ok(mut response) => {
                *response.version_mut() = Version::HTTP_2;
                response
            }
            Err(error @ PlainHttpError::Saturated(_)) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app busy: {error}"),
            ),
            Err(error) => {
                tracing::info!(%error, "app request failed");
                error_response(StatusCode::BAD_GATEWAY, format!("app unreachable: {error}"))
            }
        }
    }
}

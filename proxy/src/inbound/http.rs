//! Inbound HTTP: requests from a peer proxy, stamped with its verified identity and forwarded to
//! the app over pooled local connections, as HTTP/1 when the client spoke HTTP/1.

use std::collections::{HashMap, HashSet};
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

/// App addresses (the pod's own, on ports the peers name) that keep a pool of their own and a
/// metrics label; past that, a connection to another gets a pool for itself alone and the
/// label "other". Peers choose the ports: nothing they choose may grow without bound.
const MAX_APPS: usize = 64;
/// Peer identities with a metrics label of their own; past that, "other".
const MAX_PEER_LABELS: usize = 1000;
/// The label of whatever is past a bound.
const OTHER: &str = "other";

/// Clients to the local app, one pool per app address.
#[derive(Debug)]
pub struct InboundHttp {
    metrics: ProxyMetrics,
    apps: Mutex<HashMap<SocketAddr, Arc<PlainHttp>>>,
    peers: Mutex<HashSet<Identity>>,
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
            peers: Mutex::new(HashSet::new()),
        }
    }

    /// State for one connection from `peer`, forwarding to `app`.
    pub fn connection(&self, peer: &Identity, app: SocketAddr) -> Arc<InboundConnection> {
        let peer_id = peer.to_string();
        let client_id =
            HeaderValue::from_str(&peer_id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let (client, destination) = match self.pooled(app) {
            Some(pooled) => (pooled, app.to_string()),
            None => (Arc::new(PlainHttp::new(app)), OTHER.to_string()),
        };
        let peer_label = {
            let mut peers = self.peers.lock();
            if peers.contains(peer) || peers.len() < MAX_PEER_LABELS {
                peers.insert(peer.clone());
                peer_id.as_str()
            } else {
                OTHER
            }
        };
        Arc::new(InboundConnection {
            client_id,
            app: client,
            metrics: self
                .metrics
                .requests(Direction::Inbound, peer_label, &destination),
        })
    }

    /// The shared pool of `app`, unless [`MAX_APPS`] others hold one (and are in use).
    fn pooled(&self, app: SocketAddr) -> Option<Arc<PlainHttp>> {
        let mut apps = self.apps.lock();
        if let Some(pooled) = apps.get(&app) {
            return Some(pooled.clone());
        }
        if apps.len() >= MAX_APPS {
            apps.retain(|_, pooled| Arc::strong_count(pooled) > 1);
        }
        if apps.len() >= MAX_APPS {
            return None;
        }
        let pooled = Arc::new(PlainHttp::new(app));
        apps.insert(app, pooled.clone());
        Some(pooled)
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
                // Peers decide how often this happens: debug only (responses are counted).
                tracing::debug!(%error, "app request failed");
                error_response(StatusCode::BAD_GATEWAY, format!("app unreachable: {error}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_a_peer_names_grow_neither_pools_nor_labels_without_bound() {
        let registry = prometheus::Registry::new();
        let http = InboundHttp::new(ProxyMetrics::register(&registry).unwrap());
        let peer: Identity = "spiffe://cluster.local/ns/shop/sa/mallory".parse().unwrap();
        let mut held = Vec::new();
        for port in 1000..1200 {
            held.push(http.connection(&peer, SocketAddr::from(([127, 0, 0, 1], port))));
        }
        assert_eq!(http.apps.lock().len(), MAX_APPS);
        let labels: std::collections::BTreeSet<String> = registry
            .gather()
            .iter()
            .filter(|family| family.name() == "weft_http_requests_total")
            .flat_map(|family| family.get_metric().iter())
            .filter_map(|metric| {
                metric
                    .get_label()
                    .iter()
                    .find(|label| label.name() == "destination")
                    .map(|label| label.value().to_string())
            })
            .collect();
        assert_eq!(labels.len(), MAX_APPS + 1, "{labels:?}");
        // Pools nobody uses any more make room.
        held.clear();
        http.connection(&peer, SocketAddr::from(([127, 0, 0, 1], 2000)));
        assert_eq!(http.apps.lock().len(), 1);
    }
}

//! Outbound HTTP: a hyper server facing the app; each request is routed by its authority and
//! sent to the peer proxy over the shared HTTP/2 connection. HTTP/1 requests travel as HTTP/2,
//! marked so the far side restores them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::peer::PeerPool;
use crate::http_util::{Body, ORIG_PROTO, boxed, error_response, strip_connection_headers};
use crate::metrics::{Direction, ProxyMetrics, RequestMetrics};
use crate::static_routes::{Route, StaticRoutes};

/// Routes and forwards the app's HTTP requests.
#[derive(Debug)]
pub struct OutboundHttp {
    routes: StaticRoutes,
    pool: PeerPool,
    /// Per-route metrics, resolved once.
    route_metrics: HashMap<Arc<str>, RequestMetrics>,
    unrouted: RequestMetrics,
}

impl OutboundHttp {
    /// Forwards by `routes` through `pool`.
    pub fn new(routes: StaticRoutes, pool: PeerPool, metrics: &ProxyMetrics) -> Self {
        let route_metrics = routes
            .iter()
            .map(|route| {
                let labels = metrics.requests(
                    Direction::Outbound,
                    &route.identity.to_string(),
                    &route.authority,
                );
                (route.authority.clone(), labels)
            })
            .collect();
        Self {
            routes,
            pool,
            route_metrics,
            unrouted: metrics.requests(Direction::Outbound, "", "unknown"),
        }
    }

    /// Handles one request from the app. `orig_dst` is where the connection was headed when it
    /// was intercepted, a fallback route key when the authority has no route.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        orig_dst: Option<SocketAddr>,
    ) -> Response<Body> {
        let started = Instant::now();
        let Some(authority) = request_authority(&request) else {
            let response = error_response(
                StatusCode::BAD_REQUEST,
                "request has no authority (Host header)",
            );
            self.unrouted.record(response.status(), started.elapsed());
            return response;
        };
        let route = self
            .routes
            .get(authority.as_str())
            .or_else(|| orig_dst.and_then(|dst| self.routes.get(&dst.to_string())));
        let Some(route) = route else {
            let response =
                error_response(StatusCode::BAD_GATEWAY, format!("no route to {authority}"));
            self.unrouted.record(response.status(), started.elapsed());
            return response;
        };
        let metrics = self
            .route_metrics
            .get(&route.authority)
            .unwrap_or(&self.unrouted);
        let response = self.forward(route, authority, request).await;
        metrics.record(response.status(), started.elapsed());
        response
    }

    async fn forward(
        &self,
        route: &Route,
        authority: Authority,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let app_version = request.version();
        let request = match to_peer_request(request, authority) {
            Ok(request) => request,
            Err(reason) => return error_response(StatusCode::BAD_REQUEST, reason),
        };
        match self
            .pool
            .send(route.address, &route.identity, request)
            .await
        {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                parts.version = app_version;
                Response::from_parts(parts, boxed(body))
            }
            Err(error) => {
                tracing::info!(%error, route = %route.authority, "peer request failed");
                error_response(StatusCode::BAD_GATEWAY, error.to_string())
            }
        }
    }
}

/// The authority the app addressed: the URI's (HTTP/2, or HTTP/1 absolute-form), else `Host`.
fn request_authority(request: &Request<Incoming>) -> Option<Authority> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.clone());
    }
    request
        .headers()
        .get(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
}

/// Rewrites an app request for the HTTP/2 hop between proxies.
fn to_peer_request(
    request: Request<Incoming>,
    authority: Authority,
) -> Result<Request<Body>, String> {
    let (mut parts, body) = request.into_parts();
    match parts.version {
        Version::HTTP_2 => {
            // Only this proxy may say a request was HTTP/1.
            parts.headers.remove(ORIG_PROTO);
        }
        version => {
            strip_connection_headers(&mut parts.headers);
            parts.headers.remove(HOST);
            let marker = if version == Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            parts
                .headers
                .insert(ORIG_PROTO, HeaderValue::from_static(marker));
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("cannot rebuild URI: {e}"))?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, boxed(body)))
}

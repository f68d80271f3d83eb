//! Outbound HTTP: a hyper server facing the app. Each request is resolved by its authority —
//! static routes first, then discovery — and sent through that destination's stack (routes,
//! retries, balancing…) to a peer proxy over the shared HTTP/2 connection. HTTP/1 requests travel
//! as HTTP/2, marked so the far side restores them. Intercepted requests for destinations outside
//! the mesh pass through as plain HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::peer::{Peer, PeerPool};
use crate::destination::Destination;
use crate::destination::discovery::{DiscoveryClient, Resolved};
use crate::http_util::{Body, ORIG_PROTO, boxed, error_response, strip_connection_headers};
use crate::metrics::{Direction, ProxyMetrics, RequestMetrics};
use crate::plain_http::PlainHttp;
use crate::stack::{DestinationRuntime, DestinationStack};
use crate::static_routes::{Route, StaticRoutes, normalize_authority};

/// A static route, ready to send on.
#[derive(Debug)]
pub struct RouteTarget {
    /// The route.
    pub route: Arc<Route>,
    /// Its endpoint, for opaque streams.
    pub(super) peer: Arc<Peer>,
    stack: Arc<DestinationStack>,
}

/// Resolves and forwards the app's HTTP requests.
#[derive(Debug)]
pub struct OutboundHttp {
    /// Static routes by normalized authority.
    targets: HashMap<Arc<str>, Arc<RouteTarget>>,
    discovery: Option<DiscoveryClient>,
    unrouted: RequestMetrics,
    unmeshed: RequestMetrics,
}

/// What one app connection knows before its first request.
#[derive(Debug)]
pub struct ConnContext {
    /// Where the connection was headed, if it was intercepted.
    pub orig_dst: Option<SocketAddr>,
    /// The static route of that destination, if it has one.
    pub orig_target: Option<Arc<RouteTarget>>,
    /// What discovery knows of that destination, when it is a meshed workload's address.
    pub discovered: Option<Arc<DestinationStack>>,
    /// Clients for a destination outside the mesh, made on first use.
    passthrough: OnceLock<PlainHttp>,
}

impl ConnContext {
    /// The context of a connection headed for `orig_dst`.
    pub fn new(
        orig_dst: Option<SocketAddr>,
        orig_target: Option<Arc<RouteTarget>>,
        discovered: Option<Arc<DestinationStack>>,
    ) -> Self {
        Self {
            orig_dst,
            orig_target,
            discovered,
            passthrough: OnceLock::new(),
        }
    }
}

impl OutboundHttp {
    /// Forwards by `routes`, then `discovery`, through `pool`.
    pub fn new(
        routes: &StaticRoutes,
        discovery: Option<DiscoveryClient>,
        pool: &PeerPool,
        metrics: &ProxyMetrics,
    ) -> Result<Self, super::PeerError> {
        let mut targets = HashMap::new();
        for route in routes.iter() {
            let destination = Destination::single(
                &route.authority,
                route.address,
                route.identity.clone(),
                route.opaque,
            );
            // Static routes carry no retry or mirror, so the replay limit does not matter.
            let stack = DestinationRuntime::new(
                pool.clone(),
                metrics.clone(),
                crate::stack::DEFAULT_REPLAY_LIMIT,
            )
            .build(&destination, &route.identity.to_string());
            let target = RouteTarget {
                route: route.clone(),
                peer: pool.peer(route.address, &route.identity)?,
                stack: Arc::new(stack),
            };
            targets.insert(route.authority.clone(), Arc::new(target));
        }
        Ok(Self {
            targets,
            discovery,
            unrouted: metrics.requests(Direction::Outbound, "", "unknown"),
            unmeshed: metrics.requests(Direction::Outbound, "", "unmeshed"),
        })
    }

    /// The static route for an authority as the app wrote it.
    pub fn target(&self, authority: &str) -> Option<&Arc<RouteTarget>> {
        // Apps usually write the authority exactly as configured: try it before normalizing,
        // which allocates.
        self.targets
            .get(authority)
            .or_else(|| self.targets.get(normalize_authority(authority)?.as_str()))
    }

    /// What discovery knows of an intercepted connection's destination address. Not meshed,
    /// no discovery, or no answer (the control plane is away): `None`, and the connection is
    /// handled as before discovery existed.
    pub async fn discover(&self, dst: SocketAddr) -> Option<Arc<DestinationStack>> {
        match self.discovery.as_ref()?.resolve(&dst.to_string()).await {
            Ok(Resolved::Found(stack)) => Some(stack),
            Ok(Resolved::NotFound | Resolved::Pending) => None,
            Err(unavailable) => {
                tracing::info!(%unavailable, "treating the destination as outside the mesh");
                None
            }
        }
    }

    /// Handles one request from the app.
    pub async fn handle(&self, request: Request<Incoming>, conn: &ConnContext) -> Response<Body> {
        let authority = request_authority(&request);
        let target = authority
            .as_ref()
            .and_then(|authority| self.target(authority.as_str()))
            .or(conn.orig_target.as_ref());
        if let Some(target) = target {
            let authority = authority.unwrap_or_else(|| authority_of(&target.route));
            return forward(&target.stack, authority, request).await;
        }
        if let (Some(discovery), Some(authority)) = (&self.discovery, &authority)
            && let Some(key) = normalize_authority(authority.as_str())
        {
            match discovery.resolve(&key).await {
                Ok(Resolved::Found(stack)) => {
                    return forward(&stack, authority.clone(), request).await;
                }
                Ok(Resolved::NotFound | Resolved::Pending) => {}
                Err(unavailable) => {
                    let started = Instant::now();
                    let response =
                        error_response(StatusCode::SERVICE_UNAVAILABLE, unavailable.to_string());
                    self.unrouted.record(response.status(), started.elapsed());
                    return response;
                }
            }
        }
        let started = Instant::now();
        if let Some(dst) = conn.orig_dst {
            let response = pass_through(
                conn.passthrough.get_or_init(|| PlainHttp::new(dst)),
                request,
            )
            .await;
            self.unmeshed.record(response.status(), started.elapsed());
            return response;
        }
        let response = match authority {
            Some(authority) => {
                error_response(StatusCode::BAD_GATEWAY, format!("no route to {authority}"))
            }
            None => error_response(
                StatusCode::BAD_REQUEST,
                "request has no authority (Host header)",
            ),
        };
        self.unrouted.record(response.status(), started.elapsed());
        response
    }
}

async fn forward(
    stack: &DestinationStack,
    authority: Authority,
    request: Request<Incoming>,
) -> Response<Body> {
    let app_version = request.version();
    let request = match to_peer_request(request, authority) {
        Ok(request) => request,
        Err(reason) => return error_response(StatusCode::BAD_REQUEST, reason),
    };
    let mut response = stack.handle(request).await;
    *response.version_mut() = app_version;
    response
}

async fn pass_through(client: &PlainHttp, request: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    if parts.version != Version::HTTP_2 {
        strip_connection_headers(&mut parts.headers);
    }
    match client.send(Request::from_parts(parts, boxed(body))).await {
        Ok(response) => response.map(boxed),
        Err(error) => {
            tracing::info!(%error, "unmeshed destination failed");
            error_response(
                StatusCode::BAD_GATEWAY,
                format!("unmeshed destination: {error}"),
            )
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

/// A route's authority, for a request that named none (HTTP/1.0 without Host, intercepted).
fn authority_of(route: &Route) -> Authority {
    Authority::try_from(route.authority.as_ref())
        .unwrap_or_else(|_| Authority::from_static("unknown"))
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

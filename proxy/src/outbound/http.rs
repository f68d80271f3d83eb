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
use parking_lot::Mutex;

use super::stacks::{Followed, Stacks};
use crate::destination::Destination;
use crate::destination::discovery::{DiscoveryClient, Resolved, Unavailable};
use crate::http_util::{
    Body, ORIG_PROTO, boxed, error_response, remove_weft_headers, strip_connection_headers,
};
use crate::metrics::{Direction, ProxyMetrics, Refusal, RequestLabels, RequestMetrics};
use crate::observe::{Observer, ServiceObserving};
use crate::plain_http::PlainHttp;
use crate::stack::{DestinationRuntime, DestinationStack};
use crate::static_routes::{Route, StaticRoutes, normalize_authority};
use crate::transport::header as transport_header;
use crate::transport::{Peer, PeerPool};
use crate::upgrade;

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
    /// The stacks of what discovery finds.
    stacks: Stacks,
    metrics: ProxyMetrics,
    unrouted: RequestMetrics,
    unmeshed: RequestMetrics,
    observer: Observer,
}

/// Where discovery places an intercepted connection's destination address.
#[derive(Debug)]
pub enum Placement {
    /// A meshed workload, reached over mTLS through its stack.
    Meshed(Arc<DestinationStack>),
    /// Outside the mesh: discovery says so, or cannot be asked and the address is outside the
    /// mesh's networks. Plaintext is what the app asked for.
    Outside,
    /// Inside the mesh's networks and discovery has not answered: never sent in plaintext.
    Unplaced,
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
    /// Whether what no route claims may go to `orig_dst` in plaintext: only when that
    /// destination is placed outside the mesh.
    pub plaintext_ok: bool,
    /// Clients for a destination outside the mesh, made on first use.
    passthrough: OnceLock<PlainHttp>,
    /// Where the last request led.
    last: Mutex<Option<LastDestination>>,
}

/// The authority a connection's last request named, and where it led. An app names the same
/// authority on every request of a connection, so parsing, normalizing and looking it up
/// (allocations, a shared lock and a timer each) are done once per connection, not per request.
#[derive(Debug)]
struct LastDestination {
    /// The authority exactly as the app wrote it.
    named: Box<[u8]>,
    authority: Authority,
    route: LastRoute,
}

#[derive(Debug)]
enum LastRoute {
    /// A static route's stack, fixed for the proxy's life.
    Static(Arc<DestinationStack>),
    /// A discovered destination, followed so policy updates apply at once.
    Discovered(Followed),
}

impl LastDestination {
    /// The stack and authority for a request naming `named`, if it is this destination and
    /// discovery still has it.
    fn hit(&self, named: &[u8], stacks: &Stacks) -> Option<(Arc<DestinationStack>, Authority)> {
        if *self.named != *named {
            return None;
        }
        let stack = match &self.route {
            LastRoute::Static(stack) => stack.clone(),
            LastRoute::Discovered(followed) => followed.current(stacks)?,
        };
        Some((stack, self.authority.clone()))
    }
}

impl ConnContext {
    /// The context of a connection headed for `orig_dst`, placed as `placement` when it has no
    /// static route.
    pub fn new(
        orig_dst: Option<SocketAddr>,
        orig_target: Option<Arc<RouteTarget>>,
        placement: Option<Placement>,
    ) -> Self {
        let (discovered, plaintext_ok) = match placement {
            Some(Placement::Meshed(stack)) => (Some(stack), false),
            Some(Placement::Outside) => (None, true),
            Some(Placement::Unplaced) | None => (None, false),
        };
        Self {
            orig_dst,
            orig_target,
            discovered,
            plaintext_ok,
            passthrough: OnceLock::new(),
            last: Mutex::new(None),
        }
    }

    /// Remembers where `request`'s authority led, for the connection's next requests.
    fn remember(&self, request: &Request<Incoming>, authority: &Authority, route: LastRoute) {
        let Some(named) = named_authority(request) else {
            return;
        };
        *self.last.lock() = Some(LastDestination {
            named: named.into(),
            authority: authority.clone(),
            route,
        });
    }
}

impl OutboundHttp {
    /// Forwards by `routes`, then `discovery`, through `stacks`' pool.
    pub fn new(
        routes: &StaticRoutes,
        discovery: Option<DiscoveryClient>,
        stacks: Stacks,
        pool: &PeerPool,
        metrics: &ProxyMetrics,
    ) -> Result<Self, crate::transport::PeerError> {
        let mut targets = HashMap::new();
        for route in routes.iter() {
            let destination = Destination::single(
                &route.authority,
                route.address,
                route.identity.clone(),
                route.opaque,
            );
            // Static routes carry no retry or mirror: no body is ever kept.
            let stack = DestinationRuntime::new(pool.clone(), metrics.clone(), 0)
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
            stacks,
            metrics: metrics.clone(),
            unrouted: metrics.requests(&RequestLabels::new(Direction::Outbound, "", "unknown")),
            unmeshed: metrics.requests(&RequestLabels::new(Direction::Outbound, "", "unmeshed")),
            observer: Observer::default(),
        })
    }

    /// Traces and logs the requests it forwards to meshed destinations as `observer` says.
    pub fn observed_by(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// The static route for an authority as the app wrote it.
    pub fn target(&self, authority: &str) -> Option<&Arc<RouteTarget>> {
        // Apps usually write the authority exactly as configured: try it before normalizing,
        // which allocates.
        self.targets
            .get(authority)
            .or_else(|| self.targets.get(normalize_authority(authority)?.as_str()))
    }

    /// Where discovery places an intercepted connection's destination address.
    pub async fn place(&self, dst: SocketAddr) -> Placement {
        let Some(discovery) = &self.discovery else {
            return Placement::Outside;
        };
        let key = dst.to_string();
        match discovery.resolve(&key).await {
            Ok(Resolved::Found(destination)) => {
                Placement::Meshed(self.stacks.stack(&key, &destination))
            }
            Ok(Resolved::NotFound) => Placement::Outside,
            Ok(Resolved::Pending) | Err(_) if discovery.in_mesh(dst.ip()) => Placement::Unplaced,
            Ok(Resolved::Pending) | Err(_) => {
                tracing::debug!(%dst, "discovery has no answer; outside the mesh's networks");
                Placement::Outside
            }
        }
    }

    /// Handles one request from the app.
    pub async fn handle(&self, request: Request<Incoming>, conn: &ConnContext) -> Response<Body> {
        let last = named_authority(&request)
            .and_then(|named| conn.last.lock().as_ref()?.hit(named, &self.stacks));
        if let Some((stack, authority)) = last {
            return self.forward(&stack, authority, request).await;
        }
        let authority = request_authority(&request);
        let target = authority
            .as_ref()
            .and_then(|authority| self.target(authority.as_str()))
            .or(conn.orig_target.as_ref());
        if let Some(target) = target {
            let authority = authority.unwrap_or_else(|| authority_of(&target.route));
            conn.remember(
                &request,
                &authority,
                LastRoute::Static(target.stack.clone()),
            );
            return self.forward(&target.stack, authority, request).await;
        }
        let mut unavailable = None;
        if let (Some(discovery), Some(authority)) = (&self.discovery, &authority)
            && let Some(key) = normalize_authority(authority.as_str())
        {
            match discovery.resolve_and_keep(&key).await {
                Ok((Resolved::Found(destination), resolution)) => {
                    let followed = self.stacks.follow(&key, resolution, &destination);
                    let stack = followed.current(&self.stacks);
                    conn.remember(&request, authority, LastRoute::Discovered(followed));
                    if let Some(stack) = stack {
                        return self.forward(&stack, authority.clone(), request).await;
                    }
                }
                Ok((Resolved::NotFound | Resolved::Pending, _)) => {}
                Err(error) => unavailable = Some(error),
            }
        }
        self.not_a_service(request, authority, conn, unavailable)
            .await
    }

    /// A request whose authority names no Service: it goes where the connection was headed —
    /// the meshed workload there over mTLS, or in plaintext only where that cannot leak out of
    /// the mesh — or it is refused.
    async fn not_a_service(
        &self,
        request: Request<Incoming>,
        authority: Option<Authority>,
        conn: &ConnContext,
        unavailable: Option<Unavailable>,
    ) -> Response<Body> {
        let started = Instant::now();
        if let Some(stack) = &conn.discovered {
            let authority = authority.unwrap_or_else(|| stack_authority(conn));
            return self.forward(stack, authority, request).await;
        }
        if let (Some(dst), true) = (conn.orig_dst, conn.plaintext_ok) {
            if upgrade::is_upgrade(&request) {
                let response = pass_through_upgrade(dst, request).await;
                return self.unmeshed.record(response, started.elapsed());
            }
            let response = pass_through(
                conn.passthrough.get_or_init(|| PlainHttp::new(dst)),
                request,
                &self.unmeshed,
            )
            .await;
            return self.unmeshed.record(response, started.elapsed());
        }
        let response = if let Some(dst) = conn.orig_dst {
            self.metrics.refused(Refusal::DiscoveryUnavailable);
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{dst} is inside the mesh's networks and discovery has not placed it: not sent in plaintext"
                ),
            )
        } else if let Some(unavailable) = unavailable {
            self.metrics.refused(Refusal::DiscoveryUnavailable);
            error_response(StatusCode::SERVICE_UNAVAILABLE, unavailable.to_string())
        } else if let Some(authority) = authority {
            error_response(StatusCode::BAD_GATEWAY, format!("no route to {authority}"))
        } else {
            error_response(
                StatusCode::BAD_REQUEST,
                "request has no authority (Host header)",
            )
        };
        self.unrouted.record(response, started.elapsed())
    }
}

/// The authority of a request that named none, sent to the workload its connection was for.
fn stack_authority(conn: &ConnContext) -> Authority {
    conn.orig_dst
        .and_then(|dst| Authority::try_from(dst.to_string()).ok())
        .unwrap_or_else(|| Authority::from_static("unknown"))
}

impl OutboundHttp {
    /// Sends a request through a meshed destination's stack, observed as configured.
    async fn forward(
        &self,
        stack: &DestinationStack,
        authority: Authority,
        mut request: Request<Incoming>,
    ) -> Response<Body> {
        if upgrade::is_websocket(&request) {
            return forward_upgrade(stack, request).await;
        }
        if request.method() == http::Method::CONNECT {
            // The peer would refuse it: no tunnel to a meshed workload bypasses its policy.
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT to a meshed destination is not supported",
            );
        }
        let app_version = request.version();
        // Before the request is rewritten for the peer: the span and log line describe it as
        // the app sent it, and the context written now travels on.
        let telemetry = stack.telemetry;
        let observation = self.observer.start(
            Direction::Outbound,
            &mut request,
            &stack.service,
            None,
            ServiceObserving {
                sampling: telemetry.trace_sampling,
                access_log: telemetry.access_log,
            },
        );
        let request = match to_peer_request(request, authority) {
            Ok(request) => request,
            Err(reason) => return error_response(StatusCode::BAD_REQUEST, reason),
        };
        let Some(observation) = observation else {
            let mut response = stack.handle(request).await;
            *response.version_mut() = app_version;
            return response;
        };
        let request = request.map(|body| observation.request_body(body));
        let mut response = stack.handle(request).await;
        *response.version_mut() = app_version;
        observation.respond(response)
    }
}

/// A WebSocket handshake to a meshed destination: over an opaque mTLS stream of its own to one
/// of the Service's endpoints, where the peer proxy serves it as HTTP/1.1.
async fn forward_upgrade(
    stack: &DestinationStack,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let Some(peer) = stack.opaque_peer() else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "no endpoint to upgrade to");
    };
    if !peer.speaks_weft() {
        // Its ALPN is h2, where an HTTP/1.1 upgrade has no place.
        return error_response(
            StatusCode::NOT_IMPLEMENTED,
            "upgrades to a foreign SPIFFE endpoint are not supported",
        );
    }
    let mut stream = match peer.connect_stream().await {
        Ok(stream) => stream,
        Err(error) => return error_response(StatusCode::BAD_GATEWAY, error.to_string()),
    };
    if let Err(error) = transport_header::write_opaque(&mut stream).await {
        return error_response(StatusCode::BAD_GATEWAY, error.to_string());
    }
    // Only the proxies may say who sent it.
    remove_weft_headers(request.headers_mut());
    upgrade::forward(stream, request, (), std::future::pending()).await
}

/// An upgrade or `CONNECT` to `dst` outside the mesh (an outside proxy, typically): HTTP/1.1 on
/// a TCP connection of its own.
async fn pass_through_upgrade(dst: SocketAddr, request: Request<Incoming>) -> Response<Body> {
    match tokio::net::TcpStream::connect(dst).await {
        Ok(tcp) => {
            let _ = tcp.set_nodelay(true);
            upgrade::forward(tcp, request, (), std::future::pending()).await
        }
        Err(error) => error_response(
            StatusCode::BAD_GATEWAY,
            format!("unmeshed destination {dst}: {error}"),
        ),
    }
}

async fn pass_through(
    client: &PlainHttp,
    request: Request<Incoming>,
    metrics: &RequestMetrics,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    if parts.version != Version::HTTP_2 {
        strip_connection_headers(&mut parts.headers);
    }
    let body = metrics.count_request(boxed(body));
    match client.send(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "unmeshed destination failed");
            error_response(
                StatusCode::BAD_GATEWAY,
                format!("unmeshed destination: {error}"),
            )
        }
    }
}

/// The authority the app addressed, unparsed: the URI's, else `Host`.
fn named_authority<B>(request: &Request<B>) -> Option<&[u8]> {
    match request.uri().authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => request.headers().get(HOST).map(HeaderValue::as_bytes),
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
    // Only the proxies may say a request was HTTP/1, or who sent it.
    remove_weft_headers(&mut parts.headers);
    match parts.version {
        Version::HTTP_2 => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn static_stack() -> Arc<DestinationStack> {
        let pool = crate::transport::test_support::pool();
        let identity: weft_certs::Identity =
            "spiffe://cluster.local/ns/shop/sa/api".parse().unwrap();
        let destination = Destination::single(
            "api.shop:80",
            "127.0.0.1:1".parse().unwrap(),
            identity,
            false,
        );
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        Arc::new(
            DestinationRuntime::new(pool, metrics, 0)
                .build(&destination, "spiffe://cluster.local/ns/shop/sa/api"),
        )
    }

    #[test]
    fn a_connection_reuses_its_last_destination_only_for_the_same_authority() {
        let last = LastDestination {
            named: b"api.shop".as_slice().into(),
            authority: Authority::from_static("api.shop"),
            route: LastRoute::Static(static_stack()),
        };
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let stacks = Stacks::new(crate::transport::test_support::pool(), metrics, 0, 1);
        let (_, authority) = last.hit(b"api.shop", &stacks).unwrap();
        assert_eq!(authority.as_str(), "api.shop");
        // Another spelling, or another destination, is looked up afresh.
        assert!(last.hit(b"API.shop", &stacks).is_none());
        assert!(last.hit(b"api.shop:80", &stacks).is_none());
        assert!(last.hit(b"db.shop", &stacks).is_none());
    }
}

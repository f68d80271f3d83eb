//! Inbound HTTP: requests from a peer proxy, a foreign mTLS client or (on a permissive port) a
//! plaintext one; authorized, rate limited, stamped with the client's verified identity, and
//! forwarded to the app over pooled local connections in the protocol the app speaks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use parking_lot::Mutex;
use weft_certs::Identity;

use super::app_protocol;
use super::policy::{Client, Policy};
use super::rate_limit::{InboundRateLimits, Limited};
use crate::destination::{AppProtocol, InboundPolicy};
use crate::http_util::{
    Body, CLIENT_ID, ORIG_PROTO, boxed, error_response, remove_weft_headers,
    strip_connection_headers,
};
use crate::metrics::{Direction, ProxyMetrics, RequestLabels, RequestMetrics};
use crate::observe::{Observation, Observer, ServiceObserving};
use crate::plain_http::{PlainHttp, PlainHttpError};
use crate::upgrade;

/// App addresses (the pod's own, on ports the peers name) that keep a pool of their own and a
/// metrics label; past that, a connection to another gets a pool for itself alone and the
/// label "other". Peers choose the ports: nothing they choose may grow without bound.
const MAX_APPS: usize = 64;
/// The label of whatever is past a bound.
const OTHER: &str = "other";
/// gRPC's PERMISSION_DENIED and RESOURCE_EXHAUSTED.
const GRPC_PERMISSION_DENIED: &str = "7";
const GRPC_RESOURCE_EXHAUSTED: &str = "8";

/// Clients to the local app, one pool per app address, and what every connection shares.
#[derive(Debug)]
pub struct InboundHttp {
    metrics: ProxyMetrics,
    policy: Policy,
    rate_limits: InboundRateLimits,
    apps: Mutex<HashMap<SocketAddr, Arc<App>>>,
    observer: Observer,
}

/// One app address: its pool, and what it speaks once probed.
#[derive(Debug)]
struct App {
    http: PlainHttp,
    addr: SocketAddr,
    /// What the app answered, and until when to believe it (`None`: for good). Locked across
    /// a probe, so a burst of first requests asks once.
    detected: tokio::sync::Mutex<Option<(AppProtocol, Option<tokio::time::Instant>)>>,
}

/// How long a silent probe's guess (HTTP/1) stands before the app is asked again.
const SILENT_PROBE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Per-connection state: who the client is, as a header value and as metrics labels.
#[derive(Debug)]
pub struct InboundConnection {
    shared: Arc<InboundHttp>,
    client: Client,
    client_id: Option<HeaderValue>,
    app: Arc<App>,
    metrics: RequestMetrics,
    session: Session,
    /// The client's identity and the app, as spans and access-log lines name them.
    peer: Option<String>,
    destination: Arc<str>,
}

/// What an accepted connection holds, and until when: a WebSocket it upgrades to keeps both.
#[derive(Clone)]
pub struct Session {
    /// Its place among the client's connections, released when the last holder ends.
    pub hold: Arc<dyn std::any::Any + Send + Sync>,
    /// Its maximum age, or the client's certificate expiry.
    pub deadline: tokio::time::Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl InboundHttp {
    /// Forwarding state with metrics in `metrics`, deciding by `policy`, traced and logged as
    /// `observer` says.
    pub fn new(metrics: ProxyMetrics, policy: Policy, observer: Observer) -> Self {
        Self {
            metrics,
            policy,
            rate_limits: InboundRateLimits::default(),
            apps: Mutex::new(HashMap::new()),
            observer,
        }
    }

    /// State for one connection from `client`, forwarding to `app`.
    pub fn connection(
        self: &Arc<Self>,
        client: Client,
        app: SocketAddr,
        session: Session,
    ) -> Arc<InboundConnection> {
        let peer_id = client.identity.as_ref().map(Identity::to_string);
        let client_id = peer_id.as_ref().map(|id| {
            HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
        });
        let (pooled, destination) = match self.pooled(app) {
            Some(pooled) => (pooled, app.to_string()),
            None => (Arc::new(App::new(app)), OTHER.to_string()),
        };
        let peer_label = self
            .metrics
            .peer_tcp()
            .inbound_label(client.identity.as_ref());
        let metrics = self.metrics.requests(&RequestLabels::new(
            Direction::Inbound,
            &peer_label,
            &destination,
        ));
        Arc::new(InboundConnection {
            shared: self.clone(),
            client,
            client_id,
            app: pooled,
            metrics,
            session,
            peer: peer_id,
            destination: destination.into(),
        })
    }

    /// The shared pool of `app`, unless [`MAX_APPS`] others hold one (and are in use).
    fn pooled(&self, app: SocketAddr) -> Option<Arc<App>> {
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
        let pooled = Arc::new(App::new(app));
        apps.insert(app, pooled.clone());
        Some(pooled)
    }
}

impl App {
    fn new(addr: SocketAddr) -> Self {
        Self {
            http: PlainHttp::new(addr),
            addr,
            detected: tokio::sync::Mutex::new(None),
        }
    }

    /// What the app speaks: probed once it answers (nothing is remembered while it cannot be
    /// reached, and a silent app is asked again after a while).
    async fn protocol(&self) -> Result<AppProtocol, PlainHttpError> {
        let mut detected = self.detected.lock().await;
        if let Some((protocol, until)) = *detected
            && until.is_none_or(|until| tokio::time::Instant::now() < until)
        {
            return Ok(protocol);
        }
        let probed =
            app_protocol::probe(self.addr)
                .await
                .map_err(|source| PlainHttpError::Connect {
                    addr: self.addr,
                    source,
                })?;
        let (protocol, until) = match probed {
            app_protocol::Probed::Answered(protocol) => (protocol, None),
            app_protocol::Probed::Silent => (
                AppProtocol::Http1,
                Some(tokio::time::Instant::now() + SILENT_PROBE_TTL),
            ),
        };
        *detected = Some((protocol, until));
        Ok(protocol)
    }
}

impl InboundConnection {
    /// Authorizes, limits and forwards one request to the app.
    pub async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let observation = self.shared.observer.start(
            Direction::Inbound,
            &mut request,
            &self.destination,
            self.peer.as_deref(),
            ServiceObserving::default(),
        );
        let pushed = self.shared.policy.latest();
        let response = match self.admit(pushed.as_deref(), &request) {
            None => {
                self.forward(pushed.as_deref(), request, observation.as_ref())
                    .await
            }
            Some(refusal) => refusal,
        };
        let response = self.metrics.record(response, started.elapsed());
        match observation {
            Some(observation) => observation.respond(response),
            None => response,
        }
    }

    /// Authorization, then the rate limits: the refusal, if any.
    fn admit(
        &self,
        pushed: Option<&InboundPolicy>,
        request: &Request<Incoming>,
    ) -> Option<Response<Body>> {
        let shared = &self.shared;
        let port = self.app.addr.port();
        let decision = shared
            .policy
            .authorize(pushed, port, &self.client, Some(request));
        shared
            .metrics
            .inbound_authz(decision.policy, decision.label);
        let grpc = is_grpc(request);
        if !decision.allowed {
            let reason = format!(
                "unauthorized: {}",
                decision.reason.as_deref().unwrap_or("denied")
            );
            tracing::debug!(%reason, "request denied");
            return Some(refusal(
                grpc,
                StatusCode::FORBIDDEN,
                GRPC_PERMISSION_DENIED,
                reason,
            ));
        }
        let limits = pushed.map(|p| p.rate_limit).unwrap_or_default();
        if let Err(limited) = shared
            .rate_limits
            .check(limits, self.client.identity.as_ref())
        {
            let (label, reason) = match limited {
                Limited::Total => ("total", "rate limited: the workload's inbound limit"),
                Limited::PerIdentity => (
                    "per_identity",
                    "rate limited: the workload's limit per client identity",
                ),
            };
            shared.metrics.inbound_rate_limited(label);
            return Some(refusal(
                grpc,
                StatusCode::TOO_MANY_REQUESTS,
                GRPC_RESOURCE_EXHAUSTED,
                reason.to_string(),
            ));
        }
        None
    }

    async fn forward(
        &self,
        pushed: Option<&InboundPolicy>,
        request: Request<Incoming>,
        observation: Option<&Observation>,
    ) -> Response<Body> {
        if request.method() == http::Method::CONNECT {
            // A tunnel into the pod would carry anything past authorization and stamping.
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT into a meshed workload is not allowed",
            );
        }
        let upgrading = upgrade::is_websocket(&request);
        let (mut parts, body) = request.into_parts();
        let client_version = parts.version;
        if !upgrading && parts.version != Version::HTTP_2 {
            // Any other upgrade offer (h2c) is dropped: the app gets a plain request.
            strip_connection_headers(&mut parts.headers);
        }
        if !upgrading {
            let target = match self.app_version(pushed, &parts).await {
                Ok(version) => version,
                Err(error) => return app_error(error),
            };
            if target != Version::HTTP_2 && parts.version == Version::HTTP_2 {
                // PlainHttp puts the authority back into Host.
                parts.version = target;
            } else if target == Version::HTTP_2 && parts.version != Version::HTTP_2 {
                strip_connection_headers(&mut parts.headers);
                parts.version = Version::HTTP_2;
            }
        }
        // Only the identity this proxy verified may reach the app, under no other spelling.
        // The peer's own marker (read above) first: without it the scan finds nothing to
        // remove on nearly every request, and allocates nothing.
        parts.headers.remove(ORIG_PROTO);
        remove_weft_headers(&mut parts.headers);
        if let Some(client_id) = &self.client_id {
            parts.headers.insert(CLIENT_ID, client_id.clone());
        }
        if upgrading {
            return self.forward_upgrade(Request::from_parts(parts, body)).await;
        }
        let body = self.metrics.count_request(boxed(body));
        let body = match observation {
            Some(observation) => observation.request_body(body),
            None => body,
        };
        match self.app.http.send(Request::from_parts(parts, body)).await {
            Ok(mut response) => {
                *response.version_mut() = client_version;
                response
            }
            Err(error) => app_error(error),
        }
    }

    /// A WebSocket handshake: HTTP/1.1 on a connection to the app of its own. The tunnel holds
    /// the client's connection place, and ends at the connection's deadline or once the
    /// policy no longer allows the handshake it began with.
    async fn forward_upgrade(&self, request: Request<Incoming>) -> Response<Body> {
        let mut head = Request::new(());
        *head.method_mut() = request.method().clone();
        *head.uri_mut() = request.uri().clone();
        *head.headers_mut() = request.headers().clone();
        let (policy, client, port) = (
            self.shared.policy.clone(),
            self.client.clone(),
            self.app.addr.port(),
        );
        let metrics = self.shared.metrics.clone();
        let deadline = self.session.deadline;
        let until = async move {
            let count = |decision: &super::policy::Decision<'_>| {
                metrics.inbound_authz(decision.policy, decision.label);
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                _ = policy.until_denied(port, &client, Some(&head), count) => {}
            }
        };
        match tokio::net::TcpStream::connect(self.app.addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                upgrade::forward(tcp, request, self.session.hold.clone(), until).await
            }
            Err(source) => app_error(PlainHttpError::Connect {
                addr: self.app.addr,
                source,
            }),
        }
    }

    /// The version the app gets: what policy says it speaks (a Service port's appProtocol),
    /// else HTTP/1 for an HTTP/1 request (from a client, or restored from the peer proxy's
    /// `weft-orig-proto` mark), else what the app answered when asked.
    async fn app_version(
        &self,
        pushed: Option<&InboundPolicy>,
        parts: &http::request::Parts,
    ) -> Result<Version, PlainHttpError> {
        let declared = self
            .shared
            .policy
            .port(pushed, self.app.addr.port())
            .app_protocol;
        let protocol = match declared {
            Some(protocol) => protocol,
            None => {
                if let Some(orig) = parts.headers.get(ORIG_PROTO) {
                    return Ok(if orig.as_bytes() == b"HTTP/1.0" {
                        Version::HTTP_10
                    } else {
                        Version::HTTP_11
                    });
                }
                if parts.version != Version::HTTP_2 {
                    return Ok(parts.version);
                }
                self.app.protocol().await?
            }
        };
        Ok(match protocol {
            AppProtocol::Http2 => Version::HTTP_2,
            AppProtocol::Http1 if parts.version == Version::HTTP_10 => Version::HTTP_10,
            AppProtocol::Http1 => Version::HTTP_11,
        })
    }
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A refusal as the client understands it: for gRPC a trailers-only response with the status,
/// otherwise `status` with the reason in `weft-proxy-error`.
fn refusal(
    grpc: bool,
    status: StatusCode,
    grpc_status: &'static str,
    reason: String,
) -> Response<Body> {
    if !grpc {
        return error_response(status, reason);
    }
    let mut response = Response::new(crate::http_util::empty_body());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(grpc_status));
    if let Ok(message) = HeaderValue::from_str(&reason) {
        headers.insert("grpc-message", message.clone());
        headers.insert(crate::http_util::PROXY_ERROR, message);
    }
    response
}

fn app_error(error: PlainHttpError) -> Response<Body> {
    match error {
        error @ PlainHttpError::Saturated(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app busy: {error}"),
        ),
        error => {
            // Clients decide how often this happens: debug only (responses are counted).
            tracing::debug!(%error, "app request failed");
            error_response(StatusCode::BAD_GATEWAY, format!("app unreachable: {error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::policy::InboundPorts;

    fn session() -> Session {
        Session {
            hold: Arc::new(()),
            deadline: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn ports_a_peer_names_grow_neither_pools_nor_labels_without_bound() {
        let registry = prometheus::Registry::new();
        let policy = Policy::new(InboundPorts::default(), None, Arc::new(|_| false));
        let http = Arc::new(InboundHttp::new(
            ProxyMetrics::register(&registry).unwrap(),
            policy,
            Observer::default(),
        ));
        let peer = Client {
            identity: Some("spiffe://cluster.local/ns/shop/sa/mallory".parse().unwrap()),
            addr: [127, 0, 0, 1].into(),
        };
        let mut held = Vec::new();
        for port in 1000..1200 {
            held.push(http.connection(
                peer.clone(),
                SocketAddr::from(([127, 0, 0, 1], port)),
                session(),
            ));
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
        http.connection(peer, SocketAddr::from(([127, 0, 0, 1], 2000)), session());
        assert_eq!(http.apps.lock().len(), 1);
    }
}

//! The tap API (`weft.tap.v1.Tap`): mTLS with the proxy's own certificate, callers verified
//! against the trust anchors, and only admin identities served.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use http::Method;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_api::tap::tap_server::{Tap, TapServer as GrpcTapServer};
use weft_api::tap::{
    self as wire, ConfigRequest, ConfigResponse, MetricsRequest, MetricsResponse, ObserveRequest,
};
use weft_certs::Identity;
use weft_telemetry::{ConfigView, Drain};

use super::{Attached, Event, EventKind, Filter, Taps};
use crate::metrics::Direction;

/// A caller that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes under way at most: who is calling is not known yet.
const MAX_HANDSHAKES: usize = 8;
/// Open connections of admin identities at most: operators' tools, not traffic.
const MAX_ADMIN_CONNECTIONS: usize = 32;
/// Open connections of anyone else (each only to be told it may not tap), kept apart so that
/// they cannot take the admins' places.
const MAX_OTHER_CONNECTIONS: usize = 4;
/// A connection nothing was read on for this long is closed (a tap's client pings every 10 s
/// while it waits for events).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the tap API serves and to whom.
#[derive(Clone)]
pub struct TapServerSettings {
    pub taps: Taps,
    pub config: ConfigView,
    /// The proxy's metrics, for `Metrics`.
    pub registry: prometheus::Registry,
    /// The TLS server config: the proxy's certificate, client certificates required.
    pub tls: Arc<rustls::ServerConfig>,
    /// Who may call.
    pub allowed: Arc<[Identity]>,
}

/// Serves the tap API.
#[derive(Clone)]
pub struct TapServer {
    settings: TapServerSettings,
}

impl std::fmt::Debug for TapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapServer")
            .field("allowed", &self.settings.allowed)
            .finish_non_exhaustive()
    }
}

impl TapServer {
    pub fn new(settings: TapServerSettings) -> Self {
        Self { settings }
    }

    /// Serves on `listener` until `drain` triggers.
    pub async fn serve(self, listener: TcpListener, drain: Drain) {
        let acceptor = TlsAcceptor::from(self.settings.tls.clone());
        let incoming = accept(
            listener,
            acceptor,
            self.settings.allowed.clone(),
            drain.clone(),
        );
        let service = TapService {
            settings: self.settings,
            drain: drain.clone(),
        };
        let served = tonic::transport::Server::builder()
            .add_service(GrpcTapServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move { drain.signaled().await });
        if let Err(error) = served.await {
            tracing::warn!(%error, "tap API stopped");
        }
    }
}

/// Accepted, handshaken connections; handshakes run concurrently so a slow caller holds up
/// no other.
fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    allowed: Arc<[Identity]>,
    drain: Drain,
) -> ReceiverStream<Result<TapConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let admins = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let others = Arc::new(Semaphore::new(MAX_OTHER_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.signaled() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "tap: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(handshaking) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(%remote, "tap: too many handshakes under way; refused");
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            let (allowed, admins, others) = (allowed.clone(), admins.clone(), others.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(handshaking);
                match handshake {
                    Ok(Ok(stream)) => {
                        let caller = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(|leaf| weft_certs::identity_of(leaf).ok());
                        let admin = caller.as_ref().is_some_and(|id| allowed.contains(id));
                        let pool = if admin { admins } else { others };
                        let Ok(place) = pool.try_acquire_owned() else {
                            tracing::debug!(%remote, admin, "tap: too many connections; closed");
                            return;
                        };
                        let connection =
                            TapConnection::new(stream, Caller(caller), place, IDLE_TIMEOUT);
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%remote, %error, "tap: TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "tap: TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The verified identity of a tap caller, in each request's extensions.
#[derive(Debug, Clone)]
struct Caller(Option<Identity>);

/// A tap connection: its caller, and its place among the connections.
type TapConnection = weft_api::server::TlsConnection<Caller, OwnedSemaphorePermit>;

struct TapService {
    settings: TapServerSettings,
    drain: Drain,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::TapEvent, Status>> + Send>>;

impl TapService {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .and_then(|caller| caller.0.as_ref());
        match caller {
            Some(identity) if self.settings.allowed.contains(identity) => Ok(()),
            Some(identity) => Err(Status::permission_denied(format!(
                "{identity} may not tap this proxy; only admin identities may"
            ))),
            None => Err(Status::unauthenticated("a client certificate is required")),
        }
    }
}

#[tonic::async_trait]
impl Tap for TapService {
    type ObserveStream = EventStream;

    async fn observe(
        &self,
        request: Request<ObserveRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let filter = filter(request.r#match.unwrap_or_default())?;
        let attached = self
            .settings
            .taps
            .attach(filter, u64::from(request.limit), request.headers)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        // Ends with the proxy too: a tap left open does not hold up its shutdown.
        let drain = self.drain.clone();
        let stream = AttachedStream(attached)
            .take_until(async move { drain.signaled().await })
            .map(|event| Ok(to_wire(event)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn config(
        &self,
        request: Request<ConfigRequest>,
    ) -> Result<Response<ConfigResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(ConfigResponse {
            json: (self.settings.config)(),
        }))
    }

    async fn metrics(
        &self,
        request: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        self.authorize(&request)?;
        let wanted = request.into_inner().families;
        if wanted.is_empty() || wanted.len() > super::samples::MAX_FAMILIES {
            return Err(Status::invalid_argument(format!(
                "families: name between 1 and {} metric families",
                super::samples::MAX_FAMILIES
            )));
        }
        let samples = super::samples::samples(&self.settings.registry.gather(), &wanted);
        Ok(Response::new(MetricsResponse { samples }))
    }
}

/// An attached observer's events as a stream; dropping it detaches the observer.
struct AttachedStream(Attached);

impl Stream for AttachedStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.0.events.poll_recv(cx)
    }
}

/// The wire filter as the domain's, each field checked.
fn filter(wire: wire::Match) -> Result<Filter, Status> {
    let present = |value: String| Some(value).filter(|v| !v.is_empty());
    let direction = match wire.direction.as_str() {
        "" => None,
        "inbound" => Some(Direction::Inbound),
        "outbound" => Some(Direction::Outbound),
        other => {
            return Err(Status::invalid_argument(format!(
                "match.direction {other:?}: must be \"inbound\" or \"outbound\""
            )));
        }
    };
    let method = present(wire.method)
        .map(|method| {
            Method::from_bytes(method.as_bytes()).map_err(|_| {
                Status::invalid_argument(format!("match.method {method:?}: not an HTTP method"))
            })
        })
        .transpose()?;
    let path_prefix = present(wire.path_prefix);
    if let Some(prefix) = path_prefix.as_deref().filter(|p| !p.starts_with('/')) {
        return Err(Status::invalid_argument(format!(
            "match.path_prefix {prefix:?}: must start with '/'"
        )));
    }
    Ok(Filter {
        direction,
        authority: present(wire.authority),
        path_prefix,
        method,
    })
}

fn to_wire(event: Event) -> wire::TapEvent {
    let headers = |headers: Vec<(String, String)>| {
        headers
            .into_iter()
            .map(|(name, value)| wire::Header { name, value })
            .collect()
    };
    let kind = match event.kind {
        EventKind::Request(init) => wire::tap_event::Event::RequestInit(wire::RequestInit {
            direction: init.direction.as_str().to_string(),
            method: init.method.to_string(),
            authority: init.authority,
            path: init.path,
            protocol: crate::observe::protocol(init.version).to_string(),
            peer_identity: init.peer_identity.unwrap_or_default(),
            destination: init.destination.to_string(),
            at: Some(timestamp(init.at)),
            headers: headers(init.headers),
        }),
        EventKind::Response(init) => wire::tap_event::Event::ResponseInit(wire::ResponseInit {
            status: u32::from(init.status),
            since_request: Some(duration(init.since_request)),
            headers: headers(init.headers),
        }),
        EventKind::End(end) => wire::tap_event::Event::ResponseEnd(wire::ResponseEnd {
            status: u32::from(end.status),
            grpc_status: end.grpc_status,
            duration: Some(duration(end.duration)),
            request_bytes: end.request_bytes,
            response_bytes: end.response_bytes,
            complete: end.complete,
            route: end.route.as_deref().unwrap_or_default().to_string(),
            backend: end.backend.as_deref().unwrap_or_default().to_string(),
            peer_identity: end.peer_identity.unwrap_or_default(),
        }),
    };
    wire::TapEvent {
        request_id: event.request_id,
        proxy: String::new(),
        event: Some(kind),
    }
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

fn duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or_default()
}

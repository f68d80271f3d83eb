//! The inbound side: what reaches the pod's app, from whom.
//!
//! accept → a place among the handshakes in progress → the app's address (one of the pod's
//! own) → the first bytes: TLS (mTLS from a Weft peer with ALPN `weft/1` and the transport
//! header, or from a foreign SPIFFE client with ALPN `h2`/`http/1.1`; client certificate
//! required, chain to the anchor, identity of our trust domain) or plaintext (only where the
//! port is permissive) → a place among that identity's connections → HTTP (HTTP/2 from a peer,
//! else as ALPN or detection says) whose requests are authorized, rate limited, lose every
//! `weft-*` header and get `weft-client-id`, or opaque TCP authorized per connection (again
//! whenever the policy changes). Refusals are counted by reason and logged at debug: a client
//! must not be able to flood the log.

mod app_protocol;
mod http;
mod limits;
mod local_addrs;
mod not_http;
mod policy;
mod rate_limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use weft_certs::{ALPN_H2, ALPN_HTTP1, ALPN_WEFT, Identity};
use weft_telemetry::Drain;

use self::http::{InboundHttp, Session};
pub use self::limits::InboundLimits;
use self::limits::{Admission, ClientKey};
use self::local_addrs::LocalAddrs;
use self::not_http::NotHttp;
pub use self::policy::{Client, InboundPorts, Policy};
use crate::destination::Mode;
use crate::detect::{Protocol, detect};
use crate::metrics::{Direction, InboundRefusal, ProxyMetrics, UNAUTHENTICATED};
use crate::observe::Observer;
use crate::orig_dst::original_dst;
use crate::prefixed::Prefixed;
use crate::serve::{PEER_MAX_STREAMS, ServeOptions, accept_loop, serve_http};
use crate::transport::header::{self as transport_header, Stream};

/// A client that has not completed its handshake and header by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why a connection has nowhere to go.
#[derive(Debug, thiserror::Error)]
enum TargetError {
    #[error("no WEFT_PROXY_APP_PORT and no original destination: nowhere to forward")]
    NoTarget,
    #[error("port {0} is the proxy's own")]
    OwnPort(u16),
    #[error("{0} is not one of the pod's addresses")]
    NotLocal(std::net::IpAddr),
}

impl TargetError {
    fn refusal(&self) -> InboundRefusal {
        match self {
            Self::NoTarget => InboundRefusal::NoTarget,
            Self::OwnPort(_) => InboundRefusal::OwnPort,
            Self::NotLocal(_) => InboundRefusal::NotLocal,
        }
    }
}

/// An accepted connection: who, to where, holding what.
struct Accepted {
    client: Client,
    app: SocketAddr,
    session: Session,
}

/// What the connection's first bytes, ALPN or transport header already say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// A Weft peer announced HTTP/2.
    PeerHttp2,
    /// A Weft peer announced an opaque stream: opaque where the port is, detected elsewhere
    /// (so HTTP inside always takes the path that stamps the verified identity).
    PeerOpaque,
    /// A foreign client negotiated this by ALPN.
    Alpn(Protocol),
    /// Nothing: detect.
    Nothing,
}

/// The inbound proxy.
#[derive(Debug, Clone)]
pub struct Inbound {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tls: Arc<rustls::ServerConfig>,
    policy: Policy,
    http: Arc<InboundHttp>,
    metrics: ProxyMetrics,
    admission: Admission,
    local: LocalAddrs,
    detect_timeout: Duration,
}

impl Inbound {
    /// Accepts with `tls` (which must offer ALPN `weft/1`, `h2` and `http/1.1`) and forwards as
    /// `policy` allows, within `limits`; a plaintext client's protocol is detected within
    /// `detect_timeout`; requests are traced and logged as `observer` says.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        policy: Policy,
        limits: InboundLimits,
        metrics: ProxyMetrics,
        detect_timeout: Duration,
        observer: Observer,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls,
                http: Arc::new(InboundHttp::new(metrics.clone(), policy.clone(), observer)),
                policy,
                metrics,
                admission: Admission::new(limits),
                local: LocalAddrs::new(),
                detect_timeout,
            }),
        }
    }

    /// The ALPN protocols the inbound TLS config must offer, Weft's first.
    pub const ALPN: [&'static [u8]; 3] = [ALPN_WEFT, ALPN_H2, ALPN_HTTP1];

    /// Accepts clients' connections until `drain` triggers.
    pub async fn serve(self, listener: TcpListener, drain: Drain) {
        accept_loop(listener, &drain.clone(), Direction::Inbound, move |tcp| {
            self.clone().handle(tcp, drain.clone())
        })
        .await;
    }

    async fn handle(self, tcp: TcpStream, drain: Drain) {
        let inner = &self.inner;
        let Some(handshake) = inner.admission.handshake() else {
            inner.refused(
                InboundRefusal::Handshakes,
                "too many handshakes in progress",
            );
            return;
        };
        limits::keepalive(&tcp);
        let app = match self.target(&tcp) {
            Ok(app) => app,
            Err(error) => {
                inner.refused(error.refusal(), &error.to_string());
                return;
            }
        };
        let Ok(client_addr) = tcp.peer_addr() else {
            return;
        };
        let mut first = [0u8; 1];
        let is_tls = match tokio::time::timeout(inner.detect_timeout, tcp.peek(&mut first)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => first[0] == TLS_HANDSHAKE_RECORD,
            // A client that waits for the server to speak first.
            Err(_) => false,
        };
        if !is_tls {
            let pushed = inner.policy.current().await;
            if inner.policy.mode(pushed.as_deref(), app.port()) == Mode::Strict {
                inner.refused(
                    InboundRefusal::Plaintext,
                    &format!(
                        "plaintext client {client_addr} on strict port {}",
                        app.port()
                    ),
                );
                return;
            }
            drop(handshake);
            let Some(permit) = inner
                .admission
                .connection(ClientKey::Address(client_addr.ip()))
            else {
                inner.refused(
                    InboundRefusal::IdentityConnections,
                    &format!("{client_addr} holds as many plaintext connections as it may"),
                );
                return;
            };
            let accepted = Accepted {
                client: Client {
                    identity: None,
                    addr: client_addr.ip(),
                },
                app,
                session: Session {
                    hold: Arc::new(permit),
                    deadline: inner.admission.deadline(None),
                },
            };
            let tcp = inner
                .metrics
                .peer_tcp()
                .meter(Direction::Inbound, UNAUTHENTICATED, tcp);
            self.serve_stream(tcp, Bytes::new(), Known::Nothing, accepted, &drain)
                .await;
            return;
        }
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut tls = TlsAcceptor::from(inner.tls.clone())
                .accept(tcp)
                .await
                .inspect_err(|e| inner.metrics.tls_failure(Direction::Inbound, e))?;
            inner
                .metrics
                .tls_handshake(Direction::Inbound, tls.get_ref().1);
            let known = match tls.get_ref().1.alpn_protocol() {
                Some(ALPN_WEFT) => match transport_header::read(&mut tls).await? {
                    (Stream::Http2, prefix) => (Known::PeerHttp2, prefix),
                    (Stream::Opaque, prefix) => (Known::PeerOpaque, prefix),
                },
                Some(ALPN_H2) => (Known::Alpn(Protocol::Http2), Vec::new()),
                Some(ALPN_HTTP1) => (Known::Alpn(Protocol::Http1), Vec::new()),
                _ => (Known::Nothing, Vec::new()),
            };
            Ok::<_, std::io::Error>((tls, known))
        })
        .await;
        drop(handshake);
        let (tls, (known, prefix)) = match accepted {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(error)) => {
                tracing::debug!(%error, "client refused");
                return;
            }
            Err(_) => {
                inner.refused(InboundRefusal::HandshakeTimeout, "handshake timed out");
                return;
            }
        };
        let Some((peer, not_after)) = peer_certificate(&tls) else {
            // Unreachable with client auth required; refuse rather than forward anonymously.
            inner.refused(InboundRefusal::NoIdentity, "client presented no identity");
            return;
        };
        let Some(permit) = inner
            .admission
            .connection(ClientKey::Identity(peer.clone()))
        else {
            inner.refused(
                InboundRefusal::IdentityConnections,
                &format!("{peer} holds as many connections as it may"),
            );
            return;
        };
        tracing::debug!(peer = %peer, "client authenticated");
        let peer_tcp = inner.metrics.peer_tcp();
        let tls = peer_tcp.meter(
            Direction::Inbound,
            &peer_tcp.inbound_label(Some(&peer)),
            tls,
        );
        let accepted = Accepted {
            client: Client {
                identity: Some(peer),
                addr: client_addr.ip(),
            },
            app,
            session: Session {
                hold: Arc::new(permit),
                deadline: inner.admission.deadline(not_after),
            },
        };
        self.serve_stream(tls, prefix.into(), known, accepted, &drain)
            .await;
    }

    /// Serves one established stream to the app: HTTP, or opaque TCP if authorized.
    async fn serve_stream<S>(
        &self,
        mut io: S,
        mut prefix: Bytes,
        known: Known,
        accepted: Accepted,
        drain: &Drain,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &self.inner;
        let Accepted {
            client,
            app,
            session,
        } = accepted;
        let pushed = inner.policy.current().await;
        let opaque_port = inner.policy.port(pushed.as_deref(), app.port()).opaque;
        let protocol = match known {
            Known::PeerHttp2 => Protocol::Http2,
            Known::Alpn(protocol) => protocol,
            _ if opaque_port => Protocol::Opaque,
            Known::PeerOpaque | Known::Nothing => {
                match detect(
                    &mut Prefixed::new(prefix.clone(), &mut io),
                    inner.detect_timeout,
                )
                .await
                {
                    Ok((protocol, read)) => {
                        let mut all = BytesMut::from(&prefix[..]);
                        all.extend_from_slice(&read);
                        prefix = all.freeze();
                        protocol
                    }
                    Err(error) => {
                        tracing::debug!(%error, "client went away during detection");
                        return;
                    }
                }
            }
        };
        let io = Prefixed::new(prefix, io);
        if protocol == Protocol::Opaque {
            let _open = inner.metrics.open_connection(Direction::Inbound, "opaque");
            let deadline = session.deadline;
            if opaque_port {
                self.forward_opaque(io, client, app, deadline).await;
            } else {
                // Detected, not declared: nothing the app could take for a request may pass.
                self.forward_opaque(NotHttp::new(io), client, app, deadline)
                    .await;
            }
            return;
        }
        let name = if protocol == Protocol::Http2 {
            "http2"
        } else {
            "http1"
        };
        let _open = inner.metrics.open_connection(Direction::Inbound, name);
        let deadline = session.deadline;
        let conn = inner.http.connection(client, app, session);
        let service = service_fn(move |request| {
            let conn = conn.clone();
            async move { Ok::<_, std::convert::Infallible>(conn.handle(request).await) }
        });
        let limits = inner.admission.limits();
        let options = ServeOptions {
            max_streams: PEER_MAX_STREAMS,
            keepalive: Some((limits::KEEPALIVE_INTERVAL, limits::KEEPALIVE_TIMEOUT)),
            idle_timeout: Some(limits.idle_timeout),
            deadline: Some(deadline),
            // HTTP/1 here comes from the network (plaintext, foreign or detected clients).
            header_read_timeout: Some(HANDSHAKE_TIMEOUT),
        };
        serve_http(TokioIo::new(io), protocol, options, service, drain).await;
    }

    /// Copies bytes between `client` and the app while authorization allows: checked when the
    /// connection opens and again whenever the pushed policy changes.
    async fn forward_opaque<S>(&self, mut io: S, client: Client, app: SocketAddr, deadline: Instant)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let inner = &self.inner;
        let authorized = |pushed: Option<&crate::destination::InboundPolicy>| {
            let decision = inner
                .policy
                .authorize::<()>(pushed, app.port(), &client, None);
            inner.metrics.inbound_authz(decision.policy, decision.label);
            if !decision.allowed {
                inner.refused(
                    InboundRefusal::Unauthorized,
                    decision.reason.as_deref().unwrap_or("denied"),
                );
            }
            decision.allowed
        };
        if !authorized(inner.policy.latest().as_deref()) {
            return;
        }
        let mut upstream = match TcpStream::connect(app).await {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::debug!(%error, %app, "cannot reach the app");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let count = |decision: &policy::Decision<'_>| {
            inner.metrics.inbound_authz(decision.policy, decision.label);
        };
        tokio::select! {
            result = copy_bidirectional(&mut io, &mut upstream) => match result {
                Ok((from_client, to_client)) => {
                    inner.metrics.tcp_bytes(Direction::Inbound, to_client, from_client);
                }
                Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                    inner.refused(InboundRefusal::NotHttp, &error.to_string());
                }
                Err(error) => tracing::debug!(%error, "opaque stream ended with an error"),
            },
            () = tokio::time::sleep_until(deadline) => {
                tracing::debug!("opaque stream ended: its time or the client's certificate ran out");
            }
            reason = inner.policy.until_denied(app.port(), &client, None, count) => {
                inner.refused(InboundRefusal::Unauthorized, &reason);
            }
        }
    }

    /// Where the app is: an intercepted connection goes to its original destination (the pod's
    /// address, not loopback, so services bound to loopback only stay private); one that came
    /// to us directly goes to the app port on loopback.
    fn target(&self, tcp: &TcpStream) -> Result<SocketAddr, TargetError> {
        let policy = &self.inner.policy.ports;
        let target = match original_dst(tcp) {
            Some(dst) => dst,
            None => SocketAddr::from((
                [127, 0, 0, 1],
                policy.app_port.ok_or(TargetError::NoTarget)?,
            )),
        };
        if policy.own_ports.contains(&target.port()) {
            return Err(TargetError::OwnPort(target.port()));
        }
        // The original destination is the peer's to choose: only the pod's own addresses are
        // the app's, anything else would make us a relay.
        if !target.ip().is_loopback() && !self.inner.local.contains(target.ip()) {
            return Err(TargetError::NotLocal(target.ip()));
        }
        Ok(target)
    }
}

impl Inner {
    /// Counts a refused connection; logged at debug only, as peers choose how often.
    fn refused(&self, reason: InboundRefusal, why: &str) {
        self.metrics.inbound_refused(reason);
        tracing::debug!(reason = reason.as_str(), why, "inbound connection refused");
    }
}

/// The client's identity and its certificate's notAfter.
fn peer_certificate(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
) -> Option<(Identity, Option<SystemTime>)> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    let identity = weft_certs::identity_of(leaf).ok()?;
    Some((identity, weft_certs::not_after_of(leaf)))
}

//! The inbound side: mTLS from other proxies of the trust domain, forwarded to the local app.
//!
//! accept → a place among the handshakes in progress → the app's address (one of the pod's
//! own) → TLS (client certificate required, chain to the anchor, identity of our trust domain)
//! → read the peer's identity → transport header → a place among that identity's connections
//! → HTTP/2 server or opaque TCP to the app, until the connection's age or the peer's
//! certificate runs out. Refusals are counted by reason and logged at debug: a peer must not be
//! able to flood the log.

mod http;
mod limits;
mod local_addrs;
mod policy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft_certs::{ALPN_WEFT, Identity};
use weft_telemetry::Drain;

use self::http::InboundHttp;
use self::limits::Admission;
pub use self::limits::InboundLimits;
use self::local_addrs::LocalAddrs;
pub use self::policy::{InboundPorts, Policy};
use crate::detect::Protocol;
use crate::metrics::{Direction, InboundRefusal, ProxyMetrics};
use crate::orig_dst::original_dst;
use crate::prefixed::Prefixed;
use crate::serve::{PEER_MAX_STREAMS, ServeOptions, accept_loop, serve_http};
use crate::transport::header::{self as transport_header, Stream};

/// A peer that has not completed its handshake and header by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The inbound proxy.
#[derive(Debug, Clone)]
pub struct Inbound {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tls: Arc<rustls::ServerConfig>,
    policy: Policy,
    http: InboundHttp,
    metrics: ProxyMetrics,
    admission: Admission,
    local: LocalAddrs,
}

impl Inbound {
    /// Accepts with `tls` and forwards as `policy` allows, within `limits`.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        policy: Policy,
        limits: InboundLimits,
        metrics: ProxyMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls,
                policy,
                http: InboundHttp::new(metrics.clone()),
                metrics,
                admission: Admission::new(limits),
                local: LocalAddrs::new(),
            }),
        }
    }

    /// Accepts peers' connections until `drain` triggers.
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
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut tls = TlsAcceptor::from(inner.tls.clone())
                .accept(tcp)
                .await
                .inspect_err(|_| inner.metrics.tls_failure(Direction::Inbound))?;
            inner
                .metrics
                .tls_handshake(Direction::Inbound, tls.get_ref().1);
            let header = transport_header::read(&mut tls).await?;
            Ok::<_, std::io::Error>((tls, header))
        })
        .await;
        drop(handshake);
        let (tls, (stream, prefix)) = match accepted {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(error)) => {
                tracing::debug!(%error, "peer refused");
                return;
            }
            Err(_) => {
                inner.refused(InboundRefusal::HandshakeTimeout, "handshake timed out");
                return;
            }
        };
        let Some((peer, not_after)) = peer_certificate(&tls) else {
            // Unreachable with client auth required; refuse rather than forward anonymously.
            inner.refused(InboundRefusal::NoIdentity, "peer presented no identity");
            return;
        };
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_WEFT) {
            inner.refused(InboundRefusal::Alpn, "peer did not negotiate ALPN weft/1");
            return;
        }
        let Some(_connection) = inner.admission.connection(&peer) else {
            inner.refused(
                InboundRefusal::IdentityConnections,
                &format!("{peer} holds as many connections as it may"),
            );
            return;
        };
        let deadline = inner.admission.deadline(not_after);
        tracing::debug!(peer = %peer, "peer authenticated");
        match stream {
            Stream::Http2 => {
                let _open = inner.metrics.open_connection(Direction::Inbound, "http2");
                let conn = inner.http.connection(&peer, app);
                let service = service_fn(move |request| {
                    let conn = conn.clone();
                    async move { Ok::<_, std::convert::Infallible>(conn.handle(request).await) }
                });
                let io = Prefixed::new(prefix.into(), tls);
                let limits = inner.admission.limits();
                let options = ServeOptions {
                    max_streams: PEER_MAX_STREAMS,
                    keepalive: Some((limits::KEEPALIVE_INTERVAL, limits::KEEPALIVE_TIMEOUT)),
                    idle_timeout: Some(limits.idle_timeout),
                    deadline: Some(deadline),
                };
                serve_http(TokioIo::new(io), Protocol::Http2, options, service, &drain).await;
            }
            Stream::Opaque if !inner.policy.accepts_opaque(app.port()).await => {
                inner.refused(
                    InboundRefusal::NotOpaque,
                    &format!("opaque stream to port {} (not opaque by WEFT_PROXY_OPAQUE_PORTS or policy)", app.port()),
                );
            }
            Stream::Opaque => {
                let _open = inner.metrics.open_connection(Direction::Inbound, "opaque");
                tokio::select! {
                    () = forward_opaque(tls, app, &inner.metrics) => {}
                    () = tokio::time::sleep_until(deadline) => {
                        tracing::debug!(peer = %peer, "opaque stream ended: its time or the peer's certificate ran out");
                    }
                }
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

/// The peer's identity and its certificate's notAfter.
fn peer_certificate(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
) -> Option<(Identity, Option<SystemTime>)> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    let identity = weft_certs::identity_of(leaf).ok()?;
    Some((identity, weft_certs::not_after_of(leaf)))
}

async fn forward_opaque(
    mut peer: tokio_rustls::server::TlsStream<TcpStream>,
    app: SocketAddr,
    metrics: &ProxyMetrics,
) {
    let mut upstream = match TcpStream::connect(app).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(%error, %app, "cannot reach the app");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    match copy_bidirectional(&mut peer, &mut upstream).await {
        Ok((from_peer, to_peer)) => metrics.tcp_bytes(Direction::Inbound, to_peer, from_peer),
        Err(error) => tracing::debug!(%error, "opaque stream ended with an error"),
    }
}

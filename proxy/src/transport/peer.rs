//! One multiplexed HTTP/2 connection over mTLS per peer endpoint, and opaque mTLS streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weft_certs::Identity;

use crate::http_util::Body;
use crate::metrics::{Direction, Metered, ProxyMetrics};
use crate::transport::shared_h2::{SendError, SharedH2};

/// A peer that does not accept the TCP connection by then is unreachable.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// TCP, TLS and the HTTP/2 handshake together: a peer that accepts TCP and then stalls must
/// not hold requests forever.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pings, idle or not, find dead peers before a request does.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a peer could not be reached or the request not sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Dialing failed: TCP, TLS (including the peer not proving the expected identity), or the
    /// HTTP/2 handshake. Shared by every request that waited on the same dial.
    #[error("connect to {addr} ({identity}): {reason}")]
    Dial {
        /// The peer's address.
        addr: SocketAddr,
        /// The identity it had to prove.
        identity: Identity,
        /// What failed.
        reason: Arc<str>,
    },
    /// The HTTP/2 exchange failed.
    #[error("HTTP/2 with {addr}: {reason}")]
    Http {
        /// The peer's address.
        addr: SocketAddr,
        /// hyper's error.
        reason: Arc<str>,
    },
    /// Every connection to the peer carries as many streams as it may, and none freed up in
    /// time: the request was not sent.
    #[error("{addr} is saturated: every connection to it is full of streams")]
    Saturated {
        /// The peer's address.
        addr: SocketAddr,
    },
}

/// How a peer is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handshake {
    /// A Weft proxy: ALPN `weft/1`, the transport header before opaque streams.
    Weft,
    /// A foreign SPIFFE workload (an Envoy, a SPIRE-enabled service): standard mTLS with ALPN
    /// `h2`, nothing of Weft's on the wire.
    StandardMtls,
}

/// An mTLS stream to a peer, counted by its identity.
pub type PeerStream = Metered<TlsStream<TcpStream>>;

/// Connections to peer proxies, shared by every outbound connection.
#[derive(Debug, Clone)]
pub struct PeerPool {
    dialer: Arc<Dialer>,
    peers: Arc<Mutex<PeersByEndpoint>>,
}

/// Each endpoint with the identity it must prove: the same address under another identity is
/// another peer.
type PeersByEndpoint = HashMap<(SocketAddr, Identity, Handshake), Arc<Peer>>;

/// What every dial needs.
#[derive(Debug)]
struct Dialer {
    tls: Arc<rustls::ClientConfig>,
    /// Standard mTLS: ALPN `h2` for HTTP, none for opaque streams.
    standard_tls: StandardTls,
    metrics: ProxyMetrics,
}

/// The TLS configs for foreign SPIFFE workloads: HTTP/2 (ALPN `h2`) and opaque TCP (no ALPN,
/// so a server that picks a protocol by ALPN does not take the bytes for HTTP/2).
#[derive(Debug, Clone)]
pub struct StandardTls {
    pub h2: Arc<rustls::ClientConfig>,
    pub opaque: Arc<rustls::ClientConfig>,
}

/// One peer endpoint and its HTTP/2 connection, if one is up. Routes hold it directly, so a
/// request reaches its connection without a shared lookup.
#[derive(Debug)]
pub struct Peer {
    addr: SocketAddr,
    identity: Identity,
    handshake: Handshake,
    server_name: ServerName<'static>,
    dialer: Arc<Dialer>,
    connection: SharedH2,
    /// The last failed dial, so requests that waited on it fail with it instead of redialing
    /// one after another.
    last_failure: Mutex<Option<(Instant, PeerError)>>,
}

// === impl PeerPool ===

impl PeerPool {
    /// A pool dialing peers with `tls` (our certificate, verifying the peer's identity, ALPN
    /// `weft/1`), and foreign SPIFFE workloads with `standard_tls` (the same, ALPN `h2`).
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        standard_tls: StandardTls,
        metrics: ProxyMetrics,
    ) -> Self {
        Self {
            dialer: Arc::new(Dialer {
                tls,
                standard_tls,
                metrics,
            }),
            peers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Forgets peers no balancer or route holds any more (their endpoints went away), closing
    /// their connections.
    pub fn sweep(&self) {
        self.peers
            .lock()
            .retain(|_, peer| Arc::strong_count(peer) > 1);
    }

    /// The Weft proxy at `addr`, which must prove `identity`.
    pub fn peer(&self, addr: SocketAddr, identity: &Identity) -> Result<Arc<Peer>, PeerError> {
        self.peer_with(addr, identity, Handshake::Weft)
    }

    /// The peer at `addr`, which must prove `identity`, spoken to as `handshake` says.
    pub fn peer_with(
        &self,
        addr: SocketAddr,
        identity: &Identity,
        handshake: Handshake,
    ) -> Result<Arc<Peer>, PeerError> {
        let mut peers = self.peers.lock();
        if let Some(peer) = peers.get(&(addr, identity.clone(), handshake)) {
            return Ok(peer.clone());
        }
        let server_name =
            ServerName::try_from(identity.dns_name()).map_err(|e| PeerError::Dial {
                addr,
                identity: identity.clone(),
                reason: format!("identity has no usable DNS form: {e}").into(),
            })?;
        let peer = Arc::new(Peer {
            addr,
            identity: identity.clone(),
            handshake,
            server_name,
            dialer: self.dialer.clone(),
            connection: SharedH2::default(),
            last_failure: Mutex::new(None),
        });
        peers.insert((addr, identity.clone(), handshake), peer.clone());
        Ok(peer)
    }
}

// === impl Peer ===

impl Peer {
    /// Sends `request` over one of the peer's HTTP/2 connections (see `SharedH2`). A request the
    /// connection refused before sending anything (it was closing) is sent once more on a fresh
    /// connection.
    pub async fn send(
        &self,
        mut request: Request<Body>,
        connect_timeout: Option<Duration>,
    ) -> Result<Response<Body>, PeerError> {
        if self.handshake == Handshake::StandardMtls {
            // Weft's own marker means nothing to a foreign peer.
            request.headers_mut().remove(crate::http_util::ORIG_PROTO);
        }
        let dial = |waited_since| self.dial_unless_failed_since(waited_since, connect_timeout);
        self.connection
            .send(request, dial)
            .await
            .map_err(|error| match error {
                SendError::Dial(error) => error,
                SendError::Http(error) => self.http_error(&error),
                SendError::Saturated => PeerError::Saturated { addr: self.addr },
            })
    }

    /// Whether the peer is a Weft proxy (which expects the transport header on opaque streams).
    pub fn speaks_weft(&self) -> bool {
        self.handshake == Handshake::Weft
    }

    /// Opens a new mTLS stream to the peer, for opaque TCP.
    pub async fn connect_stream(&self) -> Result<PeerStream, PeerError> {
        tokio::time::timeout(DIAL_TIMEOUT, self.connect_tls(TCP_CONNECT_TIMEOUT, true))
            .await
            .unwrap_or_else(|_| Err(self.dial_error("timed out")))
    }

    /// A new connection, unless a dial failed while the request waited: requests that waited
    /// on that dial fail with it rather than redial one after another.
    async fn dial_unless_failed_since(
        &self,
        waited_since: Instant,
        connect_timeout: Option<Duration>,
    ) -> Result<SendRequest<Body>, PeerError> {
        if let Some((failed_at, error)) = &*self.last_failure.lock()
            && *failed_at >= waited_since
        {
            return Err(error.clone());
        }
        let connect_timeout = connect_timeout.unwrap_or(TCP_CONNECT_TIMEOUT);
        let dialed = tokio::time::timeout(
            DIAL_TIMEOUT.max(connect_timeout),
            self.dial(connect_timeout),
        )
        .await
        .unwrap_or_else(|_| Err(self.dial_error("timed out")));
        if let Err(error) = &dialed {
            *self.last_failure.lock() = Some((Instant::now(), error.clone()));
        }
        dialed
    }

    async fn dial(&self, connect_timeout: Duration) -> Result<SendRequest<Body>, PeerError> {
        let tls = self.connect_tls(connect_timeout, false).await?;
        let (sender, connection) = crate::http_util::h2_client()
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.dial_error(&e.to_string()))?;
        let addr = self.addr;
        // The connection ends when the peer goes away, a ping goes unanswered, or every handle
        // (this peer's and in-flight requests') is dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "peer connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_tls(
        &self,
        connect_timeout: Duration,
        opaque: bool,
    ) -> Result<PeerStream, PeerError> {
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| self.dial_error("TCP connect timed out"))?
            .map_err(|e| self.dial_error(&e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = match (self.handshake, opaque) {
            (Handshake::Weft, _) => &self.dialer.tls,
            (Handshake::StandardMtls, false) => &self.dialer.standard_tls.h2,
            (Handshake::StandardMtls, true) => &self.dialer.standard_tls.opaque,
        };
        TlsConnector::from(tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                self.dialer.metrics.tls_failure(Direction::Outbound, &e);
                self.dial_error(&format!("TLS: {e}"))
            })
            .map(|tls| {
                let metrics = &self.dialer.metrics;
                metrics.tls_handshake(Direction::Outbound, tls.get_ref().1);
                metrics
                    .peer_tcp()
                    .meter(Direction::Outbound, &self.identity.to_string(), tls)
            })
    }

    fn dial_error(&self, reason: &str) -> PeerError {
        PeerError::Dial {
            addr: self.addr,
            identity: self.identity.clone(),
            reason: reason.into(),
        }
    }

    fn http_error(&self, error: &hyper::Error) -> PeerError {
        PeerError::Http {
            addr: self.addr,
            reason: error.to_string().into(),
        }
    }
}

/// What tests of the layers above need from this module.
#[cfg(test)]
pub mod test_support {
    use std::sync::Arc;

    use super::PeerPool;
    use crate::metrics::ProxyMetrics;

    /// A pool that trusts a throwaway anchor, for tests that need peers but never dial them.
    pub fn pool() -> PeerPool {
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let anchor = weft_certs::TrustAnchor::generate(
            &weft_certs::TrustDomain::cluster_local(),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let anchors = weft_certs::TrustAnchors::from_pem(anchor.certificate_pem().as_bytes());
        let tls = weft_certs::client_config(&anchors.unwrap(), weft_certs::CertStore::new(), &[])
            .unwrap();
        let tls = Arc::new(tls);
        let standard = super::StandardTls {
            h2: tls.clone(),
            opaque: tls.clone(),
        };
        PeerPool::new(tls, standard, metrics)
    }
}

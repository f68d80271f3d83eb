//! One multiplexed HTTP/2 connection over mTLS per peer endpoint, and opaque mTLS streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weft_certs::Identity;

use crate::http_util::Body;
use crate::metrics::{Direction, ProxyMetrics};

/// A peer that does not accept the TCP connection by then is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pings on idle connections find dead peers before a request does.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a peer could not be reached or the request not sent.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The TLS handshake failed (including the peer not proving the expected identity).
    #[error("TLS with {addr} ({identity}): {source}")]
    Tls {
        /// The peer's address.
        addr: SocketAddr,
        /// The identity it had to prove.
        identity: Identity,
        /// The handshake error.
        source: std::io::Error,
    },
    /// The HTTP/2 exchange failed.
    #[error("HTTP/2 with {addr}: {source}")]
    Http {
        /// The peer's address.
        addr: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
}

/// Connections to peer proxies, shared by every outbound connection.
#[derive(Debug, Clone)]
pub struct PeerPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    tls: Arc<rustls::ClientConfig>,
    metrics: ProxyMetrics,
    peers: Mutex<HashMap<(SocketAddr, Identity), Arc<Peer>>>,
}

/// One peer endpoint and its HTTP/2 connection, if one is up.
#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    identity: Identity,
    server_name: ServerName<'static>,
    /// Cloned per request (a cheap handle); replaced when the connection dies.
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting, so concurrent requests share one new connection.
    connecting: tokio::sync::Mutex<()>,
}

// === impl PeerPool ===

impl PeerPool {
    /// A pool dialing peers with `tls` (our certificate, verifying the peer's identity).
    pub fn new(tls: Arc<rustls::ClientConfig>, metrics: ProxyMetrics) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                tls,
                metrics,
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `request` to the peer at `addr`, which must prove `identity`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: &Identity,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, PeerError> {
        let peer = self.peer(addr, identity)?;
        let mut sender = peer.sender(&self.inner).await?;
        let result = match sender.ready().await {
            Ok(()) => sender.send_request(request).await,
            Err(error) => Err(error),
        };
        result.map_err(|source| {
            peer.forget(&sender);
            PeerError::Http { addr, source }
        })
    }

    /// Opens a new mTLS stream to the peer, for opaque TCP.
    pub async fn connect_stream(
        &self,
        addr: SocketAddr,
        identity: &Identity,
    ) -> Result<TlsStream<TcpStream>, PeerError> {
        let peer = self.peer(addr, identity)?;
        peer.connect_tls(&self.inner).await
    }

    fn peer(&self, addr: SocketAddr, identity: &Identity) -> Result<Arc<Peer>, PeerError> {
        let mut peers = self.inner.peers.lock();
        if let Some(peer) = peers.get(&(addr, identity.clone())) {
            return Ok(peer.clone());
        }
        let server_name =
            ServerName::try_from(identity.dns_name()).map_err(|e| PeerError::Connect {
                addr,
                reason: format!("identity has no usable DNS form: {e}"),
            })?;
        let peer = Arc::new(Peer {
            addr,
            identity: identity.clone(),
            server_name,
            sender: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        peers.insert((addr, identity.clone()), peer.clone());
        Ok(peer)
    }
}

// === impl Peer ===

impl Peer {
    /// A handle on the live connection, connecting first if there is none.
    async fn sender(&self, pool: &PoolInner) -> Result<SendRequest<Body>, PeerError> {
        if let Some(sender) = self.live_sender() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        // Another request may have connected while we waited.
        if let Some(sender) = self.live_sender() {
            return Ok(sender);
        }
        let tls = self.connect_tls(pool).await?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .adaptive_window(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| PeerError::Http {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "peer connection ended");
            }
        });
        *self.sender.lock() = Some(sender.clone());
        Ok(sender)
    }

    fn live_sender(&self) -> Option<SendRequest<Body>> {
        let guard = self.sender.lock();
        guard.as_ref().filter(|sender| !sender.is_closed()).cloned()
    }

    /// Drops the cached connection if `failed` is it and it is closed.
    fn forget(&self, failed: &SendRequest<Body>) {
        if failed.is_closed() {
            let mut guard = self.sender.lock();
            if guard.as_ref().is_some_and(SendRequest::is_closed) {
                *guard = None;
            }
        }
    }

    async fn connect_tls(&self, pool: &PoolInner) -> Result<TlsStream<TcpStream>, PeerError> {
        let addr = self.addr;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| PeerError::Connect {
                addr,
                reason: "timed out".to_string(),
            })?
            .map_err(|e| PeerError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(pool.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| {
                pool.metrics.tls_failure(Direction::Outbound);
                PeerError::Tls {
                    addr,
                    identity: self.identity.clone(),
                    source,
                }
            })
    }
}

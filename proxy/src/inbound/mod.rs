//! The inbound side: mTLS from other proxies of the trust domain, forwarded to the local app.
//!
//! accept → TLS (client certificate required, chain to the anchor, identity of our trust domain)
//! → read the peer's identity → transport header → HTTP/2 server or opaque TCP to the app.

mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft_certs::Identity;
use weft_telemetry::Drain;

use self::http::InboundHttp;
use crate::detect::Protocol;
use crate::metrics::{Direction, ProxyMetrics};
use crate::orig_dst::original_dst;
use crate::prefixed::Prefixed;
use crate::serve::{accept_loop, serve_http};
use crate::transport_header::{self, Stream};

/// A peer that has not completed its handshake and header by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The inbound proxy.
#[derive(Debug, Clone)]
pub struct Inbound {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tls: Arc<rustls::ServerConfig>,
    app_port: Option<u16>,
    http: InboundHttp,
    metrics: ProxyMetrics,
}

impl Inbound {
    /// Accepts with `tls` and forwards to the app on `app_port` (or, for intercepted
    /// connections, to the port they were headed for).
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        app_port: Option<u16>,
        metrics: ProxyMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls,
                app_port,
                http: InboundHttp::new(metrics.clone()),
                metrics,
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
        let Some(app) = self.app_addr(&tcp) else {
            tracing::info!(
                "no WEFT_PROXY_APP_PORT and no original destination: nowhere to forward"
            );
            return;
        };
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut tls = TlsAcceptor::from(inner.tls.clone())
                .accept(tcp)
                .await
                .inspect_err(|_| inner.metrics.tls_failure(Direction::Inbound))?;
            let header = transport_header::read(&mut tls).await?;
            Ok::<_, std::io::Error>((tls, header))
        })
        .await;
        let (tls, (stream, prefix)) = match accepted {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(error)) => {
                tracing::debug!(%error, "peer refused");
                return;
            }
            Err(_) => {
                tracing::debug!("peer handshake timed out");
                return;
            }
        };
        let Some(peer) = peer_identity(&tls) else {
            // Unreachable with client auth required; refuse rather than forward anonymously.
            tracing::warn!("peer presented no identity");
            return;
        };
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
                serve_http(TokioIo::new(io), Protocol::Http2, service, &drain).await;
            }
            Stream::Opaque => {
                let _open = inner.metrics.open_connection(Direction::Inbound, "opaque");
                forward_opaque(tls, app, &inner.metrics).await;
            }
        }
    }

    fn app_addr(&self, tcp: &TcpStream) -> Option<SocketAddr> {
        let port = original_dst(tcp)
            .map(|dst| dst.port())
            .or(self.inner.app_port)?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

fn peer_identity(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<Identity> {
    let certs = tls.get_ref().1.peer_certificates()?;
    weft_certs::identity_of(certs.first()?).ok()
}

async fn forward_opaque(
    mut peer: tokio_rustls::server::TlsStream<TcpStream>,
    app: SocketAddr,
    metrics: &ProxyMetrics,
) {
    let mut upstream = match TcpStream::connect(app).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::info!(%error, %app, "cannot reach the app");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    match copy_bidirectional(&mut peer, &mut upstream).await {
        Ok((from_peer, to_peer)) => metrics.tcp_bytes(Direction::Inbound, to_peer, from_peer),
        Err(error) => tracing::debug!(%error, "opaque stream ended with an error"),
    }
}

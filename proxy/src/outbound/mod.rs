//! The outbound side: the local app's connections, intercepted or addressed to us directly.
//!
//! accept → original destination → protocol detection → HTTP (routed per request) or opaque TCP
//! (routed per connection).

mod http;
mod peer;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use weft_telemetry::Drain;

use self::http::OutboundHttp;
use self::peer::PeerPool;
use crate::detect::{self, Protocol};
use crate::metrics::{Direction, ProxyMetrics};
use crate::orig_dst::original_dst;
use crate::prefixed::Prefixed;
use crate::serve::{accept_loop, serve_http};
use crate::static_routes::StaticRoutes;

/// The outbound proxy.
#[derive(Debug, Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    routes: StaticRoutes,
    pool: PeerPool,
    http: OutboundHttp,
    metrics: ProxyMetrics,
    detect_timeout: Duration,
}

impl Outbound {
    /// Routes by `routes`, dialing peers with `tls`.
    pub fn new(
        routes: StaticRoutes,
        tls: Arc<rustls::ClientConfig>,
        metrics: ProxyMetrics,
        detect_timeout: Duration,
    ) -> Self {
        let pool = PeerPool::new(tls, metrics.clone());
        let http = OutboundHttp::new(routes.clone(), pool.clone(), &metrics);
        Self {
            inner: Arc::new(Inner {
                routes,
                pool,
                http,
                metrics,
                detect_timeout,
            }),
        }
    }

    /// Accepts the app's connections until `drain` triggers.
    pub async fn serve(self, listener: TcpListener, drain: Drain) {
        accept_loop(listener, &drain.clone(), Direction::Outbound, move |tcp| {
            self.clone().handle(tcp, drain.clone())
        })
        .await;
    }

    async fn handle(self, mut tcp: TcpStream, drain: Drain) {
        let orig_dst = original_dst(&tcp);
        let inner = &self.inner;
        let opaque_route = orig_dst
            .and_then(|dst| inner.routes.get(&dst.to_string()))
            .filter(|r| r.opaque);
        if let Some(route) = opaque_route {
            let _open = inner.metrics.open_connection(Direction::Outbound, "opaque");
            tcp::forward_to_peer(tcp, route, &inner.pool, &inner.metrics).await;
            return;
        }
        let (protocol, prefix) = match detect::detect(&mut tcp, inner.detect_timeout).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%error, "read failed during protocol detection");
                return;
            }
        };
        let io = Prefixed::new(prefix, tcp);
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let _open = inner
                    .metrics
                    .open_connection(Direction::Outbound, protocol_label(protocol));
                let outbound = self.clone();
                let service = service_fn(move |request| {
                    let outbound = outbound.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            outbound.inner.http.handle(request, orig_dst).await,
                        )
                    }
                });
                serve_http(TokioIo::new(io), protocol, service, &drain).await;
            }
            Protocol::Opaque => {
                let _open = inner.metrics.open_connection(Direction::Outbound, "opaque");
                self.forward_opaque(io, orig_dst).await;
            }
        }
    }

    async fn forward_opaque(&self, io: Prefixed<TcpStream>, orig_dst: Option<SocketAddr>) {
        let inner = &self.inner;
        let Some(dst) = orig_dst else {
            tracing::info!("opaque connection with no original destination: nowhere to send it");
            return;
        };
        match inner.routes.get(&dst.to_string()) {
            Some(route) => tcp::forward_to_peer(io, route, &inner.pool, &inner.metrics).await,
            None => tcp::pass_through(io, dst, &inner.metrics).await,
        }
    }
}

fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "http1",
        Protocol::Http2 => "http2",
        Protocol::Opaque => "opaque",
    }
}

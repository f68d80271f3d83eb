//! The outbound side: the local app's connections, intercepted or addressed to us directly.
//!
//! accept → original destination → protocol detection (skipped for opaque destinations) → HTTP
//! (routed per request) or opaque TCP (routed per connection).

mod http;
mod stacks;
mod tcp;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use weft_telemetry::Drain;

use self::http::{ConnContext, OutboundHttp};
use self::stacks::Stacks;
use crate::destination::discovery::DiscoveryClient;
use crate::detect::{self, Protocol};
use crate::metrics::{Direction, ProxyMetrics, Refusal};
use crate::observe::Observer;
use crate::orig_dst::original_dst;
use crate::prefixed::Prefixed;
use crate::serve::{ServeOptions, accept_loop, serve_http};
use crate::static_routes::StaticRoutes;
use crate::transport::{PeerError, PeerPool};

/// The outbound proxy.
#[derive(Debug, Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: OutboundHttp,
    metrics: ProxyMetrics,
    detect_timeout: Duration,
    opaque_ports: BTreeSet<u16>,
}

/// How the outbound side behaves.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// How long to wait for the app's first bytes before treating a connection as opaque.
    pub detect_timeout: Duration,
    /// Destinations on these ports skip protocol detection.
    pub opaque_ports: BTreeSet<u16>,
    /// Request bodies kept for retries and mirroring.
    pub replay_limit: usize,
    /// Discovered destinations whose stacks are kept.
    pub max_destinations: usize,
    /// How requests are traced and logged.
    pub observer: Observer,
}

impl Outbound {
    /// Routes by `routes`, then `discovery`, dialing peers through `pool`, as `settings` say.
    pub fn new(
        routes: StaticRoutes,
        pool: PeerPool,
        discovery: Option<DiscoveryClient>,
        metrics: ProxyMetrics,
        settings: OutboundSettings,
    ) -> Result<Self, PeerError> {
        let stacks = Stacks::new(
            pool.clone(),
            metrics.clone(),
            settings.replay_limit,
            settings.max_destinations,
        );
        let http = OutboundHttp::new(&routes, discovery, stacks, &pool, &metrics)?
            .observed_by(settings.observer);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                metrics,
                detect_timeout: settings.detect_timeout,
                opaque_ports: settings.opaque_ports,
            }),
        })
    }

    /// Accepts the app's connections until `drain` triggers.
    pub async fn serve(self, listener: TcpListener, drain: Drain) {
        accept_loop(listener, &drain.clone(), Direction::Outbound, move |tcp| {
            self.clone().handle(tcp, drain.clone())
        })
        .await;
    }

    async fn handle(self, mut tcp: TcpStream, drain: Drain) {
        let inner = &self.inner;
        let orig_dst = original_dst(&tcp);
        // Resolved once per connection, not per request: a static route, else what discovery
        // knows of the address (a workload's, found through the Service that selects it).
        let orig_target = orig_dst.and_then(|dst| inner.http.target(&dst.to_string()).cloned());
        let placement = match (&orig_target, orig_dst) {
            (None, Some(dst)) => Some(inner.http.place(dst).await),
            _ => None,
        };
        let conn = ConnContext::new(orig_dst, orig_target, placement);
        let known_opaque = conn.orig_target.as_ref().is_some_and(|t| t.route.opaque)
            || conn.discovered.as_ref().is_some_and(|stack| stack.opaque)
            || orig_dst.is_some_and(|dst| inner.opaque_ports.contains(&dst.port()));
        if known_opaque {
            let _open = inner.metrics.open_connection(Direction::Outbound, "opaque");
            self.forward_opaque(tcp, &conn).await;
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
        let _open = inner
            .metrics
            .open_connection(Direction::Outbound, protocol_label(protocol));
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let outbound = self.clone();
                let conn = Arc::new(conn);
                let service = service_fn(move |request| {
                    let outbound = outbound.clone();
                    let conn = conn.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            outbound.inner.http.handle(request, &conn).await,
                        )
                    }
                });
                serve_http(
                    TokioIo::new(io),
                    protocol,
                    ServeOptions::app(),
                    service,
                    &drain,
                )
                .await;
            }
            Protocol::Opaque => self.forward_opaque(io, &conn).await,
        }
    }

    async fn forward_opaque<S>(&self, io: S, conn: &ConnContext)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let metrics = &self.inner.metrics;
        match (&conn.orig_target, &conn.discovered, conn.orig_dst) {
            (Some(target), _, _) => {
                tcp::forward_to_peer(io, &target.peer, &target.route.authority, metrics).await;
            }
            (None, Some(stack), _) => match stack.opaque_peer() {
                Some(peer) => tcp::forward_to_peer(io, &peer, &stack.service, metrics).await,
                None => {
                    metrics.refused(Refusal::NoEndpoint);
                    tracing::debug!(service = %stack.service, "no endpoint for an opaque connection")
                }
            },
            (None, None, Some(dst)) if conn.plaintext_ok => {
                tcp::pass_through(io, dst, metrics).await
            }
            (None, None, Some(dst)) => {
                metrics.refused(Refusal::DiscoveryUnavailable);
                tracing::debug!(%dst, "refused: inside the mesh's networks and discovery has not placed it");
            }
            (None, None, None) => {
                metrics.refused(Refusal::NoDestination);
                tracing::debug!(
                    "opaque connection with no original destination: nowhere to send it"
                );
            }
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

//! Connections with peers, by the peer's identity: opened, closed, open now, and the bytes each
//! way. Inbound, the peer is the client (its verified identity, or `unauthenticated`); outbound,
//! the proxy or foreign workload we dialed (the identity it proved), or `""` for opaque TCP
//! passed through to a destination outside the mesh (plain HTTP to one is not a peer
//! connection). Bytes are the application's, after TLS, counted as they pass, so a long-lived
//! connection shows its traffic before it closes.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weft_certs::Identity;
use weft_telemetry::metrics;

use super::Direction;

/// Inbound client identities with a label of their own; past that, `other`. Clients choose
/// whether to connect, so the labels they bring must be bounded.
const MAX_PEER_LABELS: usize = 1000;
/// The label of peers past the bound.
pub const OTHER_PEER: &str = "other";
/// The label of clients without an identity.
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// The label of destinations outside the mesh.
pub const UNMESHED: &str = "";

/// The families, and which inbound identities have a label.
#[derive(Debug, Clone)]
pub struct PeerTcpMetrics {
    opened: IntCounterVec,
    closed: IntCounterVec,
    open: IntGaugeVec,
    bytes: IntCounterVec,
    labelled: std::sync::Arc<Mutex<std::collections::HashSet<Identity>>>,
}

/// One connection's counters, resolved once when it opens; counts it closed when dropped.
#[derive(Debug)]
pub struct PeerConnection {
    sent: IntCounter,
    received: IntCounter,
    open: IntGauge,
    closed: IntCounter,
}

/// `io` with its bytes counted into `connection`, which closes when it drops.
#[derive(Debug)]
pub struct Metered<S> {
    io: S,
    connection: PeerConnection,
}

impl PeerTcpMetrics {
    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        const LABELS: &[&str] = &["direction", "peer_identity"];
        Ok(Self {
            opened: metrics::counter_vec(
                registry,
                "weft_tcp_peer_connections_opened_total",
                "Connections with peers opened, by direction and peer identity (inbound: the client's, or unauthenticated; outbound: the one the server proved, or empty for opaque TCP passed through outside the mesh).",
                LABELS,
            )?,
            closed: metrics::counter_vec(
                registry,
                "weft_tcp_peer_connections_closed_total",
                "Connections with peers closed, by direction and peer identity.",
                LABELS,
            )?,
            open: metrics::gauge_vec(
                registry,
                "weft_tcp_peer_open_connections",
                "Connections with peers open now, by direction and peer identity.",
                LABELS,
            )?,
            bytes: metrics::counter_vec(
                registry,
                "weft_tcp_peer_bytes_total",
                "Bytes exchanged with peers after TLS, by direction, peer identity and flow (sent to the peer, received from it), counted as they pass.",
                &["direction", "peer_identity", "flow"],
            )?,
            labelled: std::sync::Arc::default(),
        })
    }

    /// The label for inbound client `identity`: its own among the first `MAX_PEER_LABELS`
    /// seen, else `other`; `unauthenticated` without one.
    pub fn inbound_label<'a>(&self, identity: Option<&'a Identity>) -> std::borrow::Cow<'a, str> {
        let Some(identity) = identity else {
            return UNAUTHENTICATED.into();
        };
        let mut labelled = self.labelled.lock();
        if labelled.contains(identity) || labelled.len() < MAX_PEER_LABELS {
            labelled.insert(identity.clone());
            identity.to_string().into()
        } else {
            OTHER_PEER.into()
        }
    }

    /// Counts a connection with `peer` as opened; `io` carries it.
    pub fn meter<S>(&self, direction: Direction, peer: &str, io: S) -> Metered<S> {
        let labels = [direction.as_str(), peer];
        self.opened.with_label_values(&labels).inc();
        let open = self.open.with_label_values(&labels);
        open.inc();
        let flow = |flow| {
            self.bytes
                .with_label_values(&[direction.as_str(), peer, flow])
        };
        Metered {
            io,
            connection: PeerConnection {
                sent: flow("sent"),
                received: flow("received"),
                open,
                closed: self.closed.with_label_values(&labels),
            },
        }
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        self.open.dec();
        self.closed.inc();
    }
}

impl<S> Metered<S> {
    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            this.connection.received.inc_by(read as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            this.connection.sent.inc_by(written as u64);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled {
            this.connection.sent.inc_by(written as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn sample(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
        let families = registry.gather();
        let Some(family) = families.iter().find(|family| family.name() == name) else {
            return 0.0;
        };
        let gauge = family.get_field_type() == prometheus::proto::MetricType::GAUGE;
        family
            .get_metric()
            .iter()
            .filter(|metric| {
                labels.iter().all(|(name, value)| {
                    metric
                        .get_label()
                        .iter()
                        .any(|label| label.name() == *name && label.value() == *value)
                })
            })
            .map(|metric| {
                if gauge {
                    metric.get_gauge().get_value()
                } else {
                    metric.get_counter().get_value()
                }
            })
            .sum()
    }

    #[tokio::test]
    async fn a_connection_counts_its_bytes_as_they_pass_and_closes_when_dropped() {
        let registry = Registry::new();
        let metrics = PeerTcpMetrics::register(&registry).unwrap();
        let (ours, mut theirs) = tokio::io::duplex(64);
        let peer = [("peer_identity", "spiffe://td/ns/a/sa/b")];
        let mut metered = metrics.meter(Direction::Outbound, peer[0].1, ours);
        assert_eq!(
            sample(&registry, "weft_tcp_peer_open_connections", &peer),
            1.0
        );

        metered.write_all(b"hello").await.unwrap();
        theirs.write_all(b"hi").await.unwrap();
        let mut read = [0; 2];
        metered.read_exact(&mut read).await.unwrap();
        let sent = [peer[0], ("flow", "sent")];
        let received = [peer[0], ("flow", "received")];
        assert_eq!(sample(&registry, "weft_tcp_peer_bytes_total", &sent), 5.0);
        assert_eq!(
            sample(&registry, "weft_tcp_peer_bytes_total", &received),
            2.0
        );
        assert_eq!(
            sample(&registry, "weft_tcp_peer_connections_closed_total", &peer),
            0.0
        );

        drop(metered);
        assert_eq!(
            sample(&registry, "weft_tcp_peer_open_connections", &peer),
            0.0
        );
        assert_eq!(
            sample(&registry, "weft_tcp_peer_connections_opened_total", &peer),
            1.0
        );
        assert_eq!(
            sample(&registry, "weft_tcp_peer_connections_closed_total", &peer),
            1.0
        );
    }

    #[test]
    fn inbound_labels_are_bounded_and_name_the_unauthenticated() {
        let metrics = PeerTcpMetrics::register(&Registry::new()).unwrap();
        assert_eq!(metrics.inbound_label(None), UNAUTHENTICATED);
        let identity = |n: usize| {
            format!("spiffe://td/ns/n/sa/s{n}")
                .parse::<Identity>()
                .unwrap()
        };
        for n in 0..MAX_PEER_LABELS {
            let id = identity(n);
            assert_eq!(metrics.inbound_label(Some(&id)), id.to_string());
        }
        assert_eq!(
            metrics.inbound_label(Some(&identity(MAX_PEER_LABELS))),
            OTHER_PEER
        );
        // One already labelled keeps its label.
        let first = identity(0);
        assert_eq!(metrics.inbound_label(Some(&first)), first.to_string());
    }
}

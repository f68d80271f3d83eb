//! Outbound opaque TCP: bytes from the app go over an mTLS stream to the peer proxy, announced by
//! the opaque transport header; destinations outside the mesh are passed through as they are.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::TcpStream;

use crate::metrics::{Direction, ProxyMetrics, Refusal, UNMESHED};
use crate::transport::Peer;
use crate::transport::header as transport_header;

/// Forwards `app` to `peer` over mTLS; `destination` names it in logs.
pub async fn forward_to_peer<S>(mut app: S, peer: &Peer, destination: &str, metrics: &ProxyMetrics)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let speaks_weft = peer.speaks_weft();
    let mut peer = match peer.connect_stream().await {
        Ok(peer) => peer,
        Err(error) => {
            // Counted, and logged at debug: a peer that is down would fill the log otherwise.
            metrics.refused(Refusal::PeerUnreachable);
            tracing::debug!(%error, destination, "cannot open opaque stream to peer");
            return;
        }
    };
    // A foreign SPIFFE peer takes the bytes as they are.
    if speaks_weft && let Err(error) = transport_header::write_opaque(&mut peer).await {
        metrics.refused(Refusal::PeerUnreachable);
        tracing::debug!(%error, destination, "cannot write transport header");
        return;
    }
    copy(&mut app, &mut peer, metrics).await;
}

/// Forwards `app` unchanged to `dst`, which is outside the mesh.
pub async fn pass_through<S>(mut app: S, dst: SocketAddr, metrics: &ProxyMetrics)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match TcpStream::connect(dst).await {
        Ok(upstream) => {
            let _ = upstream.set_nodelay(true);
            let mut upstream = metrics
                .peer_tcp()
                .meter(Direction::Outbound, UNMESHED, upstream);
            copy(&mut app, &mut upstream, metrics).await;
        }
        Err(error) => {
            metrics.refused(Refusal::PeerUnreachable);
            tracing::debug!(%error, %dst, "cannot reach unmeshed destination");
        }
    }
}

async fn copy<A, B>(app: &mut A, peer: &mut B, metrics: &ProxyMetrics)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match copy_bidirectional(app, peer).await {
        Ok((sent, received)) => metrics.tcp_bytes(Direction::Outbound, sent, received),
        Err(error) => tracing::debug!(%error, "opaque stream ended with an error"),
    }
}

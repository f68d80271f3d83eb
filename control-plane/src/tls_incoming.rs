//! TLS for the control plane's gRPC servers, done by us rather than tonic so that the SPIFFE
//! verifiers apply and each request carries the caller's verified identity.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounterVec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use weft_certs::Identity;
use weft_telemetry::Drain;

use crate::limits::{Admission, Admitted, IDLE_TIMEOUT};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for tonic to pick them up.
const BACKLOG: usize = 128;

/// What the TLS handshake established about the caller; tonic puts it in each request's
/// extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The caller's socket address.
    pub remote: SocketAddr,
    /// The caller's identity, when it presented a certificate of our trust domain.
    pub identity: Option<Identity>,
    /// That certificate's notAfter: a long-lived connection may outlive it.
    pub not_after: Option<SystemTime>,
    /// That certificate's serial (hex), which names it in the lineage of issued certificates.
    pub serial: Option<String>,
}

/// A server-side TLS connection that knows its peer, holding its place among the connections
/// until it closes.
pub type TlsConnection = weft_api::server::TlsConnection<PeerInfo, Admitted>;

/// Accepts on `listener` and yields connections whose handshake succeeded, within `admission`'s
/// bounds (a connection past them is closed at once and counted in `refused`). Handshakes run
/// concurrently, so a slow client cannot hold up the others. Stops when `drain` triggers.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    admission: Arc<Admission>,
    refused: IntCounterVec,
    drain: Drain,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.signaled() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let mut admitted = match admission.admit(remote.ip()) {
                Ok(admitted) => admitted,
                Err(full) => {
                    refused.with_label_values(&[full.as_str()]).inc();
                    tracing::debug!(%remote, limit = full.as_str(), "connection refused");
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let (tx, refused) = (tx.clone(), refused.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        admitted.handshaken();
                        let peer = peer_info(&stream, remote);
                        let connection = TlsConnection::new(stream, peer, admitted, IDLE_TIMEOUT);
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%remote, %error, "TLS handshake failed"),
                    Err(_) => {
                        refused.with_label_values(&["handshake_timeout"]).inc();
                        tracing::debug!(%remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The acceptor for a server config.
pub fn acceptor(config: rustls::ServerConfig) -> TlsAcceptor {
    TlsAcceptor::from(Arc::new(config))
}

fn peer_info(stream: &TlsStream<TcpStream>, remote: SocketAddr) -> PeerInfo {
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first());
    PeerInfo {
        remote,
        // The verifier already checked the chain and trust domain; this only reads the result.
        identity: leaf.and_then(|cert| weft_certs::identity_of(cert).ok()),
        not_after: leaf.and_then(weft_certs::not_after_of),
        serial: leaf.and_then(weft_certs::serial_of),
    }
}

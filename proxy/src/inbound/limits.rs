//! What one peer can make the inbound side hold: handshakes in progress, connections per peer
//! identity, and how long a connection lives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weft_certs::Identity;

/// Pings on peer connections: a peer that stops answering is dropped.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on peer connections: the kernel finds dead peers of idle opaque streams.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// The inbound limits, as configured.
#[derive(Debug, Clone, Copy)]
pub struct InboundLimits {
    /// TLS handshakes (and transport headers) in progress at once; more connections are closed.
    pub max_handshakes: usize,
    /// Connections one peer identity may hold at once.
    pub max_connections_per_identity: usize,
    /// An HTTP connection on which no request started for this long is closed.
    pub idle_timeout: Duration,
    /// Every connection ends after this long (HTTP ones gracefully; the peer reconnects).
    pub max_connection_age: Duration,
}

impl Default for InboundLimits {
    fn default() -> Self {
        Self {
            max_handshakes: 512,
            max_connections_per_identity: 1000,
            idle_timeout: Duration::from_secs(600),
            max_connection_age: Duration::from_secs(3600),
        }
    }
}

/// Whom a connection is counted against: its verified identity, or, for a plaintext client,
/// its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Identity(Identity),
    Address(std::net::IpAddr),
}

/// Counts what the limits bound.
#[derive(Debug)]
pub struct Admission {
    limits: InboundLimits,
    handshakes: Arc<Semaphore>,
    by_client: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

/// One connection of a client, counted until dropped.
#[derive(Debug)]
pub struct ClientPermit {
    by_client: Arc<Mutex<HashMap<ClientKey, usize>>>,
    client: ClientKey,
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: InboundLimits) -> Self {
        Self {
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes.max(1))),
            by_client: Arc::default(),
            limits,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &InboundLimits {
        &self.limits
    }

    /// A place for one handshake, if one is free: a flood of connections that never finish
    /// their handshake cannot take every place for long (each has a timeout), nor grow beyond.
    pub fn handshake(&self) -> Option<OwnedSemaphorePermit> {
        self.handshakes.clone().try_acquire_owned().ok()
    }

    /// A place for one more connection of `client`, if it holds fewer than its limit.
    pub fn connection(&self, client: ClientKey) -> Option<ClientPermit> {
        let mut by_client = self.by_client.lock();
        let open = by_client.entry(client.clone()).or_default();
        if *open >= self.limits.max_connections_per_identity {
            return None;
        }
        *open += 1;
        Some(ClientPermit {
            by_client: self.by_client.clone(),
            client,
        })
    }

    /// When a connection opened now must end: at its maximum age, or when the peer's
    /// certificate expires, whichever is first.
    pub fn deadline(&self, peer_not_after: Option<SystemTime>) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let age = self.limits.max_connection_age;
        let certificate = peer_not_after
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(age);
        now + age.min(certificate)
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut by_client = self.by_client.lock();
        if let Some(open) = by_client.get_mut(&self.client) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

/// Turns on TCP keepalive, so the kernel finds a peer that vanished from an idle connection.
pub fn keepalive(tcp: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let idle = u32::try_from(TCP_KEEPALIVE_IDLE.as_secs()).unwrap_or(60);
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &idle);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(tcp, sockopt::TcpKeepCount, &3);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_client_and_freed_on_drop() {
        let admission = Admission::new(InboundLimits {
            max_connections_per_identity: 2,
            ..InboundLimits::default()
        });
        let web = ClientKey::Identity("spiffe://cluster.local/ns/shop/sa/web".parse().unwrap());
        let api = ClientKey::Identity("spiffe://cluster.local/ns/shop/sa/api".parse().unwrap());
        let first = admission.connection(web.clone()).unwrap();
        let _second = admission.connection(web.clone()).unwrap();
        assert!(admission.connection(web.clone()).is_none());
        assert!(admission.connection(api).is_some());
        drop(first);
        assert!(admission.connection(web).is_some());
        // A plaintext client is counted by its address.
        let kubelet = ClientKey::Address([10, 0, 0, 1].into());
        let _held = (0..2)
            .map(|_| admission.connection(kubelet.clone()).unwrap())
            .collect::<Vec<_>>();
        assert!(admission.connection(kubelet).is_none());
        assert!(
            admission
                .connection(ClientKey::Address([10, 0, 0, 2].into()))
                .is_some()
        );
    }

    #[tokio::test]
    async fn peer_connections_keep_tcp_alive() {
        use nix::sys::socket::{getsockopt, sockopt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        keepalive(&client);
        assert!(getsockopt(&client, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&client, sockopt::TcpKeepIdle).unwrap(), 60);
    }

    #[tokio::test]
    async fn a_connection_ends_with_its_peers_certificate_if_that_comes_first() {
        let admission = Admission::new(InboundLimits::default());
        let soon = SystemTime::now() + Duration::from_secs(5);
        let deadline = admission.deadline(Some(soon));
        assert!(deadline <= tokio::time::Instant::now() + Duration::from_secs(5));
        let later = admission.deadline(None);
        assert!(later > tokio::time::Instant::now() + Duration::from_secs(3000));
    }
}

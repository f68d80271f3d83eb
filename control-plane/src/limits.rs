//! What anyone who reaches the control plane's ports can make it hold: connections and TLS
//! handshakes (in all and per source address), HTTP/2 streams, message sizes, and the Certify
//! rate. Each bound has a flag; SECURITY.md lists them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// Pings on every connection; a client that stops answering is dropped.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection from which nothing was read for this long is closed. Live clients answer the
/// pings above, so only silent ones (a TLS session that never speaks HTTP/2) reach it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A locally reset stream beyond this many, or remotely reset ones pending beyond
/// [`MAX_PENDING_RESETS`], close the connection (the HTTP/2 "rapid reset" attack).
pub const MAX_LOCAL_RESETS: usize = 256;
/// See [`MAX_LOCAL_RESETS`].
pub const MAX_PENDING_RESETS: usize = 20;
/// The largest header list a client may send.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// The largest message of the proxy API (a CSR, a destination, a status report).
pub const MAX_PROXY_MESSAGE: usize = 64 * 1024;
/// The largest message of the admin API (a batch of manifests to apply).
pub const MAX_ADMIN_MESSAGE: usize = 8 * 1024 * 1024;

/// The listeners' limits, as flags.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ListenerLimits {
    /// Connections open at once, on each API port.
    #[arg(long, env = "WEFT_CONTROL_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Connections open at once from one source address, on each API port.
    #[arg(
        long,
        env = "WEFT_CONTROL_MAX_CONNECTIONS_PER_IP",
        default_value_t = 2_048
    )]
    pub max_connections_per_ip: usize,

    /// TLS handshakes in progress at once, on each API port.
    #[arg(long, env = "WEFT_CONTROL_MAX_HANDSHAKES", default_value_t = 512)]
    pub max_handshakes: usize,

    /// TLS handshakes in progress at once from one source address.
    #[arg(long, env = "WEFT_CONTROL_MAX_HANDSHAKES_PER_IP", default_value_t = 64)]
    pub max_handshakes_per_ip: usize,

    /// Concurrent HTTP/2 streams on one proxy API connection (a proxy's watches share one).
    #[arg(long, env = "WEFT_CONTROL_MAX_STREAMS", default_value_t = 4_096)]
    pub max_streams: u32,

    /// Certify calls per second, all callers together.
    #[arg(long, env = "WEFT_CONTROL_CERTIFY_RATE", default_value_t = 10_000)]
    pub certify_rate: u32,

    /// Certify calls per second from one source address (bursts of twice that).
    #[arg(long, env = "WEFT_CONTROL_CERTIFY_RATE_PER_IP", default_value_t = 50)]
    pub certify_rate_per_ip: u32,
}

/// Counts connections and handshakes, in all and per source address.
#[derive(Debug)]
pub struct Admission {
    limits: ListenerLimits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    connections: usize,
    handshakes: usize,
    by_ip: HashMap<IpAddr, (usize, usize)>,
}

/// What a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Connections in all.
    Connections,
    /// Connections from its address.
    ConnectionsPerIp,
    /// Handshakes in all.
    Handshakes,
    /// Handshakes from its address.
    HandshakesPerIp,
}

impl Full {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::ConnectionsPerIp => "connections_per_ip",
            Self::Handshakes => "handshakes",
            Self::HandshakesPerIp => "handshakes_per_ip",
        }
    }
}

/// An admitted connection, counted until dropped; also counts its handshake until
/// [`Admitted::handshaken`].
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
    handshaking: bool,
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: ListenerLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
        })
    }

    /// Admits a new connection from `ip` to start its handshake, or says which bound it hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Full> {
        let limits = &self.limits;
        let mut open = self.open.lock();
        let (connections, handshakes) = (open.connections, open.handshakes);
        let (mine, my_handshakes) = open.by_ip.get(&ip).copied().unwrap_or_default();
        let full = if connections >= limits.max_connections {
            Some(Full::Connections)
        } else if mine >= limits.max_connections_per_ip {
            Some(Full::ConnectionsPerIp)
        } else if handshakes >= limits.max_handshakes {
            Some(Full::Handshakes)
        } else if my_handshakes >= limits.max_handshakes_per_ip {
            Some(Full::HandshakesPerIp)
        } else {
            None
        };
        if let Some(full) = full {
            return Err(full);
        }
        open.connections += 1;
        open.handshakes += 1;
        let entry = open.by_ip.entry(ip).or_default();
        entry.0 += 1;
        entry.1 += 1;
        Ok(Admitted {
            admission: self.clone(),
            ip,
            handshaking: true,
        })
    }
}

impl Admitted {
    /// The handshake is over: its place goes to the next one.
    pub fn handshaken(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let mut open = self.admission.open.lock();
            open.handshakes = open.handshakes.saturating_sub(1);
            if let Some(entry) = open.by_ip.get_mut(&self.ip) {
                entry.1 = entry.1.saturating_sub(1);
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.handshaken();
        let mut open = self.admission.open.lock();
        open.connections = open.connections.saturating_sub(1);
        if let Some(entry) = open.by_ip.get_mut(&self.ip) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Token buckets: one for everyone, one per source address.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    per_ip_second: f64,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    total: Bucket,
    by_ip: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

/// Addresses whose bucket is remembered at most; when more, full buckets are forgotten (a
/// forgotten address starts again with a full one, which is what it had).
const MAX_BUCKETS: usize = 65_536;

impl RateLimit {
    /// `per_second` calls in all, `per_ip_second` from one address; each may burst to twice.
    pub fn new(per_second: u32, per_ip_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            per_ip_second: f64::from(per_ip_second.max(1)),
            state: Mutex::new(Buckets {
                total: Bucket {
                    tokens: 2.0 * per_second,
                    at: tokio::time::Instant::now(),
                },
                by_ip: HashMap::new(),
            }),
        }
    }

    /// Takes a call from `ip`; `Err` with the rate exceeded (per address, or in all).
    pub fn take(&self, ip: IpAddr) -> Result<(), String> {
        let now = tokio::time::Instant::now();
        let mut state = self.state.lock();
        let per_ip = self.per_ip_second;
        if !state.by_ip.contains_key(&ip) && state.by_ip.len() >= MAX_BUCKETS {
            state
                .by_ip
                .retain(|_, bucket| bucket.refilled(now, per_ip) < 2.0 * per_ip);
        }
        let mine = state.by_ip.entry(ip).or_insert(Bucket {
            tokens: 2.0 * per_ip,
            at: now,
        });
        let mine_left = mine.refilled(now, per_ip);
        if mine_left < 1.0 {
            return Err(format!("{} per second from {ip}", self.per_ip_second));
        }
        let total_left = state.total.refilled(now, self.per_second);
        if total_left < 1.0 {
            return Err(format!("{} per second in all", self.per_second));
        }
        state.total = Bucket {
            tokens: total_left - 1.0,
            at: now,
        };
        state.by_ip.insert(
            ip,
            Bucket {
                tokens: mine_left - 1.0,
                at: now,
            },
        );
        Ok(())
    }
}

impl Bucket {
    fn refilled(&self, now: tokio::time::Instant, per_second: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * per_second).min(2.0 * per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            max_handshakes: 10,
            max_handshakes_per_ip: 1,
            max_streams: 10,
            certify_rate: 100,
            certify_rate_per_ip: 1,
        }
    }

    #[test]
    fn connections_and_handshakes_are_bounded_per_address_and_in_all() {
        let admission = Admission::new(limits());
        let (a, b, c) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let mut first = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Full::HandshakesPerIp);
        first.handshaken();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Full::ConnectionsPerIp);
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(c).unwrap_err(), Full::Connections);
        drop(first);
        admission.admit(c).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn certify_is_rate_limited_per_address_then_refills() {
        let rate = RateLimit::new(100, 1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        rate.take(ip).unwrap();
        rate.take(ip).unwrap();
        let refused = rate.take(ip).unwrap_err();
        assert!(refused.contains("from 10.0.0.1"), "{refused}");
        rate.take("10.0.0.2".parse().unwrap()).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        rate.take(ip).unwrap();
    }
}

//! The pod's own addresses: the only ones inbound traffic may be forwarded to, whatever
//! original destination a peer's connection carries.

use std::collections::BTreeSet;
use std::net::IpAddr;

use parking_lot::Mutex;
use tokio::time::{Duration, Instant};

/// Addresses are looked up again at most this often, when one is not found.
const REFRESH: Duration = Duration::from_secs(1);

/// The addresses of this network namespace's interfaces.
#[derive(Debug)]
pub struct LocalAddrs {
    known: Mutex<(BTreeSet<IpAddr>, Option<Instant>)>,
}

impl LocalAddrs {
    /// Reads the interfaces' addresses now.
    pub fn new() -> Self {
        Self {
            known: Mutex::new((read(), Some(Instant::now()))),
        }
    }

    /// Whether `ip` is one of ours (an address added since is found on a later look).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let mut known = self.known.lock();
        if known.0.contains(&ip) {
            return true;
        }
        if known.1.is_some_and(|at| at.elapsed() < REFRESH) {
            return false;
        }
        *known = (read(), Some(Instant::now()));
        known.0.contains(&ip)
    }
}

fn read() -> BTreeSet<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return BTreeSet::new();
    };
    interfaces
        .filter_map(|interface| interface.address)
        .filter_map(|address| {
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_ours_and_a_far_address_is_not() {
        let local = LocalAddrs::new();
        assert!(local.contains("127.0.0.1".parse().unwrap()));
        assert!(local.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!local.contains("192.0.2.77".parse().unwrap()));
    }
}

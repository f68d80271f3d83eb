//! What `weft-proxy init` installs, independent of the firewall that carries it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// A closed range of TCP ports (`first == last` for one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Parses `80` or `8000-8100`; port 0 and reversed ranges are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(port) => Ok(port),
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => {
                let only = port(text)?;
                (only, only)
            }
        };
        if first > last {
            return Err(format!("{text:?} is a reversed range"));
        }
        Ok(Self { first, last })
    }

    /// Parses a comma-separated list of ports and ranges; empty items are ignored.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, String> {
        let mut ranges = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        ranges.sort();
        ranges.dedup();
        Ok(ranges)
    }

    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }
}

/// Writes the range as `first-last`, the notation nft uses (iptables' multiport wants `:`).
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// IPv4 or IPv6: each family gets its own iptables table; nft's `inet` table holds both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// The redirect rules of one pod: inbound TCP to the proxy's inbound port, the app's outbound
/// TCP to its outbound port, with everything the proxy must not see left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The proxy's own connections are never redirected (they would loop back into it).
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Inbound ports left to reach the pod directly: the proxy's own listeners and the user's.
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_outbound_cidrs: Vec<IpNet>,
    /// The control plane's addresses, left alone even for a process that is not the proxy.
    pub control_plane: Vec<SocketAddr>,
    /// Whether the pod has IPv6, so its traffic is redirected too.
    pub ipv6: bool,
}

impl Rules {
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    pub fn cidrs(&self, family: Family) -> impl Iterator<Item = &IpNet> {
        self.skip_outbound_cidrs
            .iter()
            .filter(move |net| Family::of(net.addr()) == family)
    }

    pub fn control_plane(&self, family: Family) -> impl Iterator<Item = &SocketAddr> {
        self.control_plane
            .iter()
            .filter(move |addr| Family::of(addr.ip()) == family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_take_ports_and_ranges_and_refuse_nonsense() {
        assert_eq!(
            PortRange::parse_list(" 22, 8000-8100,22,").unwrap(),
            vec![
                PortRange::single(22),
                PortRange {
                    first: 8000,
                    last: 8100
                }
            ]
        );
        for bad in ["0", "65536", "http", "9-1", "1-", "-"] {
            assert!(PortRange::parse_list(bad).is_err(), "{bad}");
        }
    }
}

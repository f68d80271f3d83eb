//! The mesh's networks: address ranges whose destinations belong to the mesh, so a connection to
//! one of them is never sent in plaintext, even while discovery cannot place it.

use std::net::IpAddr;

use ipnet::IpNet;

/// The CIDRs of the mesh's workloads and services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshNetworks(Vec<IpNet>);

/// A CIDR that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a CIDR (such as 10.0.0.0/8 or fd00::/8)")]
pub struct NetworkError(String);

// === impl MeshNetworks ===

impl MeshNetworks {
    /// Parses CIDRs (`10.0.0.0/8`, `fd00::/8`); a bare address counts as a one-address network.
    pub fn parse<'a>(cidrs: impl IntoIterator<Item = &'a str>) -> Result<Self, NetworkError> {
        cidrs
            .into_iter()
            .map(str::trim)
            .filter(|cidr| !cidr.is_empty())
            .map(|cidr| {
                cidr.parse::<IpNet>()
                    .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| NetworkError(cidr.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The networks, as CIDRs.
    pub fn cidrs(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(ToString::to_string)
    }

    /// True when `ip` is inside one of the networks. An IPv4 address written as IPv6
    /// (`::ffff:10.0.0.1`) counts as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_inside_any_network_belong_to_the_mesh() {
        let mesh = MeshNetworks::parse(["10.0.0.0/8", " fd00::/8", "192.168.1.7"]).unwrap();
        for inside in ["10.1.2.3", "::ffff:10.9.9.9", "fd12::1", "192.168.1.7"] {
            assert!(mesh.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["11.0.0.1", "127.0.0.1", "fe80::1", "192.168.1.8"] {
            assert!(!mesh.contains(outside.parse().unwrap()), "{outside}");
        }
        assert!(MeshNetworks::parse(["10.0.0.0/33"]).is_err());
        assert!(MeshNetworks::parse(["ten"]).is_err());
    }
}

//! The address an intercepted connection was really headed for, from iptables' REDIRECT.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The original destination of a REDIRECTed connection, or `None` when the connection came
/// straight to our listener (no interception, or not NATed).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = stream.local_addr().ok()?;
    let orig = match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).ok().map(|addr| {
            SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                u16::from_be(addr.sin_port),
            ))
        }),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst)
            .ok()
            .map(|addr| {
                SocketAddr::from((
                    std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr),
                    u16::from_be(addr.sin6_port),
                ))
            }),
    }?;
    (orig != local).then_some(orig)
}

//! Binding a listener on both stacks: a pod with IPv4 and IPv6 gets traffic on each, and
//! `weft-proxy init` redirects both to the same port number.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

const BACKLOG: i32 = 1024;

/// Listens on `addr` and, when it is the IPv4 wildcard or loopback, on the IPv6 counterpart
/// with the same port (IPv6-only, so each family has its own socket and its own
/// SO_ORIGINAL_DST). A pod without IPv6 gets the IPv4 listener alone.
pub fn bind_dual_stack(addr: SocketAddr) -> io::Result<Vec<TcpListener>> {
    let primary = bind(addr)?;
    let port = primary.local_addr()?.port();
    let mut listeners = vec![primary];
    let companion = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Some(Ipv6Addr::UNSPECIFIED),
        IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST => Some(Ipv6Addr::LOCALHOST),
        _ => None,
    };
    if let Some(ip) = companion {
        let chosen_by_user = addr.port() != 0;
        let addr = SocketAddr::from((ip, port));
        match bind(addr) {
            Ok(listener) => listeners.push(listener),
            Err(error) if no_ipv6(&error) => {
                tracing::debug!(%addr, %error, "no IPv6 here: listening on IPv4 only");
            }
            // A port the kernel picked for IPv4 may be taken on IPv6 by someone else; only a
            // port the user chose is theirs to fix.
            Err(error) if !chosen_by_user && error.kind() == io::ErrorKind::AddrInUse => {
                tracing::warn!(%addr, "the IPv6 side of this port is taken: listening on IPv4 only");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(listeners)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A restarted proxy must not wait out TIME_WAIT on its own port.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// The errors of a kernel or namespace without IPv6 (disabled, or no `::1`).
fn no_ipv6(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(nix::libc::EAFNOSUPPORT | nix::libc::EADDRNOTAVAIL)
    )
}

//! Connections to peers: the mTLS dial, the HTTP/2 connections shared by every request to one
//! destination, and the transport header that tells a peer what follows. Used by both sides
//! and by the per-request stack; it knows nothing of routing or policy.

pub mod header;
mod peer;
pub mod shared_h2;

#[cfg(test)]
pub use self::peer::test_support;
pub use self::peer::{Handshake, Peer, PeerError, PeerPool, StandardTls};

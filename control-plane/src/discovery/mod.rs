//! `weft.discovery.v1.Discovery`: the endpoints and policy of each destination, streamed to the
//! proxies that watch it, and what each proxy reports back.

mod inbound;
mod limits;
mod names;
mod outbound;
mod registry;
mod request_match;
mod server;
mod snapshot;
mod wire;

pub use self::inbound::ROOT_NAMESPACE;
pub use self::names::{ClusterDomain, ClusterDomainError};
pub use self::registry::{ConnectedProxy, ProxyRegistry};
pub use self::server::{DiscoveryApi, DiscoveryOptions};
pub use self::snapshot::{SnapshotCache, inbound_snapshot, outbound_snapshot};

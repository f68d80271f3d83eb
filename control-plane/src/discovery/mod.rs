//! `weft.discovery.v1.Discovery`: the endpoints and policy of each destination, streamed to the
//! proxies that watch it, and what each proxy reports back.

mod inbound;
mod limits;
mod names;
mod registry;
mod server;
mod snapshot;

pub use self::inbound::{ROOT_NAMESPACE, inbound_snapshot};
pub use self::names::{ClusterDomain, ClusterDomainError};
pub use self::registry::ProxyRegistry;
pub use self::server::{DiscoveryApi, DiscoveryOptions};
pub use self::snapshot::{SnapshotCache, outbound_snapshot};

//! What the control plane says of the proxy's own workload: how its ports take traffic. (Its
//! authorization policy will live here too.)

use std::collections::BTreeSet;

/// The workload's inbound policy, as a domain value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundPolicy {
    /// Ports whose traffic is opaque TCP.
    pub opaque_ports: BTreeSet<u16>,
}

//! What a Kubernetes cluster itself says of its services and workloads, in Weft's terms: a core
//! Service is served as a Weft Service, a meshed Pod as a Workload, and a Service's endpoints are
//! those its EndpointSlices list (ready, or serving while terminating), not a selector's pick.
//!
//! The view is rebuilt from reflectors ([`follow`]) and served beside the declared policy in
//! [`crate::policy_store::PolicyState`], so discovery's streams are exactly those served off
//! Kubernetes. It is never written anywhere: the API server is its only source.

mod reflect;
mod translate;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

pub use self::reflect::follow;
#[cfg(test)]
pub(crate) use self::translate::tests::{CLUSTER as TEST_CLUSTER, INTRUDER as TEST_INTRUDER};
pub use self::translate::translate;
#[cfg(test)]
pub(crate) use self::translate::translate_yaml;

use crate::policy::{Key, Port};
use crate::resource_store::Stored;

/// The cluster's Services and meshed Pods as Weft resources, and where their traffic goes.
#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    /// Bumped on every new view, so discovery versions tell two views apart.
    pub generation: u64,
    /// Core Services as `Service`, meshed Pods as `Workload` (named after the Pod).
    resources: BTreeMap<Key, Stored>,
    /// Each cluster IP, and the Service it belongs to.
    cluster_ips: HashMap<IpAddr, Key>,
    /// Each Service's endpoints, from its EndpointSlices.
    endpoints: HashMap<Key, ServiceEndpoints>,
    /// Each endpoint address, and the Services whose slices list it.
    services_at: HashMap<IpAddr, Vec<Key>>,
    /// Every address of every Pod on the pod network, and the Pod there.
    pods: HashMap<IpAddr, PodAt>,
}

/// A Service's endpoints, and the IP family it is served in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ServiceEndpoints {
    /// `Some(true)` for IPv6 (a dual-stack Service's primary family): only endpoints of that
    /// family are sent to, so a Pod with both is one endpoint, not two.
    ipv6: Option<bool>,
    listed: Vec<SliceEndpoint>,
}

/// The Pod at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAt {
    pub namespace: String,
    /// Its `Workload` when it is meshed.
    pub workload: Option<Key>,
}

/// One endpoint address of a Service, as its EndpointSlices list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    /// Each Service port name (empty for the unnamed port) and the number it resolved to here:
    /// a named target port resolves per Pod.
    pub ports: Vec<(String, Port)>,
    pub condition: Condition,
    /// The meshed Pod at its address, as its `Workload`; `None` for an unmeshed Pod or an
    /// address no Pod has. Found by address, never by the slice's `targetRef`: a slice anyone
    /// may write must not lend an address another Pod's identity.
    pub workload: Option<Key>,
}

/// Whether an endpoint takes traffic, in EndpointSlice terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// Neither ready nor serving.
    Down,
    /// Shutting down but still serving: used only when a Service has no ready endpoint, as
    /// kube-proxy does, so connections drain instead of failing.
    Terminating,
    Ready,
}

impl ClusterState {
    /// Whether `other` serves the same: the same resources, addresses and endpoints, whatever
    /// their versions and generation.
    pub(crate) fn same_view(&self, other: &ClusterState) -> bool {
        self.cluster_ips == other.cluster_ips
            && self.endpoints == other.endpoints
            && self.resources.len() == other.resources.len()
            && self
                .resources
                .iter()
                .zip(&other.resources)
                .all(|((a, x), (b, y))| a == b && x.resource == y.resource)
    }

    /// One derived resource.
    pub fn get(&self, key: &Key) -> Option<&Stored> {
        self.resources.get(key)
    }

    /// Every derived resource, by key.
    pub fn resources(&self) -> &BTreeMap<Key, Stored> {
        &self.resources
    }

    /// The Service whose cluster IP `ip` is.
    pub fn service_at(&self, ip: IpAddr) -> Option<&Key> {
        self.cluster_ips.get(&ip)
    }

    /// The Services whose EndpointSlices list `ip`.
    pub fn services_listing(&self, ip: IpAddr) -> &[Key] {
        self.services_at.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// The Pod whose address `ip` is.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&PodAt> {
        self.pods.get(&ip)
    }

    /// The endpoints of a cluster Service that take traffic on its port named `port_name`, with
    /// the port each serves it on: the ready ones, or while none is, those serving as they
    /// terminate. `None` when `service` is not a cluster Service.
    pub fn endpoints(
        &self,
        service: &Key,
        port_name: &str,
    ) -> Option<Vec<(SocketAddr, &SliceEndpoint)>> {
        let endpoints = self.endpoints.get(service)?;
        let listed: Vec<&SliceEndpoint> = endpoints
            .listed
            .iter()
            .filter(|e| endpoints.ipv6.is_none_or(|v6| e.ip.is_ipv6() == v6))
            .collect();
        let on_port = |endpoint: &'_ SliceEndpoint| {
            endpoint
                .ports
                .iter()
                .find(|(name, _)| name == port_name)
                .map(|(_, port)| SocketAddr::new(endpoint.ip, port.get()))
        };
        let best = listed
            .iter()
            .filter(|e| on_port(e).is_some())
            .map(|e| e.condition)
            .max()
            .filter(|best| *best != Condition::Down);
        Some(
            listed
                .into_iter()
                .filter(|e| Some(e.condition) == best)
                .filter_map(|e| Some((on_port(e)?, e)))
                .collect(),
        )
    }
}

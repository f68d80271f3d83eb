//! Services, EndpointSlices and Pods as the API server has them, made into a [`ClusterState`].
//! What Weft cannot use is left out, never guessed at: an ExternalName or UDP-only Service, an
//! endpoint without a usable address, a Pod without an IP.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta as KubeMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_certs::{Identity, TrustDomain};

use super::{ClusterState, Condition, PodAt, ServiceEndpoints, SliceEndpoint};
use crate::inject::{INBOUND_PORT_NAME, PROXY_CONTAINER, PROXY_VERSION_ANNOTATION};
use crate::policy::{
    Address, Key, Kind, ObjectMeta, Port, Resource, ServiceAppProtocol, ServicePort, ServiceSpec,
    Spec, WorkloadPort, WorkloadSpec,
};
use crate::resource_store::Stored;

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The ServiceAccount a Pod that names none runs as.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The cluster view of `services`, their `slices` and the `pods` behind them; identities are in
/// `trust_domain`.
pub fn translate(
    services: &[Arc<core::Service>],
    slices: &[Arc<discovery::EndpointSlice>],
    pods: &[Arc<core::Pod>],
    trust_domain: &TrustDomain,
) -> ClusterState {
    let mut state = ClusterState::default();
    for pod in pods {
        let Some((addresses, namespace)) = pod_addresses(pod) else {
            continue;
        };
        let workload = workload(pod, &addresses, trust_domain).map(|(key, stored)| {
            state.resources.insert(key.clone(), stored);
            key
        });
        for ip in addresses {
            let at = PodAt {
                namespace: namespace.clone(),
                workload: workload.clone(),
            };
            state.pods.insert(ip, at);
        }
    }
    for service in services {
        let Some((key, stored, cluster_ips, ipv6)) = service_of(service) else {
            continue;
        };
        for ip in cluster_ips {
            state.cluster_ips.insert(ip, key.clone());
        }
        let endpoints = ServiceEndpoints {
            ipv6,
            listed: Vec::new(),
        };
        state.endpoints.insert(key.clone(), endpoints);
        state.resources.insert(key, stored);
    }
    let mut listed: HashMap<Key, BTreeMap<IpAddr, SliceEndpoint>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice_service(slice) else {
            continue;
        };
        // A slice may come before its Service (or outlive it): only a known Service's count.
        let Some(stored) = state.resources.get_mut(&service) else {
            continue;
        };
        stored.resource_version = stored.resource_version.max(version(&slice.metadata));
        let by_ip = listed.entry(service).or_default();
        for endpoint in slice_endpoints(slice, &state.pods) {
            // During a handover two slices list the same address: the readier entry counts,
            // and entries as ready as each other serve the ports of both.
            match by_ip.get_mut(&endpoint.ip) {
                Some(known) if known.condition > endpoint.condition => {}
                Some(known) if known.condition == endpoint.condition => {
                    for port in endpoint.ports {
                        if !known.ports.contains(&port) {
                            known.ports.push(port);
                        }
                    }
                }
                _ => {
                    by_ip.insert(endpoint.ip, endpoint);
                }
            }
        }
    }
    for (service, by_ip) in listed {
        for ip in by_ip.keys() {
            state
                .services_at
                .entry(*ip)
                .or_default()
                .push(service.clone());
        }
        if let Some(endpoints) = state.endpoints.get_mut(&service) {
            endpoints.listed = by_ip.into_values().collect();
        }
    }
    for services in state.services_at.values_mut() {
        services.sort();
    }
    state
}

/// A Pod's addresses on the pod network and its namespace; `None` for a Pod on the node's
/// network (its address is the node's, shared by every such Pod), without an address yet, or
/// finished.
fn pod_addresses(pod: &core::Pod) -> Option<(Vec<IpAddr>, String)> {
    let status = pod.status.as_ref()?;
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let mut addresses: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return None;
    }
    Some((addresses, pod.metadata.namespace.clone()?))
}

/// A core Service as a Weft Service, its cluster IPs and its primary IP family (`Some(true)`:
/// IPv6); `None` for what is not reached over TCP through Weft (ExternalName, no TCP port).
fn service_of(service: &core::Service) -> Option<(Key, Stored, Vec<IpAddr>, Option<bool>)> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let (target_port, target_port_name) = match &p.target_port {
                Some(IntOrString::Int(port)) => (Port::from_u32(u32::try_from(*port).ok()?), None),
                // Each Pod resolves a name to its own port (the EndpointSlices carry the
                // number; inbound policy looks the name up on the Pod).
                Some(IntOrString::String(name)) => (None, Some(name.clone())),
                None => (None, None),
            };
            Some(ServicePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: Port::from_u32(u32::try_from(p.port).ok()?)?,
                target_port,
                app_protocol: p.app_protocol.as_deref().and_then(app_protocol),
                target_port_name,
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let cluster_ips: Vec<IpAddr> = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ipv6 = match spec.ip_families.as_ref().and_then(|f| f.first()) {
        Some(family) => Some(family == "IPv6"),
        None => cluster_ips.first().map(IpAddr::is_ipv6),
    };
    let spec = ServiceSpec {
        selector: spec.selector.clone().unwrap_or_default(),
        ports,
        foreign_spiffe: false,
    };
    let (key, stored) = stored(Kind::Service, &service.metadata, Spec::Service(spec))?;
    Some((key, stored, cluster_ips, ipv6))
}

/// What a Service port's `appProtocol` says Weft should speak, when Weft knows the word.
fn app_protocol(name: &str) -> Option<ServiceAppProtocol> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// A meshed Pod (at `addresses`, the first its primary) as a Workload: its address, the identity
/// of its ServiceAccount, the proxy's inbound port and the app's ports. `None` for a Pod without
/// the proxy.
fn workload(
    pod: &core::Pod,
    addresses: &[IpAddr],
    trust_domain: &TrustDomain,
) -> Option<(Key, Stored)> {
    let meshed = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(PROXY_VERSION_ANNOTATION));
    if !meshed {
        return None;
    }
    let address = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .or_else(|| addresses.first().copied())
        .map(Address::from)?;
    let spec = pod.spec.as_ref()?;
    let namespace = pod.metadata.namespace.as_deref()?;
    let service_account = spec
        .service_account_name
        .as_deref()
        .filter(|sa| !sa.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    let identity = Identity::new(trust_domain.clone(), namespace, service_account).ok()?;
    // A native sidecar is an init container.
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut proxy_port = None;
    let mut ports = Vec::new();
    for container in containers {
        for port in container.ports.iter().flatten() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Some(number) = u32::try_from(port.container_port)
                .ok()
                .and_then(Port::from_u32)
            else {
                continue;
            };
            if container.name == PROXY_CONTAINER {
                if port.name.as_deref() == Some(INBOUND_PORT_NAME) {
                    proxy_port = Some(number);
                }
            } else {
                ports.push(WorkloadPort {
                    name: port.name.clone(),
                    port: number,
                });
            }
        }
    }
    let spec = WorkloadSpec {
        address,
        identity: identity.to_string(),
        proxy_port,
        ports,
        weight: None,
        foreign_spiffe: false,
    };
    stored(Kind::Workload, &pod.metadata, Spec::Workload(spec))
}

/// The Service an EndpointSlice belongs to.
fn slice_service(slice: &discovery::EndpointSlice) -> Option<Key> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(Key::new(
        Kind::Service,
        slice.metadata.namespace.as_deref()?,
        name,
    ))
}

/// A slice's endpoints with the ports it lists, each address its own entry, each meshed when a
/// meshed Pod has that address.
fn slice_endpoints(
    slice: &discovery::EndpointSlice,
    pods: &HashMap<IpAddr, PodAt>,
) -> Vec<SliceEndpoint> {
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let ports: Vec<(String, Port)> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port = Port::from_u32(u32::try_from(p.port?).ok()?)?;
            Some((p.name.clone().unwrap_or_default(), port))
        })
        .collect();
    let mut endpoints = Vec::new();
    for endpoint in &slice.endpoints {
        let condition = condition(endpoint.conditions.as_ref());
        for address in &endpoint.addresses {
            let Ok(ip) = address.parse() else {
                continue;
            };
            endpoints.push(SliceEndpoint {
                ip,
                ports: ports.clone(),
                condition,
                workload: pods.get(&ip).and_then(|pod| pod.workload.clone()),
            });
        }
    }
    endpoints
}

/// An endpoint's conditions as the API documents their absence: `ready` unset is ready,
/// `serving` unset is as ready, `terminating` unset is not terminating.
fn condition(conditions: Option<&discovery::EndpointConditions>) -> Condition {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Condition::Ready
    } else if serving && terminating {
        Condition::Terminating
    } else {
        Condition::Down
    }
}

/// A derived resource of `kind` named as `meta` names it, at its resourceVersion.
fn stored(kind: Kind, meta: &KubeMeta, spec: Spec) -> Option<(Key, Stored)> {
    let resource = Resource {
        kind,
        meta: ObjectMeta {
            name: meta.name.clone()?,
            namespace: Some(meta.namespace.clone()?),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: BTreeMap::new(),
            resource_version: None,
            creation_timestamp: None,
        },
        spec,
    };
    let key = resource.key();
    Some((
        key,
        Stored {
            resource: Arc::new(resource),
            resource_version: version(meta),
        },
    ))
}

/// An object's resourceVersion as a number (0 when the server wrote something else).
fn version(meta: &KubeMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The cluster view of the Services, EndpointSlices and Pods in `yaml` (documents separated
/// by `---`), in trust domain `cluster.local`.
#[cfg(test)]
pub(crate) fn translate_yaml(yaml: &str) -> ClusterState {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).unwrap();
    let (mut services, mut slices, mut pods) = (Vec::new(), Vec::new(), Vec::new());
    for doc in docs {
        match doc["kind"].as_str() {
            Some("Service") => services.push(Arc::new(serde_json::from_value(doc).unwrap())),
            Some("EndpointSlice") => slices.push(Arc::new(serde_json::from_value(doc).unwrap())),
            Some("Pod") => pods.push(Arc::new(serde_json::from_value(doc).unwrap())),
            other => panic!("not a kind the cluster view reads: {other:?}"),
        }
    }
    let mut state = translate(&services, &slices, &pods, &TrustDomain::cluster_local());
    state.generation = 1;
    state
}

#[cfg(test)]
pub(crate) mod tests;

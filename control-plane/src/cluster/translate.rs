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

use super::{ClusterState, Condition, SliceEndpoint};
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
        if let Some((key, stored)) = workload(pod, trust_domain) {
            state.resources.insert(key, stored);
        }
    }
    for service in services {
        let Some((key, stored, cluster_ips)) = service_of(service) else {
            continue;
        };
        for ip in cluster_ips {
            state.cluster_ips.insert(ip, key.clone());
        }
        state.endpoints.insert(key.clone(), Vec::new());
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
        for endpoint in slice_endpoints(slice, &state.resources) {
            // During a handover two slices list the same address: the readier entry counts.
            match by_ip.get(&endpoint.ip) {
                Some(known) if known.condition >= endpoint.condition => {}
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
        state
            .endpoints
            .insert(service, by_ip.into_values().collect());
    }
    for services in state.services_at.values_mut() {
        services.sort();
    }
    state
}

/// A core Service as a Weft Service, and its cluster IPs; `None` for what is not reached over
/// TCP through Weft (ExternalName, no TCP port).
fn service_of(service: &core::Service) -> Option<(Key, Stored, Vec<IpAddr>)> {
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
            Some(ServicePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: Port::from_u32(u32::try_from(p.port).ok()?)?,
                // A named target port resolves per Pod: the EndpointSlices carry its number.
                target_port: match &p.target_port {
                    Some(IntOrString::Int(port)) => Port::from_u32(u32::try_from(*port).ok()?),
                    _ => None,
                },
                app_protocol: p.app_protocol.as_deref().and_then(app_protocol),
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let cluster_ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let spec = ServiceSpec {
        selector: spec.selector.clone().unwrap_or_default(),
        ports,
        foreign_spiffe: false,
    };
    let (key, stored) = stored(Kind::Service, &service.metadata, Spec::Service(spec))?;
    Some((key, stored, cluster_ips))
}

/// What a Service port's `appProtocol` says Weft should speak, when Weft knows the word.
fn app_protocol(name: &str) -> Option<ServiceAppProtocol> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// A meshed Pod as a Workload: its IP, the identity of its ServiceAccount, the proxy's inbound
/// port and the app's ports. `None` for a Pod without the proxy, without an IP, or finished.
fn workload(pod: &core::Pod, trust_domain: &TrustDomain) -> Option<(Key, Stored)> {
    let meshed = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(PROXY_VERSION_ANNOTATION));
    let status = pod.status.as_ref()?;
    if !meshed || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let address: Address = status.pod_ip.as_deref()?.parse().ok()?;
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

/// A slice's endpoints with the ports it lists, each address its own entry.
fn slice_endpoints(
    slice: &discovery::EndpointSlice,
    resources: &BTreeMap<Key, Stored>,
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
    let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
    let mut endpoints = Vec::new();
    for endpoint in &slice.endpoints {
        let workload = endpoint
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let pod_namespace = r.namespace.as_deref().unwrap_or(namespace);
                let key = Key::new(Kind::Workload, pod_namespace, r.name.as_deref()?);
                resources.contains_key(&key).then_some(key)
            });
        let condition = condition(endpoint.conditions.as_ref());
        for address in &endpoint.addresses {
            let Ok(ip) = address.parse() else {
                continue;
            };
            endpoints.push(SliceEndpoint {
                ip,
                ports: ports.clone(),
                condition,
                workload: workload.clone(),
            });
        }
    }
    endpoints
}

/// An endpoint's conditions; unset ones are taken as true, as the API documents.
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

use super::*;
use crate::cluster::{ClusterState, Condition};

/// A Service `api` whose `http` port targets a named container port (8080 on one Pod, 8081 on
/// the other), a UDP port Weft leaves alone, two meshed Pods, one unmeshed and one meshed Pod
/// shutting down; a headless Service `db` served by an unmeshed Pod; an ExternalName Service.
pub(crate) const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, resourceVersion: "10"}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  selector: {app: api}
  ports:
  - {name: http, port: 8080, targetPort: http, appProtocol: kubernetes.io/h2c}
  - {name: metrics, port: 9090, targetPort: 9090, appProtocol: http}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: search, namespace: shop}
spec: {type: ExternalName, externalName: search.example.com, ports: [{port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-abc, namespace: shop, labels: {kubernetes.io/service-name: api}, resourceVersion: "12"}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: metrics, port: 9090}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: api-1, namespace: shop}
- addresses: [10.0.0.3]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: api-3, namespace: shop}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-def, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints:
- addresses: [10.0.0.2]
  targetRef: {kind: Pod, name: api-2}
- addresses: [10.0.0.4]
  conditions: {ready: false, serving: true, terminating: true}
  targetRef: {kind: Pod, name: api-old}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-abc, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{port: 5432}]
endpoints:
- addresses: [10.0.0.9]
  targetRef: {kind: Pod, name: db-0}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop, labels: {app: api}, annotations: {weft.io/proxy-version: "0.1.0"}}
spec:
  serviceAccountName: api
  containers:
  - {name: app, ports: [{name: http, containerPort: 8080}]}
  - {name: weft-proxy, ports: [{name: weft-inbound, containerPort: 7143}, {name: weft-admin, containerPort: 7191}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api-2, namespace: shop, labels: {app: api}, annotations: {weft.io/proxy-version: "0.1.0"}}
spec:
  serviceAccountName: api
  initContainers:
  - {name: weft-proxy, restartPolicy: Always, ports: [{name: weft-inbound, containerPort: 7143}]}
  containers:
  - {name: app, ports: [{name: http, containerPort: 8081}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: api-3, namespace: shop, labels: {app: api}}
spec: {serviceAccountName: api, containers: [{name: app}]}
status: {phase: Running, podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: api-old, namespace: shop, labels: {app: api}, annotations: {weft.io/proxy-version: "0.1.0"}}
spec: {containers: [{name: app}, {name: weft-proxy, ports: [{name: weft-inbound, containerPort: 7143}]}]}
status: {phase: Running, podIP: 10.0.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {containers: [{name: db}]}
status: {phase: Running, podIP: 10.0.0.9}
"#;

/// What a user of namespace `aaa` may write to reach for other Pods' addresses: a slice
/// listing a meshed Pod of `shop` and an unmeshed one it claims is a meshed Pod, and a Pod on
/// the node's network (the node's address) that looks meshed.
pub(crate) const INTRUDER: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: x, namespace: aaa}
spec: {clusterIP: 10.96.0.99, ports: [{port: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: x-abc, namespace: aaa, labels: {kubernetes.io/service-name: x}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.0.0.3]
  targetRef: {kind: Pod, name: api-1, namespace: shop}
- addresses: [10.0.0.1]
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent, namespace: aaa, annotations: {weft.io/proxy-version: "0.1.0"}}
spec: {hostNetwork: true, containers: [{name: agent}]}
status: {phase: Running, podIP: 10.0.0.1}
"#;

fn service(state: &ClusterState, name: &str) -> Option<ServiceSpec> {
    match &state
        .get(&Key::new(Kind::Service, "shop", name))?
        .resource
        .spec
    {
        Spec::Service(spec) => Some(spec.clone()),
        _ => None,
    }
}

fn workload(state: &ClusterState, name: &str) -> Option<WorkloadSpec> {
    match &state
        .get(&Key::new(Kind::Workload, "shop", name))?
        .resource
        .spec
    {
        Spec::Workload(spec) => Some(spec.clone()),
        _ => None,
    }
}

fn endpoints(state: &ClusterState, port_name: &str) -> Vec<(String, Option<String>)> {
    let mut listed: Vec<_> = state
        .endpoints(&Key::new(Kind::Service, "shop", "api"), port_name)
        .unwrap()
        .into_iter()
        .map(|(at, e)| (at.to_string(), e.workload.as_ref().map(|k| k.name.clone())))
        .collect();
    listed.sort();
    listed
}

#[test]
fn services_keep_their_tcp_ports_and_cluster_ips() {
    let state = translate_yaml(CLUSTER);
    let api = service(&state, "api").unwrap();
    let ports: Vec<_> = api
        .ports
        .iter()
        .map(|p| {
            (
                p.name.as_deref(),
                p.port.get(),
                p.target_port.map(Port::get),
                p.target_port_name.as_deref(),
                p.app_protocol,
            )
        })
        .collect();
    // A named target port has no one number: each Pod has its own.
    assert_eq!(
        ports,
        [
            (
                Some("http"),
                8080,
                None,
                Some("http"),
                Some(ServiceAppProtocol::H2c)
            ),
            (
                Some("metrics"),
                9090,
                Some(9090),
                None,
                Some(ServiceAppProtocol::Http)
            )
        ]
    );
    assert_eq!(api.selector["app"], "api");
    let api_key = Key::new(Kind::Service, "shop", "api");
    for ip in ["10.96.0.10", "fd00::10"] {
        assert_eq!(state.service_at(ip.parse().unwrap()), Some(&api_key));
    }
    // The newest of the Service and its slices.
    assert_eq!(state.get(&api_key).unwrap().resource_version, 12);
    // Headless: a Service without a cluster IP.
    assert!(service(&state, "db").is_some());
    assert_eq!(state.cluster_ips.len(), 2);
    assert!(
        service(&state, "search").is_none(),
        "ExternalName is DNS only"
    );
}

#[test]
fn meshed_pods_are_workloads_of_their_service_accounts() {
    let state = translate_yaml(CLUSTER);
    let api_1 = workload(&state, "api-1").unwrap();
    assert_eq!(api_1.identity, "spiffe://cluster.local/ns/shop/sa/api");
    assert_eq!(api_1.address.ip().to_string(), "10.0.0.1");
    assert_eq!(api_1.proxy_port.map(Port::get), Some(7143));
    let ports: Vec<_> = api_1.ports.iter().map(|p| p.port.get()).collect();
    assert_eq!(ports, [8080], "the app's ports, not the proxy's");
    // The proxy as a native sidecar (an init container) counts the same.
    assert_eq!(
        workload(&state, "api-2").unwrap().proxy_port.map(Port::get),
        Some(7143)
    );
    // No ServiceAccount named: the namespace's default.
    assert_eq!(
        workload(&state, "api-old").unwrap().identity,
        "spiffe://cluster.local/ns/shop/sa/default"
    );
    assert!(workload(&state, "api-3").is_none(), "unmeshed");
    assert!(workload(&state, "db-0").is_none(), "unmeshed");
    let labels = &state
        .get(&Key::new(Kind::Workload, "shop", "api-1"))
        .unwrap()
        .resource
        .meta
        .labels;
    assert_eq!(labels["app"], "api");
}

#[test]
fn endpoints_come_from_slices_ready_first_then_serving_while_terminating() {
    let state = translate_yaml(CLUSTER);
    // The named port resolved per Pod; the terminating endpoint is held back while others are
    // ready; an unmeshed Pod's address is listed without a workload.
    assert_eq!(
        endpoints(&state, "http"),
        [
            ("10.0.0.1:8080".to_string(), Some("api-1".to_string())),
            ("10.0.0.2:8081".to_string(), Some("api-2".to_string())),
            ("10.0.0.3:8080".to_string(), None),
        ]
    );
    // A port only one slice lists.
    assert_eq!(endpoints(&state, "metrics").len(), 2);
    assert!(endpoints(&state, "dns").is_empty());

    // With nothing ready, the endpoint still serving as it terminates takes the traffic.
    let draining = CLUSTER
        .replace("conditions: {ready: true}", "conditions: {ready: false}")
        .replace(
            "- addresses: [10.0.0.2]\n",
            "- addresses: [10.0.0.2]\n  conditions: {ready: false}\n",
        );
    let state = translate_yaml(&draining);
    assert_eq!(
        endpoints(&state, "http"),
        [("10.0.0.4:8081".to_string(), Some("api-old".to_string()))]
    );
    let old = state
        .endpoints(&Key::new(Kind::Service, "shop", "api"), "http")
        .unwrap();
    assert_eq!(old[0].1.condition, Condition::Terminating);
}

#[test]
fn slices_of_unknown_services_and_unusable_objects_are_left_out() {
    let orphan = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: gone-abc, namespace: shop, labels: {kubernetes.io/service-name: gone}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.7]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: odd, namespace: shop}
addressType: IPv4
endpoints: [{addresses: [not-an-ip]}]
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: shop, annotations: {weft.io/proxy-version: "0.1.0"}}
spec: {containers: [{name: app}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: shop, annotations: {weft.io/proxy-version: "0.1.0"}}
spec: {containers: [{name: app}]}
status: {phase: Succeeded, podIP: 10.0.0.8}
"#;
    let state = translate_yaml(orphan);
    assert!(state.resources().is_empty());
    assert!(
        state
            .services_listing("10.0.0.7".parse().unwrap())
            .is_empty()
    );
}

#[test]
fn an_endpoint_is_meshed_by_the_pod_at_its_address_never_by_what_a_slice_claims() {
    let state = translate_yaml(&format!("{CLUSTER}{INTRUDER}"));
    let mut listed: Vec<_> = state
        .endpoints(&Key::new(Kind::Service, "aaa", "x"), "")
        .unwrap()
        .into_iter()
        .map(|(at, e)| (at.to_string(), e.workload.as_ref().map(|k| k.name.clone())))
        .collect();
    listed.sort();
    // The unmeshed Pod's address stays unmeshed whatever its targetRef says; the meshed Pod's
    // address is that Pod, without a targetRef.
    assert_eq!(
        listed,
        [
            ("10.0.0.1:8080".to_string(), Some("api-1".to_string())),
            ("10.0.0.3:8080".to_string(), None),
        ]
    );
    // A Pod on the node's network has the node's address: it is no one's endpoint.
    let agent = Key::new(Kind::Workload, "aaa", "node-agent");
    assert!(state.get(&agent).is_none());
    assert_eq!(
        state.pod_at("10.0.0.1".parse().unwrap()).unwrap().namespace,
        "shop"
    );
}

#[test]
fn a_dual_stack_service_is_served_in_its_primary_family_and_its_pods_found_in_both() {
    let dual = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIPs: [10.96.0.20, "fd00::20"], ipFamilies: [IPv4, IPv6], ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.5]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{port: 80}]
endpoints: [{addresses: ["fd00:1::5"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, annotations: {weft.io/proxy-version: "0.1.0"}}
spec: {containers: [{name: web}]}
status: {phase: Running, podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}, {ip: "fd00:1::5"}]}
"#;
    let state = translate_yaml(dual);
    let endpoints = state
        .endpoints(&Key::new(Kind::Service, "shop", "web"), "")
        .unwrap();
    let addresses: Vec<String> = endpoints.iter().map(|(at, _)| at.to_string()).collect();
    assert_eq!(addresses, ["10.0.0.5:80"], "one endpoint per Pod");
    for ip in ["10.0.0.5", "fd00:1::5"] {
        let pod = state.pod_at(ip.parse().unwrap()).unwrap();
        assert_eq!(pod.workload.as_ref().unwrap().name, "web-1", "{ip}");
    }
    assert_eq!(
        workload(&state, "web-1").unwrap().address.ip().to_string(),
        "10.0.0.5",
        "the primary address"
    );
}

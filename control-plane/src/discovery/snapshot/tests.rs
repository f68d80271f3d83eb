use super::*;
use crate::policy::Resource;
use crate::policy_store::{PolicyState, Stored};

fn state(yaml: &str) -> PolicyState {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).unwrap();
    let mut state = PolicyState {
        revision: 1,
        ..Default::default()
    };
    for (i, doc) in docs.iter().enumerate() {
        let resource = Resource::parse(doc, &format!("document {i}")).unwrap();
        state.resources.insert(
            resource.key(),
            Stored {
                resource: Arc::new(resource),
                resource_version: 1,
            },
        );
    }
    state
}

const MESH: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 8080}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api-v2, namespace: shop}
spec: {selector: {app: api, version: v2}, ports: [{port: 8080}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: shop, labels: {app: api, version: v1}}
spec: {address: 10.0.0.1, proxyPort: 7143, identity: "spiffe://cluster.local/ns/shop/sa/api"}
---
apiVersion: policy.weft.io/v1alpha1
kind: Workload
metadata: {name: api-2, namespace: shop, labels: {app: api, version: v2}}
spec: {address: 10.0.0.2, identity: "spiffe://cluster.local/ns/shop/sa/api", ports: [{port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop}
spec:
  parentRefs: [{name: api, kind: Service, port: 8080}]
  rules:
  - matches: [{headers: [{name: X-Canary, value: "true"}]}]
    backendRefs: [{name: api-v2, port: 8080}]
  - matches: [{path: {type: Exact, value: /health}}, {path: {type: PathPrefix, value: /api/orders}}]
    backendRefs: [{name: api, port: 8080, weight: 90}, {name: api-v2, port: 8080, weight: 10}]
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {codes: [503], attempts: 3, backoff: 50ms}
"#;

#[test]
fn resolves_service_names_in_their_usual_forms() {
    let state = state(MESH);
    for destination in [
        "api.shop:8080",
        "api.shop.svc:8080",
        "api.shop.svc.cluster.local:8080",
        "API.Shop:8080",
    ] {
        let snapshot = outbound_snapshot(&state, &ClusterDomain::default(), destination);
        assert!(snapshot.found, "{destination}");
        assert_eq!(snapshot.service, "shop/api:8080");
    }
    assert!(
        !outbound_snapshot(&state, &ClusterDomain::default(), "api.shop:9090").found,
        "no such port"
    );
    assert!(!outbound_snapshot(&state, &ClusterDomain::default(), "api.other:8080").found);
    // An address no workload has (workload addresses: a_workload_address_resolves_…).
    assert!(!outbound_snapshot(&state, &ClusterDomain::default(), "10.9.9.9:8080").found);
}

#[test]
fn a_service_name_followed_by_anything_else_is_not_that_service() {
    let state = state(MESH);
    for destination in [
        "api.shop.svc.evil.example:8080",
        "api.shop.svc.cluster.local.evil.example:8080",
        "api.shop.svc.cluster:8080",
        "api.shop.svc.cluster.local..:8080",
        "api.shop.evil:8080",
        "api.shop.svc.svc:8080",
        ".api.shop:8080",
        "api..shop:8080",
    ] {
        assert!(
            !outbound_snapshot(&state, &ClusterDomain::default(), destination).found,
            "{destination} must not reach shop/api"
        );
    }
}

#[test]
fn endpoints_are_the_selected_workloads() {
    let snapshot = outbound_snapshot(&state(MESH), &ClusterDomain::default(), "api.shop:8080");
    let api = &snapshot.backends[0];
    assert_eq!(api.name, "shop/api:8080");
    let mut addresses: Vec<&str> = api.endpoints.iter().map(|e| e.address.as_str()).collect();
    addresses.sort();
    // The proxy port when given, else the target port (intercepted).
    assert_eq!(addresses, ["10.0.0.1:7143", "10.0.0.2:8080"]);
    assert_eq!(snapshot.backends[1].name, "shop/api-v2:8080");
    assert_eq!(snapshot.backends[1].endpoints.len(), 1);
}

#[test]
fn a_workload_address_resolves_to_that_workload_alone() {
    let state = state(MESH);
    let snapshot = outbound_snapshot(&state, &ClusterDomain::default(), "10.0.0.2:8080");
    assert!(snapshot.found);
    // The first Service (by namespace and name) that selects the workload on that port.
    assert_eq!(snapshot.service, "shop/api:8080");
    let addresses: Vec<&str> = snapshot.backends[0]
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(addresses, ["10.0.0.2:8080"]);
    // The app chose its peer: the Service's routes (splits to other backends) do not apply.
    assert!(snapshot.routes.is_empty());
    assert_eq!(snapshot.backends.len(), 1);
    // Dialed through its proxy port when it has one.
    let via_proxy = outbound_snapshot(&state, &ClusterDomain::default(), "10.0.0.1:8080");
    assert_eq!(via_proxy.backends[0].endpoints[0].address, "10.0.0.1:7143");
    // Not a workload, or a port no Service targets: outside the mesh.
    assert!(!outbound_snapshot(&state, &ClusterDomain::default(), "10.0.0.9:8080").found);
    assert!(!outbound_snapshot(&state, &ClusterDomain::default(), "10.0.0.2:9999").found);
}

#[test]
fn an_opaque_service_port_makes_its_workload_addresses_opaque() {
    let opaque = MESH.replace(
        "metadata: {name: api, namespace: shop}\nspec: {selector: {app: api}, ports: [{port: 8080}]}",
        "metadata: {name: api, namespace: shop}\nspec: {selector: {app: api}, ports: [{port: 5432, targetPort: 8080, appProtocol: tcp}]}",
    );
    assert_ne!(opaque, MESH);
    let snapshot = outbound_snapshot(&state(&opaque), &ClusterDomain::default(), "10.0.0.2:8080");
    assert!(snapshot.found);
    assert_eq!(snapshot.service, "shop/api:5432");
    assert!(snapshot.opaque);
}

#[test]
fn an_older_route_wins_a_tie_whatever_its_name() {
    let tie = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: aaa-newer, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  parentRefs: [{name: api, kind: Service, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /tie}}]
    backendRefs: [{name: api-v2, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: zzz-older, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: api, kind: Service, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /tie}}]
    backendRefs: [{name: api, port: 8080}]
"#;
    let snapshot = outbound_snapshot(
        &state(&format!("{MESH}{tie}")),
        &ClusterDomain::default(),
        "api.shop:8080",
    );
    let tied: Vec<&str> = snapshot
        .routes
        .iter()
        .filter(|r| {
            r.rules[0].matches[0]
                .path
                .as_ref()
                .is_some_and(|p| p.value == "/tie")
        })
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(tied, ["shop/zzz-older", "shop/aaa-newer"]);
}

#[test]
fn routes_are_flattened_in_precedence_order() {
    let snapshot = outbound_snapshot(&state(MESH), &ClusterDomain::default(), "api.shop:8080");
    let paths: Vec<String> = snapshot
        .routes
        .iter()
        .map(|r| {
            let m = &r.rules[0].matches[0];
            format!(
                "{}{}",
                m.path.as_ref().map_or("-".to_string(), |p| p.value.clone()),
                if m.headers.is_empty() { "" } else { "+headers" }
            )
        })
        .collect();
    // Exact before prefixes; a longer prefix before "/" (the header-only match's implicit path).
    assert_eq!(paths, ["/health", "/api/orders", "-+headers"]);
    let split = &snapshot.routes[1].rules[0];
    let weights: Vec<(u32, u32)> = split
        .backends
        .iter()
        .map(|b| (b.backend, b.weight))
        .collect();
    assert_eq!(weights, [(0, 90), (1, 10)]);
    let retry = split.retry.as_ref().unwrap();
    assert_eq!(
        (
            retry.codes.as_slice(),
            retry.attempts,
            retry.on_connect_failure
        ),
        (&[503u32][..], 3, true)
    );
    assert_eq!(split.request_timeout.unwrap().seconds, 2);
    assert_eq!(
        snapshot.routes[2].rules[0].matches[0].headers[0].name,
        "x-canary"
    );
}

#[test]
fn grpc_methods_become_paths() {
    let yaml = format!(
        "{MESH}---\n{}",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: shop}
spec:
  parentRefs: [{name: api}]
  rules:
  - matches: [{method: {service: shop.Orders, method: Get}}]
    backendRefs: [{name: api-v2, port: 8080}]
"#
    );
    let snapshot = outbound_snapshot(&state(&yaml), &ClusterDomain::default(), "api.shop:8080");
    let grpc = snapshot
        .routes
        .iter()
        .find(|r| r.name == "shop/grpc")
        .unwrap();
    let path = grpc.rules[0].matches[0].path.as_ref().unwrap();
    assert_eq!(path.value, "/shop.Orders/Get");
    assert_eq!(path.kind, pb::string_match::Kind::Exact as i32);
}

#[test]
fn query_parameter_names_keep_their_case() {
    let yaml = format!(
        "{MESH}---\n{}",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: q, namespace: shop}
spec:
  parentRefs: [{name: api}]
  rules:
  - matches: [{queryParams: [{name: userId, value: "7"}], headers: [{name: X-User, value: "7"}]}]
    backendRefs: [{name: api-v2, port: 8080}]
"#
    );
    let snapshot = outbound_snapshot(&state(&yaml), &ClusterDomain::default(), "api.shop:8080");
    let m = &snapshot
        .routes
        .iter()
        .find(|r| r.name == "shop/q")
        .unwrap()
        .rules[0]
        .matches[0];
    assert_eq!(m.query_params[0].name, "userId");
    assert_eq!(m.headers[0].name, "x-user");
}

#[test]
fn cache_computes_once_per_revision() {
    let state = state(MESH);
    let cache = SnapshotCache::default();
    let a = cache.outbound(&state, "api.shop:8080");
    let b = cache.outbound(&state, "api.shop:8080");
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn inbound_settings_come_from_the_most_specific_inbound_defaults() {
    let state = state(
        r#"
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 80, targetPort: 8080, appProtocol: http}, {port: 9090, appProtocol: grpc}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec: {address: 10.0.0.1, identity: "spiffe://cluster.local/ns/shop/sa/api"}
---
apiVersion: policy.weft.io/v1alpha1
kind: InboundDefaults
metadata: {name: mesh, namespace: weft}
spec: {mode: strict, authorization: all-authenticated, ports: [{port: 15000, mode: permissive}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: InboundDefaults
metadata: {name: shop, namespace: shop}
spec: {authorization: cluster-authenticated, rateLimit: {total: {requestsPerSecond: 100}}}
---
apiVersion: policy.weft.io/v1alpha1
kind: InboundDefaults
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 8080, authorization: all-unauthenticated}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec: {selector: {app: api}, ports: [8080], from: [{identities: ["spiffe://cluster.local/ns/shop/sa/web"]}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: other}
spec: {from: [{namespaces: [shop]}]}
"#,
    );
    let snapshot = inbound_snapshot(&state, "spiffe://cluster.local/ns/shop/sa/api", None);
    let defaults = snapshot.defaults.unwrap();
    // The namespace sets the authorization, the mesh the mode.
    assert_eq!(
        (defaults.mode.as_str(), defaults.authorization.as_str()),
        ("strict", "cluster-authenticated")
    );
    let port = |number: u32| {
        snapshot
            .ports
            .iter()
            .find(|p| p.port == number)
            .unwrap_or_else(|| panic!("port {number} in {:?}", snapshot.ports))
    };
    // The workload's port entry beats the namespace; its appProtocol comes from the Service.
    let web = port(8080);
    let settings = web.settings.as_ref().unwrap();
    assert_eq!(
        (
            settings.mode.as_str(),
            settings.authorization.as_str(),
            web.app_protocol.as_str()
        ),
        ("strict", "all-unauthenticated", "http")
    );
    assert_eq!(port(9090).app_protocol, "http2");
    // The mesh's port entry still applies where nothing nearer says.
    assert_eq!(port(15000).settings.as_ref().unwrap().mode, "permissive");
    // Only the policies of the workload's namespace that select it.
    let names: Vec<&str> = snapshot
        .authorizations
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["shop/web"]);
    let limit = snapshot.rate_limit.unwrap().total.unwrap();
    assert_eq!((limit.requests_per_second, limit.burst), (100, 100));
    // Another identity's workloads get none of it but the mesh's.
    let other = inbound_snapshot(&state, "spiffe://cluster.local/ns/shop/sa/web", None);
    assert_eq!(other.defaults.unwrap().authorization, "all-authenticated");
    assert!(other.authorizations.is_empty());
}

/// `policy` served beside the cluster of [`crate::cluster::TEST_CLUSTER`].
fn on_cluster(policy: &str) -> PolicyState {
    let mut state = if policy.is_empty() {
        PolicyState::default()
    } else {
        state(policy)
    };
    state.cluster = Arc::new(crate::cluster::translate_yaml(crate::cluster::TEST_CLUSTER));
    state
}

fn addresses(backend: &pb::Backend) -> Vec<&str> {
    let mut addresses: Vec<&str> = backend
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    addresses.sort();
    addresses
}

#[test]
fn a_cluster_service_sends_to_its_meshed_endpoints_at_their_proxies() {
    let state = on_cluster("");
    let domain = ClusterDomain::default();
    for destination in [
        "api.shop.svc.cluster.local:8080",
        "api.shop:8080",
        "10.96.0.10:8080",
        "[fd00::10]:8080",
    ] {
        let snapshot = outbound_snapshot(&state, &domain, destination);
        assert!(snapshot.found, "{destination}");
        assert_eq!(snapshot.service, "shop/api:8080", "{destination}");
        // The unmeshed Pod is left out: a meshed destination is never sent to in plaintext.
        assert_eq!(
            addresses(&snapshot.backends[0]),
            ["10.0.0.1:7143", "10.0.0.2:7143"],
            "{destination}"
        );
        let identities: Vec<&str> = snapshot.backends[0]
            .endpoints
            .iter()
            .map(|e| e.identity.as_str())
            .collect();
        assert_eq!(identities, ["spiffe://cluster.local/ns/shop/sa/api"; 2]);
    }
    // A port the Service does not have, a cluster IP of nothing.
    assert!(!outbound_snapshot(&state, &domain, "10.96.0.10:80").found);
    assert!(!outbound_snapshot(&state, &domain, "10.96.0.11:8080").found);
}

#[test]
fn a_pod_dialed_by_its_address_is_that_endpoint_alone() {
    let state = on_cluster("");
    let domain = ClusterDomain::default();
    // The named target port as this Pod resolves it.
    let snapshot = outbound_snapshot(&state, &domain, "10.0.0.2:8081");
    assert!(snapshot.found);
    assert_eq!(snapshot.service, "shop/api:8080");
    assert_eq!(addresses(&snapshot.backends[0]), ["10.0.0.2:7143"]);
    assert!(!outbound_snapshot(&state, &domain, "10.0.0.2:8080").found);
}

#[test]
fn what_only_unmeshed_pods_serve_is_outside_the_mesh() {
    let state = on_cluster("");
    let domain = ClusterDomain::default();
    // Placed outside the mesh, the proxy sends on in plaintext as the app asked.
    for destination in ["db.shop:5432", "10.0.0.9:5432", "10.0.0.3:8080"] {
        assert!(
            !outbound_snapshot(&state, &domain, destination).found,
            "{destination}"
        );
    }
}

#[test]
fn routes_attach_to_cluster_services_and_declared_services_win_a_name() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: metrics, namespace: shop}
spec:
  parentRefs: [{name: api, kind: Service, port: 9090}]
  rules: [{matches: [{path: {type: PathPrefix, value: /admin}}], backendRefs: [{name: api, port: 9090}]}]
"#;
    let state = on_cluster(route);
    let snapshot = outbound_snapshot(&state, &ClusterDomain::default(), "api.shop:9090");
    assert_eq!(snapshot.routes.len(), 1);
    assert_eq!(snapshot.routes[0].name, "shop/metrics");
    assert_eq!(
        addresses(&snapshot.backends[0]),
        ["10.0.0.1:7143"],
        "only one slice lists the metrics port"
    );

    // A Weft Service of the same name is what its author meant.
    let declared = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: vm}, ports: [{port: 8080}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: Workload
metadata: {name: vm-1, namespace: shop, labels: {app: vm}}
spec: {address: 192.168.1.5, proxyPort: 4143, identity: "spiffe://cluster.local/ns/shop/sa/vm"}
"#;
    let state = on_cluster(declared);
    let snapshot = outbound_snapshot(&state, &ClusterDomain::default(), "api.shop:8080");
    assert_eq!(addresses(&snapshot.backends[0]), ["192.168.1.5:4143"]);
}

#[test]
fn a_meshed_pod_takes_its_inbound_policy_from_the_cluster_services_selecting_it() {
    let state = on_cluster("");
    let snapshot = inbound_snapshot(&state, "spiffe://cluster.local/ns/shop/sa/api", None);
    let protocol = |port: u32| {
        snapshot
            .ports
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.app_protocol.as_str())
    };
    assert_eq!(protocol(9090), Some("http"));
    // The named target port, on each Pod's own port of that name.
    assert_eq!(protocol(8080), Some("http2"));
    assert_eq!(protocol(8081), Some("http2"));
}

#[test]
fn a_slice_of_another_namespace_cannot_take_a_meshed_pods_address() {
    let mut cluster = crate::cluster::translate_yaml(&format!(
        "{}{}",
        crate::cluster::TEST_CLUSTER,
        crate::cluster::TEST_INTRUDER
    ));
    cluster.generation = 2;
    let mut state = on_cluster("");
    state.cluster = Arc::new(cluster);
    // The Pod's own namespace's Service answers for it, never a slice elsewhere.
    let snapshot = outbound_snapshot(&state, &ClusterDomain::default(), "10.0.0.1:8080");
    assert_eq!(snapshot.service, "shop/api:8080");
    assert_eq!(addresses(&snapshot.backends[0]), ["10.0.0.1:7143"]);
}

#[test]
fn a_new_cluster_view_is_a_new_snapshot_version() {
    let mut state = on_cluster("");
    let cache = SnapshotCache::default();
    let before = cache.outbound(&state, "api.shop:8080");
    let mut cluster = crate::cluster::translate_yaml(&crate::cluster::TEST_CLUSTER.replace(
        "- addresses: [10.0.0.2]\n",
        "- addresses: [10.0.0.2]\n  conditions: {ready: false}\n",
    ));
    cluster.generation = 2;
    state.cluster = Arc::new(cluster);
    assert_eq!(state.served_version_string(), "0.2");
    let after = cache.outbound(&state, "api.shop:8080");
    assert_eq!(addresses(&before.backends[0]).len(), 2);
    assert_eq!(addresses(&after.backends[0]), ["10.0.0.1:7143"]);
}

#[test]
fn a_route_attaches_to_the_port_its_section_names_and_not_when_weft_lacks_a_filter() {
    let route = |filter: &str| {
        format!(
            r#"
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{selector: {{app: web}}, ports: [{{name: http, port: 80}}, {{name: admin, port: 9000}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: shop}}
spec:
  parentRefs: [{{name: web, kind: Service, sectionName: http}}]
  rules:
  - filters: [{{type: {filter}}}]
    backendRefs: [{{name: web, port: 80}}]
"#
        )
    };
    let domain = ClusterDomain::default();
    let state = state(&route(
        "ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}",
    ));
    assert_eq!(
        outbound_snapshot(&state, &domain, "web.shop:80")
            .routes
            .len(),
        1
    );
    assert!(
        outbound_snapshot(&state, &domain, "web.shop:9000")
            .routes
            .is_empty(),
        "another port of the Service"
    );
    // A redirect Weft cannot do: the route is not served at all, never by halves.
    let state = self::state(&route(
        "RequestRedirect, requestRedirect: {statusCode: 301}",
    ));
    assert!(
        outbound_snapshot(&state, &domain, "web.shop:80")
            .routes
            .is_empty()
    );
}

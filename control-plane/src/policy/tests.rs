use super::*;

fn parse(yaml: &str) -> Result<Resource, PolicyError> {
    let doc: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    Resource::parse(&doc, "document 1")
}

fn error(yaml: &str) -> String {
    parse(yaml).unwrap_err().to_string()
}

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: api}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "^/orders/[0-9]+$"}}]
    backendRefs: [{name: api, port: 8080, weight: 1}]
"#;

#[test]
fn a_valid_route_parses_with_its_namespace() {
    let route = parse(ROUTE).unwrap();
    assert_eq!(route.key(), Key::new(Kind::HttpRoute, "shop", "r"));
    assert_eq!(route.references().len(), 2);
}

#[test]
fn the_namespace_defaults() {
    let route = parse(&ROUTE.replace(", namespace: shop", "")).unwrap();
    assert_eq!(route.namespace(), "default");
}

#[test]
fn each_error_names_the_resource_and_field() {
    let cases = [
        (
            ROUTE.replace("kind: HTTPRoute", "kind: TCPRoute"),
            "document 1: kind: unknown kind \"TCPRoute\"",
        ),
        (
            ROUTE.replace("gateway.networking.k8s.io/v1", "v1"),
            "document 1: apiVersion: HTTPRoute must be gateway.networking.k8s.io/v1",
        ),
        (
            ROUTE.replace("weight: 1", "weight: 0"),
            "HTTPRoute shop/r: spec.rules[0].backendRefs: weights are all zero",
        ),
        (
            ROUTE.replace("^/orders/[0-9]+$", "^/orders/[0-9+$"),
            "HTTPRoute shop/r: spec.rules[0].matches[0].path.value: regular expression does not compile",
        ),
        (
            ROUTE.replace("port: 8080", "port: 99999"),
            "HTTPRoute shop/r: spec.rules[0].backendRefs[0].port: 99999 is not a port",
        ),
        (
            ROUTE.replace("weight: 1", "weight: heavy"),
            "document 1: spec.rules[0].backendRefs[0].weight: invalid type",
        ),
        (
            ROUTE.replace("parentRefs", "parents"),
            "document 1: spec.parents: unknown field `parents`, expected one of `parentRefs`",
        ),
        (
            ROUTE.replace("name: r,", "name: R,"),
            "document 1: metadata.name:",
        ),
    ];
    for (yaml, expected) in cases {
        let err = error(&yaml);
        assert!(
            err.starts_with(expected),
            "expected {expected:?}, got {err:?}"
        );
    }
}

#[test]
fn service_policy_and_workload_checks() {
    let policy = r#"
apiVersion: policy.weft.io/v1alpha1
kind: ServicePolicy
metadata: {name: p}
spec:
  targetRef: {name: api}
  retryBudget: {ratio: 0.1, minRetriesPerSecond: 5, window: 10s}
  circuitBreaker: {consecutiveFailures: 3, ejection: {base: 5s, max: 1m}}
  loadBalancer: {type: PeakEWMA}
"#;
    parse(policy).unwrap();
    assert!(error(&policy.replace("PeakEWMA", "Random")).contains("spec.loadBalancer.type"));
    assert!(
        error(&policy.replace("window: 10s", "window: soon")).contains("spec.retryBudget.window")
    );
    assert!(
        error(&policy.replace("max: 1m", "max: 1s")).contains("spec.circuitBreaker.ejection.max")
    );
    let workload = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Workload
metadata: {name: w}
spec: {address: 10.0.0.1, identity: "spiffe://cluster.local/ns/a/sa/b"}
"#;
    parse(workload).unwrap();
    assert!(error(&workload.replace("10.0.0.1", "ten")).contains("spec.address"));
    assert!(
        error(&workload.replace("spiffe://cluster.local/ns/a/sa/b", "spiffe://x"))
            .contains("spec.identity")
    );
}

#[test]
fn grpc_routes_check_codes_and_methods() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{name: api}]
  rules:
  - matches: [{method: {service: shop.Orders, method: Get}}]
    retry: {codes: [UNAVAILABLE, 4], attempts: 2}
"#;
    parse(route).unwrap();
    assert!(error(&route.replace("UNAVAILABLE", "SLOW")).contains("spec.rules[0].retry.codes[0]"));
    assert!(
        error(&route.replace("shop.Orders", "shop/Orders"))
            .contains("spec.rules[0].matches[0].method.service")
    );
}

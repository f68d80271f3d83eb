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

/// An HTTPRoute as `kubectl get -o yaml` prints it, with a field Weft does not know.
const ROUTE_FROM_CLUSTER: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"apiVersion":"gateway.networking.k8s.io/v1"}'
  creationTimestamp: "2026-11-30T10:00:00Z"
  generation: 3
  managedFields:
  - apiVersion: gateway.networking.k8s.io/v1
    fieldsType: FieldsV1
    fieldsV1: {f:spec: {f:rules: {}}}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2026-11-30T10:00:00Z"
  name: r
  namespace: shop
  resourceVersion: "4711"
  uid: 3c0f6a8e-1d2b-4c5d-9e8f-0a1b2c3d4e5f
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: api
    port: 8080
  rules:
  - backendRefs:
    - group: ""
      kind: Service
      name: api
      port: 8080
      weight: 1
    matches:
    - path: {type: PathPrefix, value: /}
    sessionPersistence: {sessionName: shop, type: Cookie}
status:
  parents:
  - conditions:
    - lastTransitionTime: "2026-11-30T10:00:01Z"
      message: Route was valid
      observedGeneration: 3
      reason: Accepted
      status: "True"
      type: Accepted
    controllerName: weft.io/mesh
    parentRef: {group: "", kind: Service, name: api, port: 8080}
"#;

#[test]
fn a_manifest_from_a_cluster_applies_warning_only_of_what_weft_does_not_know() {
    let doc: serde_json::Value = serde_saphyr::from_str(ROUTE_FROM_CLUSTER).unwrap();
    let parsed = Resource::parse_reporting(&doc, "document 1").unwrap();
    assert_eq!(
        parsed.warnings,
        ["HTTPRoute shop/r: unknown field \"spec.rules[0].sessionPersistence\", ignored"]
    );
    let Spec::HttpRoute(spec) = &parsed.resource.spec else {
        panic!("not a route: {:?}", parsed.resource.spec);
    };
    assert_eq!(spec.rules[0].backend_refs[0].weight(), 1);
    // What the API server set is not kept: the stored manifest is the user's.
    let stored = parsed.resource.to_json(1).to_string();
    for server_set in [
        "status",
        "uid",
        "managedFields",
        "generation",
        "sessionPersistence",
    ] {
        assert!(!stored.contains(server_set), "{server_set} in {stored}");
    }
    // Another API server's resourceVersion is not this store's: it is dropped, not sent as the
    // version the apply expects.
    assert_eq!(parsed.resource.meta.resource_version, None);
    // A misspelt field is a warning too, with the field's full path.
    let misspelt = ROUTE_FROM_CLUSTER.replace("weight: 1", "wieght: 1");
    let doc: serde_json::Value = serde_saphyr::from_str(&misspelt).unwrap();
    let warnings = Resource::parse_reporting(&doc, "document 1")
        .unwrap()
        .warnings;
    assert!(
        warnings.contains(
            &"HTTPRoute shop/r: unknown field \"spec.rules[0].backendRefs[0].wieght\", ignored"
                .to_string()
        ),
        "{warnings:?}"
    );
}

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
            "HTTPRoute shop/r: spec.rules[0].backendRefs[0].weight: invalid type",
        ),
        (
            ROUTE.replace("parentRefs", "parents"),
            "HTTPRoute shop/r: spec: missing field `parentRefs`",
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
    let telemetry = format!("{policy}  telemetry: {{traceSampling: 0.25, accessLog: true}}\n");
    let Spec::ServicePolicy(spec) = parse(&telemetry).unwrap().spec else {
        panic!("a ServicePolicy");
    };
    let telemetry_spec = spec.telemetry.unwrap();
    assert_eq!(telemetry_spec.trace_sampling, Some(0.25));
    assert_eq!(telemetry_spec.access_log, Some(true));
    assert!(
        error(&telemetry.replace("0.25", "25")).contains("spec.telemetry.traceSampling"),
        "a percentage is not a ratio"
    );
    let on_a_route = telemetry.replace(
        "targetRef: {name: api}",
        "targetRef: {kind: HTTPRoute, name: r}",
    );
    assert!(error(&on_a_route).contains("spec.telemetry: applies to a Service's requests"));
    let workload = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Workload
metadata: {name: w, namespace: a}
spec: {address: 10.0.0.1, identity: "spiffe://cluster.local/ns/a/sa/b"}
"#;
    parse(workload).unwrap();
    let elsewhere = error(&workload.replace("namespace: a", "namespace: b"));
    assert!(
        elsewhere.contains(
            "spec.identity: spiffe://cluster.local/ns/a/sa/b belongs to namespace \"a\", not \"b\""
        ),
        "{elsewhere}"
    );
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

/// Every numeric field of every kind, with the values that could crash or stall a proxy: each
/// is refused, naming the field and the range allowed. (`{}` is replaced by the value.)
#[test]
fn extreme_values_are_refused_naming_the_field_and_range() {
    let policy = |field: &str| {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: ServicePolicy\nmetadata: {{name: p}}\nspec:\n  targetRef: {{name: api}}\n  {field}\n"
        )
    };
    let route = |rule: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: api}}]\n  rules:\n  - {rule}\n"
        )
    };
    let workload = |field: &str| {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: w, namespace: a}}\nspec: {{address: 10.0.0.1, identity: \"spiffe://cluster.local/ns/a/sa/b\", {field}}}\n"
        )
    };
    let durations = [
        "9223372036854775807s",
        "100000h",
        "-1s",
        "1 day",
        "1d",
        "1.5s",
        "10us",
        "1h1m1s1ms1h",
        "",
    ];
    let counts = ["4294967295", "-1"];
    let mut cases: Vec<(String, &str)> = Vec::new();
    for d in durations {
        let d = format!("\"{d}\"");
        cases.extend([
            (
                route(&format!("timeouts: {{request: {d}}}")),
                "spec.rules[0].timeouts.request",
            ),
            (
                route(&format!("timeouts: {{backendRequest: {d}}}")),
                "spec.rules[0].timeouts.backendRequest",
            ),
            (
                route(&format!("retry: {{attempts: 1, backoff: {d}}}")),
                "spec.rules[0].retry.backoff",
            ),
            (
                policy(&format!("retryBudget: {{window: {d}}}")),
                "spec.retryBudget.window",
            ),
            (
                policy(&format!(
                    "circuitBreaker: {{successRate: {{minimum: 0.5, window: {d}}}}}"
                )),
                "spec.circuitBreaker.successRate.window",
            ),
            (
                policy(&format!("circuitBreaker: {{ejection: {{base: {d}}}}}")),
                "spec.circuitBreaker.ejection.base",
            ),
            (
                policy(&format!("circuitBreaker: {{ejection: {{max: {d}}}}}")),
                "spec.circuitBreaker.ejection.max",
            ),
            (
                policy(&format!("connectTimeout: {d}")),
                "spec.connectTimeout",
            ),
        ]);
    }
    for n in counts {
        cases.extend([
            (workload(&format!("weight: {n}")), "spec.weight"),
            (route(&format!("backendRefs: [{{name: api, weight: {n}}}]")), "spec.rules[0].backendRefs[0].weight"),
            (route(&format!("retry: {{attempts: {n}}}")), "spec.rules[0].retry.attempts"),
            (route(&format!("filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: api}}, percent: {n}}}}}]")), "spec.rules[0].filters[0].requestMirror.percent"),
            (policy(&format!("retryBudget: {{minRetriesPerSecond: {n}}}")), "spec.retryBudget.minRetriesPerSecond"),
            (policy(&format!("circuitBreaker: {{consecutiveFailures: {n}}}")), "spec.circuitBreaker.consecutiveFailures"),
            (policy(&format!("circuitBreaker: {{successRate: {{minimum: 0.5, minRequests: {n}}}}}")), "spec.circuitBreaker.successRate.minRequests"),
            (policy(&format!("rateLimit: {{requestsPerSecond: {n}}}")), "spec.rateLimit.requestsPerSecond"),
            (policy(&format!("rateLimit: {{requestsPerSecond: 10, burst: {n}}}")), "spec.rateLimit.burst"),
            (policy(&format!("opaquePorts: [{n}]")), "spec.opaquePorts[0]"),
        ]);
    }
    let service = |ports: &str| {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: s}}\nspec: {{ports: [{ports}]}}\n"
        )
    };
    for port in ["0", "65536", "4294967295", "-1"] {
        cases.extend([
            (service(&format!("{{port: {port}}}")), "spec.ports[0].port"),
            (service(&format!("{{port: 80, targetPort: {port}}}")), "spec.ports[0].targetPort"),
            (workload(&format!("proxyPort: {port}")), "spec.proxyPort"),
            (workload(&format!("ports: [{{port: {port}}}]")), "spec.ports[0].port"),
            (route(&format!("backendRefs: [{{name: api, port: {port}}}]")), "spec.rules[0].backendRefs[0].port"),
            (route("backendRefs: [{name: api}]").replace("[{name: api}]\n  rules", &format!("[{{name: api, port: {port}}}]\n  rules")), "spec.parentRefs[0].port"),
            (route(&format!("filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: api, port: {port}}}}}}}]")), "spec.rules[0].filters[0].requestMirror.backendRef.port"),
        ]);
    }
    for ratio in ["1e308", "-0.5", "1.0000001e1"] {
        cases.push((
            policy(&format!("retryBudget: {{ratio: {ratio}}}")),
            "spec.retryBudget.ratio",
        ));
        cases.push((
            policy(&format!(
                "circuitBreaker: {{successRate: {{minimum: {ratio}}}}}"
            )),
            "spec.circuitBreaker.successRate.minimum",
        ));
    }
    cases.extend([
        (
            policy("circuitBreaker: {consecutiveFailures: 0}"),
            "spec.circuitBreaker.consecutiveFailures",
        ),
        (
            policy("rateLimit: {requestsPerSecond: 0}"),
            "spec.rateLimit.requestsPerSecond",
        ),
        (
            policy("rateLimit: {requestsPerSecond: 10, burst: 0}"),
            "spec.rateLimit.burst",
        ),
    ]);
    for (yaml, field) in &cases {
        let doc: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        let error = Resource::parse(&doc, "document 1").expect_err(yaml);
        assert_eq!(&error.field, field, "{yaml}: {error}");
        // A type error (a negative count) says what type; a value out of range says the range.
        assert!(
            error.reason.contains("between")
                || error.reason.contains("at least")
                || error.reason.contains("at most")
                || error.reason.contains("invalid value")
                || error.reason.contains("not a duration")
                || error.reason.contains("is not a port"),
            "{field}: {}",
            error.reason
        );
    }
}

#[test]
fn durations_follow_the_gateway_api_grammar() {
    for (text, ms) in [
        ("0s", 0),
        ("500ms", 500),
        ("1h30m", 5_400_000),
        ("1h30m30s500ms", 5_430_500),
        ("00060m", 3_600_000),
        ("1s1s", 2_000),
    ] {
        assert_eq!(
            duration(text).unwrap(),
            std::time::Duration::from_millis(ms),
            "{text}"
        );
    }
    for text in [
        "1 day",
        "1d",
        "1.5s",
        "-1s",
        "10us",
        "1ns",
        "1h1m1s1ms1h",
        "123456s",
        "s",
        "",
        " 1s",
        "1S",
        "1h ",
    ] {
        assert!(duration(text).is_err(), "{text:?} must be refused");
    }
}

const AUTHZ: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: {app: api}
  ports: [8080]
  http: [{path: {type: PathPrefix, value: /api}, method: GET}]
  from:
  - identities: ["spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/ops/sa/*"]
  - namespaces: [monitoring]
    cidrs: [10.0.0.0/8]
  - unauthenticated: true
"#;

const DEFAULTS: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: InboundDefaults
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  mode: strict
  authorization: deny
  ports: [{port: 9090, authorization: all-unauthenticated}]
  rateLimit: {perIdentity: {requestsPerSecond: 10}}
"#;

#[test]
fn inbound_kinds_parse_and_each_error_names_the_field() {
    parse(AUTHZ).unwrap();
    parse(DEFAULTS).unwrap();
    let cases = [
        (
            AUTHZ.replace("sa/*", "sa/*x"),
            "AuthorizationPolicy shop/web: spec.from[0].identities[1]",
        ),
        (
            AUTHZ.replace("10.0.0.0/8", "10.0.0.0/33"),
            "AuthorizationPolicy shop/web: spec.from[1].cidrs[0]: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            AUTHZ.replace("- unauthenticated: true", "- {}"),
            "AuthorizationPolicy shop/web: spec.from[2]: set identities, namespaces, unauthenticated or cidrs",
        ),
        (
            AUTHZ.replace(
                "  - namespaces: [monitoring]",
                "  - unauthenticated: true\n    namespaces: [monitoring]",
            ),
            "AuthorizationPolicy shop/web: spec.from[1].unauthenticated: a source with identities or namespaces requires authentication",
        ),
        (
            AUTHZ.replace("ports: [8080]", "ports: [0]"),
            "AuthorizationPolicy shop/web: spec.ports[0]: 0 is not a port",
        ),
        (
            DEFAULTS.replace("mode: strict", "mode: lax"),
            "InboundDefaults shop/api: spec.mode: unknown variant `lax`, expected `strict` or `permissive`",
        ),
        (
            DEFAULTS.replace(
                "authorization: all-unauthenticated",
                "authorization: everyone",
            ),
            "InboundDefaults shop/api: spec.ports[0].authorization: unknown variant `everyone`, expected one of `deny`,",
        ),
        (
            DEFAULTS.replace("requestsPerSecond: 10", "requestsPerSecond: 0"),
            "InboundDefaults shop/api: spec.rateLimit.perIdentity.requestsPerSecond: 0 must be between 1 and 1000000",
        ),
    ];
    for (yaml, expected) in cases {
        let error = error(&yaml);
        assert!(
            error.starts_with(expected),
            "{error}\n  expected: {expected}"
        );
    }
    let empty_from = error(&AUTHZ.replace(
        "  from:\n  - identities: [\"spiffe://cluster.local/ns/shop/sa/web\", \"spiffe://cluster.local/ns/ops/sa/*\"]\n  - namespaces: [monitoring]\n    cidrs: [10.0.0.0/8]\n  - unauthenticated: true\n",
        "  from: []\n",
    ));
    assert!(
        empty_from.contains("spec.from: name at least one source"),
        "{empty_from}"
    );
}

#[test]
fn durations_are_parsed_once_and_kept_as_written() {
    let route = ROUTE.replace(
        "    backendRefs:",
        "    timeouts: {request: 90m, backendRequest: 1500ms}\n    backendRefs:",
    );
    let resource = parse(&route).unwrap();
    let Spec::HttpRoute(spec) = &resource.spec else {
        panic!("an HTTPRoute");
    };
    let timeouts = spec.rules[0].timeouts.as_ref().unwrap();
    let request = timeouts.request.as_ref().unwrap();
    assert_eq!(request.get(), std::time::Duration::from_secs(5400));
    assert_eq!(
        timeouts.backend_request.as_ref().unwrap().get(),
        std::time::Duration::from_millis(1500)
    );
    let json = resource.to_json(1);
    assert_eq!(
        json.pointer("/spec/rules/0/timeouts/request"),
        Some(&serde_json::json!("90m")),
        "shown back as the user wrote it"
    );
    assert_eq!(Resource::parse(&json, "stored").unwrap(), {
        let mut again = resource.clone();
        again.meta.resource_version = Some("1".to_string());
        again
    });
    let bad = route.replace("90m", "1 day");
    assert!(
        error(&bad).starts_with(
            "HTTPRoute shop/r: spec.rules[0].timeouts.request: \"1 day\" is not a duration"
        ),
        "{}",
        error(&bad)
    );
}

#[test]
fn kinds_written_as_strings_are_read_as_types_and_written_back_the_same() {
    let policy = r#"
apiVersion: policy.weft.io/v1alpha1
kind: ServicePolicy
metadata: {name: p, namespace: shop}
spec:
  targetRef: {kind: HTTPRoute, name: r}
  loadBalancer: {type: RoundRobin}
"#;
    for (yaml, pointers) in [
        (
            DEFAULTS,
            &[
                ("/spec/mode", "strict"),
                ("/spec/ports/0/authorization", "all-unauthenticated"),
            ][..],
        ),
        (
            policy,
            &[
                ("/spec/targetRef/kind", "HTTPRoute"),
                ("/spec/loadBalancer/type", "RoundRobin"),
            ][..],
        ),
        (
            ROUTE,
            &[("/spec/rules/0/matches/0/path/type", "RegularExpression")][..],
        ),
    ] {
        let resource = parse(yaml).unwrap();
        let json = resource.to_json(1);
        for (pointer, text) in pointers {
            assert_eq!(
                json.pointer(pointer),
                Some(&serde_json::json!(text)),
                "{pointer}"
            );
        }
        let mut again = Resource::parse(&json, "stored").unwrap();
        again.meta.resource_version = None;
        assert_eq!(again, resource);
    }
    let Spec::ServicePolicy(spec) = parse(policy).unwrap().spec else {
        panic!("a ServicePolicy");
    };
    assert_eq!(spec.target_ref.target_kind(), Kind::HttpRoute);
    assert_eq!(
        spec.load_balancer.unwrap().kind,
        LoadBalancerType::RoundRobin
    );
}

#[test]
fn weft_kinds_refuse_unknown_fields_so_a_typo_never_widens_a_policy() {
    let typo = AUTHZ.replace("http:", "htpp:");
    assert_ne!(typo, AUTHZ);
    assert_eq!(
        error(&typo),
        "AuthorizationPolicy shop/web: spec.htpp: unknown field; AuthorizationPolicy has no such field"
    );
    // What the API server sets is still accepted there.
    let from_cluster = AUTHZ.replacen(
        "metadata: {",
        "status: {}\nmetadata: {uid: 3c0f6a8e-1d2b-4c5d-9e8f-0a1b2c3d4e5f, generation: 2, ",
        1,
    );
    assert_ne!(from_cluster, AUTHZ);
    parse(&from_cluster).unwrap();
}

#[test]
fn a_mirror_fraction_is_honoured_as_a_whole_percent_or_refused() {
    let mirrored = |mirror: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{name: api}}]\n  rules:\n  - backendRefs: [{{name: api, port: 8080}}]\n    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow, port: 8080}}, {mirror}}}}}]\n"
        )
    };
    let route = parse(&mirrored("fraction: {numerator: 1, denominator: 10}")).unwrap();
    let Spec::HttpRoute(spec) = &route.spec else {
        panic!("not a route");
    };
    let mirror = spec.rules[0].filters[0].request_mirror.as_ref().unwrap();
    assert_eq!(mirror.percent(), Some(10));
    for (mirror, reason) in [
        (
            "fraction: {numerator: 1, denominator: 3}",
            "1/3 is not a whole percent",
        ),
        (
            "fraction: {numerator: 2, denominator: 1}",
            "must be a share between 0 and 1",
        ),
        (
            "percent: 5, fraction: {numerator: 5}",
            "set percent or fraction, not both",
        ),
    ] {
        let error = error(&mirrored(mirror));
        assert!(
            error.contains("requestMirror.fraction") && error.contains(reason),
            "{mirror}: {error}"
        );
    }
}

/// An HTTPRoute in the shape of the Gateway API's own examples: a parent port named by
/// `sectionName`, a query parameter match, a redirect and a rewrite Weft does not apply yet.
const ROUTE_WITH_REDIRECTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: store, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: api, sectionName: http}
  rules:
  - matches:
    - path: {type: PathPrefix, value: /old-shop}
      queryParams: [{type: Exact, name: region, value: eu}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /shop}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    backendRefs: [{name: api, port: 8080}]
"#;

#[test]
fn a_route_with_filters_weft_lacks_is_kept_whole_and_reported_not_served() {
    let doc: serde_json::Value = serde_saphyr::from_str(ROUTE_WITH_REDIRECTS).unwrap();
    let parsed = Resource::parse_reporting(&doc, "document 1").unwrap();
    // One line, naming the first filter Weft cannot apply and what that means for the route.
    assert_eq!(
        parsed.warnings,
        [
            "HTTPRoute shop/store: spec.rules[0].filters[0].type: \"RequestRedirect\" is not supported yet (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestMirror); the route is not served until it is (Accepted=False, UnsupportedValue)"
        ]
    );
    let (field, _) = parsed.resource.unsupported().unwrap();
    assert_eq!(field, "spec.rules[0].filters[0].type");
    // Kept as written, so nothing of the user's manifest is lost.
    let stored = parsed.resource.to_json(1);
    assert_eq!(
        stored["spec"]["rules"][0]["filters"][0]["requestRedirect"]["statusCode"],
        301
    );
    assert_eq!(
        stored["spec"]["rules"][1]["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"],
        "/v2"
    );
    assert_eq!(stored["spec"]["parentRefs"][0]["sectionName"], "http");

    // Without them the route is fully supported, and says nothing.
    let supported = ROUTE_WITH_REDIRECTS
        .replace("type: RequestRedirect", "type: RequestHeaderModifier")
        .replace(
            "requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /shop}, statusCode: 301}",
            "requestHeaderModifier: {set: [{name: x-region, value: eu}]}",
        )
        .replace("type: URLRewrite", "type: ResponseHeaderModifier")
        .replace(
            "urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}",
            "responseHeaderModifier: {remove: [server]}",
        );
    let doc: serde_json::Value = serde_saphyr::from_str(&supported).unwrap();
    let parsed = Resource::parse_reporting(&doc, "document 1").unwrap();
    assert_eq!(parsed.warnings, Vec::<String>::new());
    assert!(parsed.resource.unsupported().is_none());
}

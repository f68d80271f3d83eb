//! Discovery and traffic policy, end to end: `weftctl apply` → weft-control → discovery stream →
//! the client proxy's routing, retries, timeouts, balancing and circuit breaking.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_tests::client::grpc_client;
use weft_tests::echo::EchoRequest;
use weft_tests::eventually;
use weft_tests::mesh::ControlPlane;

use crate::CLIENT_ID;
use crate::cluster::{AUTHORITY, Cluster, SERVICES, load, load_until, share, split};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_and_changes_without_a_failed_request() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(&split(90, 10));
    let client = cluster.http();
    // Wait for the split to reach the proxy: the first request opens the watch.
    eventually("the split to apply", Duration::from_secs(10), || async {
        let before = cluster.v2.app.request_count();
        load(&client, 50, 5, "/", &[]).await;
        (cluster.v2.app.request_count() > before).then_some(())
    })
    .await;

    let (v1_before, v2_before) = (
        cluster.v1.app.request_count(),
        cluster.v2.app.request_count(),
    );
    let statuses = load(&client, 2000, 8, "/", &[]).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failures: {:?}",
        statuses.iter().filter(|s| **s != 200).count()
    );
    let v1 = cluster.v1.app.request_count() - v1_before;
    let v2 = cluster.v2.app.request_count() - v2_before;
    assert_eq!(v1 + v2, 2000);
    let v1_share = share(v1, 2000);
    assert!((87.0..=93.0).contains(&v1_share), "v1 got {v1_share:.1} %");

    // Change the split while requests are in flight: none may fail.
    let running = tokio::spawn({
        let client = client.clone();
        async move { load(&client, 1500, 8, "/", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.cp.apply_ok(&split(10, 90));
    let statuses = running.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed during the change"
    );
    let (v1_before, v2_before) = (
        cluster.v1.app.request_count(),
        cluster.v2.app.request_count(),
    );
    load(&client, 1000, 8, "/", &[]).await;
    let v2 = cluster.v2.app.request_count() - v2_before;
    let v1 = cluster.v1.app.request_count() - v1_before;
    let v2_share = share(v2, v1 + v2);
    assert!(
        (86.0..=94.0).contains(&v2_share),
        "after the change v2 got {v2_share:.1} %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routing_sends_canaries_to_v2() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop}
spec:
  parentRefs: [{name: api}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: api-v2, port: 8080}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-added, value: canary}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-route, value: canary}]}
  - backendRefs: [{name: api-v1, port: 8080}]
"#,
    );
    let client = cluster.http();
    let statuses = load(&client, 40, 4, "/", &[("x-canary", "true")]).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(cluster.v2.app.request_count(), 40);
    assert_eq!(cluster.v1.app.request_count(), 0);
    let response = client
        .send_with("GET", AUTHORITY, "/", Bytes::new(), &[("x-canary", "true")])
        .await
        .unwrap();
    assert_eq!(response.headers()["x-seen-header"], "canary");
    assert_eq!(response.headers()["x-route"], "canary");
    load(&client, 40, 4, "/", &[("x-canary", "false")]).await;
    assert_eq!(cluster.v1.app.request_count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_route_to_different_versions() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{name: api}]
  rules:
  - matches: [{method: {service: weft.test.echo.Echo, method: Unary}}]
    backendRefs: [{name: api-v2, port: 8080}]
  - backendRefs: [{name: api-v1, port: 8080}]
"#,
    );
    let mut client = grpc_client(cluster.client.outbound, AUTHORITY).await;
    for _ in 0..5 {
        let reply = client
            .unary(EchoRequest {
                message: "hi".into(),
                count: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.client_id, CLIENT_ID);
    }
    assert_eq!(cluster.v2.app.request_count(), 5);
    let mut stream = client
        .server_stream(EchoRequest {
            message: "s".into(),
            count: 3,
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    assert_eq!(cluster.v1.app.request_count(), 1);
}

fn retry_route(budget_ratio: f64, min_per_second: u32) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: retries, namespace: shop}}
spec:
  parentRefs: [{{name: api}}]
  rules:
  - backendRefs: [{{name: api-v1, port: 8080}}]
    retry: {{codes: [503], attempts: 3, backoff: 1ms}}
---
apiVersion: policy.weft.io/v1alpha1
kind: ServicePolicy
metadata: {{name: api, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: api}}
  retryBudget: {{ratio: {budget_ratio}, minRetriesPerSecond: {min_per_second}, window: 10s}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_flaky_upstream_within_their_budget() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(&retry_route(0.5, 10));
    let client = cluster.http();
    // Every fifth request the app serves fails: 20 %. One at a time, so a retry is the app's
    // next request, which succeeds: with several in flight, another request can take that turn
    // and a retry land on the next failing one, so whether all three attempts fail depends on
    // scheduling (about 0.8 % under a loaded machine, over the 0.5 % allowed).
    let statuses = load(&client, 1000, 1, "/flaky/5", &[]).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(share(ok, 1000) >= 99.5, "only {ok} of 1000 succeeded");
    let retries = cluster
        .client
        .metric("weft_route_retries_total{destination=\"shop/api:8080\",reason=\"status\",route=\"shop/retries\"}")
        .await
        .unwrap_or(0.0);
    assert!(retries >= 200.0, "{retries} retries for 20 % failures");

    // A POST with a small body (an HTTP/1 Content-Length) is kept and retried too.
    let mut ok = 0;
    for i in 0..200 {
        let body = Bytes::from(format!("order {i}"));
        let response = client
            .send("POST", AUTHORITY, "/flaky/5", body.clone())
            .await
            .unwrap();
        if response.status() == 200 {
            ok += 1;
            assert_eq!(response.body(), &body, "a retried body must arrive whole");
        }
    }
    assert!(ok >= 199, "only {ok} of 200 POSTs succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_budget_caps_retries() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(&retry_route(0.1, 1));
    let client = cluster.http();
    let started = Instant::now();
    // Half the requests fail: far more retries wanted than 10 % allows.
    load(&client, 1000, 4, "/flaky/2", &[]).await;
    let seconds = started.elapsed().as_secs_f64();
    let metric = |name: &str| {
        let proxy = &cluster.client;
        let name = name.to_string();
        async move {
            proxy
                .metric(&format!(
                    "{name}{{destination=\"shop/api:8080\",route=\"shop/retries\"}}"
                ))
                .await
                .unwrap_or(0.0)
        }
    };
    let requests = metric("weft_route_requests_total").await;
    let retries = cluster
        .client
        .metric("weft_route_retries_total{destination=\"shop/api:8080\",reason=\"status\",route=\"shop/retries\"}")
        .await
        .unwrap_or(0.0);
    let refused = metric("weft_route_retry_budget_exhausted_total").await;
    // The budget: 10 % of requests, plus 1/s over the 10 s window (its starting reserve) and
    // over the run.
    let allowed = 0.1 * requests + 1.0 * (10.0 + seconds);
    assert!(requests >= 1000.0);
    assert!(
        retries <= allowed.ceil() + 1.0,
        "{retries} retries for {requests} requests (allowed {allowed:.0})"
    );
    assert!(refused > 0.0, "the budget never said no");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_returns_504_long_before_the_upstream_answers() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: shop}
spec:
  parentRefs: [{name: api}]
  rules:
  - backendRefs: [{name: api-v1, port: 8080}]
    timeouts: {request: 200ms}
"#,
    );
    let client = cluster.http();
    // Open the watch first, so the measurement is of the timeout alone.
    client
        .send("GET", AUTHORITY, "/", Bytes::new())
        .await
        .unwrap();
    let started = Instant::now();
    let response = client
        .send("GET", AUTHORITY, "/sleep/2000", Bytes::new())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(
        response.headers()["weft-proxy-error"]
            .to_str()
            .unwrap()
            .contains("request timeout")
    );
    // A generous liveness bound: the upstream takes 2 s.
    assert!(
        elapsed < Duration::from_millis(1500),
        "504 after {elapsed:?}"
    );
}

const RESILIENT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: resilient, namespace: shop}
spec:
  parentRefs: [{name: api}]
  rules:
  - backendRefs: [{name: api, port: 8080}]
    retry: {codes: [502, 503], attempts: 3, backoff: 5ms}
---
apiVersion: policy.weft.io/v1alpha1
kind: ServicePolicy
metadata: {name: api, namespace: shop}
spec:
  targetRef: {name: api}
  retryBudget: {ratio: 1.0, minRetriesPerSecond: 50, window: 10s}
  circuitBreaker: {consecutiveFailures: 3, ejection: {base: 30s, max: 60s}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_under_load_fails_nothing() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(RESILIENT);
    let client = cluster.http();
    let running = tokio::spawn({
        let client = client.clone();
        async move { load(&client, 1500, 6, "/", &[]).await }
    });
    eventually(
        "traffic on both endpoints",
        Duration::from_secs(10),
        || async {
            (cluster.v1.app.request_count() > 20 && cluster.v2.app.request_count() > 20)
                .then_some(())
        },
    )
    .await;
    let (status, _, stderr) = cluster
        .cp
        .weftctl(&["delete", "workload", "api-2", "-n", "shop"]);
    assert!(status.success(), "{stderr}");
    let statuses = running.await.unwrap();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        failed, 0,
        "{failed} requests failed while an endpoint was removed"
    );
    let v2_after = cluster.v2.app.request_count();
    load(&client, 100, 4, "/", &[]).await;
    assert_eq!(
        cluster.v2.app.request_count(),
        v2_after,
        "the removed endpoint still gets traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_endpoint_under_load_fails_nothing_and_the_breaker_ejects_it() {
    let mut cluster = Cluster::start().await;
    cluster.cp.apply_ok(RESILIENT);
    let client = cluster.http();
    // Load runs until the breaker has acted, however fast the build: a fixed count could end
    // before the dead endpoint failed enough times.
    let stop = Arc::new(AtomicBool::new(false));
    let running = load_until(&client, 6, "/", stop.clone(), Duration::from_secs(60));
    eventually(
        "traffic on both endpoints",
        Duration::from_secs(10),
        || async {
            (cluster.v1.app.request_count() > 20 && cluster.v2.app.request_count() > 20)
                .then_some(())
        },
    )
    .await;
    cluster.v2.proxy.proc.kill9();
    let metric = "weft_endpoint_ejections_total{backend=\"shop/api:8080\",route=\"\"}";
    eventually(
        "the dead endpoint to be ejected",
        Duration::from_secs(30),
        || async { (cluster.client.metric(metric).await >= Some(1.0)).then_some(()) },
    )
    .await;
    // And some more load after the ejection.
    let served = cluster.v1.app.request_count();
    eventually(
        "more requests after the ejection",
        Duration::from_secs(30),
        || {
            let now = cluster.v1.app.request_count();
            async move { (now > served + 100).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let statuses = running.await.unwrap();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed after an endpoint died",
        statuses.len()
    );
    let ejected = cluster
        .client
        .metric("weft_endpoints_ejected{backend=\"shop/api:8080\",route=\"\"}")
        .await;
    assert_eq!(ejected, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_the_mirror_and_not_the_client() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirror, namespace: shop}
spec:
  parentRefs: [{name: api}]
  rules:
  - backendRefs: [{name: api-v1, port: 8080}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: api-v2, port: 8080}}
"#,
    );
    let client = cluster.http();
    let statuses = load(&client, 20, 2, "/", &[]).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(cluster.v1.app.request_count(), 20);
    eventually("every copy to arrive", Duration::from_secs(10), || {
        let mirrored = cluster.v2.app.request_count();
        async move { (mirrored == 20).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_kill_under_load_fails_nothing_and_loses_nothing() {
    let mut cluster = Cluster::start().await;
    cluster.cp.apply_ok(&split(50, 50));
    let client = cluster.http();
    load(&client, 20, 2, "/", &[]).await;
    let running = tokio::spawn({
        let client = client.clone();
        async move { load(&client, 1500, 6, "/", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.cp.kill9();
    let statuses = running.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed while the control plane was down"
    );
    cluster.cp.restart().await;
    let (status, listed, stderr) = cluster.cp.weftctl(&["get", "httproutes", "-n", "shop"]);
    assert!(status.success(), "{stderr}");
    assert!(listed.contains("split"), "{listed}");
    let (_, workloads, _) = cluster.cp.weftctl(&["get", "workloads", "-n", "shop"]);
    assert!(
        workloads.contains("api-1") && workloads.contains("api-2"),
        "{workloads}"
    );
    let (_, services, _) = cluster
        .cp
        .weftctl(&["get", "services", "-n", "shop", "-o", "json"]);
    assert!(services.contains("api-v2"), "{services}");
    // The proxy resynced: a change after the restart still applies.
    cluster.cp.apply_ok(&split(0, 100));
    eventually(
        "the post-restart change to apply",
        Duration::from_secs(20),
        || async {
            let before = cluster.v1.app.request_count();
            load(&client, 40, 4, "/", &[]).await;
            (cluster.v1.app.request_count() == before).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policy_is_refused_naming_the_field_and_nothing_changes() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    cp.apply_ok(SERVICES);
    cp.apply_ok(&split(90, 10));
    let cases = [
        ("a: [1, 2", "invalid YAML"),
        (
            "apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            "kind: unknown kind \"Deployment\"",
        ),
        (
            &split(90, 10).replace("name: api-v2", "name: api-v3") as &str,
            "HTTPRoute shop/split: spec.rules[0].backendRefs[1]: Service shop/api-v3 does not exist",
        ),
        (
            &split(0, 0),
            "HTTPRoute shop/split: spec.rules[0].backendRefs: weights are all zero",
        ),
        (
            &split(90, 10).replace(
                "- backendRefs",
                "- matches: [{path: {type: RegularExpression, value: \"[a-\"}}]\n    backendRefs",
            ),
            "HTTPRoute shop/split: spec.rules[0].matches[0].path.value: regular expression does not compile",
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: ServicePolicy\nmetadata: {name: p, namespace: shop}\nspec: {targetRef: {name: api}, circuitBreaker: {consecutiveFailures: 1, ejection: {base: 9223372036854775807s}}}\n",
            "ServicePolicy shop/p: spec.circuitBreaker.ejection.base: \"9223372036854775807s\" is not a duration",
        ),
        (
            "apiVersion: policy.weft.io/v1alpha1\nkind: ServicePolicy\nmetadata: {name: p, namespace: shop}\nspec: {targetRef: {name: api}, circuitBreaker: {consecutiveFailures: 1, ejection: {base: 99999h}}}\n",
            "ServicePolicy shop/p: spec.circuitBreaker.ejection.base: \"99999h\" must be between 1ms and 1h",
        ),
        (
            &split(90, 10).replace("weight: 90", "weight: 4294967295") as &str,
            "HTTPRoute shop/split: spec.rules[0].backendRefs[0].weight: 4294967295 must be between 0 and 1000000",
        ),
        (
            &split(90, 10).replace(
                "- backendRefs",
                "- timeouts: {request: 1 day}\n    backendRefs",
            ),
            "HTTPRoute shop/split: spec.rules[0].timeouts.request: \"1 day\" is not a duration",
        ),
    ];
    for (yaml, expected) in cases {
        let (status, _, stderr) = cp.apply(yaml);
        assert_eq!(status.code(), Some(1), "{yaml}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr:?}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    // Nothing stored changed: the route is the one applied first, at its first version.
    let (_, route, _) = cp.weftctl(&["get", "httproute", "split", "-n", "shop", "-o", "json"]);
    assert!(route.contains("\"weight\": 90"), "{route}");
    assert!(route.contains("\"resourceVersion\": \"2\""), "{route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_copied_from_a_cluster_applies_with_a_warning_for_what_weft_ignores() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    cp.apply_ok(SERVICES);
    // As `kubectl get httproute -o yaml` prints it: status, uid, generation, managedFields, the
    // other API server's resourceVersion, and a Gateway API field Weft does not implement.
    let from_cluster = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  creationTimestamp: "2026-11-30T10:00:00Z"
  generation: 2
  managedFields:
  - {apiVersion: gateway.networking.k8s.io/v1, manager: kubectl, operation: Update}
  name: copied
  namespace: shop
  resourceVersion: "4711"
  uid: 3c0f6a8e-1d2b-4c5d-9e8f-0a1b2c3d4e5f
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 8080}]
  rules:
  - backendRefs: [{group: "", kind: Service, name: api-v2, port: 8080, weight: 1}]
    sessionPersistence: {sessionName: shop, type: Cookie}
status:
  parents:
  - conditions: [{type: Accepted, status: "True", reason: Accepted, lastTransitionTime: "2026-11-30T10:00:01Z", message: ok}]
    controllerName: example.com/other
    parentRef: {name: api}
"#;
    let (status, stdout, stderr) = cp.apply(from_cluster);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "HTTPRoute shop/copied created");
    assert_eq!(
        stderr.trim(),
        "Warning: HTTPRoute shop/copied: unknown field \"spec.rules[0].sessionPersistence\", ignored"
    );
    let (_, route, _) = cp.weftctl(&["get", "httproute", "copied", "-n", "shop", "-o", "json"]);
    let route: serde_json::Value = serde_json::from_str(&route).expect("weftctl get -o json");
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"][0]["name"],
        "api-v2"
    );
    for dropped in ["status", "uid", "managedFields", "sessionPersistence"] {
        assert!(
            !route.to_string().contains(dropped),
            "{dropped} kept: {route}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_lists_proxies_with_their_applied_versions() {
    let cluster = Cluster::start().await;
    cluster
        .http()
        .send("GET", AUTHORITY, "/", Bytes::new())
        .await
        .unwrap();
    let status = eventually(
        "the client proxy to report its version",
        Duration::from_secs(10),
        || async {
            let (_, out, _) = cluster.cp.weftctl(&["proxy-status"]);
            out.lines()
                .any(|l| {
                    l.contains(CLIENT_ID)
                        && l.contains(AUTHORITY)
                        && l.split_whitespace()
                            .filter(|w| w.parse::<u64>().is_ok())
                            .count()
                            >= 2
                })
                .then_some(out)
        },
    )
    .await;
    let line = status.lines().find(|l| l.contains(AUTHORITY)).unwrap();
    let versions: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.parse::<u64>().is_ok())
        .collect();
    assert_eq!(
        versions[0], versions[1],
        "sent and applied versions differ: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_versions_conflict_and_watches_see_changes() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    cp.apply_ok(SERVICES);
    // Watch the Services while they change.
    let mut watch = std::process::Command::new(weft_tests::process::bin("weftctl"));
    watch
        .args(["--server", &cp.admin.to_string(), "--data-dir"])
        .arg(cp.data_dir())
        .args(["get", "services", "-n", "shop", "--watch"])
        .stdout(std::process::Stdio::piped());
    let mut watcher = watch.spawn().unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("APPLIED") && line.contains("shop/api-v1"))
    });
    // Give the watch a moment to start, then change api-v1 at its current version.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, current, _) = cp.weftctl(&["get", "service", "api-v1", "-n", "shop", "-o", "json"]);
    let current: serde_json::Value = serde_json::from_str(&current).unwrap();
    let version = current["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let updated = SERVICES
        .split("---")
        .nth(1)
        .unwrap()
        .replace(
            "namespace: shop}",
            &format!("namespace: shop, resourceVersion: \"{version}\"}}"),
        )
        .replace("8080", "8081");
    cp.apply_ok(&updated);
    // The same stale version again: a conflict, refused.
    let (status, _, stderr) = cp.apply(&updated.replace("8081", "8082"));
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("Aborted") && stderr.contains("changed since you read it"),
        "{stderr}"
    );
    let seen = lines.join().unwrap();
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(seen.is_some(), "the watch did not report the change");
}

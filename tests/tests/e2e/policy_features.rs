//! Every claimed policy feature, end to end: per-attempt timeouts, connect timeouts, peak-EWMA
//! and round-robin balancing, per-route circuit breaking, rate limits, partial mirroring, and a
//! snapshot a proxy rejects, as `weftctl proxy-status` shows it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_tests::apps::start_slow_echo_app;
use weft_tests::eventually;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::CLIENT_ID;
use crate::cluster::{AUTHORITY, Backend, Cluster, SERVICES, load, share};

fn route(name: &str, rule: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  parentRefs: [{{name: api, port: 8080}}]\n  rules:\n  - {rule}\n"
    )
}

fn policy(name: &str, target: &str, spec: &str) -> String {
    format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: ServicePolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  targetRef: {target}\n  {spec}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_gets_its_own_timeout() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(&route(
        "attempts",
        "backendRefs: [{name: api-v1, port: 8080}]\n    timeouts: {request: 10s, backendRequest: 200ms}\n    retry: {attempts: 2, backoff: 10ms}",
    ));
    let client = cluster.http();
    client
        .send("GET", AUTHORITY, "/", Bytes::new())
        .await
        .unwrap();
    let before = cluster.v1.app.request_count();
    let response = client
        .send("GET", AUTHORITY, "/sleep/2000", Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let reason = response.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(reason.contains("backend request timeout"), "{reason}");
    // Three attempts (the first and two retries) each ran out on its own.
    eventually(
        "the attempts to reach the app",
        Duration::from_secs(10),
        || {
            let attempts = cluster.v1.app.request_count() - before;
            async move { (attempts == 3).then_some(()) }
        },
    )
    .await;
    // Counted: two retries for running out of time, one 504 the proxy answered itself.
    let metrics = cluster.client.metrics().await;
    let value = |prefix: &str| weft_tests::mesh::metric_value(&metrics, prefix);
    assert_eq!(
        value(
            "weft_route_retries_total{destination=\"shop/api:8080\",reason=\"timeout\",route=\"shop/attempts\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        value("weft_outbound_errors_total{destination=\"shop/api:8080\",reason=\"timeout\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            "weft_http_responses_total{destination=\"shop/api:8080\",direction=\"outbound\",grpc_status=\"\",peer_identity=\"\",route=\"shop/attempts\",status_code=\"504\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // The backend saw three attempts, each cut short by its timeout.
    assert_eq!(
        value(
            "weft_backend_responses_total{backend=\"shop/api-v1:8080\",status_class=\"cancelled\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        value("weft_backend_response_duration_seconds_count{backend=\"shop/api-v1:8080\"}"),
        Some(4.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_gives_up_on_an_endpoint_that_never_accepts() {
    let cluster = Cluster::start().await;
    // A listener whose accept queue is full: further connections are never accepted.
    let stuck = tokio::net::TcpSocket::new_v4().unwrap();
    stuck.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stuck = stuck.listen(1).unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), socket.connect(stuck_addr)).await
        {
            fillers.push(stream);
        }
    }
    cluster.cp.apply_ok(&format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: stuck, namespace: shop}}\nspec: {{selector: {{app: stuck}}, ports: [{{port: 8080}}]}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: stuck-1, namespace: shop, labels: {{app: stuck}}}}\nspec: {{address: 127.0.0.1, proxyPort: {}, identity: \"spiffe://cluster.local/ns/shop/sa/api\"}}\n---\n{}",
        stuck_addr.port(),
        policy("stuck", "{name: stuck}", "connectTimeout: 300ms"),
    ));
    let client = cluster.http();
    let started = Instant::now();
    let response = client
        .send("GET", "stuck.shop:8080", "/", Bytes::new())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 502);
    let reason = response.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(reason.contains("TCP connect timed out"), "{reason}");
    // A generous liveness bound: without the policy the proxy waits 3 s.
    assert!(
        elapsed < Duration::from_millis(2500),
        "gave up after {elapsed:?}"
    );
    drop(stuck);
}

/// A cluster whose api-v2 answers 100 ms late.
async fn cluster_with_a_slow_endpoint() -> (ControlPlane, Backend, Backend, Proxy) {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    cp.apply_ok(SERVICES);
    let fast = Backend::start(&cp, "api-1", "v1").await;
    let slow_app = start_slow_echo_app(Duration::from_millis(100)).await;
    let slow = Backend::start_with(&cp, "api-2", "v2", slow_app).await;
    let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    (cp, fast, slow, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_less_to_a_slow_endpoint_and_round_robin_does_not() {
    let (cp, fast, slow, client) = cluster_with_a_slow_endpoint().await;
    let http = weft_tests::client::MeshClient::http1(client.outbound);
    load(&http, 400, 4, "/", &[]).await;
    let (to_fast, to_slow) = (fast.app.request_count(), slow.app.request_count());
    assert!(
        share(to_fast, to_fast + to_slow) >= 75.0,
        "peak-EWMA sent {to_slow} of {} to the slow endpoint",
        to_fast + to_slow
    );

    cp.apply_ok(&policy(
        "api",
        "{name: api}",
        "loadBalancer: {type: RoundRobin}",
    ));
    // Once the policy applies, round robin alternates, slow or not.
    eventually("round robin to apply", Duration::from_secs(20), || async {
        let (f, s) = (fast.app.request_count(), slow.app.request_count());
        load(&http, 20, 1, "/", &[]).await;
        let (df, ds) = (fast.app.request_count() - f, slow.app.request_count() - s);
        (df == 10 && ds == 10).then_some(())
    })
    .await;
    let (f, s) = (fast.app.request_count(), slow.app.request_count());
    load(&http, 200, 4, "/", &[]).await;
    let (df, ds) = (fast.app.request_count() - f, slow.app.request_count() - s);
    assert!(df.abs_diff(ds) <= 4, "round robin sent {df} and {ds}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_own_breaker_ejects_for_that_route_alone() {
    let cluster = Cluster::start().await;
    // /flaky/1 fails on every endpoint: its route's breaker ejects them, for it alone.
    cluster.cp.apply_ok(&format!(
        "{}---\n{}---\n{}",
        route(
            "flaky",
            "matches: [{path: {type: PathPrefix, value: /flaky}}]\n    backendRefs: [{name: api, port: 8080}]"
        ),
        route("rest", "backendRefs: [{name: api, port: 8080}]"),
        policy(
            "flaky",
            "{kind: HTTPRoute, name: flaky}",
            "circuitBreaker: {consecutiveFailures: 2, ejection: {base: 60s}}"
        ),
    ));
    let client = cluster.http();
    for _ in 0..20 {
        client
            .send("GET", AUTHORITY, "/flaky/1", Bytes::new())
            .await
            .unwrap();
    }
    let by_route = cluster
        .client
        .metric("weft_endpoint_ejections_total{backend=\"shop/api:8080\",route=\"shop/flaky\"}")
        .await;
    assert!(by_route >= Some(2.0), "{by_route:?}");
    assert_eq!(
        cluster
            .client
            .metric("weft_endpoint_ejections_total{backend=\"shop/api:8080\",route=\"\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
    // The other route still reaches both endpoints.
    let (v1, v2) = (
        cluster.v1.app.request_count(),
        cluster.v2.app.request_count(),
    );
    let statuses = load(&client, 100, 2, "/", &[]).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(cluster.v1.app.request_count() > v1 && cluster.v2.app.request_count() > v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answers_429_with_the_reason() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(&policy(
        "api",
        "{name: api}",
        "rateLimit: {requestsPerSecond: 5, burst: 5}",
    ));
    let client = cluster.http();
    let limited = eventually("the limit to apply", Duration::from_secs(20), || async {
        let mut limited = None;
        for _ in 0..20 {
            let response = client
                .send("GET", AUTHORITY, "/", Bytes::new())
                .await
                .unwrap();
            if response.status() == 429 {
                limited = Some(response);
            }
        }
        limited
    })
    .await;
    let reason = limited.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(reason.contains("rate limit of 5/s exceeded"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_mirror_copies_about_its_share() {
    let cluster = Cluster::start().await;
    cluster.cp.apply_ok(&route(
        "mirror",
        "backendRefs: [{name: api-v1, port: 8080}]\n    filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: api-v2, port: 8080}, percent: 25}",
    ));
    let client = cluster.http();
    eventually(
        "the mirror route to apply",
        Duration::from_secs(20),
        || async {
            load(&client, 20, 2, "/", &[]).await;
            (cluster.v2.app.request_count() > 0).then_some(())
        },
    )
    .await;
    let (v1, v2) = (
        cluster.v1.app.request_count(),
        cluster.v2.app.request_count(),
    );
    load(&client, 800, 4, "/", &[]).await;
    let sent = cluster.v1.app.request_count() - v1;
    assert_eq!(sent, 800);
    // Copies go on their own: wait until no more arrive.
    let mirrored = eventually("the copies to arrive", Duration::from_secs(10), || async {
        let before = cluster.v2.app.request_count();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = cluster.v2.app.request_count();
        (before == after).then_some(after - v2)
    })
    .await;
    // 25 % of 800 is 200; a binomial spread of ±5 σ is ±61.
    assert!(
        (140..=260).contains(&mirrored),
        "{mirrored} of 800 mirrored at 25 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_proxy_rejects_is_shown_by_proxy_status() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    cp.apply_ok(SERVICES);
    let _v1 = Backend::start(&cp, "api-1", "v1").await;
    let client = Proxy::start(
        &cp,
        ProxySpec::new(CLIENT_ID).env("WEFT_PROXY_MAX_ENDPOINTS", "1"),
    )
    .await;
    let http = weft_tests::client::MeshClient::http1(client.outbound);
    assert_eq!(
        http.send("GET", AUTHORITY, "/", Bytes::new())
            .await
            .unwrap()
            .status(),
        200
    );
    // A second endpoint: more than this proxy takes.
    let _v2 = Backend::start(&cp, "api-2", "v2").await;
    let status = eventually(
        "proxy-status to show the rejection",
        Duration::from_secs(20),
        || async {
            let (_, status, _) = cp.weftctl(&["proxy-status"]);
            status
                .lines()
                .any(|line| line.contains(AUTHORITY) && line.contains("rejected"))
                .then_some(status)
        },
    )
    .await;
    assert!(status.contains("WEFT_PROXY_MAX_ENDPOINTS"), "{status}");
    // The last good snapshot stays in force.
    assert_eq!(
        http.send("GET", AUTHORITY, "/", Bytes::new())
            .await
            .unwrap()
            .status(),
        200
    );
    let rejected = client
        .metric("weft_discovery_updates_total{result=\"rejected\"}")
        .await;
    assert!(rejected >= Some(1.0));
}

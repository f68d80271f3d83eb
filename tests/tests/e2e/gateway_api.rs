//! Routes in the shape of the Gateway API's own examples, applied off Kubernetes: what Weft
//! supports routes as written; what it does not yet is kept, warned of by field, and not served.
//! (Splits, path and header matches, timeouts, retries, header modifiers and mirrors have their
//! own tests in `policy` and `policy_features`.)

use std::time::Duration;

use bytes::Bytes;
use weft_tests::client::MeshClient;

use crate::cluster::{AUTHORITY, Backend, Cluster};

const MATCHES: &str = include_str!("../../fixtures/gateway-api/matches.yaml");
const REDIRECTS: &str = include_str!("../../fixtures/gateway-api/redirects.yaml");

/// Which backend served one request.
async fn served_by(
    cluster: &Cluster,
    client: &MeshClient,
    method: &str,
    path: &str,
) -> &'static str {
    let before = (
        cluster.v1.app.request_count(),
        cluster.v2.app.request_count(),
    );
    let response = client
        .send(method, AUTHORITY, path, Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{method} {path}");
    let counts = |b: &Backend| b.app.request_count();
    match (
        counts(&cluster.v1) - before.0,
        counts(&cluster.v2) - before.1,
    ) {
        (1, 0) => "v1",
        (0, 1) => "v2",
        // Not one request at one backend (a retry, a stray request): no answer.
        _ => "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_examples_route_as_written_or_are_reported_unsupported() {
    let cluster = Cluster::start().await;
    let client = cluster.http();
    let (status, stdout, stderr) = cluster.cp.apply(MATCHES);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "HTTPRoute shop/matches created");
    assert_eq!(
        stderr.trim(),
        "",
        "a fully supported route warns of nothing"
    );
    // Before the route, the Service spreads requests over both: ten in a row each way is the
    // route, not chance.
    weft_tests::eventually("the route to apply", Duration::from_secs(15), || async {
        for _ in 0..10 {
            if served_by(&cluster, &client, "GET", "/?region=eu").await != "v2"
                || served_by(&cluster, &client, "GET", "/").await != "v1"
            {
                return None;
            }
        }
        Some(())
    })
    .await;
    for (method, path, wanted) in [
        ("GET", "/?region=eu", "v2"),
        ("GET", "/?region=us", "v1"),
        ("POST", "/", "v2"),
        ("GET", "/", "v1"),
        ("GET", "/v/x", "v1"),
    ] {
        assert_eq!(
            served_by(&cluster, &client, method, path).await,
            wanted,
            "{method} {path}"
        );
    }

    // A redirect and a rewrite: applied (nothing of the manifest is lost), warned of by the
    // first field Weft cannot do, and not served by halves: /v/x still goes where it went.
    let (status, stdout, stderr) = cluster.cp.apply(REDIRECTS);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "HTTPRoute shop/redirects created");
    assert_eq!(
        stderr.trim(),
        "Warning: HTTPRoute shop/redirects: spec.rules[0].filters[0].type: \"RequestRedirect\" is not supported yet (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestMirror); the route is not served until it is (Accepted=False, UnsupportedValue)"
    );
    let (_, route, _) =
        cluster
            .cp
            .weftctl(&["get", "httproute", "redirects", "-n", "shop", "-o", "json"]);
    let route: serde_json::Value = serde_json::from_str(&route).expect("weftctl get -o json");
    assert_eq!(
        route["spec"]["rules"][0]["filters"][0]["requestRedirect"]["statusCode"],
        301
    );
    // Once a later change is served, the proxy's snapshot is one that holds the redirects
    // route too, if it were served.
    cluster
        .cp
        .apply_ok(&MATCHES.replace("value: eu", "value: asia"));
    weft_tests::eventually("the later change", Duration::from_secs(15), || async {
        (served_by(&cluster, &client, "GET", "/?region=asia").await == "v2").then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(served_by(&cluster, &client, "GET", "/v/x").await, "v1");
    }
}

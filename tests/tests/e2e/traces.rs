//! Traces through two proxies, exported over OTLP/gRPC to a real receiver; and the access log.

use bytes::Bytes;
use serde_json::Value;
use weft_tests::client::grpc_client;
use weft_tests::echo::EchoRequest;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};
use weft_tests::otlp::OtlpReceiver;

use crate::CLIENT_ID;
use crate::cluster::{API_ID, AUTHORITY, Cluster};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN_ID: &str = "00f067aa0ba902b7";

/// A GET of `path` through the client proxy with one header.
async fn get_with(
    cluster: &Cluster,
    path: &str,
    name: &str,
    value: &str,
) -> weft_tests::client::Collected {
    cluster
        .http()
        .send_with("GET", AUTHORITY, path, Bytes::new(), &[(name, value)])
        .await
        .unwrap()
}

/// One gRPC unary call through the client proxy to `api`, answered.
async fn grpc_unary(cluster: &Cluster) {
    let mut grpc = grpc_client(cluster.client.outbound, AUTHORITY).await;
    grpc.unary(EchoRequest {
        message: "hi".into(),
        count: 0,
    })
    .await
    .unwrap();
}

/// A receiver, and the cluster's proxies exporting to it at `sampling`.
async fn traced_cluster(sampling: &str) -> (OtlpReceiver, Cluster) {
    let receiver = OtlpReceiver::start().await;
    let cluster = Cluster::start_with_env(&[
        ("WEFT_PROXY_TRACE_ENDPOINT", &receiver.endpoint()),
        ("WEFT_PROXY_TRACE_SAMPLING", sampling),
    ])
    .await;
    (receiver, cluster)
}

fn the<'a>(spans: &'a [Value], kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|span| span["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_two_proxies_is_one_trace_continuing_the_apps() {
    // Nothing sampled by ratio: only what arrives sampled is recorded.
    let (receiver, cluster) = traced_cluster("0").await;
    let traceparent = format!("00-{TRACE_ID}-{APP_SPAN_ID}-01");
    let response = cluster
        .http()
        .send_with(
            "GET",
            AUTHORITY,
            "/orders?id=7",
            Bytes::new(),
            &[("traceparent", &traceparent), ("tracestate", "app=1")],
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let spans = receiver.trace(TRACE_ID, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = the(&spans, "client");
    let server = the(&spans, "server");
    // The app's span is the client span's parent; the client span the server span's.
    assert_eq!(client["parent_span_id"], APP_SPAN_ID);
    assert_eq!(server["parent_span_id"], client["span_id"]);
    for span in [client, server] {
        assert_eq!(span["service"], "weft-proxy");
        assert_eq!(span["name"], "GET");
        let attributes = &span["attributes"];
        assert_eq!(attributes["http.request.method"], "GET");
        assert_eq!(attributes["url.path"], "/orders");
        assert_eq!(attributes["http.response.status_code"], "200");
        assert_eq!(attributes["server.address"], "api.shop");
    }
    assert_eq!(client["attributes"]["weft.peer.identity"], API_ID);
    assert_eq!(client["attributes"]["weft.destination"], "shop/api:8080");
    assert!(
        client["attributes"]["weft.backend"]
            .as_str()
            .is_some_and(|b| !b.is_empty()),
        "{client:#}"
    );
    assert_eq!(server["attributes"]["weft.peer.identity"], CLIENT_ID);

    // The upstream app continues the same trace, under the server span, with the app's state.
    let seen = response.headers()["x-seen-traceparent"].to_str().unwrap();
    let server_span = server["span_id"].as_str().unwrap();
    assert_eq!(seen, format!("00-{TRACE_ID}-{server_span}-01"));

    // Unsampled by the caller: nothing recorded, the caller's decision passed on unchanged.
    let unsampled = format!("00-{}-{APP_SPAN_ID}-00", "a".repeat(32));
    let response = get_with(&cluster, "/", "traceparent", &unsampled).await;
    assert_eq!(response.headers()["x-seen-traceparent"], unsampled.as_str());
    // B3 (single header) is read and answered in kind.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let response = get_with(
        &cluster,
        "/",
        "b3",
        &format!("{b3_trace}-e457b5a2e4d86bd1-1"),
    )
    .await;
    let b3 = response.headers()["x-seen-b3"].to_str().unwrap();
    assert!(b3.starts_with(b3_trace) && b3.ends_with("-1"), "{b3}");
    let spans = receiver.trace(b3_trace, 2).await;
    assert_eq!(the(&spans, "client")["parent_span_id"], "e457b5a2e4d86bd1");
    assert!(
        receiver
            .spans()
            .iter()
            .all(|span| span["trace_id"] != "a".repeat(32)),
        "an unsampled request was recorded"
    );

    // A failed exchange: both sides mark their span an error, with the status as its type. A
    // span carries the request's attributes, not the tracing layer's extras.
    let failing_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let traceparent = format!("00-{failing_trace}-{APP_SPAN_ID}-01");
    let response = get_with(&cluster, "/flaky/1", "traceparent", &traceparent).await;
    assert_eq!(response.status(), 503);
    let spans = receiver.trace(failing_trace, 2).await;
    for span in [the(&spans, "client"), the(&spans, "server")] {
        assert_eq!(span["status"], 2, "error: {span:#}");
        let attributes = &span["attributes"];
        assert_eq!(attributes["http.response.status_code"], "503", "{span:#}");
        assert_eq!(attributes["error.type"], "503", "{span:#}");
        for extra in [
            "code.file.path",
            "thread.id",
            "thread.name",
            "busy_ns",
            "target",
        ] {
            assert!(attributes.get(extra).is_none(), "{extra} in {span:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_decision_are_sampled_by_ratio_and_grpc_spans_are_named_for_the_method()
{
    let (receiver, cluster) = traced_cluster("1").await;
    let response = cluster.get_ok("/").await;
    // A new trace begun by the client proxy, continued by the server's and passed to the app.
    let seen = response.headers()["x-seen-traceparent"].to_str().unwrap();
    let trace_id = seen.split('-').nth(1).unwrap().to_string();
    let spans = receiver.trace(&trace_id, 2).await;
    assert_eq!(the(&spans, "client")["parent_span_id"], "");
    assert_eq!(
        the(&spans, "server")["parent_span_id"],
        the(&spans, "client")["span_id"]
    );

    grpc_unary(&cluster).await;
    let span = weft_tests::eventually(
        "the gRPC call's spans",
        std::time::Duration::from_secs(20),
        || async {
            receiver.spans().into_iter().find(|span| {
                span["name"] == "weft.test.echo.Echo/Unary" && span["kind"] == "client"
            })
        },
    )
    .await;
    let attributes = &span["attributes"];
    assert_eq!(attributes["rpc.system"], "grpc");
    assert_eq!(attributes["rpc.service"], "weft.test.echo.Echo");
    assert_eq!(attributes["rpc.method"], "Unary");
    assert_eq!(attributes["rpc.grpc.status_code"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_receiver_down_traffic_flows_and_dropped_spans_are_counted() {
    // A port nothing listens on.
    let endpoint = format!("http://127.0.0.1:{}", weft_tests::free_port());
    let cluster = Cluster::start_with_env(&[
        ("WEFT_PROXY_TRACE_ENDPOINT", &endpoint),
        ("WEFT_PROXY_TRACE_SAMPLING", "1"),
    ])
    .await;
    for _ in 0..20 {
        cluster.get_ok("/").await;
    }
    let dropped = weft_tests::eventually(
        "spans to be counted as dropped",
        std::time::Duration::from_secs(30),
        || async {
            cluster
                .client
                .metric("weft_trace_spans_dropped_total{reason=\"export_failed\"}")
                .await
                .filter(|dropped| *dropped >= 20.0)
        },
    )
    .await;
    assert!(dropped >= 20.0);
    assert_eq!(
        cluster
            .client
            .metric("weft_trace_spans_exported_total")
            .await,
        Some(0.0)
    );
}

/// The access log's lines in `log` (a proxy's stdout and stderr together).
fn access_lines(log: &str) -> Vec<Value> {
    let whole = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
    whole
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("direction").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_with_every_field() {
    let cluster = Cluster::start_with_env(&[("WEFT_PROXY_ACCESS_LOG", "json")]).await;
    let response = cluster
        .http()
        .send("POST", AUTHORITY, "/orders?secret=1", Bytes::from("12345"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    grpc_unary(&cluster).await;

    let lines = weft_tests::eventually(
        "two access-log lines",
        std::time::Duration::from_secs(10),
        || async {
            let lines = access_lines(&cluster.client.proc.log());
            (lines.len() >= 2).then_some(lines)
        },
    )
    .await;
    let post = lines
        .iter()
        .find(|line| line["path"] == "/orders")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(post["direction"], "outbound");
    assert_eq!(post["authority"], AUTHORITY);
    assert_eq!(post["path"], "/orders", "the query is not logged");
    assert_eq!(post["protocol"], "1.1");
    assert_eq!(post["destination"], "shop/api:8080");
    assert_eq!(post["peer_identity"], API_ID);
    assert_eq!(post["status"], 200);
    assert_eq!(post["request_bytes"], 5);
    assert_eq!(post["response_bytes"], 5, "the echo app answers the body");
    assert!(post["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert!(post["timestamp"].is_string());
    assert!(post["route"].is_string() && post["backend"].is_string());
    assert!(!post.to_string().contains("secret"));
    let grpc = lines
        .iter()
        .find(|line| line["path"] == "/weft.test.echo.Echo/Unary")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(grpc["grpc_status"], 0);
    assert_eq!(grpc["protocol"], "2");

    // The server side logs the same requests, with the caller's identity.
    let served = weft_tests::eventually(
        "the server side's line",
        std::time::Duration::from_secs(10),
        || async {
            let mut lines = access_lines(&cluster.v1.proxy.proc.log());
            lines.extend(access_lines(&cluster.v2.proxy.proc.log()));
            lines.into_iter().find(|line| line["path"] == "/orders")
        },
    )
    .await;
    assert_eq!(served["direction"], "inbound");
    assert_eq!(served["peer_identity"], CLIENT_ID);
    assert_eq!(served["request_bytes"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_policy_sets_its_sampling_and_access_log_while_the_proxies_run() {
    // The proxies trace nothing by themselves and log nothing.
    let (receiver, cluster) = traced_cluster("0").await;
    let telemetry = |sampling: &str, log: bool| {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: ServicePolicy\nmetadata: {{name: api-telemetry, namespace: shop}}\nspec:\n  targetRef: {{name: api}}\n  telemetry: {{traceSampling: {sampling}, accessLog: {log}}}\n"
        )
    };
    // The trace the upstream app was handed, and whether it is sampled.
    let call = |path: &str| {
        let path = path.to_string();
        let cluster = &cluster;
        async move {
            let response = cluster.get_ok(&path).await;
            let seen = response.headers()["x-seen-traceparent"].to_str().unwrap();
            let parts: Vec<&str> = seen.split('-').collect();
            (parts[1].to_string(), parts[3] == "01")
        }
    };
    let (before, sampled) = call("/before").await;
    assert!(!sampled);
    cluster.cp.apply_ok(&telemetry("1", true));
    // The policy reaches the client proxy through discovery.
    let mut n = 0;
    let traced = weft_tests::eventually(
        "the policy to sample every request",
        std::time::Duration::from_secs(20),
        || {
            n += 1;
            let path = format!("/during-{n}");
            async move {
                let (trace_id, sampled) = call(&path).await;
                sampled.then_some((trace_id, path))
            }
        },
    )
    .await;
    receiver.trace(&traced.0, 2).await;
    let logged = weft_tests::eventually(
        "the sampled request's access-log line",
        std::time::Duration::from_secs(10),
        || async {
            access_lines(&cluster.client.proc.log())
                .into_iter()
                .find(|line| line["path"] == traced.1.as_str())
        },
    )
    .await;
    assert_eq!(logged["trace_id"], traced.0.as_str());
    unobserved(&cluster, &receiver, "/before", &before);

    // Turned off again: neither traced nor logged.
    cluster.cp.apply_ok(&telemetry("0", false));
    weft_tests::eventually(
        "the policy to stop sampling",
        std::time::Duration::from_secs(20),
        || async { (!call("/after").await.1).then_some(()) },
    )
    .await;
    let (quiet, _) = call("/quiet").await;
    // Lines and spans leave on threads of their own: give them time to land.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    unobserved(&cluster, &receiver, "/quiet", &quiet);
}

/// Neither logged by the client proxy nor traced.
fn unobserved(cluster: &Cluster, receiver: &OtlpReceiver, path: &str, trace_id: &str) {
    let lines = access_lines(&cluster.client.proc.log());
    assert!(
        lines.iter().all(|line| line["path"] != path),
        "{path} logged: {lines:#?}"
    );
    assert!(
        receiver
            .spans()
            .iter()
            .all(|span| span["trace_id"] != trace_id),
        "{path} traced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_traces_certify_and_admin_calls_but_not_watches() {
    weft_tests::init();
    let receiver = OtlpReceiver::start().await;
    let cp = ControlPlane::start_with("24h", &["--trace-endpoint", &receiver.endpoint()]).await;
    // A proxy asks for its certificate; an operator lists Services.
    let _proxy = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    let (status, _, stderr) = cp.weftctl(&["get", "services"]);
    assert!(status.success(), "{stderr}");
    let names = |spans: &[Value]| -> Vec<String> {
        spans
            .iter()
            .filter(|span| span["service"] == "weft-control")
            .map(|span| span["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let seen = weft_tests::eventually(
        "spans of Certify and of an admin call",
        std::time::Duration::from_secs(20),
        || async {
            let names = names(&receiver.spans());
            (names
                .iter()
                .any(|n| n == "weft.identity.v1.Identity/Certify")
                && names.iter().any(|n| n.starts_with("weft.admin.v1.Admin/")))
            .then_some(names)
        },
    )
    .await;
    assert!(
        seen.iter().all(|n| !n.starts_with("weft.discovery.")),
        "{seen:?}"
    );
    let certify = receiver
        .spans()
        .into_iter()
        .find(|span| span["name"] == "weft.identity.v1.Identity/Certify")
        .unwrap();
    assert_eq!(certify["kind"], "server");
    assert_eq!(certify["attributes"]["rpc.system"], "grpc");
    assert_eq!(certify["attributes"]["rpc.grpc.status_code"], "0");
}

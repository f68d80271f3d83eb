//! A proxy's admin endpoints beyond health and metrics: `/config` (shown by `weftctl
//! proxy-config`) and `/log-level`, changed while the proxy runs.

use bytes::Bytes;
use weft_tests::client::MeshClient;

use weft_tests::mesh::{Proxy, ProxySpec};

use crate::CLIENT_ID;
use crate::cluster::{API_ID, AUTHORITY, Cluster};

/// One request through the client proxy to `api`, answered.
async fn call_api(cluster: &Cluster) {
    cluster.get_ok("/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_config_shows_the_configuration_and_what_discovery_said_without_secrets() {
    let cluster = Cluster::start().await;
    call_api(&cluster).await;

    let admin = cluster.client.admin.to_string();
    let (status, stdout, stderr) = cluster.cp.weftctl(&["proxy-config", &admin]);
    assert!(status.success(), "{stderr}");
    let config: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(config["identity"], CLIENT_ID);
    assert_eq!(config["listeners"]["admin"], admin);
    let api = &config["discovery"]["outbound"][AUTHORITY];
    assert_eq!(api["state"], "found", "{config:#}");
    assert_eq!(api["service"], "shop/api:8080");
    let endpoints = api["backends"][0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert!(endpoints.iter().all(|e| e["identity"] == API_ID));
    // The token file is named, never read.
    let token = std::fs::read_to_string(&cluster.client.token).unwrap();
    assert!(!stdout.contains(token.trim()), "the join token leaked");

    // Anything that is not host:port is a pod, asked through the control plane: one line
    // naming what no connected proxy is.
    let (status, _, stderr) = cluster.cp.weftctl(&["proxy-config", "web-7d9c"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("matches pod/web-7d9c in namespace default"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_changes_while_the_proxy_runs() {
    let cluster = Cluster::start().await;
    let admin = cluster.client.admin;
    let call = |method: &'static str, body: &'static str| async move {
        let response = MeshClient::http1(admin)
            .send(method, &admin.to_string(), "/log-level", Bytes::from(body))
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body();
        (status, String::from_utf8_lossy(&body).trim().to_string())
    };
    let (status, filter) = call("GET", "").await;
    assert_eq!(status, 200);
    assert!(filter.contains("weft_proxy=debug"), "{filter}");
    assert_eq!(call("PUT", "warn,weft_proxy=info").await.0, 200);
    let (_, filter) = call("GET", "").await;
    assert!(
        filter.contains("weft_proxy=info") && filter.contains("warn"),
        "{filter}"
    );
    let (status, reason) = call("PUT", "weft_proxy=loud").await;
    assert_eq!(status, 400);
    assert!(
        reason.contains("\"weft_proxy=loud\" is not a log filter"),
        "{reason}"
    );
    // A refused filter changes nothing.
    let (_, after) = call("GET", "").await;
    assert_eq!(after, filter);

    // And the filter is the one in force: silent when off, speaking again when raised.
    assert_eq!(call("PUT", "off").await.0, 200);
    let quiet = cluster.client.proc.log().len();
    call_api(&cluster).await;
    call_api(&cluster).await;
    assert_eq!(cluster.client.proc.log().len(), quiet, "logged while off");
    assert_eq!(call("PUT", "trace").await.0, 200);
    call_api(&cluster).await;
    weft_tests::eventually(
        "the proxy to log again",
        std::time::Duration::from_secs(10),
        || async { (cluster.client.proc.log().len() > quiet).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let cluster = Cluster::start().await;
    let spec = ProxySpec::new(CLIENT_ID).env("WEFT_PROXY_LOG_FORMAT", "json");
    let proxy = Proxy::start(&cluster.cp, spec).await;
    let log = proxy.proc.log();
    // Whole lines only: the proxy may be writing the last one.
    let whole = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
    let lines: Vec<&str> = whole.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("weft-proxy started")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_counts_its_pushes_and_store_operations_and_the_proxy_its_watches() {
    let cluster = Cluster::start().await;
    cluster.get_ok("/").await;
    let value = |metrics: &str, prefix: &str| {
        weft_tests::mesh::metric_value(metrics, prefix).unwrap_or(0.0)
    };
    // Three proxies: each its mesh snapshot (pushed once it watches), the client api's.
    let metrics = weft_tests::eventually(
        "every proxy's mesh snapshot to be pushed",
        std::time::Duration::from_secs(10),
        || async {
            let metrics = weft_tests::client::http_get(cluster.cp.metrics, "/metrics")
                .await
                .map(|(_, body)| body)
                .unwrap_or_default();
            (value(
                &metrics,
                "weft_control_discovery_pushes_total{kind=\"mesh\"}",
            ) >= 3.0)
                .then_some(metrics)
        },
    )
    .await;
    let value = |prefix: &str| value(&metrics, prefix);
    assert!(
        value("weft_control_discovery_pushes_total{kind=\"outbound\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("weft_control_discovery_push_duration_seconds_count{kind=\"outbound\"}") >= 1.0,
        "{metrics}"
    );
    // The Services and Workloads were applied; the policy was listed at start.
    assert!(
        value("weft_control_store_operation_duration_seconds_count{operation=\"apply\"}") >= 3.0,
        "{metrics}"
    );
    assert!(
        value("weft_control_store_operation_duration_seconds_count{operation=\"list\"}") >= 1.0,
        "{metrics}"
    );
    let proxy = cluster.client.metrics().await;
    assert!(proxy.contains("\nweft_discovery_watches 1\n"), "{proxy}");
}

//! A real Prometheus scraping two proxies and the control plane, evaluating the chart's rules;
//! the dashboard's queries answered; `promtool check metrics` on every /metrics; label sets
//! that do not grow with what requests carry; and `weftctl stat` with and without a Prometheus.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use weft_tests::prometheus::{Prometheus, check_metrics};

use crate::cluster::{AUTHORITY, Cluster};

/// The Service the client proxy sends to, as its metrics name it.
const API: &str = "shop/api:8080";

fn chart_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/weft/files")
        .join(path)
}

/// The row named `name` of `weftctl stat -o json`'s output.
fn json_row(output: &str, name: &str) -> Value {
    output
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|row| row["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}: {output}"))
}

/// Whether `weftctl stat route`'s table has the API's default route with a success rate and
/// latencies.
fn shows_the_default_route(table: &str) -> bool {
    table
        .lines()
        .any(|l| l.starts_with(&format!("{API} default")) && l.contains('%') && l.contains("ms"))
}

/// Sends `total` requests to `path` through the client proxy, `per_second` at most, and
/// returns how many were answered 5xx.
async fn paced(cluster: &Cluster, path: &str, total: usize, per_second: u64) -> usize {
    let http = cluster.http();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
    let mut failed = 0;
    for _ in 0..total {
        tick.tick().await;
        let response = http
            .send("GET", AUTHORITY, path, Bytes::new())
            .await
            .unwrap();
        failed += usize::from(response.status().is_server_error());
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_stat_reads_the_proxies_themselves_without_a_prometheus() {
    let cluster = Cluster::start().await;
    // The control plane reads the proxies whose mesh watches are open: all three.
    weft_tests::eventually(
        "the three proxies to connect to discovery",
        Duration::from_secs(20),
        || async {
            let (_, stdout, _) = cluster.cp.weftctl(&["proxy-status"]);
            // A line per watch: a proxy is its identity and address.
            let connected: std::collections::HashSet<Vec<&str>> = stdout
                .lines()
                .filter(|l| l.starts_with("spiffe://"))
                .map(|l| l.split_whitespace().take(2).collect())
                .collect();
            (connected.len() == 3).then_some(())
        },
    )
    .await;
    // Three readers at once, each watching 2 s of a 6 s run in which each app fails every
    // tenth request it serves.
    let stat = |args: &[&str]| {
        let mut command = cluster.cp.weftctl_command();
        command.args(["stat", "--window", "2s"]).args(args);
        tokio::task::spawn_blocking(move || command.output().expect("weftctl runs"))
    };
    let services = stat(&["svc", "-n", "shop", "-o", "json"]);
    let routes = stat(&["route"]);
    let proxies = stat(&["pod"]);
    paced(&cluster, "/flaky/10", 600, 100).await;
    let text = |output: std::process::Output| {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let api = json_row(&text(services.await.unwrap()), API);
    let success = api["success_rate"].as_f64().unwrap();
    assert!((success - 0.90).abs() <= 0.04, "{api:#}");
    let rate = api["requests_per_second"].as_f64().unwrap();
    assert!((30.0..=150.0).contains(&rate), "{api:#}");
    assert!(api["p99_seconds"].as_f64().unwrap() >= api["p50_seconds"].as_f64().unwrap());

    let routes = text(routes.await.unwrap());
    assert!(routes.starts_with("ROUTE"), "{routes}");
    assert!(shows_the_default_route(&routes), "{routes}");
    // Each of the two server proxies, by what its app served.
    let proxies = text(proxies.await.unwrap());
    assert_eq!(
        proxies.lines().filter(|l| l.contains('%')).count(),
        2,
        "{proxies}"
    );
    let (status, _, stderr) = cluster.cp.weftctl(&["stat", "--window", "0s"]);
    assert!(
        !status.success() && stderr.contains("must be a positive duration"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_mesh_and_sees_the_rate_and_success_rate_it_was_given() {
    let cluster = Cluster::start().await;
    let prometheus = Prometheus::start(
        &[
            ("weft-proxy", cluster.client.admin),
            ("weft-proxy", cluster.v1.proxy.admin),
            ("weft-proxy", cluster.v2.proxy.admin),
            ("weft-control", cluster.cp.metrics),
        ],
        &[
            chart_file("prometheus/recording.yaml"),
            chart_file("prometheus/alerts.yaml"),
        ],
    )
    .await;
    weft_tests::eventually("every target scraped", Duration::from_secs(30), || async {
        (prometheus.value("sum(up)").await == Some(4.0)).then_some(())
    })
    .await;

    // 10 % of 500s: each app fails every tenth request it serves.
    let total = 600;
    let failed = paced(&cluster, "/flaky/10", total, 100).await;
    assert!((50..=70).contains(&failed), "{failed} of {total} failed");
    let rate = prometheus
        .value(&format!(
            "sum(rate(weft_http_requests_total{{direction=\"outbound\", destination=\"{API}\"}}[5s]))"
        ))
        .await
        .expect("a request rate");
    assert!(
        (50.0..=150.0).contains(&rate),
        "{rate} req/s, sent at 100 req/s"
    );

    // Every request counted once, by the proxy and then by Prometheus.
    let counted =
        format!("sum(weft_http_requests_total{{direction=\"outbound\", destination=\"{API}\"}})");
    weft_tests::eventually(
        "the last requests scraped",
        Duration::from_secs(10),
        || async { (prometheus.value(&counted).await == Some(total as f64)).then_some(()) },
    )
    .await;
    // The recording rule the dashboard and the burn-rate alerts read.
    let success = format!(
        "destination:weft_http_success:ratio_rate5m{{direction=\"outbound\", destination=\"{API}\"}}"
    );
    let expected = 1.0 - failed as f64 / total as f64;
    let ratio = weft_tests::eventually(
        "the success rate over the whole run",
        Duration::from_secs(15),
        || async {
            prometheus
                .value(&success)
                .await
                .filter(|ratio| (ratio - expected).abs() < 0.005)
        },
    )
    .await;
    assert!((ratio - 0.90).abs() <= 0.02, "success rate {ratio}");

    // The control plane counted the proxies' certificate requests by method and code.
    let certified = prometheus
        .value("sum(weft_control_grpc_requests_total{api=\"proxy\", method=\"Identity/Certify\", code=\"OK\"})")
        .await;
    assert!(certified.is_some_and(|n| n >= 3.0), "{certified:?}");

    // `weftctl stat` reads the same from Prometheus.
    let url = format!("http://{}", prometheus.addr);
    let stat = |args: &[&str]| {
        let mut all = vec!["stat"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--prometheus", &url, "--window", "5m"]);
        let (status, stdout, stderr) = cluster.cp.weftctl(&all);
        assert!(status.success(), "weftctl {all:?}: {stderr}");
        stdout
    };
    let api = json_row(&stat(&["svc", "-n", "shop", "-o", "json"]), API);
    let said = api["success_rate"].as_f64().unwrap();
    assert!((said - 0.90).abs() <= 0.02, "{api:#}");
    assert!(api["requests_per_second"].as_f64().unwrap() > 0.0);
    assert!(api["p99_seconds"].as_f64().unwrap() >= api["p50_seconds"].as_f64().unwrap());
    let table = stat(&["svc"]);
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with(API) && l.contains('%')),
        "{table}"
    );
    assert!(stat(&["svc", "-n", "elsewhere"]).contains("no traffic"));
    let routes = stat(&["route"]);
    assert!(shows_the_default_route(&routes), "{routes}");
    // A route's own success rate: the injected errors are its.
    let default_route = json_row(
        &stat(&["route", "-n", "shop", "-o", "json"]),
        &format!("{API} default"),
    );
    let said = default_route["success_rate"].as_f64().unwrap();
    assert!((said - 0.90).abs() <= 0.02, "{default_route:#}");
    let proxies = stat(&["pod"]);
    assert_eq!(
        proxies.lines().filter(|l| l.contains('%')).count(),
        2,
        "{proxies}"
    );
    for (args, says) in [
        (
            vec!["stat", "--prometheus", "https://prometheus"],
            "only http://",
        ),
        (
            vec!["stat", "--prometheus", &url, "--window", "1x"],
            "not a Prometheus duration",
        ),
        (
            vec!["stat", "--prometheus", "http://127.0.0.1:1"],
            "cannot connect",
        ),
    ] {
        let (status, _, stderr) = cluster.cp.weftctl(&args);
        assert!(
            !status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }

    // Every rule evaluates, and the alerts about health stay quiet on a healthy mesh.
    let groups = prometheus.rules().await;
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert!(rules.len() >= 19, "{} rules loaded", rules.len());
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule:#}");
    }
    let firing = |name: &str| {
        rules
            .iter()
            .any(|r| r["name"] == name && r["state"] != "inactive")
    };
    assert!(!firing("WeftNotReady") && !firing("WeftProxyConfigRejected"));
    assert_eq!(prometheus.value("min(weft_ready)").await, Some(1.0));

    // The dashboard's queries are valid, and its golden signals show the traffic.
    let board: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_file("grafana/weft.json")).unwrap())
            .unwrap();
    for panel in board["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$direction", "outbound")
                .replace("$destination", ".*");
            let result = prometheus
                .query(&expr)
                .await
                .unwrap_or_else(|| panic!("{}: refused: {expr}", panel["title"]));
            if [2, 3, 4, 5, 7, 9, 10, 11, 12].contains(&panel["id"].as_u64().unwrap()) {
                assert!(!result.is_empty(), "{}: no data: {expr}", panel["title"]);
            }
        }
    }

    // promtool's lint on every process's metrics, with traffic through them.
    for admin in [
        cluster.client.admin,
        cluster.v1.proxy.admin,
        cluster.v2.proxy.admin,
        cluster.cp.metrics,
    ] {
        let (_, metrics) = weft_tests::client::http_get(admin, "/metrics")
            .await
            .unwrap();
        check_metrics(&metrics).unwrap_or_else(|problems| panic!("{admin}: {problems}"));
    }
}

/// The metric series a /metrics text holds (sample lines, values left out).
fn series(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_distinct_paths_add_no_metric_series() {
    let cluster = Cluster::start().await;
    // Every label set this traffic can make, made once: on both backends.
    for _ in 0..100 {
        if cluster.v1.app.request_count() > 0 && cluster.v2.app.request_count() > 0 {
            break;
        }
        cluster.get_ok("/warm-up").await;
    }
    let before: Vec<Vec<String>> = vec![
        series(&cluster.client.metrics().await),
        series(&cluster.v1.proxy.metrics().await),
        series(&cluster.v2.proxy.metrics().await),
    ];
    let total = 100_000;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (http, next) = (cluster.http(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                let path = format!("/items/{n}?q={n}");
                let headers = [("x-request-id", path.as_str())];
                let response = http
                    .send_with("GET", AUTHORITY, &path, Bytes::new(), &headers)
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let after = [
        series(&cluster.client.metrics().await),
        series(&cluster.v1.proxy.metrics().await),
        series(&cluster.v2.proxy.metrics().await),
    ];
    for (before, after) in before.iter().zip(&after) {
        let new: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
        assert!(new.is_empty(), "new series: {new:#?}");
    }
}

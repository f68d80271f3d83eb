//! `weftctl tap`, `top` and `proxy-config POD` through the control plane, which calls the
//! proxies' tap APIs; and the tap API's refusal of every identity but the admins'.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use weft_api::client::ControlPlaneTarget;
use weft_api::tap::tap_client::TapClient;
use weft_api::tap::{ConfigRequest, Match, ObserveRequest};
use weft_certs::{ALPN_H2, CertStore, Credential, Identity, TrustAnchors};
use weft_tests::client::MeshClient;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::CLIENT_ID;
use crate::cluster::{API_ID, AUTHORITY, Cluster};

/// The pod the tapped client proxy says it runs in.
const POD: &str = "web-7d9f";
/// How long any one weftctl run may take: a liveness bound, not a measurement.
const WEFTCTL_BOUND: Duration = Duration::from_secs(60);

/// The cluster, and a client proxy that knows its pod's name.
async fn cluster_with_pod() -> (Cluster, Proxy) {
    let cluster = Cluster::start().await;
    let pod = Proxy::start(
        &cluster.cp,
        ProxySpec::new(CLIENT_ID).env("WEFT_POD_NAME", POD),
    )
    .await;
    // Ready is not yet known: the control plane knows a proxy once its mesh watch is open.
    weft_tests::eventually(
        "the pod's proxy to connect to discovery",
        Duration::from_secs(20),
        || async {
            let (_, stdout, _) = cluster.cp.weftctl(&["proxy-status"]);
            stdout.contains(POD).then_some(())
        },
    )
    .await;
    (cluster, pod)
}

/// Runs weftctl with `args` while `traffic` runs (stopped when weftctl exits); its exit code,
/// stdout and stderr.
async fn weftctl_during(
    cp: &ControlPlane,
    args: &[&str],
    traffic: impl FnOnce(Arc<AtomicBool>) -> tokio::task::JoinHandle<()>,
) -> (Option<i32>, String, String) {
    let mut command = tokio::process::Command::from(cp.weftctl_command());
    command
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn weftctl");
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(stop.clone());
    let output = tokio::time::timeout(WEFTCTL_BOUND, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("weftctl {args:?} did not end within {WEFTCTL_BOUND:?}"))
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// GETs `paths` in turn through `client` until `stop` (bounded by weftctl's own bound).
fn requests(
    client: MeshClient,
    paths: &'static [&'static str],
    headers: &'static [(&'static str, &'static str)],
) -> impl FnOnce(Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    move |stop| {
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + WEFTCTL_BOUND;
            'load: while tokio::time::Instant::now() < deadline {
                for path in paths {
                    if stop.load(Ordering::SeqCst) {
                        break 'load;
                    }
                    let _ = client
                        .send_with("GET", AUTHORITY, path, Bytes::new(), headers)
                        .await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_tap_streams_the_selected_proxies_requests_without_credentials() {
    let (cluster, pod) = cluster_with_pod().await;
    let client = MeshClient::http1(pod.outbound);
    let headers: &'static [(&str, &str)] = &[("authorization", "Bearer hunter2"), ("x-order", "7")];

    // The backends' inbound side, both proxies of sa/api merged: the caller's identity shown.
    let (code, stdout, stderr) = weftctl_during(
        &cluster.cp,
        &[
            "tap",
            "sa/api",
            "-n",
            "shop",
            "--path",
            "/tapped",
            "--max",
            "4",
            "--headers",
        ],
        requests(client.clone(), &["/tapped/x?secret=1", "/other"], headers),
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let of = |kind: &str| lines.iter().filter(|l| l.starts_with(kind)).count();
    assert_eq!(of("end "), 4, "{stdout}");
    assert!(of("req ") >= 4, "{stdout}");
    for line in lines.iter().filter(|l| l.starts_with("req ")) {
        assert!(line.contains(" dir=inbound "), "{line}");
        assert!(line.contains(" :path=/tapped/x "), "{line}");
        assert!(line.contains(&format!(" client={CLIENT_ID}")), "{line}");
        assert!(
            line.contains(&format!("proxy={API_ID} at 127.0.0.1")),
            "{line}"
        );
        assert!(line.contains(" x-order=7"), "{line}");
    }
    assert!(!stdout.contains("/other"), "{stdout}");
    // Never credentials, nor the query string.
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("secret"),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("end ") && l.contains(":status=200"))
    );
    // Inbound, the client is the peer (on `req`); there is no server identity to name.
    for line in lines.iter().filter(|l| l.starts_with("end ")) {
        assert!(!line.contains(" server="), "{line}");
    }

    // The client's outbound side by pod, as JSON.
    let (code, stdout, stderr) = weftctl_during(
        &cluster.cp,
        &["tap", POD, "-n", "shop", "--max", "2", "-o", "json"],
        requests(client.clone(), &["/json"], &[]),
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let requests_seen: Vec<&Value> = events.iter().filter(|e| e["type"] == "request").collect();
    assert!(!requests_seen.is_empty(), "{stdout}");
    for event in &requests_seen {
        assert_eq!(event["proxy"], format!("shop/{POD}"));
        assert_eq!(event["direction"], "outbound");
        assert_eq!(event["authority"], AUTHORITY);
        assert_eq!(event["destination"], "shop/api:8080");
    }
    let ends: Vec<&Value> = events.iter().filter(|e| e["type"] == "end").collect();
    assert_eq!(ends.len(), 2, "{stdout}");
    for end in ends {
        assert_eq!(end["status"], 200);
        assert_eq!(end["server"], API_ID);
        assert!(
            end["backend"].as_str().is_some_and(|b| !b.is_empty()),
            "{end}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_top_ranks_the_busiest_paths_and_proxy_config_reads_a_pod() {
    let (cluster, pod) = cluster_with_pod().await;
    let client = MeshClient::http1(pod.outbound);
    let (code, stdout, stderr) = weftctl_during(
        &cluster.cp,
        &[
            "top",
            &format!("pod/{POD}"),
            "-n",
            "shop",
            "--max",
            "30",
            "--duration",
            "50s",
        ],
        requests(client, &["/busy", "/busy", "/quiet"], &[]),
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "DIRECTION",
            "METHOD",
            "AUTHORITY",
            "PATH",
            "COUNT",
            "SUCCESS",
            "BEST",
            "WORST",
            "LAST"
        ]
    );
    assert_eq!(rows.len(), 3, "{stdout}");
    assert_eq!(
        rows[1][..4],
        ["outbound", "GET", AUTHORITY, "/busy"],
        "{stdout}"
    );
    assert_eq!(rows[2][3], "/quiet", "{stdout}");
    let count = |row: &Vec<&str>| row[4].parse::<u32>().unwrap();
    assert_eq!(count(&rows[1]) + count(&rows[2]), 30, "{stdout}");
    assert!(count(&rows[1]) > count(&rows[2]), "{stdout}");
    assert_eq!(rows[1][5], "100.00%");

    // One pod's configuration through the control plane.
    let (status, stdout, stderr) = cluster.cp.weftctl(&["proxy-config", POD, "-n", "shop"]);
    assert!(status.success(), "{stderr}");
    let config: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(config["identity"], CLIENT_ID, "{config:#}");
    assert_eq!(config["pod"], POD, "{config:#}");
    // Two proxies are sa/api: one must be chosen.
    let (status, _, stderr) = cluster
        .cp
        .weftctl(&["proxy-config", "sa/api", "-n", "shop"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("2 proxies match"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // And proxy-status says where each proxy is.
    let (_, stdout, _) = cluster.cp.weftctl(&["proxy-status"]);
    assert!(stdout.contains(POD), "{stdout}");
}

/// A client certificate of `identity` from the control plane's issuer, as `weftctl certs admin`
/// writes it into `dir`.
fn mint(cp: &ControlPlane, identity: Option<&str>, dir: &Path) -> (PathBuf, PathBuf) {
    let mut command = std::process::Command::new(weft_tests::process::bin("weftctl"));
    command
        .args(["certs", "admin", "--pki-dir"])
        .arg(cp.data_dir().join("pki"))
        .arg("--out")
        .arg(dir);
    if let Some(identity) = identity {
        command.args(["--identity", identity]);
    }
    let (status, _, stderr) = weft_tests::process::run(command);
    assert!(status.success(), "{stderr}");
    (dir.join("admin.pem"), dir.join("admin-key.pem"))
}

/// The tap API of `proxy` (of `identity`), called with the certificate in `cert`.
async fn tap_client(
    cp: &ControlPlane,
    proxy: &Proxy,
    identity: &str,
    (cert, key): &(PathBuf, PathBuf),
) -> TapClient<tonic::transport::Channel> {
    let anchors = TrustAnchors::from_pem(&std::fs::read(cp.trust_anchor()).unwrap()).unwrap();
    let certs = CertStore::new();
    certs.set(
        Credential::from_pem(&std::fs::read(cert).unwrap(), &std::fs::read(key).unwrap()).unwrap(),
    );
    let tls = weft_certs::client_config(&anchors, certs, &[ALPN_H2]).unwrap();
    let target = ControlPlaneTarget {
        addr: proxy.tap.to_string(),
        server_name: identity.parse::<Identity>().unwrap().dns_name(),
        tls: Arc::new(tls),
    };
    TapClient::new(target.channel().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_identities_may_tap_a_proxy() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = mint(&cluster.cp, None, &dir.path().join("admin"));
    let web = mint(&cluster.cp, Some(CLIENT_ID), &dir.path().join("web"));
    let proxy = &cluster.v1.proxy;

    // A workload's valid certificate is not an admin's: refused on both calls.
    let mut as_web = tap_client(&cluster.cp, proxy, API_ID, &web).await;
    let refused = as_web.observe(ObserveRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains(CLIENT_ID),
        "{}",
        refused.message()
    );
    let refused = as_web.config(ConfigRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // An admin's is served; a bad filter is named.
    let mut as_admin = tap_client(&cluster.cp, proxy, API_ID, &admin).await;
    let config = as_admin
        .config(ConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(config.json.contains(API_ID), "{}", config.json);
    let bad = as_admin
        .observe(ObserveRequest {
            r#match: Some(Match {
                direction: "sideways".to_string(),
                ..Match::default()
            }),
            ..ObserveRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("match.direction"),
        "{}",
        bad.message()
    );
    let mut events = as_admin
        .observe(ObserveRequest {
            limit: 1,
            ..ObserveRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Every request goes to one of two backends; send until this one has been seen.
    let seen = async {
        loop {
            let _ = cluster
                .http()
                .send("GET", AUTHORITY, "/", Bytes::new())
                .await;
            if let Ok(Ok(Some(event))) =
                tokio::time::timeout(Duration::from_millis(200), events.message()).await
            {
                return event;
            }
        }
    };
    let event = tokio::time::timeout(WEFTCTL_BOUND, seen).await.unwrap();
    assert!(event.event.is_some());

    // weftctl with the workload's certificate cannot reach the admin API's tap either.
    let (status, _, stderr) = cluster.cp.weftctl(&[
        "--admin-token-file",
        "/nonexistent",
        "--client-cert",
        web.0.to_str().unwrap(),
        "--client-key",
        web.1.to_str().unwrap(),
        "tap",
        "sa/api",
        "-n",
        "shop",
        "--max",
        "1",
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("Unauthenticated"), "{stderr}");

    // What does not exist is named.
    let (status, _, stderr) = cluster.cp.weftctl(&["tap", "pod/nope", "-n", "shop"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("NotFound") && stderr.contains("pod/nope in namespace shop"),
        "{stderr}"
    );
    let (status, _, stderr) = cluster.cp.weftctl(&["tap", "deploy/web"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("unknown kind"), "{stderr}");
}

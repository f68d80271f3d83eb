//! Trust that outlives a year: the issuer rotates under its anchor, and the anchor itself rotates
//! in three steps (bundle, switch, drop), each refused until every connected proxy has taken the
//! one before, and none losing a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use weft_api::client::ControlPlaneTarget;
use weft_api::discovery::WatchMeshRequest;
use weft_api::discovery::discovery_client::DiscoveryClient;
use weft_tests::client::MeshClient;
use weft_tests::eventually;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::{CLIENT_ID, HTTP_AUTHORITY, Mesh};

/// Requests sent one after another until stopped; counts the sent and the failed.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(outbound: std::net::SocketAddr) -> Self {
        let (stop, sent, failed) = (Arc::default(), Arc::default(), Arc::default());
        let (s, n, f): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let client = MeshClient::http1(outbound);
            let mut errors = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                n.fetch_add(1, Ordering::SeqCst);
                match client.send("GET", HTTP_AUTHORITY, "/", Bytes::new()).await {
                    Ok(response) if response.status() == 200 => {}
                    Ok(response) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{} {:?}", response.status(), response.headers()));
                    }
                    Err(error) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(error.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            errors
        });
        Self {
            stop,
            sent,
            failed,
            task,
        }
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.task.await.unwrap();
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            errors,
        )
    }
}

/// Runs `weftctl certs rotate-anchor` until it succeeds; on timeout, says why it last refused.
async fn next_rotation_step(cp: &ControlPlane, step: &str, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, stdout, stderr) = cp.weftctl(&["certs", "rotate-anchor"]);
        if status.success() {
            return stdout;
        }
        let (_, proxies, _) = cp.weftctl(&["proxy-status"]);
        assert!(
            tokio::time::Instant::now() < deadline,
            "{step} not allowed after {timeout:?}: {stderr}\n{proxies}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn anchors_in(cp: &ControlPlane) -> usize {
    std::fs::read_to_string(cp.trust_anchor())
        .unwrap()
        .matches("BEGIN CERTIFICATE")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_rotates_without_a_restart_and_old_leaves_stay_valid() {
    let mesh = Mesh::start("8s").await;
    let traffic = Traffic::start(mesh.client.outbound);
    let before = std::fs::read_to_string(mesh.cp.data_dir().join("pki/issuer.pem")).unwrap();
    let (status, stdout, stderr) = mesh.cp.weftctl(&["certs", "rotate-issuer"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("new issuer"), "{stdout}");
    let after = std::fs::read_to_string(mesh.cp.data_dir().join("pki/issuer.pem")).unwrap();
    assert_ne!(before, after);
    // Proxies get leaves of the new issuer as they renew; the old ones stay good meanwhile.
    let issuer = weft_certs::fingerprint(
        &rustls::pki_types::pem::PemObject::from_pem_slice(after.as_bytes()).unwrap(),
    );
    eventually(
        "both proxies to renew under the new issuer",
        Duration::from_secs(30),
        || {
            let (_, status, _) = mesh.cp.weftctl(&["proxy-status"]);
            let renewed = status.lines().filter(|line| line.contains(&issuer)).count();
            async move { (renewed >= 2).then_some(()) }
        },
    )
    .await;
    let (sent, failed, errors) = traffic.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(sent > 50, "only {sent} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_anchor_rotation_under_steady_traffic_loses_no_request() {
    let mesh = Mesh::start("8s").await;
    let cp = &mesh.cp;
    let traffic = Traffic::start(mesh.client.outbound);
    assert_eq!(anchors_in(cp), 1);

    // Step 1: the bundle of old and new anchors goes out.
    let (status, stdout, stderr) = cp.weftctl(&["certs", "rotate-anchor"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("step 1 of 3"), "{stdout}");
    assert_eq!(anchors_in(cp), 2);

    // A proxy that watches the mesh but never applies what it gets holds up the next step.
    let laggard = cp
        .credential("spiffe://cluster.local/ns/shop/sa/laggard")
        .await;
    let tls = weft_certs::client_config(&cp.anchors(), laggard, &[weft_certs::ALPN_H2]).unwrap();
    let target = ControlPlaneTarget {
        addr: cp.proxy_api.to_string(),
        server_name: "weft-control.weft.serviceaccount.identity.cluster.local".to_string(),
        tls: Arc::new(tls),
    };
    let mut discovery = DiscoveryClient::new(target.channel().await.unwrap());
    let stalled = discovery
        .watch_mesh(WatchMeshRequest::default())
        .await
        .unwrap();
    let (status, _, stderr) = cp.weftctl(&["certs", "rotate-anchor"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("laggard") && stderr.contains("trust bundle"),
        "{stderr}"
    );
    drop(stalled);
    drop(discovery);

    // Step 2, once every proxy has the bundle: the issuer moves to the new anchor.
    let stdout = next_rotation_step(cp, "step 2", Duration::from_secs(30)).await;
    assert!(stdout.contains("step 2 of 3"), "{stdout}");

    // Step 3, once every proxy holds a leaf of the new issuer: the old anchor goes.
    let stdout = next_rotation_step(cp, "step 3", Duration::from_secs(40)).await;
    assert!(stdout.contains("step 3 of 3"), "{stdout}");
    assert_eq!(anchors_in(cp), 1);

    // Traffic crossed the whole rotation, and a proxy started now trusts only the new anchor.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, failed, errors) = traffic.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(sent > 100, "only {sent} requests");
    let newcomer = Proxy::start(
        cp,
        ProxySpec::new(CLIENT_ID).route(HTTP_AUTHORITY, &mesh.server),
    )
    .await;
    let response = MeshClient::http1(newcomer.outbound)
        .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_key_moved_out_is_given_back_for_an_issuer_rotation() {
    weft_tests::init();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("anchor-key.pem");
    let cp = ControlPlane::start_with("24h", &["--anchor-key-out", key.to_str().unwrap()]).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the anchor key must be private");
    assert!(!cp.data_dir().join("pki/trust-anchor-key.pem").exists());

    let (status, _, stderr) = cp.weftctl(&["certs", "rotate-issuer"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("--anchor-key"), "{stderr}");
    let (status, stdout, stderr) = cp.weftctl(&[
        "certs",
        "rotate-issuer",
        "--anchor-key",
        key.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("new issuer"), "{stdout}");
    // Given once, never kept.
    assert!(!cp.data_dir().join("pki/trust-anchor-key.pem").exists());
    // Another anchor's key is refused, naming why.
    let other = weft_certs::TrustAnchor::generate(
        &weft_certs::TrustDomain::cluster_local(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let wrong = keys.path().join("wrong.pem");
    std::fs::write(&wrong, other.key_pem()).unwrap();
    let (status, _, stderr) = cp.weftctl(&[
        "certs",
        "rotate-issuer",
        "--anchor-key",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("not the key"), "{stderr}");
}

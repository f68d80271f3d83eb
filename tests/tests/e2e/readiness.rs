//! `/ready` tells whether the proxy holds a valid certificate; `/live` only that it runs.

use std::time::Duration;

use weft_tests::client::http_get;
use weft_tests::eventually;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::CLIENT_ID;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_a_certificate_ready_once_certified() {
    weft_tests::init();
    let mut cp = ControlPlane::start("24h").await;
    let token = cp.token_file(CLIENT_ID);
    cp.kill9();
    // The proxy starts while the control plane is down: alive, but not ready.
    let proxy = Proxy::spawn(&cp, &ProxySpec::new(CLIENT_ID).token(token));
    let admin = proxy.admin;
    eventually("/live to answer", Duration::from_secs(20), || async move {
        http_get(admin, "/live")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(
        http_get(admin, "/ready").await.map(|(status, _)| status),
        Some(503)
    );
    cp.restart().await;
    proxy.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_once_the_certificate_expires_ready_again_after_renewal() {
    weft_tests::init();
    let mut cp = ControlPlane::start("10s").await;
    let proxy = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    cp.kill9();
    let admin = proxy.admin;
    eventually(
        "/ready to turn 503 when the certificate expires",
        Duration::from_secs(30),
        || async move {
            http_get(admin, "/ready")
                .await
                .filter(|(status, _)| *status == 503)
        },
    )
    .await;
    // The expired certificate no longer proves anything: the proxy falls back to its token.
    cp.restart().await;
    proxy.wait_ready().await;
}

/// The classic sidecar's `postStart` hook: it holds the app back until `/ready` says 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_ready_returns_only_once_the_proxy_is_ready() {
    weft_tests::init();
    let mut cp = ControlPlane::start("24h").await;
    let token = cp.token_file(CLIENT_ID);
    cp.kill9();
    let proxy = Proxy::spawn(&cp, &ProxySpec::new(CLIENT_ID).token(token));
    let port = proxy.admin.port().to_string();
    let await_ready = |timeout: &str| {
        let mut command = std::process::Command::new(weft_tests::process::bin("weft-proxy"));
        command.args(["await-ready", "--admin-port", &port, "--timeout", timeout]);
        tokio::task::spawn_blocking(move || weft_tests::process::run(command))
    };

    let (status, _, stderr) = await_ready("1s").await.unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was not ready within 1s"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let waiting = await_ready("2m");
    cp.restart().await;
    let (status, _, stderr) = waiting.await.unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        http_get(proxy.admin, "/ready")
            .await
            .map(|(status, _)| status),
        Some(200)
    );
}

//! The control plane going away (kill -9) does not stop traffic; proxies reconnect when it is back.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_tests::client::MeshClient;
use weft_tests::eventually;
use weft_tests::mesh::{Proxy, ProxySpec};

use crate::{HTTP_AUTHORITY, Mesh};

const EXPIRY: &str = "weft_identity_cert_expiry_timestamp_seconds";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_control_plane_kill_and_proxies_reconnect() {
    let mut mesh = Mesh::start("10s").await;
    let client = MeshClient::http1(mesh.client.outbound);
    // A token issued before the crash must still work after it: tokens are in the store.
    let late_token_identity = "spiffe://cluster.local/ns/shop/sa/late";
    let late_token = mesh.cp.token_file(late_token_identity);

    let expiry_before = mesh.client.metric(EXPIRY).await.unwrap();
    mesh.cp.kill9();

    // Traffic keeps flowing while the control plane is gone.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let response = client
            .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent > 10);

    mesh.cp.restart().await;
    // Both proxies renew against the restarted control plane.
    for proxy in [&mesh.client, &mesh.server] {
        eventually(
            "a renewal after the restart",
            Duration::from_secs(40),
            || async {
                proxy
                    .metric(EXPIRY)
                    .await
                    .filter(|expiry| *expiry > expiry_before)
                    .map(|_| ())
            },
        )
        .await;
    }
    let response = client
        .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let spec = ProxySpec::new(late_token_identity).token(late_token);
    let late = Proxy::start(&mesh.cp, spec).await;
    assert!(late.metric(EXPIRY).await.is_some());
}

//! Certificates rotate under load without a failed request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_tests::client::MeshClient;
use weft_tests::mesh::{Proxy, ProxySpec};

use crate::{CLIENT_ID, HTTP_AUTHORITY, Mesh};

const EXPIRY: &str = "weft_identity_cert_expiry_timestamp_seconds";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_second_leaves_rotate_under_30s_of_continuous_traffic() {
    let mesh = Mesh::start("10s").await;
    // Without their tokens, the proxies can renew only by presenting their current certificate.
    std::fs::remove_file(&mesh.client.token).unwrap();
    std::fs::remove_file(&mesh.server.token).unwrap();
    let client = MeshClient::http1(mesh.client.outbound);
    let first_expiry = mesh.client.metric(EXPIRY).await.unwrap();
    let mut expiries = vec![first_expiry];

    let started = Instant::now();
    let mut sent = 0u32;
    // Bounded in time and count.
    while started.elapsed() < Duration::from_secs(30) && sent < 20_000 {
        let response = client.send("GET", HTTP_AUTHORITY, "/", Bytes::new()).await;
        let response = response
            .unwrap_or_else(|e| panic!("request {sent} failed after {:?}: {e}", started.elapsed()));
        assert_eq!(
            response.status(),
            200,
            "request {sent}: {:?}",
            response.headers()
        );
        sent += 1;
        if sent.is_multiple_of(50) {
            let expiry = mesh.client.metric(EXPIRY).await.unwrap();
            if expiries.last() != Some(&expiry) {
                expiries.push(expiry);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sent > 100, "only {sent} requests in 30s");
    // 30 s of 10 s leaves renewed at 60–70 % of their lifetime: at least three rotations.
    assert!(
        expiries.len() >= 4,
        "expected several rotations, saw expiries {expiries:?}"
    );
    assert!(expiries.windows(2).all(|w| w[1] > w[0]), "{expiries:?}");

    // By now the server's first certificate has long expired: a brand-new client proxy can only
    // connect if the server presents its rotated one on new handshakes.
    let late = Proxy::start(
        &mesh.cp,
        ProxySpec::new(CLIENT_ID).route(HTTP_AUTHORITY, &mesh.server),
    )
    .await;
    let response = MeshClient::http1(late.outbound)
        .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let renewals = mesh
        .server
        .metric("weft_identity_cert_requests_total{result=\"ok\"}")
        .await
        .unwrap();
    assert!(renewals >= 4.0, "server proxy renewed {renewals} times");
}

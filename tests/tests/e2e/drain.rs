//! SIGTERM drains: in-flight requests finish, then the proxy exits 0.

use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use weft_tests::client::MeshClient;
use weft_tests::mesh::{Proxy, ProxySpec};

use crate::{CLIENT_ID, HTTP_AUTHORITY, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let mut mesh = Mesh::start("24h").await;
    let client = MeshClient::http1(mesh.client.outbound);
    // Warm the connection so the slow request is the only one in flight at SIGTERM.
    assert_eq!(
        client
            .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
            .await
            .unwrap()
            .status(),
        200
    );

    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .send("GET", HTTP_AUTHORITY, "/sleep/1500", Bytes::new())
                .await
        }
    });
    weft_tests::eventually(
        "the slow request to reach the app",
        Duration::from_secs(10),
        || {
            let seen = mesh.app.request_count() >= 2;
            async move { seen.then_some(()) }
        },
    )
    .await;
    mesh.server.proc.signal(Signal::SIGTERM);
    mesh.client.proc.signal(Signal::SIGTERM);

    let response = slow.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        200,
        "in-flight request was cut: {:?}",
        response.headers()
    );
    for proxy in [&mut mesh.server, &mut mesh.client] {
        let status = proxy.proc.wait(Duration::from_secs(15)).await;
        assert_eq!(status.code(), Some(0), "{}", proxy.proc.log());
    }
    // Nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(mesh.server.inbound)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_endpoint_is_off_by_default_and_ends_the_proxy_when_on() {
    let mesh = Mesh::start("24h").await;
    let admin = MeshClient::http1(mesh.client.admin);
    let response = admin
        .send(
            "POST",
            &mesh.client.admin.to_string(),
            "/shutdown",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let spec = ProxySpec::new(CLIENT_ID).env("WEFT_PROXY_SHUTDOWN_ENDPOINT", "true");
    let mut job_sidecar = Proxy::start(&mesh.cp, spec).await;
    let admin = MeshClient::http1(job_sidecar.admin);
    let response = admin
        .send(
            "POST",
            &job_sidecar.admin.to_string(),
            "/shutdown",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(
        job_sidecar.proc.wait(Duration::from_secs(15)).await.code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_the_app_still_reaches_out_but_no_one_reaches_in() {
    weft_tests::init();
    let cp = weft_tests::mesh::ControlPlane::start("24h").await;
    let app = weft_tests::apps::start_echo_app().await;
    let server = Proxy::start(&cp, ProxySpec::new(crate::SERVER_ID).app_port(app.port)).await;
    let spec = ProxySpec::new(CLIENT_ID)
        .route(HTTP_AUTHORITY, &server)
        .app_port(app.port)
        .env("WEFT_PROXY_SHUTDOWN_GRACE", "4s");
    let mut client = Proxy::start(&cp, spec).await;

    client.proc.signal(Signal::SIGTERM);
    weft_tests::eventually("/ready to turn 503", Duration::from_secs(5), || async {
        let status = weft_tests::client::http_get(client.admin, "/ready").await;
        status
            .is_some_and(|(status, _)| status == 503)
            .then_some(())
    })
    .await;
    // The pod's own app, shutting down, still calls out: on new connections, for seconds.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let response = MeshClient::http1(client.outbound)
            .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
            .await
            .expect("outbound serves while draining");
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nobody new gets in.
    assert!(
        tokio::net::TcpStream::connect(client.inbound)
            .await
            .is_err(),
        "inbound still accepts while draining"
    );
    assert_eq!(
        client.proc.wait(Duration::from_secs(15)).await.code(),
        Some(0),
        "{}",
        client.proc.log()
    );
}

//! What a peer can make a proxy's inbound side hold, and for how long: connections per
//! identity, idle and old connections, connections outliving the peer's certificate; header
//! limits that agree on both hops; and refusals that count rather than flood the log.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use weft_tests::apps::start_echo_app;
use weft_tests::client::{MeshClient, peer_get, peer_h2};
use weft_tests::eventually;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::{CLIENT_ID, HTTP_AUTHORITY, Mesh, SERVER_ID};

const MALLORY: &str = "spiffe://cluster.local/ns/shop/sa/mallory";

/// A control plane, an app, and its proxy configured with `env`.
async fn server_with(
    leaf_lifetime: &str,
    env: &[(&str, &str)],
) -> (ControlPlane, Proxy, weft_tests::apps::App) {
    weft_tests::init();
    let cp = ControlPlane::start(leaf_lifetime).await;
    let app = start_echo_app().await;
    let mut spec = ProxySpec::new(SERVER_ID).app_port(app.port);
    for (name, value) in env {
        spec = spec.env(name, value);
    }
    let server = Proxy::start(&cp, spec).await;
    (cp, server, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_identity_holds_only_so_many_connections() {
    let (cp, server, _app) = server_with(
        "24h",
        &[("WEFT_PROXY_INBOUND_MAX_CONNECTIONS_PER_IDENTITY", "2")],
    )
    .await;
    let certs = cp.credential(MALLORY).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut sender = peer_h2(server.inbound, &cp.anchors(), certs.clone(), SERVER_ID)
            .await
            .unwrap();
        assert_eq!(peer_get(&mut sender, HTTP_AUTHORITY).await.unwrap(), 200);
        held.push(sender);
    }
    let third = match peer_h2(server.inbound, &cp.anchors(), certs.clone(), SERVER_ID).await {
        Ok(mut sender) => peer_get(&mut sender, HTTP_AUTHORITY).await.ok(),
        Err(_) => None,
    };
    assert_eq!(
        third, None,
        "a third connection of the same identity was served"
    );
    let refused = server
        .metric("weft_inbound_refused_total{reason=\"identity_connections\"}")
        .await;
    assert_eq!(refused, Some(1.0));
    // Another identity is not held back by it.
    let other = cp.credential(CLIENT_ID).await;
    let mut sender = peer_h2(server.inbound, &cp.anchors(), other, SERVER_ID)
        .await
        .unwrap();
    assert_eq!(peer_get(&mut sender, HTTP_AUTHORITY).await.unwrap(), 200);
    // A connection that closes gives its place back.
    held.clear();
    eventually("a freed place", Duration::from_secs(10), || {
        let (anchors, certs) = (cp.anchors(), certs.clone());
        async move {
            let mut sender = peer_h2(server.inbound, &anchors, certs, SERVER_ID)
                .await
                .ok()?;
            (peer_get(&mut sender, HTTP_AUTHORITY).await.ok()? == 200).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_old_connections_close_and_traffic_goes_on() {
    let (cp, server, _app) = server_with(
        "24h",
        &[
            ("WEFT_PROXY_INBOUND_IDLE_TIMEOUT", "1s"),
            ("WEFT_PROXY_INBOUND_MAX_CONNECTION_AGE", "3s"),
        ],
    )
    .await;
    let certs = cp.credential(MALLORY).await;
    let mut idle = peer_h2(server.inbound, &cp.anchors(), certs.clone(), SERVER_ID)
        .await
        .unwrap();
    assert_eq!(peer_get(&mut idle, HTTP_AUTHORITY).await.unwrap(), 200);
    eventually(
        "the idle connection to close",
        Duration::from_secs(10),
        || {
            let closed = idle.is_closed();
            async move { closed.then_some(()) }
        },
    )
    .await;

    // Busy, it still ends at its maximum age; a client proxy just opens another, losing nothing.
    let client = Proxy::start(
        &cp,
        ProxySpec::new(CLIENT_ID).route(HTTP_AUTHORITY, &server),
    )
    .await;
    let app = MeshClient::http1(client.outbound);
    let until = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < until {
        let response = app
            .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connections = server
        .metric("weft_tcp_connections_total{direction=\"inbound\",protocol=\"http2\"}")
        .await
        .unwrap_or_default();
    assert!(
        connections >= 3.0,
        "{connections} connections in 7 s of a 3 s age"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_the_peers_certificate_expires() {
    let (cp, server, _app) = server_with("6s", &[]).await;
    let certs = cp.credential(MALLORY).await;
    let expiry = certs.current().unwrap().not_after;
    let mut sender = peer_h2(server.inbound, &cp.anchors(), certs, SERVER_ID)
        .await
        .unwrap();
    assert_eq!(peer_get(&mut sender, HTTP_AUTHORITY).await.unwrap(), 200);
    eventually(
        "the connection to end with the certificate",
        Duration::from_secs(20),
        || {
            let closed = sender.is_closed();
            async move { closed.then_some(()) }
        },
    )
    .await;
    // Not before it: the certificate was good for seconds after the first request.
    assert!(std::time::SystemTime::now() + Duration::from_millis(500) >= expiry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_as_large_as_the_app_side_takes_cross_both_hops() {
    let mesh = Mesh::start("24h").await;
    let app = MeshClient::http1(mesh.client.outbound);
    let large = "x".repeat(60 * 1024);
    let response = app
        .send_with(
            "GET",
            HTTP_AUTHORITY,
            "/",
            Bytes::new(),
            &[("x-large", &large)],
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let too_large = "x".repeat(70 * 1024);
    let response = app
        .send_with(
            "GET",
            HTTP_AUTHORITY,
            "/",
            Bytes::new(),
            &[("x-large", &too_large)],
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(mesh.app.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_connections_is_counted_not_logged() {
    let (cp, server, _app) = server_with("24h", &[("WEFT_PROXY_LOG", "info")]).await;
    let before = server.proc.log().lines().count();
    // Plaintext on a strict port, and TLS clients without a certificate.
    let tls = std::sync::Arc::new(
        weft_certs::client_config(
            &cp.anchors(),
            weft_certs::CertStore::new(),
            &[weft_certs::ALPN_WEFT],
        )
        .unwrap(),
    );
    let server_name = rustls::pki_types::ServerName::try_from(
        SERVER_ID
            .parse::<weft_certs::Identity>()
            .unwrap()
            .dns_name(),
    )
    .unwrap();
    for _ in 0..100 {
        let mut tcp = tokio::net::TcpStream::connect(server.inbound)
            .await
            .unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let tcp = tokio::net::TcpStream::connect(server.inbound)
            .await
            .unwrap();
        if let Ok(mut stream) = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(server_name.clone(), tcp)
            .await
        {
            let _ = stream.write_all(b"weft/tcp\nhello").await;
        }
    }
    eventually(
        "the refusals to be counted",
        Duration::from_secs(20),
        || async {
            let plaintext = server
                .metric("weft_inbound_refused_total{reason=\"plaintext\"}")
                .await;
            let no_certificate = server
                .metric("weft_tls_handshake_failures_total{direction=\"inbound\",reason=\"certificate\"}")
                .await;
            (plaintext >= Some(100.0) && no_certificate >= Some(100.0)).then_some(())
        },
    )
    .await;
    let after = server.proc.log().lines().count();
    assert!(
        after - before <= 5,
        "{} log lines for 200 refused peers",
        after - before
    );
}

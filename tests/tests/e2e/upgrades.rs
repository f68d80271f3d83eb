//! HTTP/1.1 upgrades through the mesh: a real WebSocket exchange (tokio-tungstenite on both
//! ends) through two proxies, messages flowing both ways, the client's identity reaching the
//! server's proxy like any request's.

use std::time::Duration;

use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};
use weft_tests::websocket::{GREETING, exchange, start_websocket_echo};

use crate::{CLIENT_ID, SERVER_ID};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_works_through_two_proxies() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let echo = start_websocket_echo("127.0.0.1:0").await;
    let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(echo.port)).await;
    let client = Proxy::start(
        &cp,
        ProxySpec::new(CLIENT_ID).route("chat.shop:80", &server),
    )
    .await;
    for _ in 0..2 {
        let received = exchange(client.outbound, "chat.shop:80", &["one", "two"]).await;
        assert_eq!(received, [GREETING, "echo: one", "echo: two"]);
    }
    // The upgrade was authorized and counted on the server side as the client's request.
    let allowed = server
        .metric("weft_inbound_authz_total{decision=\"allow\",policy=\"default:all-authenticated\"}")
        .await;
    assert!(allowed >= Some(2.0), "{allowed:?}");
}

/// An opaque stream from a raw peer holding `identity`'s certificate, its header sent, then
/// `bytes`; what the server proxy answers.
async fn raw_peer_exchange(
    cp: &ControlPlane,
    server: &Proxy,
    identity: &str,
    bytes: &[u8],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = cp.credential(identity).await;
    let mut tls = weft_tests::client::opaque_peer(server.inbound, &cp.anchors(), certs, SERVER_ID)
        .await
        .unwrap();
    tls.write_all(bytes).await.unwrap();
    // Until the connection closes, or (a refusal on a connection kept alive) the head is in.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk))
            .await
            .expect("an answer");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if text.contains("\r\n\r\n") && !text.contains("200 OK") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_leaves_http_inside_the_mesh() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let app = weft_tests::apps::start_echo_app().await;
    let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(app.port)).await;
    // A tunnel into the pod would carry anything past authorization: refused.
    let connect = raw_peer_exchange(
        &cp,
        &server,
        CLIENT_ID,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    // An h2c upgrade offer is dropped: the app gets a plain HTTP/1.1 request.
    let h2c = raw_peer_exchange(
        &cp,
        &server,
        CLIENT_ID,
        b"GET / HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(h2c.starts_with("http/1.1 200"), "{h2c}");
    assert!(h2c.contains("x-seen-upgrade: none"), "{h2c}");
    assert!(
        h2c.contains(&format!("x-seen-client-id: {CLIENT_ID}")),
        "{h2c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_ends_when_its_client_is_no_longer_allowed() {
    use futures_util::StreamExt;
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let echo = start_websocket_echo("127.0.0.1:0").await;
    let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(echo.port)).await;
    let allow = |who: &str| {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: chat-1, namespace: shop, labels: {{app: chat}}}}\nspec: {{address: 127.0.0.1, proxyPort: {inbound}, identity: \"{SERVER_ID}\"}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: chat-clients, namespace: shop}}\nspec:\n  selector: {{app: chat}}\n  from: [{{identities: [\"{who}\"]}}]\n",
            inbound = server.inbound.port(),
        )
    };
    cp.apply_ok(&allow(CLIENT_ID));
    let client = Proxy::start(
        &cp,
        ProxySpec::new(CLIENT_ID).route("chat.shop:80", &server),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://chat.shop:80/chat", tcp)
        .await
        .unwrap();
    let greeting = socket.next().await.unwrap().unwrap();
    assert_eq!(greeting.into_text().unwrap().as_str(), GREETING);
    // Another client only, from now on: the open WebSocket is cut.
    cp.apply_ok(&allow("spiffe://cluster.local/ns/shop/sa/cart"));
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket outlived its authorization");
}

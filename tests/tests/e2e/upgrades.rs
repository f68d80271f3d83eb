//! HTTP/1.1 upgrades through the mesh: a real WebSocket exchange (tokio-tungstenite on both
//! ends) through two proxies, messages flowing both ways, the client's identity reaching the
//! server's proxy like any request's.

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

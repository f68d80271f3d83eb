//! What the app speaks, and what reaches the inbound port besides requests: HTTP/2 without the
//! `weft-orig-proto` marker to an HTTP/1-only app, and plaintext clients whose first bytes are
//! garbage or nothing at all.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::apps::start_tcp_echo;
use weft_tests::client::{foreign_h2, peer_h2};
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::SERVER_ID;

/// An app that speaks HTTP/1 only (an HTTP/2 preface gets it to answer 400 and close), and
/// says which version each request came in.
async fn start_http1_only_app() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: http::Request<_>| async move {
                    let version = format!("{:?}", request.version());
                    let client = request
                        .headers()
                        .get("weft-client-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_string();
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("x-seen-version", version)
                            .header("x-seen-client-id", client)
                            .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_without_the_marker_reaches_an_http1_app_as_http1() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let (app, _task) = start_http1_only_app().await;
    let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(app.port())).await;
    let peer_id = "spiffe://cluster.local/ns/shop/sa/web";
    let certs = cp.credential(peer_id).await;
    // A Weft peer and a foreign one, both speaking HTTP/2 with no weft-orig-proto.
    let weft = peer_h2(server.inbound, &cp.anchors(), certs.clone(), SERVER_ID)
        .await
        .unwrap();
    let foreign = foreign_h2(server.inbound, &cp.anchors(), certs, SERVER_ID)
        .await
        .unwrap();
    for mut sender in [weft, foreign] {
        for _ in 0..3 {
            let request = http::Request::post("http://api.shop/x")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-seen-version"], "HTTP/1.1");
            assert_eq!(response.headers()["x-seen-client-id"], peer_id);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_garbage_and_silence_are_opaque_and_hold_up_nobody() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let echo = start_tcp_echo("127.0.0.1:0").await;
    let server = Proxy::start(
        &cp,
        ProxySpec::new(SERVER_ID)
            .app_port(echo.port)
            .env("WEFT_PROXY_DEFAULT_INBOUND_POLICY", "all-unauthenticated")
            .env("WEFT_PROXY_DETECT_TIMEOUT", "2s"),
    )
    .await;
    // A quiet client (server-first protocol): nothing sent.
    let mut quiet = TcpStream::connect(server.inbound).await.unwrap();
    // Meanwhile, 100 bytes of garbage: opaque at once, echoed by the app after its greeting.
    let garbage: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) | 0x80).collect();
    let mut noisy = TcpStream::connect(server.inbound).await.unwrap();
    noisy.write_all(&garbage).await.unwrap();
    let mut answer = vec![0u8; 6 + garbage.len()];
    tokio::time::timeout(Duration::from_secs(10), noisy.read_exact(&mut answer))
        .await
        .expect("the garbage client is answered while the quiet one waits")
        .unwrap();
    assert_eq!(&answer[..6], b"hello\n");
    assert_eq!(&answer[6..], &garbage[..]);
    // The quiet one gets the app's greeting once detection gives up, then its echo.
    let mut greeting = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(10), quiet.read_exact(&mut greeting))
        .await
        .expect("a server-first app greets a quiet client")
        .unwrap();
    assert_eq!(&greeting, b"hello\n");
    quiet.write_all(b"\x00late").await.unwrap();
    let mut late = [0u8; 5];
    quiet.read_exact(&mut late).await.unwrap();
    assert_eq!(&late, b"\x00late");

    // A client that stays silent past detection and then speaks HTTP (to slip a forged
    // weft-client-id past the stamping path) is cut off before the app reads a byte of it.
    let mut sly = TcpStream::connect(server.inbound).await.unwrap();
    let mut greeting = [0u8; 6];
    sly.read_exact(&mut greeting).await.unwrap();
    sly.write_all(
        b"GET / HTTP/1.1\r\nweft-client-id: spiffe://cluster.local/ns/shop/sa/admin\r\n\r\n",
    )
    .await
    .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sly.read_to_end(&mut rest))
        .await
        .expect("the connection is closed");
    assert!(
        rest.is_empty(),
        "the app echoed it: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let refused = server
        .metric("weft_inbound_refused_total{reason=\"not_http\"}")
        .await;
    assert_eq!(refused, Some(1.0));
    // Clients without an identity are counted together, their bytes as they pass.
    let metrics = server.metrics().await;
    let opened = weft_tests::mesh::metric_value(
        &metrics,
        "weft_tcp_peer_connections_opened_total{direction=\"inbound\",peer_identity=\"unauthenticated\"}",
    );
    assert_eq!(opened, Some(3.0), "{metrics}");
    let received = weft_tests::mesh::metric_value(
        &metrics,
        "weft_tcp_peer_bytes_total{direction=\"inbound\",flow=\"received\",peer_identity=\"unauthenticated\"}",
    );
    assert!(received >= Some(105.0), "{metrics}");
}

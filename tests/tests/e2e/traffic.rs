//! HTTP/1.1, HTTP/2 and gRPC through client proxy → mTLS → server proxy → app.

use std::time::Duration;

use bytes::Bytes;
use weft_tests::client::{MeshClient, grpc_client};
use weft_tests::echo::EchoRequest;

use crate::{CLIENT_ID, GRPC_AUTHORITY, HTTP_AUTHORITY, Mesh, SERVER_ID};

fn one_mib() -> Bytes {
    (0..1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_get_and_1mib_post_carry_the_caller_identity() {
    let mesh = Mesh::start("24h").await;
    let client = MeshClient::http1(mesh.client.outbound);

    let get = client
        .send("GET", HTTP_AUTHORITY, "/hello?x=1", Bytes::new())
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers()["x-seen-client-id"], CLIENT_ID);
    // The app is spoken to in the protocol its client used, with the authority it used.
    assert_eq!(get.headers()["x-seen-version"], "HTTP/1.1");
    assert_eq!(get.headers()["x-seen-host"], HTTP_AUTHORITY);
    assert_eq!(get.headers()["x-seen-path"], "/hello");

    let body = one_mib();
    let post = client
        .send("POST", HTTP_AUTHORITY, "/upload", body.clone())
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(post.headers()["x-seen-method"], "POST");
    assert_eq!(post.body().len(), body.len());
    assert!(post.body() == &body, "1 MiB body came back altered");

    // Both bodies counted on both sides: the 1 MiB up, the 1 MiB echoed back.
    let bytes = |metrics: &str, which: &str, direction: &str, destination: &str, peer: &str| {
        weft_tests::mesh::metric_value(
            metrics,
            &format!("weft_http_{which}_bytes_total{{destination=\"{destination}\",direction=\"{direction}\",peer_identity=\"{peer}\","),
        )
        .unwrap_or(0.0)
    };
    let mib = body.len() as f64;
    let app = format!("127.0.0.1:{}", mesh.app.port);
    weft_tests::eventually(
        "the bodies to be counted",
        Duration::from_secs(10),
        || async {
            let outbound = mesh.client.metrics().await;
            let inbound = mesh.server.metrics().await;
            let counted = [
                bytes(&outbound, "request", "outbound", HTTP_AUTHORITY, SERVER_ID),
                bytes(&outbound, "response", "outbound", HTTP_AUTHORITY, SERVER_ID),
                bytes(&inbound, "request", "inbound", &app, CLIENT_ID),
                bytes(&inbound, "response", "inbound", &app, CLIENT_ID),
            ];
            counted.iter().all(|counted| *counted >= mib).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_app_connections_share_one_http2_connection_between_the_proxies() {
    let mesh = Mesh::start("24h").await;
    let mut requests = Vec::new();
    for i in 0..16 {
        // A client each: 16 separate HTTP/1.1 connections from the app.
        let client = MeshClient::http1(mesh.client.outbound);
        requests.push(tokio::spawn(async move {
            client
                .send(
                    "GET",
                    HTTP_AUTHORITY,
                    &format!("/sleep/{}", 50 + i),
                    Bytes::new(),
                )
                .await
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    let opened = mesh
        .server
        .metric("weft_tcp_connections_total{direction=\"inbound\",protocol=\"http2\"}")
        .await;
    assert_eq!(
        opened,
        Some(1.0),
        "the client proxy should multiplex over one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_client_id_is_replaced_by_the_verified_one() {
    let mesh = Mesh::start("24h").await;
    let client = MeshClient::http1(mesh.client.outbound);
    let forged = [(
        "weft-client-id",
        "spiffe://cluster.local/ns/kube-system/sa/admin",
    )];
    let response = client
        .send_with("GET", HTTP_AUTHORITY, "/", Bytes::new(), &forged)
        .await
        .unwrap();
    assert_eq!(response.headers()["x-seen-client-id"], CLIENT_ID);
}

/// Names of the proxy's own headers as a CGI/WSGI/PHP app reads them (`HTTP_WEFT_CLIENT_ID`):
/// any case, `_` in place of `-`. None may reach the app but the one the proxy sets.
const SMUGGLED: [(&str, &str); 6] = [
    (
        "weft_client_id",
        "spiffe://cluster.local/ns/kube-system/sa/admin",
    ),
    (
        "WEFT_CLIENT_ID",
        "spiffe://cluster.local/ns/kube-system/sa/admin",
    ),
    (
        "Weft-Client_Id",
        "spiffe://cluster.local/ns/kube-system/sa/admin",
    ),
    ("weft_orig_proto", "HTTP/1.0"),
    ("weft-proxy-error", "forged"),
    ("WEFT-anything", "forged"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_headers_cannot_be_smuggled_in_any_spelling() {
    let mesh = Mesh::start("24h").await;
    let expected = format!("weft-client-id={CLIENT_ID}");
    for client in [
        MeshClient::http1(mesh.client.outbound),
        MeshClient::http2(mesh.client.outbound),
    ] {
        let response = client
            .send_with("GET", HTTP_AUTHORITY, "/", Bytes::new(), &SMUGGLED)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-seen-weft-headers"], expected.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_smuggle_the_proxys_headers_either() {
    let mesh = Mesh::start("24h").await;
    // A genuine peer of the trust domain speaking HTTP/2 straight to the inbound port, without
    // the client proxy that would have cleaned its request.
    let mallory = "spiffe://cluster.local/ns/shop/sa/mallory";
    let certs = mesh.cp.credential(mallory).await;
    let mut sender =
        weft_tests::client::peer_h2(mesh.server.inbound, &mesh.cp.anchors(), certs, SERVER_ID)
            .await
            .unwrap();
    let mut request = http::Request::builder()
        .uri(format!("http://{HTTP_AUTHORITY}/"))
        .header("weft-client-id", CLIENT_ID);
    for (name, value) in SMUGGLED {
        request = request.header(name.to_ascii_lowercase(), value);
    }
    let request = request.body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-seen-weft-headers"],
        format!("weft-client-id={mallory}").as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_passes_through_as_http2() {
    let mesh = Mesh::start("24h").await;
    let client = MeshClient::http2(mesh.client.outbound);
    for _ in 0..3 {
        let response = client
            .send("POST", HTTP_AUTHORITY, "/h2", Bytes::from_static(b"ping"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.headers()["x-seen-version"], "HTTP/2.0");
        assert_eq!(response.headers()["x-seen-client-id"], CLIENT_ID);
        assert_eq!(response.headers()["x-seen-host"], HTTP_AUTHORITY);
        assert_eq!(response.body().as_ref(), b"ping");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_trailers_pass_through() {
    let mesh = Mesh::start("24h").await;
    let mut client = grpc_client(mesh.client.outbound, GRPC_AUTHORITY).await;

    let reply = client
        .unary(EchoRequest {
            message: "hi".to_string(),
            count: 0,
        })
        .await
        .unwrap();
    assert_eq!(reply.metadata().get("x-echo").unwrap(), "yes");
    let reply = reply.into_inner();
    assert_eq!(reply.message, "hi");
    assert_eq!(reply.client_id, CLIENT_ID);

    // An error travels in the trailers, with its metadata.
    let status = client
        .unary(EchoRequest {
            message: "fail".to_string(),
            count: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "asked to fail");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "trailer-detail");

    let mut stream = client
        .server_stream(EchoRequest {
            message: "s".to_string(),
            count: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let mut indexes = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.client_id, CLIENT_ID);
        indexes.push(reply.index);
    }
    assert_eq!(indexes, (0..100).collect::<Vec<_>>());

    // Counted by gRPC status, from the trailers, on both sides.
    let by_grpc_status = |metrics: &str, direction: &str, peer: &str, code: &str| {
        // A static route is its destination's one route, `default`; inbound has none.
        let route = if direction == "outbound" {
            "default"
        } else {
            ""
        };
        weft_tests::mesh::metric_value(
            metrics,
            &format!(
                "weft_http_responses_total{{destination=\"{GRPC_AUTHORITY}\",direction=\"{direction}\",grpc_status=\"{code}\",peer_identity=\"{peer}\",route=\"{route}\",status_code=\"200\"}}"
            ),
        )
    };
    let outbound = weft_tests::eventually(
        "the streams to be counted",
        Duration::from_secs(10),
        || async {
            let metrics = mesh.client.metrics().await;
            (by_grpc_status(&metrics, "outbound", SERVER_ID, "0") == Some(2.0)).then_some(metrics)
        },
    )
    .await;
    assert_eq!(
        by_grpc_status(&outbound, "outbound", SERVER_ID, "9"),
        Some(1.0),
        "{outbound}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_authority_gets_a_502_naming_it_and_metrics_count_traffic() {
    let mesh = Mesh::start("24h").await;
    let client = MeshClient::http1(mesh.client.outbound);
    let response = client
        .send("GET", "nowhere.shop:8080", "/", Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.headers()["weft-proxy-error"],
        "no route to nowhere.shop:8080"
    );

    for _ in 0..5 {
        let ok = client
            .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    let outbound = mesh.client.metrics().await;
    let sent = weft_tests::mesh::metric_value(
        &outbound,
        &format!(
            "weft_http_requests_total{{destination=\"{HTTP_AUTHORITY}\",direction=\"outbound\",peer_identity=\"{}\",route=\"default\",status_class=\"2xx\"}}",
            SERVER_ID
        ),
    );
    assert_eq!(sent, Some(5.0), "{outbound}");
    let inbound = mesh.server.metrics().await;
    let received = weft_tests::mesh::metric_value(
        &inbound,
        &format!(
            "weft_http_requests_total{{destination=\"127.0.0.1:{}\",direction=\"inbound\",peer_identity=\"{CLIENT_ID}\",route=\"\",status_class=\"2xx\"}}",
            mesh.app.port
        ),
    );
    assert_eq!(received, Some(5.0), "{inbound}");
    assert!(inbound.contains("weft_http_request_duration_seconds_bucket"));
    assert!(
        inbound.contains("weft_tcp_open_connections{direction=\"inbound\"} 1"),
        "{inbound}"
    );
    assert!(inbound.contains("weft_identity_cert_expiry_timestamp_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_their_bytes_are_counted_by_peer_identity() {
    let Mesh {
        cp: _cp,
        app: _app,
        server,
        client,
    } = Mesh::start("24h").await;
    let caller = MeshClient::http1(client.outbound);
    let body = Bytes::from(vec![7u8; 4096]);
    for _ in 0..3 {
        let response = caller
            .send("POST", HTTP_AUTHORITY, "/", body.clone())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let peer_sample = |family: &str, direction: &str, peer: &str| {
        format!("{family}{{direction=\"{direction}\",peer_identity=\"{peer}\"}}")
    };
    let bytes_sample = |direction: &str, flow: &str, peer: &str| {
        format!(
            "weft_tcp_peer_bytes_total{{direction=\"{direction}\",flow=\"{flow}\",peer_identity=\"{peer}\"}}"
        )
    };
    // One multiplexed connection each way, named by the identity at its other end.
    let outbound = client.metrics().await;
    let value = |text: &str, sample: String| weft_tests::mesh::metric_value(text, &sample);
    let opened = "weft_tcp_peer_connections_opened_total";
    let open = "weft_tcp_peer_open_connections";
    assert_eq!(
        value(&outbound, peer_sample(opened, "outbound", SERVER_ID)),
        Some(1.0),
        "{outbound}"
    );
    assert_eq!(
        value(&outbound, peer_sample(open, "outbound", SERVER_ID)),
        Some(1.0),
        "{outbound}"
    );
    let sent = value(&outbound, bytes_sample("outbound", "sent", SERVER_ID)).unwrap_or(0.0);
    assert!(sent >= 3.0 * 4096.0, "{outbound}");
    let inbound = server.metrics().await;
    assert_eq!(
        value(&inbound, peer_sample(opened, "inbound", CLIENT_ID)),
        Some(1.0),
        "{inbound}"
    );
    let received = value(&inbound, bytes_sample("inbound", "received", CLIENT_ID)).unwrap_or(0.0);
    assert!(received >= 3.0 * 4096.0, "{inbound}");
    // The echo app sends the bodies back.
    let answered = value(&inbound, bytes_sample("inbound", "sent", CLIENT_ID)).unwrap_or(0.0);
    assert!(answered >= 3.0 * 4096.0, "{inbound}");

    // The client's proxy goes away: its connection is counted closed, and no longer open.
    drop(client);
    let closed = peer_sample(
        "weft_tcp_peer_connections_closed_total",
        "inbound",
        CLIENT_ID,
    );
    let still_open = peer_sample(open, "inbound", CLIENT_ID);
    weft_tests::eventually(
        "the server to count the connection closed",
        Duration::from_secs(20),
        || {
            let server = &server;
            let (closed, still_open) = (&closed, &still_open);
            async move {
                let text = server.metrics().await;
                let done = weft_tests::mesh::metric_value(&text, closed) == Some(1.0)
                    && weft_tests::mesh::metric_value(&text, still_open) == Some(0.0);
                done.then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_its_handshake_gets_a_502_not_a_hang() {
    weft_tests::init();
    let cp = weft_tests::mesh::ControlPlane::start("24h").await;
    // Accepts TCP, then never says a word.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_addr = stall.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = stall.accept().await {
            open.push(tcp);
        }
    });
    let mut spec = weft_tests::mesh::ProxySpec::new(CLIENT_ID);
    spec.routes.push(weft_tests::mesh::RouteSpec {
        authority: "stall.shop:80".to_string(),
        address: stall_addr,
        identity: SERVER_ID.to_string(),
        opaque: false,
    });
    let proxy = weft_tests::mesh::Proxy::start(&cp, spec).await;
    let mut requests = Vec::new();
    for _ in 0..3 {
        let client = MeshClient::http1(proxy.outbound);
        // MeshClient gives up after 20 s: a hang fails the test.
        requests.push(tokio::spawn(async move {
            client.send("GET", "stall.shop", "/", Bytes::new()).await
        }));
    }
    for request in requests {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), 502);
        let reason = response.headers()["weft-proxy-error"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(reason.contains("timed out"), "{reason}");
    }
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_the_expected_identity_is_not_sent_the_request() {
    let mesh = Mesh::start("24h").await;
    // A route that expects "db" at the address where "api" listens.
    let mut spec = weft_tests::mesh::ProxySpec::new(CLIENT_ID);
    spec.routes.push(weft_tests::mesh::RouteSpec {
        authority: "db.shop:5432".to_string(),
        address: mesh.server.inbound,
        identity: "spiffe://cluster.local/ns/shop/sa/db".to_string(),
        opaque: false,
    });
    let proxy = weft_tests::mesh::Proxy::start(&mesh.cp, spec).await;
    let response = MeshClient::http1(proxy.outbound)
        .send("GET", "db.shop:5432", "/", Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let reason = response.headers()["weft-proxy-error"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("not valid for name"), "{reason}");
    assert_eq!(mesh.app.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_long_lived_grpc_streams_to_one_endpoint_all_open() {
    let mesh = Mesh::start("24h").await;
    // One client connection from the app, one endpoint behind the server proxy: every stream
    // is open at once, well past one HTTP/2 connection's stream limit.
    let client = grpc_client(mesh.client.outbound, GRPC_AUTHORITY).await;
    let mut streams = Vec::new();
    for i in 0..1000 {
        let mut client = client.clone();
        streams.push(tokio::spawn(async move {
            let request = EchoRequest {
                message: format!("held {i}"),
                count: 0,
            };
            let mut stream = client.hold(request).await?.into_inner();
            let first = stream.message().await?;
            Ok::<_, tonic::Status>((first, stream))
        }));
    }
    let mut held = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let (first, stream) = tokio::time::timeout(Duration::from_secs(60), stream)
            .await
            .expect("every stream opens")
            .unwrap()
            .unwrap();
        let first = first.expect("a first message");
        assert_eq!(first.message, format!("held {i}"));
        assert_eq!(first.client_id, CLIENT_ID);
        held.push(stream);
    }
    let peer_connections = mesh
        .server
        .metric("weft_tcp_connections_total{direction=\"inbound\",protocol=\"http2\"}")
        .await
        .unwrap_or_default();
    assert!(
        peer_connections >= 5.0,
        "1000 streams need several connections, got {peer_connections}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_take_ipv6_as_well_as_ipv4_on_the_same_port() {
    let mesh = Mesh::start("24h").await;
    let v6 = |addr: std::net::SocketAddr| {
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
    };
    // The app reaches the client proxy's outbound on ::1; the request goes to the server
    // proxy's inbound on ::1 too.
    let mut spec = weft_tests::mesh::ProxySpec::new(CLIENT_ID);
    spec.routes.push(weft_tests::mesh::RouteSpec {
        authority: "v6.shop:80".to_string(),
        address: v6(mesh.server.inbound),
        identity: SERVER_ID.to_string(),
        opaque: false,
    });
    let proxy = weft_tests::mesh::Proxy::start(&mesh.cp, spec).await;
    for outbound in [proxy.outbound, v6(proxy.outbound)] {
        let response = MeshClient::http1(outbound)
            .send("GET", "v6.shop:80", "/both", Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "through {outbound}");
        assert_eq!(response.headers()["x-seen-client-id"], CLIENT_ID);
    }
    assert_eq!(mesh.app.request_count(), 2);
}

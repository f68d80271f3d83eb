//! What a caller can make the control plane or a proxy hold is bounded, and what is refused is
//! refused with a clear status.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Channel;
use weft_api::client::ControlPlaneTarget;
use weft_api::discovery::discovery_client::DiscoveryClient;
use weft_api::discovery::{OutboundSnapshot, WatchOutboundRequest};
use weft_tests::client::MeshClient;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec, metric_value};

use crate::CLIENT_ID;

/// A discovery client holding a certificate of `identity`, as a proxy would.
async fn discovery(cp: &ControlPlane, identity: &str) -> DiscoveryClient<Channel> {
    let certs = cp.credential(identity).await;
    let tls = weft_certs::client_config(&cp.anchors(), certs, &[weft_certs::ALPN_H2]).unwrap();
    let target = ControlPlaneTarget {
        addr: cp.proxy_api.to_string(),
        server_name: "weft-control.weft.serviceaccount.identity.cluster.local".to_string(),
        tls: Arc::new(tls),
    };
    DiscoveryClient::new(target.channel().await.unwrap())
}

async fn watch(
    client: &mut DiscoveryClient<Channel>,
    n: usize,
) -> Result<tonic::Streaming<OutboundSnapshot>, tonic::Status> {
    let request = WatchOutboundRequest {
        destination: format!("svc-{n}.shop:80"),
    };
    client
        .watch_outbound(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_watches_are_capped_per_identity_and_in_total() {
    weft_tests::init();
    let cp = ControlPlane::start_with(
        "24h",
        &["--max-watches-per-identity", "3", "--max-watches", "5"],
    )
    .await;
    let mut web = discovery(&cp, "spiffe://cluster.local/ns/shop/sa/web").await;
    let mut api = discovery(&cp, "spiffe://cluster.local/ns/shop/sa/api").await;
    let mut held = Vec::new();
    for n in 0..3 {
        held.push(watch(&mut web, n).await.unwrap());
    }
    let refused = watch(&mut web, 3).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("per identity"), "{refused:?}");
    for n in 0..2 {
        held.push(watch(&mut api, n).await.unwrap());
    }
    let refused = watch(&mut api, 2).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("in total"), "{refused:?}");

    // A watch that ends gives its place back.
    drop(held.remove(0));
    weft_tests::eventually("a freed watch", Duration::from_secs(10), || {
        let mut web = web.clone();
        async move { watch(&mut web, 9).await.ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_discovery_refused_is_not_asked_again_at_once() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    let app = MeshClient::http1(client.outbound);
    // A host name longer than any DNS name: the control plane refuses to watch it.
    let authority = format!("{}.example:80", "x".repeat(300));
    for _ in 0..5 {
        let response = app
            .send("GET", &authority, "/", Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
    }
    let metrics = weft_tests::client::http_get(cp.metrics, "/metrics")
        .await
        .unwrap()
        .1;
    let refused = metric_value(
        &metrics,
        "weft_control_discovery_watches_total{result=\"invalid\"}",
    );
    assert_eq!(refused, Some(1.0), "{metrics}");
}

/// Lets this process (and what it spawns) open as many files as the system allows it.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

const CONTROL_PLANE_NAME: &str = "weft-control.weft.serviceaccount.identity.cluster.local";

/// A TLS connection to `addr`, named `name`, from the loopback address `from`, with no client
/// certificate.
pub(crate) async fn tls_from(
    from: std::net::Ipv4Addr,
    addr: std::net::SocketAddr,
    name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((from, 0)))?;
    let tcp = socket.connect(addr).await?;
    let name =
        rustls::pki_types::ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(std::io::Error::other)?
}

const API_SERVICE: &str = "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {selector: {app: api}, ports: [{port: 8080}]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attackers_idle_connections_and_stream_flood_stop_no_proxy() {
    weft_tests::init();
    raise_fd_limit();
    let cp = ControlPlane::start_with(
        "6s",
        &[
            "--max-connections-per-ip",
            "500",
            "--certify-rate-per-ip",
            "1000",
        ],
    )
    .await;
    cp.apply_ok(API_SERVICE);
    let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    // The proxy watches api.shop:8080 from here on.
    let app = MeshClient::http1(client.outbound);
    app.send("GET", "api.shop:8080", "/", Bytes::new())
        .await
        .unwrap();

    // From another address: thousands of TLS connections that then say nothing…
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let tls = Arc::new(
        weft_certs::client_config(
            &cp.anchors(),
            weft_certs::CertStore::new(),
            &[weft_certs::ALPN_H2],
        )
        .unwrap(),
    );
    let mut idle = Vec::new();
    for _ in 0..2000 {
        if let Ok(stream) = tls_from(attacker, cp.proxy_api, CONTROL_PLANE_NAME, tls.clone()).await
        {
            idle.push(stream);
        }
    }
    // …and one that floods streams.
    let flood_tls = tls_from(attacker, cp.proxy_api, CONTROL_PLANE_NAME, tls.clone()).await;
    let flood = tokio::spawn(async move {
        let Ok(stream) = flood_tls else { return };
        let Ok((sender, connection)) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        else {
            return;
        };
        tokio::spawn(connection);
        let mut calls = Vec::new();
        for _ in 0..3000 {
            let mut sender = sender.clone();
            calls.push(tokio::spawn(async move {
                let request =
                    http::Request::post("http://weft-control/weft.identity.v1.Identity/Certify")
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .body(http_body_util::Full::new(Bytes::from_static(
                            b"\0\0\0\0\x03abc",
                        )))
                        .unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
                    .await;
            }));
        }
        for call in calls {
            let _ = call.await;
        }
    });

    // Meanwhile the genuine proxy renews its certificate and takes a policy change.
    let renewed = client
        .metric("weft_identity_cert_requests_total{result=\"ok\"}")
        .await;
    weft_tests::eventually(
        "the proxy to renew its certificate",
        Duration::from_secs(30),
        || async {
            let now = client
                .metric("weft_identity_cert_requests_total{result=\"ok\"}")
                .await;
            (now > renewed).then_some(())
        },
    )
    .await;
    cp.apply_ok(&format!(
        "{API_SERVICE}---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: api-1, namespace: shop, labels: {{app: api}}}}\nspec: {{address: 127.0.0.1, proxyPort: 1, identity: \"spiffe://cluster.local/ns/shop/sa/api\"}}\n"
    ));
    let (_, list, _) = cp.weftctl(&["get", "workload", "api-1", "-n", "shop", "-o", "json"]);
    let version: String =
        serde_json::from_str::<serde_json::Value>(&list).unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
    weft_tests::eventually(
        "the proxy to apply the change",
        Duration::from_secs(30),
        || {
            let (_, status, _) = cp.weftctl(&["proxy-status"]);
            let applied = status.lines().any(|line| {
                line.contains("api.shop:8080") && line.split_whitespace().any(|w| w == version)
            });
            async move { applied.then_some(()) }
        },
    )
    .await;

    assert!(
        idle.len() <= 500,
        "{} idle connections admitted from one address",
        idle.len()
    );
    let metrics = weft_tests::client::http_get(cp.metrics, "/metrics")
        .await
        .unwrap()
        .1;
    let refused = metric_value(
        &metrics,
        "weft_control_connections_refused_total{reason=\"connections_per_ip\"}",
    );
    assert!(refused >= Some(1000.0), "{refused:?}");
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_beyond_its_rate_is_told_to_come_back_later() {
    weft_tests::init();
    let cp = ControlPlane::start_with("1h", &["--certify-rate-per-ip", "5"]).await;
    let tls = Arc::new(
        weft_certs::client_config(
            &cp.anchors(),
            weft_certs::CertStore::new(),
            &[weft_certs::ALPN_H2],
        )
        .unwrap(),
    );
    let target = ControlPlaneTarget {
        addr: cp.proxy_api.to_string(),
        server_name: "weft-control.weft.serviceaccount.identity.cluster.local".to_string(),
        tls,
    };
    let mut identity =
        weft_api::identity::identity_client::IdentityClient::new(target.channel().await.unwrap());
    let log_before = cp.proc.log().lines().count();
    let mut codes = Vec::new();
    for _ in 0..30 {
        let request = weft_api::identity::CertifyRequest {
            identity: CLIENT_ID.to_string(),
            csr: Vec::new(),
            token: "weftjt_nope".to_string(),
        };
        let status = identity.certify(request).await.unwrap_err();
        codes.push((status.code(), status.message().to_string()));
    }
    let limited = codes
        .iter()
        .find(|(code, _)| *code == tonic::Code::ResourceExhausted)
        .unwrap_or_else(|| panic!("never rate limited: {codes:?}"));
    assert!(
        limited.1.contains("per second from 127.0.0.1"),
        "{}",
        limited.1
    );
    // Refusals are counted, not logged line by line: a caller cannot flood the log.
    let grown = cp.proc.log().lines().count() - log_before;
    assert!(grown <= 3, "{grown} log lines for 30 refused calls");
}

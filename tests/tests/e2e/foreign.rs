//! Foreign SPIFFE workloads — of the trust domain, holding certificates from Certify, but with
//! a TLS stack that is not Weft's (an Envoy sidecar, a SPIRE-enabled service) — both ways:
//! calling a Weft pod over standard mTLS, and called by a Weft proxy the same way.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use weft_tests::apps::start_echo_app;
use weft_tests::client::{MeshClient, foreign_h2};
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::{CLIENT_ID, SERVER_ID};

/// An identity whose TLS stack is not Weft's: an Envoy sidecar of the same trust domain.
const FOREIGN_ID: &str = "spiffe://cluster.local/ns/legacy/sa/envoy";

const FOREIGN_CLIENT: &str = r#"
import socket, ssl, sys
host, port, chain, key, anchors, server_name = sys.argv[1:7]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.load_verify_locations(anchors)
context.load_cert_chain(chain, key)
context.set_alpn_protocols(["http/1.1"])
with socket.create_connection((host, int(port)), timeout=10) as tcp:
    with context.wrap_socket(tcp, server_hostname=server_name) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1", tls.selected_alpn_protocol()
        tls.sendall(b"GET /foreign HTTP/1.1\r\nHost: api.shop\r\nweft-client-id: spiffe://cluster.local/ns/shop/sa/admin\r\nConnection: close\r\n\r\n")
        answer = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
sys.stdout.write(answer.decode("utf-8", "replace"))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_spiffe_client_calls_a_weft_pod_over_standard_mtls() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let app = start_echo_app().await;
    let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(app.port)).await;
    let (chain, key) = cp.credential_pem(FOREIGN_ID).await;
    let dir = tempfile::tempdir().unwrap();
    let (chain_path, key_path) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
    std::fs::write(&chain_path, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let server_name = SERVER_ID
        .parse::<weft_certs::Identity>()
        .unwrap()
        .dns_name();
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(FOREIGN_CLIENT)
        .arg(server.inbound.ip().to_string())
        .arg(server.inbound.port().to_string())
        .arg(&chain_path)
        .arg(&key_path)
        .arg(cp.trust_anchor())
        .arg(&server_name)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the Python client finishes")
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(
        output.status.success() && answer.starts_with("http/1.1 200"),
        "{answer}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The identity it proved, never the one it claimed in a header.
    assert!(
        answer.contains(&format!("x-seen-client-id: {FOREIGN_ID}")),
        "{answer}"
    );
    assert!(answer.contains("x-seen-version: http/1.1"), "{answer}");

    // HTTP/2 with ALPN h2 and no Weft transport header.
    let certs = cp.credential(FOREIGN_ID).await;
    let mut h2 = foreign_h2(server.inbound, &cp.anchors(), certs, SERVER_ID)
        .await
        .unwrap();
    let request = http::Request::get("http://api.shop/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-seen-client-id"], FOREIGN_ID);
    // Authorization applies to it like to any other client.
    cp.apply_ok(&format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: api-1, namespace: shop, labels: {{app: api}}}}\nspec: {{address: 127.0.0.1, proxyPort: {}, identity: \"{SERVER_ID}\"}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: InboundDefaults\nmetadata: {{name: api, namespace: shop}}\nspec: {{authorization: deny}}\n",
        server.inbound.port()
    ));
    weft_tests::eventually(
        "the deny default to reach the proxy",
        Duration::from_secs(20),
        || {
            let mut h2 = h2.clone();
            async move {
                let request = http::Request::get("http://api.shop/h2")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = h2.send_request(request).await.ok()?;
                (response.status() == 403).then_some(())
            }
        },
    )
    .await;
}

/// A foreign SPIFFE server: rustls with the standard WebPKI client verifier over the mesh's
/// anchor, ALPN h2, hyper's HTTP/2 server. It answers with the identity in the client's
/// certificate and whether any Weft header reached it.
async fn start_foreign_server(cp: &ControlPlane) -> (u16, tokio::task::JoinHandle<()>) {
    let (chain, key) = cp.credential_pem(FOREIGN_ID).await;
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let anchor = std::fs::read(cp.trust_anchor()).unwrap();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&anchor) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|leaf| weft_certs::identity_of(leaf).ok())
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "none".to_string());
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let weft_headers = request
                        .headers()
                        .keys()
                        .filter(|name| name.as_str().starts_with("weft-"))
                        .map(|name| name.as_str().to_string())
                        .collect::<Vec<_>>()
                        .join(",");
                    let client = client.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("x-foreign-saw-client", client)
                                .header("x-foreign-saw-weft-headers", weft_headers)
                                .body(http_body_util::Full::new(Bytes::from_static(b"foreign")))
                                .unwrap(),
                        )
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weft_proxy_calls_a_foreign_spiffe_workload_with_standard_mtls() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let (port, _server) = start_foreign_server(&cp).await;
    cp.apply_ok(&format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: legacy, namespace: legacy}}\nspec: {{selector: {{app: legacy}}, ports: [{{port: 8443}}]}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: legacy-1, namespace: legacy, labels: {{app: legacy}}}}\nspec: {{address: 127.0.0.1, proxyPort: {port}, identity: \"{FOREIGN_ID}\", foreignSpiffe: true}}\n"
    ));
    let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    let app = MeshClient::http1(client.outbound);
    for _ in 0..3 {
        let response = app
            .send("GET", "legacy.legacy:8443", "/", Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{response:?}");
        assert_eq!(response.headers()["x-foreign-saw-client"], CLIENT_ID);
        assert_eq!(response.headers()["x-foreign-saw-weft-headers"], "");
    }
    // Without the mark, the same workload is taken for a Weft proxy: ALPN weft/1 is refused by
    // a server that offers only h2, and nothing is sent.
    cp.apply_ok(&format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: legacy-1, namespace: legacy, labels: {{app: legacy}}}}\nspec: {{address: 127.0.0.1, proxyPort: {port}, identity: \"{FOREIGN_ID}\"}}\n"
    ));
    weft_tests::eventually(
        "the unmarked workload to be dialed as a Weft peer",
        Duration::from_secs(20),
        || async {
            let response = app
                .send("GET", "legacy.legacy:8443", "/", Bytes::new())
                .await;
            response
                .ok()
                .filter(|r| matches!(r.status().as_u16(), 502 | 503))
        },
    )
    .await;
}

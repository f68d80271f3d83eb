//! The inbound port accepts only mTLS from peers of the trust domain.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_certs::{
    ALPN_WEFT, CertStore, Credential, Identity, LeafKey, TrustAnchor, TrustAnchors, TrustDomain,
};

use crate::{CLIENT_ID, Mesh, SERVER_ID};

/// What a refused client gets back: at most a TLS alert, then the connection closes.
async fn assert_no_answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    first_bytes: &[u8],
) {
    let _ = stream.write_all(first_bytes).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the inbound port must close a refused connection, not hang");
    let text = String::from_utf8_lossy(&received);
    assert!(
        !text.contains("HTTP/"),
        "refused client got an HTTP answer: {text:?} ({read:?})"
    );
    // A plaintext client may get a TLS alert record (content type 21), nothing else.
    assert!(
        received.is_empty() || received[0] == 0x15,
        "unexpected bytes: {received:?}"
    );
}

/// Dials the server proxy's inbound port with TLS, presenting `certs` (possibly none).
async fn tls_dial(
    mesh: &Mesh,
    certs: Arc<CertStore>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let anchors = TrustAnchors::from_pem(&std::fs::read(mesh.cp.trust_anchor()).unwrap()).unwrap();
    let config = weft_certs::client_config(&anchors, certs, &[ALPN_WEFT]).unwrap();
    let server: Identity = SERVER_ID.parse().unwrap();
    let tcp = TcpStream::connect(mesh.server.inbound).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(server.dns_name()).unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_is_refused() {
    let mesh = Mesh::start("24h").await;
    let tcp = TcpStream::connect(mesh.server.inbound).await.unwrap();
    assert_no_answer(tcp, b"GET / HTTP/1.1\r\nHost: api.shop\r\n\r\n").await;
    assert_eq!(mesh.app.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_without_a_certificate_is_refused() {
    let mesh = Mesh::start("24h").await;
    // In TLS 1.3 the client may finish its side before the server rejects it; either way no
    // request may reach the app.
    if let Ok(stream) = tls_dial(&mesh, CertStore::new()).await {
        assert_no_answer(stream, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    }
    assert_eq!(mesh.app.request_count(), 0);
    let failures = mesh
        .server
        .metric("weft_tls_handshake_failures_total{direction=\"inbound\",reason=\"certificate\"}")
        .await;
    assert!(failures >= Some(1.0), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_trust_anchor_is_refused() {
    let mesh = Mesh::start("24h").await;
    // Same trust domain and identity as the real client, but an anchor the mesh does not trust.
    let now = SystemTime::now();
    let rogue_anchor = TrustAnchor::generate(&TrustDomain::cluster_local(), now).unwrap();
    let rogue_issuer = rogue_anchor.generate_issuer(now).unwrap();
    let identity: Identity = CLIENT_ID.parse().unwrap();
    let key = LeafKey::generate().unwrap();
    let issued = rogue_issuer
        .issue(key.public_key(), &identity, Duration::from_secs(3600), now)
        .unwrap();
    let certs = CertStore::new();
    certs.set(Credential {
        key: key.certify(issued.chain).unwrap(),
        identity,
        valid_from: now,
        not_after: issued.not_after,
    });
    if let Ok(stream) = tls_dial(&mesh, certs).await {
        assert_no_answer(stream, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    }
    assert_eq!(mesh.app.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_skip_the_http_path_by_announcing_an_opaque_stream() {
    let mesh = Mesh::start("24h").await;
    // A genuine peer of the trust domain, which announces "opaque TCP" to the app's HTTP port
    // and speaks HTTP inside, so that its forged weft-client-id would arrive unstamped. The
    // inbound side detects HTTP itself: the app sees only the identity the peer proved.
    let certs = mesh
        .cp
        .credential("spiffe://cluster.local/ns/shop/sa/mallory")
        .await;
    let mut stream = tls_dial(&mesh, certs).await.unwrap();
    let forged = b"weft/tcp\nGET / HTTP/1.1\r\nHost: api.shop\r\nweft-client-id: spiffe://cluster.local/ns/shop/sa/web\r\nConnection: close\r\n\r\n";
    stream.write_all(forged).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("an answer, then the connection closes")
        .ok();
    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("x-seen-client-id: spiffe://cluster.local/ns/shop/sa/mallory"),
        "{text}"
    );
    assert!(
        !text.contains("sa/web"),
        "the forged identity reached the app: {text}"
    );
}

/// A TLS 1.2 client (no 1.3), verifying nothing: only whether the server will speak to it.
fn tls12_only() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAnything;
    impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            weft_certs::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(weft_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_client_is_refused_by_the_proxy_and_by_the_control_plane() {
    let mesh = Mesh::start("24h").await;
    for addr in [mesh.server.inbound, mesh.cp.proxy_api, mesh.cp.admin] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let handshake = tokio_rustls::TlsConnector::from(tls12_only())
            .connect(ServerName::try_from("weft.test").unwrap(), tcp)
            .await;
        let error = handshake.expect_err("a TLS 1.2 handshake succeeded");
        assert!(
            error.to_string().contains("ProtocolVersion")
                || error.to_string().contains("protocol version"),
            "{addr}: {error}"
        );
    }
}

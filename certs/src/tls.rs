//! rustls configurations for every TLS connection in the mesh: TLS 1.3 only, one crypto provider,
//! certificates from a [`CertStore`], peers checked by the SPIFFE verifiers.

use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};

use crate::identity::TrustDomain;
use crate::store::CertStore;
use crate::verify::{PeerClientVerifier, PeerServerVerifier, TrustAnchors, TrustStore};

/// ALPN protocol spoken between proxies.
pub const ALPN_WEFT: &[u8] = b"weft/1";
/// ALPN protocol for gRPC with the control plane.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of HTTP/1.1, which a foreign SPIFFE client may negotiate with a Weft pod.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Whether a server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Refuse clients without a valid certificate of the trust domain (proxy inbound).
    Required,
    /// Verify a certificate if one is offered, but also accept none (control plane, where first
    /// contact is proven by a token instead).
    Optional,
}

/// A client config that presents `certs` (when it holds one) and accepts only servers that chain
/// to `anchors` and carry the identity whose DNS form is the server name dialed.
pub fn client_config(
    anchors: &TrustAnchors,
    certs: Arc<CertStore>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, rustls::Error> {
    client_config_with(TrustStore::new(anchors.clone()), certs, alpn)
}

/// Like [`client_config`], with the anchors in force in `trust` (which may rotate).
pub fn client_config_with(
    trust: Arc<TrustStore>,
    certs: Arc<CertStore>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerServerVerifier::new(trust)))
        .with_client_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // A resumed session skips the client certificate, so the server would see the identity (or
    // the absence of one) of an earlier connection, not the credential held now.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A server config that presents `certs` and verifies clients as `client_auth` says.
pub fn server_config(
    anchors: &TrustAnchors,
    trust_domain: &TrustDomain,
    certs: Arc<CertStore>,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, rustls::Error> {
    server_config_with(
        TrustStore::new(anchors.clone()),
        trust_domain,
        certs,
        client_auth,
        alpn,
    )
}

/// Like [`server_config`], with the anchors in force in `trust` (which may rotate).
pub fn server_config_with(
    trust: Arc<TrustStore>,
    trust_domain: &TrustDomain,
    certs: Arc<CertStore>,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, rustls::Error> {
    let verifier = PeerClientVerifier::new(
        trust,
        trust_domain.clone(),
        client_auth == ClientAuth::Required,
    );
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // As on the client side: a resumed session would carry an earlier connection's client
    // identity without verifying it again (nor its expiry).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

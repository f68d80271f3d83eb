//! Weft's public-key infrastructure.
//!
//! Every proxy proves who it is with a short-lived leaf certificate carrying a SPIFFE identity,
//! signed by an issuer the control plane holds, which chains to a trust anchor every proxy
//! trusts. This crate generates that hierarchy, builds and checks CSRs, verifies peers (chain to
//! the anchor AND the expected identity) and builds the rustls configurations the proxy and the
//! control plane use. It does no network I/O.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

mod authority;
mod csr;
mod identity;
mod rotation;
mod store;
mod tls;
mod verify;

pub use authority::{
    AuthorityError, DEFAULT_LEAF_LIFETIME, ISSUER_LIFETIME, IssuedCertificate, Issuer,
    TRUST_ANCHOR_LIFETIME, TrustAnchor, ca_trust_domain_and_expiry, fingerprint, pem_encode,
};
pub use csr::{CertificateRequest, CsrError, KeyError, LeafKey};
pub use identity::{Identity, IdentityError, TrustDomain};
pub use rotation::renew_after;
pub use store::{CertStore, Credential};
pub use tls::{
    ALPN_H2, ALPN_HTTP1, ALPN_WEFT, ClientAuth, client_config, client_config_with, server_config,
    server_config_with,
};
pub use verify::{
    PeerClientVerifier, PeerServerVerifier, TrustAnchorError, TrustAnchors, TrustStore,
    VerifyError, identity_of, not_after_of, serial_of, verify_client, verify_peer,
};

/// The one rustls crypto provider of the whole workspace: aws-lc-rs, which offers the
/// post-quantum hybrid key exchange X25519MLKEM768 first, with TLS_AES_128_GCM_SHA256 as the
/// preferred cipher suite — what BoringSSL (and so Envoy) prefers on CPUs with AES
/// instructions, and faster than AES-256 at a security level no one attacks.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider.cipher_suites.sort_by_key(|suite| {
                suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            });
            Arc::new(provider)
        })
        .clone()
}

/// Installs [`provider`] as the process default, for libraries that build rustls configs
/// themselves. Call once at the top of each `main`; calling it again is harmless.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}

#[cfg(test)]
mod tests;

//! The certificate a process currently presents, swapped atomically on rotation.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::identity::Identity;

/// A leaf certificate with its key, ready for rustls, and what we need to know about it.
#[derive(Debug)]
pub struct Credential {
    /// The chain and signing key handed to rustls.
    pub key: Arc<CertifiedKey>,
    /// The identity the leaf carries.
    pub identity: Identity,
    /// When the leaf was obtained (its notBefore is backdated for clock skew).
    pub valid_from: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

/// A credential counts as "about to expire" in its last tenth, but at most its last minute.
const EXPIRY_MARGIN_FRACTION: u32 = 10;
/// The largest margin before expiry during which a credential no longer counts as ready.
const MAX_EXPIRY_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The current credential. rustls reads it through its resolver hooks on every handshake, so a
/// rotation applies to the next handshake and leaves live connections untouched. Reads are a
/// lock-free atomic load.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwapOption<Credential>,
}

// === impl Credential ===

impl Credential {
    /// A credential from a PEM chain (leaf first) and its PEM private key: an operator's
    /// long-lived admin certificate, say. The identity is read from the leaf.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        let leaf = chain.first().ok_or("certificate: no CERTIFICATE block")?;
        let identity = crate::identity_of(leaf).map_err(|e| format!("certificate: {e}"))?;
        let not_after = crate::not_after_of(leaf).ok_or("certificate: unreadable validity")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
        let signing_key = crate::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("key: {e}"))?;
        Ok(Self {
            key: Arc::new(CertifiedKey::new(chain, signing_key)),
            identity,
            valid_from: SystemTime::now(),
            not_after,
        })
    }
}

// === impl CertStore ===

impl CertStore {
    /// An empty store: handshakes that need a certificate fail until [`CertStore::set`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes `credential` the one presented from the next handshake on.
    pub fn set(&self, credential: Credential) {
        self.current.store(Some(Arc::new(credential)));
    }

    /// The current credential, if any.
    pub fn current(&self) -> Option<Arc<Credential>> {
        self.current.load_full()
    }

    /// True once a credential is held and has not expired at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|c| c.not_after > now)
    }

    /// True while a credential is held that is not about to expire at `now` (in its last tenth,
    /// at most its last minute): the moment to stop taking new traffic if renewal keeps failing.
    pub fn is_ready_at(&self, now: SystemTime) -> bool {
        self.current.load().as_ref().is_some_and(|c| {
            let lifetime = c.not_after.duration_since(c.valid_from).unwrap_or_default();
            let margin = (lifetime / EXPIRY_MARGIN_FRACTION).min(MAX_EXPIRY_MARGIN);
            c.not_after
                .duration_since(now)
                .is_ok_and(|left| left > margin)
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| c.key.clone())
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // An expired certificate would only get the handshake refused; without one, a server that
        // makes client certificates optional (the control plane) still lets us prove ourselves
        // another way (a token).
        let now = SystemTime::now();
        self.current
            .load()
            .as_ref()
            .filter(|c| c.not_after > now)
            .map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.is_valid_at(SystemTime::now())
    }
}

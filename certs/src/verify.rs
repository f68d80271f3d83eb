//! Peer verification: a chain must end at the trust anchor AND carry the right SPIFFE identity.
//!
//! Chain building, validity periods, key usages and signatures are checked by rustls' own WebPKI
//! verifiers; these wrappers add the identity check on top, so there is one chain-verification
//! code path in the whole mesh.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use x509_parser::certificate::X509Certificate;

use crate::identity::{Identity, TrustDomain};

/// Why trust anchors could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustAnchorError {
    /// The PEM held no certificate.
    #[error("no CERTIFICATE block found")]
    Empty,
    /// A PEM block or certificate could not be parsed.
    #[error("{0}")]
    Invalid(String),
}

/// Why a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain itself failed: unknown issuer, expired, not yet valid, bad signature…
    #[error("certificate rejected: {0}")]
    Chain(rustls::Error),
    /// The leaf carries no (or more than one) SPIFFE identity.
    #[error("certificate must carry exactly one spiffe:// URI SAN")]
    NoIdentity,
    /// The leaf's identity is not the one expected.
    #[error("peer is {actual}, expected {expected}")]
    WrongIdentity {
        /// The identity the caller expected.
        expected: Identity,
        /// The identity the certificate carries.
        actual: Identity,
    },
    /// The leaf's identity belongs to another trust domain.
    #[error("peer {actual} is outside trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// Our trust domain.
        trust_domain: TrustDomain,
        /// The identity the certificate carries.
        actual: Identity,
    },
}

/// The roots a proxy or the control plane trusts.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    roots: Arc<RootCertStore>,
    trust_domain: Option<TrustDomain>,
}

/// The trust anchors in force. A rotation replaces them as a whole ([`TrustStore::set`]); the
/// verifiers read the current ones on every handshake (one atomic load), so a new bundle applies
/// from the next handshake on and no live connection is touched.
#[derive(Debug)]
pub struct TrustStore {
    current: ArcSwap<Roots>,
}

/// Anchors with the WebPKI verifiers built over them once.
#[derive(Debug)]
struct Roots {
    anchors: TrustAnchors,
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
}

/// Client-side verifier: the server must chain to the anchors and be the identity encoded in the
/// TLS server name (see [`Identity::dns_name`]). One `ClientConfig` then serves every peer.
#[derive(Debug)]
pub struct PeerServerVerifier {
    trust: Arc<TrustStore>,
}

/// Server-side verifier: the client must chain to the anchors and carry an identity of our trust
/// domain, which the connection later reads for authorization.
#[derive(Debug)]
pub struct PeerClientVerifier {
    trust: Arc<TrustStore>,
    trust_domain: TrustDomain,
    mandatory: bool,
}

// === impl TrustStore ===

impl TrustStore {
    /// A store holding `anchors`.
    pub fn new(anchors: TrustAnchors) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(Roots::new(anchors)),
        })
    }

    /// Makes `anchors` the ones in force from the next handshake on.
    pub fn set(&self, anchors: TrustAnchors) {
        self.current.store(Arc::new(Roots::new(anchors)));
    }

    /// The anchors in force.
    pub fn anchors(&self) -> TrustAnchors {
        self.current.load().anchors.clone()
    }

    fn roots(&self) -> Arc<Roots> {
        self.current.load_full()
    }
}

impl Roots {
    fn new(anchors: TrustAnchors) -> Self {
        // The builders fail only for an empty root store, which `TrustAnchors` rules out.
        let server =
            WebPkiServerVerifier::builder_with_provider(anchors.roots(), crate::provider())
                .build()
                .unwrap_or_else(|e| unreachable!("trust anchors are never empty: {e}"));
        let client =
            WebPkiClientVerifier::builder_with_provider(anchors.roots(), crate::provider())
                .allow_unauthenticated()
                .build()
                .unwrap_or_else(|e| unreachable!("trust anchors are never empty: {e}"));
        Self {
            anchors,
            server,
            client,
        }
    }
}

// === impl TrustAnchors ===

impl TrustAnchors {
    /// Parses one or more PEM certificates.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TrustAnchorError> {
        use rustls_pki_types::pem::PemObject;
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrustAnchorError::Invalid(e.to_string()))?;
        Self::from_der(certs)
    }

    /// Builds the anchors from DER certificates.
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, TrustAnchorError> {
        if certs.is_empty() {
            return Err(TrustAnchorError::Empty);
        }
        let trust_domain = certs
            .iter()
            .find_map(|cert| {
                crate::authority::ca_trust_domain_and_expiry(cert, "trust anchor").ok()
            })
            .map(|(trust_domain, _)| trust_domain);
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| {
                TrustAnchorError::Invalid(format!("not a usable trust anchor: {e}"))
            })?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            trust_domain,
        })
    }

    /// The trust domain the anchors name as a `spiffe://<trust-domain>` URI SAN, if they do
    /// (Weft's own anchors always do).
    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }

    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }
}

/// Verifies `chain` (leaf first) at `now` against `anchors`, and returns the leaf's identity if it
/// is `expected`. This is exactly the check a proxy applies to the peer it dials.
pub fn verify_peer(
    anchors: &TrustAnchors,
    chain: &[CertificateDer<'_>],
    expected: &Identity,
    now: SystemTime,
) -> Result<Identity, VerifyError> {
    let (end_entity, intermediates) = chain.split_first().ok_or(VerifyError::NoIdentity)?;
    let verifier = PeerServerVerifier::new(TrustStore::new(anchors.clone()));
    verifier.verify(
        end_entity,
        intermediates,
        expected,
        UnixTime::since_unix_epoch(since_epoch(now)),
    )?;
    Ok(expected.clone())
}

/// Verifies a client `chain` at `now` the way an inbound listener does: any identity of
/// `trust_domain` is accepted and returned.
pub fn verify_client(
    anchors: &TrustAnchors,
    trust_domain: &TrustDomain,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<Identity, VerifyError> {
    let (end_entity, intermediates) = chain.split_first().ok_or(VerifyError::NoIdentity)?;
    let verifier =
        PeerClientVerifier::new(TrustStore::new(anchors.clone()), trust_domain.clone(), true);
    verifier.verify(
        end_entity,
        intermediates,
        UnixTime::since_unix_epoch(since_epoch(now)),
    )
}

/// The SPIFFE identity of a verified leaf certificate.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, VerifyError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| VerifyError::NoIdentity)?;
    let ids = spiffe_ids_of(&parsed);
    match ids.as_slice() {
        [id] => id.parse().map_err(|_| VerifyError::NoIdentity),
        _ => Err(VerifyError::NoIdentity),
    }
}

/// A certificate's notAfter, if it parses.
pub fn not_after_of(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// A certificate's serial number, as lowercase hex, if it parses.
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(
        parsed
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The `spiffe://` URI SANs of a certificate.
pub(crate) fn spiffe_ids_of<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some(*uri)
            }
            _ => None,
        })
        .collect()
}

fn since_epoch(now: SystemTime) -> std::time::Duration {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

fn to_rustls(err: VerifyError) -> rustls::Error {
    match err {
        VerifyError::Chain(err) => err,
        other => rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(other),
        ))),
    }
}

// === impl PeerServerVerifier ===

impl PeerServerVerifier {
    /// A verifier over the anchors in `trust`.
    pub fn new(trust: Arc<TrustStore>) -> Self {
        Self { trust }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        expected: &Identity,
        now: UnixTime,
    ) -> Result<(), VerifyError> {
        let server_name =
            ServerName::try_from(expected.dns_name()).map_err(|_| VerifyError::NoIdentity)?;
        self.trust
            .roots()
            .server
            .verify_server_cert(end_entity, intermediates, &server_name, &[], now)
            .map_err(VerifyError::Chain)?;
        let actual = identity_of(end_entity)?;
        if &actual != expected {
            return Err(VerifyError::WrongIdentity {
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ServerName::DnsName(name) = server_name else {
            return Err(rustls::Error::General(
                "peer must be dialed by the DNS form of its identity".to_string(),
            ));
        };
        let expected = Identity::from_dns_name(name.as_ref())
            .map_err(|e| rustls::Error::General(format!("peer name is not an identity: {e}")))?;
        self.verify(end_entity, intermediates, &expected, now)
            .map_err(to_rustls)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .roots()
            .server
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .roots()
            .server
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.roots().server.supported_verify_schemes()
    }
}

// === impl PeerClientVerifier ===

impl PeerClientVerifier {
    /// A verifier over the anchors in `trust` accepting any identity of `trust_domain`; when
    /// `mandatory` is false a client without a certificate is let through (and has no identity).
    pub fn new(trust: Arc<TrustStore>, trust_domain: TrustDomain, mandatory: bool) -> Self {
        Self {
            trust,
            trust_domain,
            mandatory,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Identity, VerifyError> {
        self.trust
            .roots()
            .client
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(VerifyError::Chain)?;
        let actual = identity_of(end_entity)?;
        if actual.trust_domain() != &self.trust_domain {
            return Err(VerifyError::ForeignTrustDomain {
                trust_domain: self.trust_domain.clone(),
                actual,
            });
        }
        Ok(actual)
    }
}

impl ClientCertVerifier for PeerClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Peers know which anchor to chain to; do not advertise our roots to strangers.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)
            .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .roots()
            .client
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .roots()
            .client
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.roots().client.supported_verify_schemes()
    }
}

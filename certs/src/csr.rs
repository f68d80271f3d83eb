//! Certificate signing requests: made by the proxy (whose key never leaves it) and checked by the
//! control plane before it signs.

use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, IsCa, KeyPair, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};

use crate::identity::{Identity, IdentityError};

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The bytes are not a DER PKCS#10 request, or it uses an extension Weft does not accept.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The request's self-signature does not verify.
    #[error("CSR signature does not verify against its public key")]
    BadSignature,
    /// Weft issues ECDSA P-256 leaves only.
    #[error("CSR key must be ECDSA P-256")]
    UnsupportedKey,
    /// Leaves are never CAs.
    #[error("CSR asks for a CA certificate")]
    AsksForCa,
    /// The request must name exactly one SPIFFE identity as a URI SAN.
    #[error("CSR must carry exactly one spiffe:// URI SAN, found {0}")]
    IdentityCount(usize),
    /// The URI SAN is not a valid Weft identity.
    #[error("CSR identity: {0}")]
    Identity(#[from] IdentityError),
    /// The CSR asks for an identity other than the one the caller proved.
    #[error("CSR asks for {asked} but the caller proved {proven}")]
    NotProven {
        /// The identity in the CSR.
        asked: Identity,
        /// The identity the token or certificate proves.
        proven: Identity,
    },
}

/// Why a freshly generated key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation or CSR encoding failed.
    #[error("cannot generate key or CSR: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls could not load the key for signing.
    #[error("cannot load key for TLS: {0}")]
    Load(#[from] rustls::Error),
}

/// A P-256 key pair generated in memory. It is never written anywhere; only CSRs leave.
pub struct LeafKey {
    key: KeyPair,
}

/// A CSR whose signature verified and whose identity parsed; the only input the issuer signs.
#[derive(Debug)]
pub struct CertificateRequest {
    identity: Identity,
    public_key: rcgen::PublicKey,
}

// === impl LeafKey ===

impl std::fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeafKey(..)")
    }
}

impl LeafKey {
    /// Generates a new ECDSA P-256 key pair.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// A DER-encoded CSR for `identity`, carrying its URI and DNS-style SANs.
    pub fn csr(
        &self,
        identity: &Identity,
    ) -> Result<CertificateSigningRequestDer<'static>, KeyError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![
            SanType::URI(identity.to_string().try_into()?),
            SanType::DnsName(identity.dns_name().try_into()?),
        ];
        Ok(params.serialize_request(&self.key)?.der().clone())
    }

    /// Pairs this key with the chain the issuer signed, ready for rustls.
    pub fn certify(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<CertifiedKey>, KeyError> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signing_key = crate::provider().key_provider.load_private_key(der)?;
        Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
    }

    /// The private key in PEM, for credentials an operator keeps in a file (an admin client
    /// certificate). A proxy's key never takes this path.
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The public half, for signing without a CSR (the control plane's own certificate).
    pub fn public_key(&self) -> &impl rcgen::PublicKeyData {
        &self.key
    }
}

// === impl CertificateRequest ===

impl CertificateRequest {
    /// Parses `der`, verifies its self-signature and extracts the identity it asks for.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let parsed = rcgen::CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(der),
        )
        .map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
            rcgen::Error::CouldNotParseCertificationRequest => {
                CsrError::Malformed("not a DER PKCS#10 certificate request".to_string())
            }
            other => CsrError::Malformed(other.to_string()),
        })?;
        if parsed.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CsrError::UnsupportedKey);
        }
        if !matches!(parsed.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(CsrError::AsksForCa);
        }
        let uris: Vec<&str> = parsed
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str()),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(CsrError::IdentityCount(uris.len()));
        };
        let identity = uri.parse()?;
        Ok(Self {
            identity,
            public_key: parsed.public_key,
        })
    }

    /// Fails unless the CSR asks for `proven`, the identity its sender proved.
    pub fn require_identity(&self, proven: &Identity) -> Result<(), CsrError> {
        if &self.identity != proven {
            return Err(CsrError::NotProven {
                asked: self.identity.clone(),
                proven: proven.clone(),
            });
        }
        Ok(())
    }

    /// The identity the CSR asks for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The requester's public key.
    pub fn public_key(&self) -> &rcgen::PublicKey {
        &self.public_key
    }
}

//! The certificate hierarchy: trust anchor (root) → issuer (intermediate, held by the control
//! plane) → leaf (one per proxy, short-lived).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::csr::CertificateRequest;
use crate::identity::{Identity, TrustDomain};
use crate::verify::spiffe_ids_of;

/// How long a trust anchor is valid.
pub const TRUST_ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an issuer is valid.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The default lifetime of a proxy's leaf certificate.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Leaves are backdated by this much so that peers whose clocks lag a little accept them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Why a certificate could not be generated, loaded or issued.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// rcgen could not build or sign a certificate.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file did not hold what it should.
    #[error("{what}: {reason}")]
    Pem {
        /// Which file or object.
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The certificate does not name exactly one trust domain as `spiffe://<trust-domain>`.
    #[error("{0} does not carry its trust domain as a spiffe://<trust-domain> URI SAN")]
    NoTrustDomain(&'static str),
    /// The issuer cannot sign for the requested identity.
    #[error("identity {identity} is outside the issuer's trust domain {trust_domain}")]
    ForeignIdentity {
        /// The identity asked for.
        identity: Identity,
        /// The issuer's trust domain.
        trust_domain: TrustDomain,
    },
    /// The issuer itself has expired: every leaf it signed now would be born dead.
    #[error("the issuer expired at {0:?}; rotate it (weftctl certs init, then --pki-dir)")]
    IssuerExpired(SystemTime),
}

/// A certificate the issuer signed: the leaf, then the issuer, up to (not including) the anchor.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The leaf first, then the issuer.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

/// A self-signed root certificate and its key: the trust anchor every proxy trusts.
pub struct TrustAnchor {
    signer: rcgen::Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    key_pem: String,
    trust_domain: TrustDomain,
    not_after: SystemTime,
}

/// The intermediate CA that signs leaf certificates.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    key_pem: String,
    trust_domain: TrustDomain,
    not_after: SystemTime,
}

// === impl TrustAnchor ===

impl TrustAnchor {
    /// Generates a new trust anchor for `trust_domain`, valid from `now` for ten years.
    pub fn generate(trust_domain: &TrustDomain, now: SystemTime) -> Result<Self, AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(
            trust_domain,
            "weft trust anchor",
            now,
            TRUST_ANCHOR_LIFETIME,
        )?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?.der().clone();
        let key_pem = key.serialize_pem();
        Ok(Self {
            not_after: SystemTime::from(params.not_after),
            signer: rcgen::Issuer::new(params, key),
            cert,
            key_pem,
            trust_domain: trust_domain.clone(),
        })
    }

    /// Loads an anchor from its certificate and private key in PEM, to sign a new issuer.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, AuthorityError> {
        let ca = LoadedCa::from_pem(
            cert_pem,
            key_pem,
            "trust anchor certificate",
            "trust anchor key",
        )?;
        Ok(Self {
            signer: ca.signer,
            cert: ca.cert,
            key_pem: key_pem.to_string(),
            trust_domain: ca.trust_domain,
            not_after: ca.not_after,
        })
    }

    /// When the anchor expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The anchor's certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The anchor's certificate as PEM, the file proxies are given.
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The anchor's private key as PEM; keep it offline.
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// The trust domain the anchor was made for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Generates an issuer signed by this anchor, valid from `now` for a year.
    pub fn generate_issuer(&self, now: SystemTime) -> Result<Issuer, AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(&self.trust_domain, "weft issuer", now, ISSUER_LIFETIME)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params.signed_by(&key, &self.signer)?.der().clone();
        let key_pem = key.serialize_pem();
        Ok(Issuer {
            not_after: SystemTime::from(params.not_after),
            signer: rcgen::Issuer::new(params, key),
            cert,
            key_pem,
            trust_domain: self.trust_domain.clone(),
        })
    }
}

impl std::fmt::Debug for TrustAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchor")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A CA (anchor or issuer) read back from PEM, ready to sign.
struct LoadedCa {
    signer: rcgen::Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    trust_domain: TrustDomain,
    not_after: SystemTime,
}

impl LoadedCa {
    /// Parses `cert_pem` and `key_pem` (named `cert_what` and `key_what` in errors), checking
    /// the key is the certificate's.
    fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        cert_what: &'static str,
        key_what: &'static str,
    ) -> Result<Self, AuthorityError> {
        use rustls_pki_types::pem::PemObject;
        let invalid = |what: &'static str, reason: String| AuthorityError::Pem { what, reason };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(cert_what, e.to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(key_what, e.to_string()))?;
        let (trust_domain, not_after) = ca_trust_domain_and_expiry(&cert, cert_what)?;
        let matches = x509_parser::parse_x509_certificate(&cert).is_ok_and(|(_, parsed)| {
            *parsed.public_key().subject_public_key.data == *key.public_key_raw()
        });
        if !matches {
            return Err(invalid(
                key_what,
                format!("it is not the key of the {cert_what}"),
            ));
        }
        let signer = rcgen::Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| invalid(cert_what, e.to_string()))?;
        Ok(Self {
            signer,
            cert,
            trust_domain,
            not_after,
        })
    }
}

/// A short, stable name for a certificate: the first 16 hex digits of its SHA-256.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// === impl Issuer ===

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads an issuer from its certificate and private key in PEM. The trust domain is read from
    /// the certificate's `spiffe://<trust-domain>` URI SAN.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, AuthorityError> {
        let ca = LoadedCa::from_pem(cert_pem, key_pem, "issuer certificate", "issuer key")?;
        Ok(Self {
            signer: ca.signer,
            cert: ca.cert,
            key_pem: key_pem.to_string(),
            trust_domain: ca.trust_domain,
            not_after: ca.not_after,
        })
    }

    /// The issuer's certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The issuer's certificate as PEM.
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The issuer's private key as PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The trust domain this issuer signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// When the issuer itself expires; no leaf outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a verified CSR for its identity.
    pub fn sign(
        &self,
        request: &CertificateRequest,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, AuthorityError> {
        self.issue(request.public_key(), request.identity(), lifetime, now)
    }

    /// Issues a leaf for `identity` over `public_key`. Only the public key is taken from the
    /// requester; every other field is the issuer's choice, so a CSR cannot ask for a CA.
    pub fn issue(
        &self,
        public_key: &impl PublicKeyData,
        identity: &Identity,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, AuthorityError> {
        if identity.trust_domain() != &self.trust_domain {
            return Err(AuthorityError::ForeignIdentity {
                identity: identity.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if now >= self.not_after {
            return Err(AuthorityError::IssuerExpired(self.not_after));
        }
        let not_after = (now + lifetime).min(self.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![
            SanType::URI(identity.to_string().try_into()?),
            SanType::DnsName(identity.dns_name().try_into()?),
        ];
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = OffsetDateTime::from(not_after);
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(public_key, &self.signer)?;
        Ok(IssuedCertificate {
            chain: vec![leaf.der().clone(), self.cert.clone()],
            not_after,
        })
    }
}

/// Reads the trust domain (from its `spiffe://<td>` URI SAN) and expiry of a CA certificate.
pub fn ca_trust_domain_and_expiry(
    cert: &CertificateDer<'_>,
    what: &'static str,
) -> Result<(TrustDomain, SystemTime), AuthorityError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| AuthorityError::Pem {
            what,
            reason: e.to_string(),
        })?;
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0));
    let ids = spiffe_ids_of(&parsed);
    let [id] = ids.as_slice() else {
        return Err(AuthorityError::NoTrustDomain(what));
    };
    let trust_domain = id
        .strip_prefix("spiffe://")
        .and_then(|td| td.parse().ok())
        .ok_or(AuthorityError::NoTrustDomain(what))?;
    Ok((trust_domain, not_after))
}

fn ca_params(
    trust_domain: &TrustDomain,
    common_name: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<CertificateParams, AuthorityError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("{common_name} {trust_domain}"));
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
    params.not_after = OffsetDateTime::from(now + lifetime);
    params.serial_number = Some(random_serial());
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive INTEGER: clear the top bit so DER needs no padding byte.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// PEM-encodes DER bytes under `label`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

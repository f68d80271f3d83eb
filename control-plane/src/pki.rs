//! The control plane's PKI on disk: the trust anchor it hands out and the issuer it signs with.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use weft_certs::{Identity, Issuer, LeafKey, TrustAnchor, TrustAnchors, TrustDomain};

/// The trust anchor certificate every proxy is given.
pub const TRUST_ANCHOR_FILE: &str = "trust-anchor.pem";
/// The trust anchor's key (mode 0600): where weft-control finds it to rotate the issuer, unless
/// the operator keeps it offline (`weftctl certs init`, `weft-control --anchor-key-out`).
pub const TRUST_ANCHOR_KEY_FILE: &str = "trust-anchor-key.pem";
/// The issuer certificate.
pub const ISSUER_FILE: &str = "issuer.pem";
/// The issuer's key.
pub const ISSUER_KEY_FILE: &str = "issuer-key.pem";

/// Why the PKI could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file held something unusable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The directory already holds a PKI that must not be overwritten.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// The issuer's trust domain is not the one configured.
    #[error("issuer {path} is for trust domain {found}, but {expected} was configured")]
    TrustDomainMismatch {
        /// The issuer file.
        path: PathBuf,
        /// Its trust domain.
        found: TrustDomain,
        /// The configured one.
        expected: TrustDomain,
    },
}

/// What the control plane needs of its PKI.
#[derive(Debug)]
pub struct Pki {
    /// Signs every leaf.
    pub issuer: Issuer,
    /// The roots peers chain to.
    pub anchors: TrustAnchors,
    /// The trust anchor in PEM, as given to proxies.
    pub anchor_pem: String,
}

/// Writes a new trust anchor and issuer into `dir`, and the anchor's key to `anchor_key` (mode
/// 0600): in `dir` for a control plane that rotates its own issuer, or anywhere the operator
/// keeps it offline. Without it, the issuer can only be replaced by a new anchor.
pub fn write_new(
    dir: &Path,
    trust_domain: &TrustDomain,
    anchor_key: &Path,
) -> Result<(), PkiError> {
    let now = SystemTime::now();
    let invalid = |reason: String| PkiError::Invalid {
        path: dir.to_path_buf(),
        reason,
    };
    let anchor = TrustAnchor::generate(trust_domain, now).map_err(|e| invalid(e.to_string()))?;
    let issuer = anchor
        .generate_issuer(now)
        .map_err(|e| invalid(e.to_string()))?;
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = [TRUST_ANCHOR_FILE, ISSUER_FILE, ISSUER_KEY_FILE].map(|name| dir.join(name));
    for path in files.iter().chain([&anchor_key.to_path_buf()]) {
        if path.exists() {
            return Err(PkiError::Exists(path.clone()));
        }
    }
    write_file(
        &dir.join(TRUST_ANCHOR_FILE),
        &anchor.certificate_pem(),
        false,
    )?;
    write_file(anchor_key, &anchor.key_pem(), true)?;
    write_file(&dir.join(ISSUER_FILE), &issuer.certificate_pem(), false)?;
    write_file(&dir.join(ISSUER_KEY_FILE), issuer.key_pem(), true)?;
    Ok(())
}

/// Loads the PKI from `dir`, checking that the issuer chains to the anchor and, when `expected`
/// is given, that it signs for that trust domain.
pub fn load(dir: &Path, expected: Option<&TrustDomain>) -> Result<Pki, PkiError> {
    let anchor_path = dir.join(TRUST_ANCHOR_FILE);
    let issuer_path = dir.join(ISSUER_FILE);
    let anchor_pem = read(&anchor_path)?;
    let anchors = TrustAnchors::from_pem(anchor_pem.as_bytes()).map_err(|e| PkiError::Invalid {
        path: anchor_path.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_pem(&read(&issuer_path)?, &read(&dir.join(ISSUER_KEY_FILE))?)
        .map_err(|e| PkiError::Invalid {
            path: issuer_path.clone(),
            reason: e.to_string(),
        })?;
    if let Some(expected) = expected.filter(|td| *td != issuer.trust_domain()) {
        return Err(PkiError::TrustDomainMismatch {
            path: issuer_path,
            found: issuer.trust_domain().clone(),
            expected: expected.clone(),
        });
    }
    check_issuer_chains_to_anchor(&issuer, &anchors).map_err(|reason| PkiError::Invalid {
        path: issuer_path,
        reason,
    })?;
    Ok(Pki {
        issuer,
        anchors,
        anchor_pem,
    })
}

/// The admin client certificate `weftctl certs admin` writes.
pub const ADMIN_CERT_FILE: &str = "admin.pem";
/// Its key.
pub const ADMIN_KEY_FILE: &str = "admin-key.pem";

/// The identity an operator's admin certificate carries by default (`weftctl certs admin`).
pub fn admin_identity(trust_domain: &TrustDomain) -> Identity {
    Identity::new(trust_domain.clone(), "weft", "weft-admin")
        .unwrap_or_else(|e| unreachable!("constant labels are valid: {e}"))
}

/// Issues an admin client certificate from the issuer in `pki_dir` into `out`; returns the
/// certificate and key files and the identity certified.
pub fn issue_admin(
    pki_dir: &Path,
    out: &Path,
    identity: Option<Identity>,
    ttl: Duration,
) -> Result<(PathBuf, PathBuf, Identity), PkiError> {
    let pki = load(pki_dir, None)?;
    let trust_domain = pki.issuer.trust_domain().clone();
    let identity = match identity {
        Some(identity) => identity,
        None => admin_identity(&trust_domain),
    };
    let invalid = |reason: String| PkiError::Invalid {
        path: pki_dir.to_path_buf(),
        reason,
    };
    let key = LeafKey::generate().map_err(|e| invalid(e.to_string()))?;
    let issued = pki
        .issuer
        .issue(key.public_key(), &identity, ttl, SystemTime::now())
        .map_err(|e| invalid(e.to_string()))?;
    fs::create_dir_all(out).map_err(|source| PkiError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let chain: String = issued
        .chain
        .iter()
        .map(|c| weft_certs::pem_encode("CERTIFICATE", c))
        .collect();
    let (cert_path, key_path) = (out.join(ADMIN_CERT_FILE), out.join(ADMIN_KEY_FILE));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(PkiError::Exists(path.clone()));
        }
    }
    write_file(&cert_path, &chain, false)?;
    write_file(&key_path, &key.private_key_pem(), true)?;
    Ok((cert_path, key_path, identity))
}

/// True when `dir` holds no PKI at all (so one may be generated there).
pub fn is_empty(dir: &Path) -> bool {
    [TRUST_ANCHOR_FILE, ISSUER_FILE, ISSUER_KEY_FILE]
        .iter()
        .all(|name| !dir.join(name).exists())
}

/// Signs a throwaway leaf and verifies it the way a proxy would: this proves the issuer chains
/// to the anchor before any proxy finds out the hard way.
fn check_issuer_chains_to_anchor(issuer: &Issuer, anchors: &TrustAnchors) -> Result<(), String> {
    let probe = Identity::new(issuer.trust_domain().clone(), "weft", "startup-check")
        .map_err(|e| e.to_string())?;
    let key = LeafKey::generate().map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let issued = issuer
        .issue(key.public_key(), &probe, Duration::from_secs(60), now)
        .map_err(|e| e.to_string())?;
    weft_certs::verify_peer(anchors, &issued.chain, &probe, now)
        .map_err(|e| format!("issuer does not chain to the trust anchor: {e}"))?;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` with `contents` atomically (a new file renamed over it): a crash leaves the
/// old file or the new, never half of one.
pub fn replace_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let staged = path.with_extension("new");
    let _ = fs::remove_file(&staged);
    write_file(&staged, contents, secret)?;
    fs::rename(&staged, path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_pki_loads_back_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let td: TrustDomain = "prod.example".parse().unwrap();
        assert!(is_empty(dir.path()));
        write_new(dir.path(), &td, &dir.path().join(TRUST_ANCHOR_KEY_FILE)).unwrap();
        assert!(dir.path().join(TRUST_ANCHOR_KEY_FILE).exists());
        let pki = load(dir.path(), Some(&td)).unwrap();
        assert_eq!(pki.issuer.trust_domain(), &td);
        assert!(matches!(
            write_new(dir.path(), &td, &dir.path().join("elsewhere-key.pem")),
            Err(PkiError::Exists(_))
        ));
        let other: TrustDomain = "cluster.local".parse().unwrap();
        assert!(matches!(
            load(dir.path(), Some(&other)),
            Err(PkiError::TrustDomainMismatch { .. })
        ));
    }

    #[test]
    fn issuer_from_another_anchor_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let td = TrustDomain::cluster_local();
        let keys = tempfile::tempdir().unwrap();
        write_new(a.path(), &td, &keys.path().join("a.pem")).unwrap();
        write_new(b.path(), &td, &keys.path().join("b.pem")).unwrap();
        assert!(!a.path().join(TRUST_ANCHOR_KEY_FILE).exists());
        fs::copy(b.path().join(TRUST_ANCHOR_FILE), a.path().join("other.pem")).unwrap();
        fs::rename(a.path().join("other.pem"), a.path().join(TRUST_ANCHOR_FILE)).unwrap();
        let err = load(a.path(), None).unwrap_err().to_string();
        assert!(err.contains("does not chain to the trust anchor"), "{err}");
    }
}

//! The admin credential: a bearer token that `weftctl` presents to the admin API.
//!
//! The admin API is never open. On first start the control plane creates a random credential in
//! its data dir (mode 0600), or it uses the one in the file given by flag.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use base64::Engine;

/// The credential file the control plane creates in its data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Shortest credential accepted from a file given by flag.
const MIN_LEN: usize = 16;

/// Why the credential could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file could not be read or created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds too short a token.
    #[error("{0}: admin token must be at least {MIN_LEN} characters")]
    TooShort(PathBuf),
}

/// A credential's SHA-256; requests are compared by hash so the comparison time says nothing
/// about the secret.
#[derive(Clone)]
pub struct AdminCredential {
    hash: digest::Digest,
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCredential(..)")
    }
}

/// A new random bearer token: 32 bytes, 43 characters.
pub fn new_token() -> String {
    let secret: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
}

impl AdminCredential {
    /// Reads the credential from `path`, creating a new random one there if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, CredentialError> {
        let io = |source| CredentialError::Io {
            path: path.to_path_buf(),
            source,
        };
        match fs::read_to_string(path) {
            Ok(token) => Self::from_token(token.trim())
                .ok_or_else(|| CredentialError::TooShort(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::OpenOptionsExt;
                let token = new_token();
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                file.write_all(format!("{token}\n").as_bytes())
                    .map_err(io)?;
                file.sync_all().map_err(io)?;
                tracing::info!(path = %path.display(), "created the admin credential");
                Self::from_token(&token)
                    .ok_or_else(|| CredentialError::TooShort(path.to_path_buf()))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Reads an existing credential from `path`.
    pub fn load(path: &Path) -> Result<Self, CredentialError> {
        let token = fs::read_to_string(path).map_err(|source| CredentialError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_token(token.trim()).ok_or_else(|| CredentialError::TooShort(path.to_path_buf()))
    }

    fn from_token(token: &str) -> Option<Self> {
        (token.len() >= MIN_LEN).then(|| Self {
            hash: digest::digest(&digest::SHA256, token.as_bytes()),
        })
    }

    /// True when `presented` is the credential.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = digest::digest(&digest::SHA256, presented.as_bytes());
        presented.as_ref() == self.hash.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        let first = AdminCredential::load_or_create(&path).unwrap();
        let token = fs::read_to_string(&path).unwrap();
        assert!(first.matches(token.trim()));
        assert!(!first.matches("guess"));
        let second = AdminCredential::load_or_create(&path).unwrap();
        assert!(second.matches(token.trim()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn short_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            AdminCredential::load(&path),
            Err(CredentialError::TooShort(_))
        ));
    }
}

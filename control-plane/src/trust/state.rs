//! What survives a restart of a rotation in progress: `trust.json` beside the PKI, and the new
//! anchor's files while it waits to sign an issuer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pki::{self, PkiError};

/// The rotation state file, in the PKI directory.
pub const STATE_FILE: &str = "trust.json";
/// The new anchor's certificate, from step 1 to step 2 of an anchor rotation.
pub const NEXT_ANCHOR_FILE: &str = "next-trust-anchor.pem";
/// The new anchor's key (mode 0600), from step 1 to step 2.
pub const NEXT_ANCHOR_KEY_FILE: &str = "next-trust-anchor-key.pem";

/// The trust state as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustState {
    /// Bumped whenever the bundle changes: the version of the mesh snapshot proxies apply.
    pub bundle_version: u64,
    /// The anchor rotation in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<AnchorRotation>,
}

/// An anchor rotation between its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnchorRotation {
    /// The step taken last.
    pub step: Step,
    /// The anchor being retired, PEM.
    pub old_anchor: String,
    /// The anchor taking over, PEM.
    pub new_anchor: String,
    /// The bundle version that carries both anchors (step 1), to be applied by every proxy.
    pub bundle_version: u64,
    /// The fingerprint of the issuer under the new anchor (step 2), to be held by every proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_issuer: Option<String>,
}

/// The steps of an anchor rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Step 1: the bundle of both anchors is out.
    Bundled,
    /// Step 2: the issuer is under the new anchor.
    Switched,
}

impl TrustState {
    /// Reads the state in `dir` (none yet: the default).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| PkiError::Invalid {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(PkiError::Io { path, source }),
        }
    }

    /// Writes the state into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| PkiError::Invalid {
            path: dir.join(STATE_FILE),
            reason: e.to_string(),
        })?;
        pki::replace_file(&dir.join(STATE_FILE), &text, false)
    }
}

/// Where `name` lives in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TrustState::load(dir.path()).unwrap(), TrustState::default());
        let state = TrustState {
            bundle_version: 2,
            rotation: Some(AnchorRotation {
                step: Step::Bundled,
                old_anchor: "old".to_string(),
                new_anchor: "new".to_string(),
                bundle_version: 2,
                new_issuer: None,
            }),
        };
        state.save(dir.path()).unwrap();
        assert_eq!(TrustState::load(dir.path()).unwrap(), state);
    }
}

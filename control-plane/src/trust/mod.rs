//! The trust the mesh runs on, and how it changes without a restart: the issuer in force (hot
//! swapped when it rotates), the bundle of trust anchors (pushed to every proxy in the mesh
//! snapshot, and used by the control plane's own TLS), and the three steps of an anchor
//! rotation, each taken only once every connected proxy has taken the one before.

mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use weft_api::discovery::MeshSnapshot;
use weft_certs::{CertStore, Issuer, TrustAnchor, TrustAnchors, TrustDomain, TrustStore};
use weft_telemetry::Drain;

use self::state::{AnchorRotation, NEXT_ANCHOR_FILE, NEXT_ANCHOR_KEY_FILE, Step, TrustState};
use crate::discovery::ProxyRegistry;
use crate::metrics::Metrics;
use crate::pki::{self, PkiError};
use crate::serving_cert;

/// Expiry closer than this is warned about, in the log and by the shipped alerting rules.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often expiry is looked at.
const EXPIRY_CHECK: Duration = Duration::from_secs(3600);

/// Why a rotation was not done.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Not now, or not without something the operator must give: says what.
    #[error("{0}")]
    Precondition(String),
    /// The key given is not usable.
    #[error("{0}")]
    InvalidKey(String),
    /// Files or generation failed.
    #[error("{0}")]
    Internal(String),
}

impl From<PkiError> for RotationError {
    fn from(error: PkiError) -> Self {
        Self::Internal(error.to_string())
    }
}

/// The trust in force.
#[derive(Debug)]
pub struct Trust {
    dir: PathBuf,
    trust_domain: TrustDomain,
    networks: Vec<String>,
    issuer: ArcSwap<Issuer>,
    anchors: Arc<TrustStore>,
    serving: Arc<CertStore>,
    mesh: watch::Sender<Arc<MeshSnapshot>>,
    /// Held through a rotation, so two never interleave.
    state: tokio::sync::Mutex<TrustState>,
    metrics: Metrics,
}

impl Trust {
    /// The trust of the PKI in `dir` (already loaded and checked as `pki`), the control plane's
    /// serving certificate in `serving` issued from it, and `networks` for the mesh snapshot.
    pub fn load(
        dir: PathBuf,
        pki: pki::Pki,
        networks: Vec<String>,
        serving: Arc<CertStore>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, PkiError> {
        let state = TrustState::load(&dir)?;
        let snapshot = MeshSnapshot {
            version: state.bundle_version.to_string(),
            networks: networks.clone(),
            trust_anchors_pem: pki.anchor_pem.clone(),
        };
        let (mesh, _) = watch::channel(Arc::new(snapshot));
        let trust = Arc::new(Self {
            dir,
            trust_domain: pki.issuer.trust_domain().clone(),
            networks,
            issuer: ArcSwap::from_pointee(pki.issuer),
            anchors: TrustStore::new(pki.anchors),
            serving,
            mesh,
            state: tokio::sync::Mutex::new(state),
            metrics,
        });
        trust.update_expiry_metrics();
        Ok(trust)
    }

    /// The issuer leaves are signed with now.
    pub fn issuer(&self) -> Arc<Issuer> {
        self.issuer.load_full()
    }

    /// The anchors the control plane's own TLS verifies clients against.
    pub fn anchors(&self) -> Arc<TrustStore> {
        self.anchors.clone()
    }

    /// The mesh snapshot (networks and trust bundle), as it changes.
    pub fn mesh(&self) -> watch::Receiver<Arc<MeshSnapshot>> {
        self.mesh.subscribe()
    }

    /// A new issuer under the current anchor, in force at once. Needs the anchor's key: the one
    /// kept beside the PKI, or `anchor_key` (PEM) given for this call only.
    pub async fn rotate_issuer(&self, anchor_key: Option<String>) -> Result<String, RotationError> {
        let state = self.state.lock().await;
        if let Some(rotation) = &state.rotation {
            return Err(RotationError::Precondition(format!(
                "an anchor rotation is in progress (step {} of 3 taken); finish it with `weftctl certs rotate-anchor` first",
                step_number(rotation.step)
            )));
        }
        let anchor_pem = self.read(pki::TRUST_ANCHOR_FILE)?;
        let key = match anchor_key {
            Some(key) => key,
            None => self.read_key(pki::TRUST_ANCHOR_KEY_FILE)?,
        };
        let anchor = TrustAnchor::from_pem(&anchor_pem, &key)
            .map_err(|e| RotationError::InvalidKey(e.to_string()))?;
        let issuer = anchor
            .generate_issuer(SystemTime::now())
            .map_err(|e| RotationError::Internal(e.to_string()))?;
        let fingerprint = weft_certs::fingerprint(issuer.certificate());
        let until = issuer.not_after();
        self.set_issuer(issuer)?;
        tracing::warn!(issuer = %fingerprint, "issuer rotated");
        Ok(format!(
            "new issuer {fingerprint} under trust anchor {anchor}, valid until {until}; proxies get leaves of it as they renew, and their current ones stay valid until they expire",
            anchor = weft_certs::fingerprint(anchor.certificate()),
            until = humantime::format_rfc3339_seconds(until),
        ))
    }

    /// Takes the next step of an anchor rotation, if every connected proxy (in `registry`) has
    /// taken the one before.
    pub async fn rotate_anchor(&self, registry: &ProxyRegistry) -> Result<String, RotationError> {
        let mut state = self.state.lock().await;
        match state.rotation.clone() {
            None => self.bundle_new_anchor(&mut state),
            Some(rotation) if rotation.step == Step::Bundled => {
                let lagging = registry.mesh_laggards(rotation.bundle_version);
                if !lagging.is_empty() {
                    return Err(RotationError::Precondition(format!(
                        "not every proxy has applied trust bundle version {} yet: {}; run again once they have (weftctl proxy-status, watch \"mesh\")",
                        rotation.bundle_version,
                        lagging.join(", ")
                    )));
                }
                self.switch_issuer(&mut state, rotation)
            }
            Some(rotation) => {
                let issuer = rotation.new_issuer.clone().unwrap_or_default();
                let lagging = registry.issuer_laggards(&issuer);
                if !lagging.is_empty() {
                    return Err(RotationError::Precondition(format!(
                        "not every proxy holds a certificate of the new issuer {issuer} yet: {}; they renew within the leaf lifetime (weftctl proxy-status, CERT ISSUER)",
                        lagging.join(", ")
                    )));
                }
                self.drop_old_anchor(&mut state, rotation)
            }
        }
    }

    /// Step 1: a new anchor, sent out beside the old one.
    fn bundle_new_anchor(&self, state: &mut TrustState) -> Result<String, RotationError> {
        let old_anchor = self.read(pki::TRUST_ANCHOR_FILE)?;
        let anchor = TrustAnchor::generate(&self.trust_domain, SystemTime::now())
            .map_err(|e| RotationError::Internal(e.to_string()))?;
        pki::replace_file(
            &state::path(&self.dir, NEXT_ANCHOR_KEY_FILE),
            &anchor.key_pem(),
            true,
        )?;
        pki::replace_file(
            &state::path(&self.dir, NEXT_ANCHOR_FILE),
            &anchor.certificate_pem(),
            false,
        )?;
        let bundle = format!("{}\n{}", old_anchor.trim_end(), anchor.certificate_pem());
        let version = self.set_bundle(state, &bundle)?;
        state.rotation = Some(AnchorRotation {
            step: Step::Bundled,
            old_anchor,
            new_anchor: anchor.certificate_pem(),
            bundle_version: version,
            new_issuer: None,
        });
        state.save(&self.dir)?;
        let fingerprint = weft_certs::fingerprint(anchor.certificate());
        tracing::warn!(anchor = %fingerprint, version, "anchor rotation step 1: bundle sent");
        Ok(format!(
            "step 1 of 3: new trust anchor {fingerprint}; the bundle of the old and new anchors goes to every proxy as version {version} (and is in {bundle_file}). Run `weftctl certs rotate-anchor` again once every proxy has applied it (weftctl proxy-status, watch \"mesh\").",
            bundle_file = state::path(&self.dir, pki::TRUST_ANCHOR_FILE).display()
        ))
    }

    /// Step 2: the issuer moves to the new anchor.
    fn switch_issuer(
        &self,
        state: &mut TrustState,
        mut rotation: AnchorRotation,
    ) -> Result<String, RotationError> {
        let key = self.read_key(NEXT_ANCHOR_KEY_FILE)?;
        let anchor = TrustAnchor::from_pem(&rotation.new_anchor, &key)
            .map_err(|e| RotationError::Internal(e.to_string()))?;
        let issuer = anchor
            .generate_issuer(SystemTime::now())
            .map_err(|e| RotationError::Internal(e.to_string()))?;
        let fingerprint = weft_certs::fingerprint(issuer.certificate());
        self.set_issuer(issuer)?;
        // The new anchor's key is now the one that signs issuers; the old one retires with
        // its anchor.
        pki::replace_file(
            &state::path(&self.dir, pki::TRUST_ANCHOR_KEY_FILE),
            &key,
            true,
        )?;
        let _ = std::fs::remove_file(state::path(&self.dir, NEXT_ANCHOR_KEY_FILE));
        let _ = std::fs::remove_file(state::path(&self.dir, NEXT_ANCHOR_FILE));
        rotation.step = Step::Switched;
        rotation.new_issuer = Some(fingerprint.clone());
        state.rotation = Some(rotation);
        state.save(&self.dir)?;
        tracing::warn!(issuer = %fingerprint, "anchor rotation step 2: issuer switched");
        Ok(format!(
            "step 2 of 3: the issuer {fingerprint} now signs under the new anchor; proxies get leaves of it as they renew (within the leaf lifetime). Run `weftctl certs rotate-anchor` again once every proxy holds one (weftctl proxy-status, CERT ISSUER)."
        ))
    }

    /// Step 3: the old anchor goes.
    fn drop_old_anchor(
        &self,
        state: &mut TrustState,
        rotation: AnchorRotation,
    ) -> Result<String, RotationError> {
        let version = self.set_bundle(state, &rotation.new_anchor)?;
        state.rotation = None;
        state.save(&self.dir)?;
        tracing::warn!(version, "anchor rotation step 3: old anchor dropped");
        Ok(format!(
            "step 3 of 3: the old trust anchor is dropped; the bundle holds the new one alone (version {version}). Give {} to proxies started from now on.",
            state::path(&self.dir, pki::TRUST_ANCHOR_FILE).display()
        ))
    }

    /// Puts `issuer` in force: on disk, for signing, and for the control plane's own certificate.
    fn set_issuer(&self, issuer: Issuer) -> Result<(), RotationError> {
        pki::replace_file(
            &state::path(&self.dir, pki::ISSUER_KEY_FILE),
            issuer.key_pem(),
            true,
        )?;
        pki::replace_file(
            &state::path(&self.dir, pki::ISSUER_FILE),
            &issuer.certificate_pem(),
            false,
        )?;
        serving_cert::issue(&issuer, &self.serving).map_err(RotationError::Internal)?;
        self.issuer.store(Arc::new(issuer));
        self.update_expiry_metrics();
        Ok(())
    }

    /// Puts the anchors of `bundle` (PEM) in force: on disk, for the control plane's TLS, and in
    /// the mesh snapshot under a new version, which is returned.
    fn set_bundle(&self, state: &mut TrustState, bundle: &str) -> Result<u64, RotationError> {
        let anchors = TrustAnchors::from_pem(bundle.as_bytes())
            .map_err(|e| RotationError::Internal(e.to_string()))?;
        pki::replace_file(
            &state::path(&self.dir, pki::TRUST_ANCHOR_FILE),
            bundle,
            false,
        )?;
        self.anchors.set(anchors);
        state.bundle_version += 1;
        state.save(&self.dir)?;
        self.mesh.send_replace(Arc::new(MeshSnapshot {
            version: state.bundle_version.to_string(),
            networks: self.networks.clone(),
            trust_anchors_pem: bundle.to_string(),
        }));
        self.update_expiry_metrics();
        Ok(state.bundle_version)
    }

    fn read(&self, name: &str) -> Result<String, RotationError> {
        let path = state::path(&self.dir, name);
        std::fs::read_to_string(&path)
            .map_err(|e| RotationError::Internal(format!("{}: {e}", path.display())))
    }

    fn read_key(&self, name: &str) -> Result<String, RotationError> {
        let path = state::path(&self.dir, name);
        std::fs::read_to_string(&path).map_err(|_| {
            RotationError::Precondition(format!(
                "the trust anchor's key is not at {}: give it with --anchor-key FILE",
                path.display()
            ))
        })
    }

    /// When the issuer and the earliest anchor expire, as metrics.
    fn update_expiry_metrics(&self) {
        let (issuer, anchor) = self.expiries();
        self.metrics.issuer_expiry.set(unix(issuer));
        if let Some(anchor) = anchor {
            self.metrics.trust_anchor_expiry.set(unix(anchor));
        }
    }

    /// The issuer's expiry, and the earliest of the anchors'.
    fn expiries(&self) -> (SystemTime, Option<SystemTime>) {
        let anchor = self.mesh.borrow().trust_anchors_pem.clone();
        let earliest = anchor_expiries(&anchor).into_iter().min();
        (self.issuer.load().not_after(), earliest)
    }

    /// Warns, from [`EXPIRY_WARNING`] before, that the issuer or an anchor expires; until drained.
    pub async fn warn_before_expiry(self: Arc<Self>, drain: Drain) {
        loop {
            let (issuer, anchor) = self.expiries();
            for warning in expiry_warnings(issuer, anchor, SystemTime::now()) {
                tracing::warn!("{warning}");
            }
            tokio::select! {
                () = tokio::time::sleep(EXPIRY_CHECK) => {}
                () = drain.signaled() => return,
            }
        }
    }
}

/// What to warn of at `now`, given when the issuer and the earliest anchor expire.
fn expiry_warnings(issuer: SystemTime, anchor: Option<SystemTime>, now: SystemTime) -> Vec<String> {
    let soon = now + EXPIRY_WARNING;
    let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let mut warnings = Vec::new();
    if issuer < soon {
        warnings.push(format!(
            "the issuer expires within 30 days, at {}: rotate it (weftctl certs rotate-issuer)",
            at(issuer)
        ));
    }
    if let Some(anchor) = anchor.filter(|anchor| *anchor < soon) {
        warnings.push(format!(
            "a trust anchor expires within 30 days, at {}: rotate it (weftctl certs rotate-anchor)",
            at(anchor)
        ));
    }
    warnings
}

fn anchor_expiries(bundle: &str) -> Vec<SystemTime> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(bundle.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|cert| weft_certs::not_after_of(&cert))
        .collect()
}

fn step_number(step: Step) -> u8 {
    match step {
        Step::Bundled => 1,
        Step::Switched => 2,
    }
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_warned_of_from_thirty_days_before() {
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        assert!(expiry_warnings(now + 31 * day, Some(now + 3000 * day), now).is_empty());
        let warnings = expiry_warnings(now + 29 * day, Some(now + 10 * day), now);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("rotate-issuer"), "{warnings:?}");
        assert!(warnings[1].contains("rotate-anchor"), "{warnings:?}");
    }
}

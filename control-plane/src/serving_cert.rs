//! The control plane's own certificate, issued by its own issuer and renewed in the background.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft_certs::{CertStore, Credential, Identity, Issuer, LeafKey, TrustDomain};
use weft_telemetry::Drain;

use crate::trust::Trust;

/// Lifetime of the control plane's serving certificate.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Retry delay when renewal fails (it only fails if the issuer is unusable).
const RETRY: Duration = Duration::from_secs(30);

/// The identity proxies expect the control plane to present.
pub fn control_plane_identity(trust_domain: &TrustDomain) -> Identity {
    Identity::new(trust_domain.clone(), "weft", "weft-control")
        .unwrap_or_else(|e| unreachable!("constant labels are valid: {e}"))
}

/// Issues a fresh serving certificate into `store`; returns its notAfter.
pub fn issue(issuer: &Issuer, store: &CertStore) -> Result<SystemTime, String> {
    let identity = control_plane_identity(issuer.trust_domain());
    let key = LeafKey::generate().map_err(|e| e.to_string())?;
    let issued = issuer
        .issue(key.public_key(), &identity, LIFETIME, SystemTime::now())
        .map_err(|e| e.to_string())?;
    let certified = key.certify(issued.chain).map_err(|e| e.to_string())?;
    store.set(Credential {
        key: certified,
        identity,
        valid_from: SystemTime::now(),
        not_after: issued.not_after,
    });
    Ok(issued.not_after)
}

/// Renews the serving certificate on the usual schedule, from the issuer in force in `trust`,
/// until `drain` triggers. (A rotation reissues it at once, besides.)
pub async fn keep_fresh(
    trust: Arc<Trust>,
    store: Arc<CertStore>,
    mut not_after: SystemTime,
    drain: Drain,
) {
    loop {
        let current = store.current().map_or(not_after, |c| c.not_after);
        not_after = not_after.max(current);
        let wait = weft_certs::renew_after(SystemTime::now(), not_after, rand::random());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = drain.signaled() => return,
        }
        match issue(&trust.issuer(), &store) {
            Ok(renewed) => not_after = renewed,
            Err(error) => {
                tracing::error!(%error, "cannot renew the control plane's serving certificate");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

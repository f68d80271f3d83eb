//! Telling the control plane which issuer the proxy's certificate comes from, so an anchor
//! rotation knows when every proxy holds a leaf of the new one.

use std::time::Duration;

use super::Inner;

/// What the report is filed under (`weftctl proxy-status`, CERT ISSUER).
const CERTIFICATE_RESOURCE: &str = "certificate";
/// How often the report is repeated: a report lost (the control plane away, or not yet knowing
/// the proxy) is made good within this.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Inner {
    /// Reports the current certificate's issuer every [`REPORT_EVERY`], until drained.
    pub(super) async fn report_certificate(&self) {
        if !self.certified().await {
            return;
        }
        loop {
            if let Some(issuer) = self
                .certs
                .current()
                .and_then(|credential| credential.key.cert.get(1).map(weft_certs::fingerprint))
            {
                self.report(CERTIFICATE_RESOURCE, &issuer, String::new());
            }
            tokio::select! {
                () = tokio::time::sleep(REPORT_EVERY) => {}
                () = self.drain.signaled() => return,
            }
        }
    }
}

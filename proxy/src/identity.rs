//! Obtains the proxy's certificate from the control plane and keeps it fresh.
//!
//! The key pair is generated here, in memory, for every certificate; only CSRs leave. The first
//! request proves the identity with the join token; renewals present the current certificate
//! over mTLS instead, and fall back to the token only if that is refused (say, after the
//! certificate expired while the control plane was away).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft_api::client::ControlPlaneTarget;
use weft_api::identity::CertifyRequest;
use weft_api::identity::identity_client::IdentityClient;
use weft_certs::{CertStore, Credential, Identity, LeafKey, TrustStore};
use weft_telemetry::Drain;

use crate::metrics::ProxyMetrics;

/// First retry delay after a failed request; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between retries: short, since the proxy may be unready until it succeeds.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A Certify call that takes longer is abandoned and retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one certificate request failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The key or CSR could not be made.
    #[error("{0}")]
    Key(#[from] weft_certs::KeyError),
    /// The token file could not be read.
    #[error("cannot read token {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The control plane could not be reached.
    #[error("{0}")]
    Connect(#[from] weft_api::client::ConnectError),
    /// The control plane refused.
    #[error("control plane refused: {code:?}: {message}", code = .0.code(), message = .0.message())]
    Refused(tonic::Status),
    /// The call took too long.
    #[error("certify timed out")]
    Timeout,
    /// What came back does not verify as our identity under our trust anchors.
    #[error("issued certificate does not verify: {0}")]
    Unverifiable(String),
}

/// Requests and renews the proxy's certificate.
#[derive(Debug, Clone)]
pub struct IdentityDaemon {
    target: ControlPlaneTarget,
    identity: Identity,
    token_path: PathBuf,
    trust: Arc<TrustStore>,
    certs: Arc<CertStore>,
    metrics: ProxyMetrics,
}

impl IdentityDaemon {
    /// A daemon that keeps `certs` filled with a certificate for `identity`.
    pub fn new(
        target: ControlPlaneTarget,
        identity: Identity,
        token_path: PathBuf,
        trust: Arc<TrustStore>,
        certs: Arc<CertStore>,
        metrics: ProxyMetrics,
    ) -> Self {
        Self {
            target,
            identity,
            token_path,
            trust,
            certs,
            metrics,
        }
    }

    /// Certifies, then renews on schedule, retrying with jittered backoff, until `drain`.
    pub async fn run(self, drain: Drain) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let certified = tokio::select! {
                certified = self.certify() => certified,
                () = drain.signaled() => return,
            };
            let wait = match certified {
                Ok(not_after) => {
                    backoff = MIN_BACKOFF;
                    let wait =
                        weft_certs::renew_after(SystemTime::now(), not_after, rand::random());
                    tracing::info!(identity = %self.identity, valid_until = %humantime::format_rfc3339_seconds(not_after), renew_in = ?wait, "certificate obtained");
                    wait
                }
                Err(error) => {
                    let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tracing::warn!(%error, retry_in = ?wait, "cannot obtain a certificate");
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = drain.signaled() => return,
            }
        }
    }

    /// Obtains one certificate and installs it; returns its notAfter.
    async fn certify(&self) -> Result<SystemTime, CertifyError> {
        let key = LeafKey::generate()?;
        let csr = key.csr(&self.identity)?.to_vec();
        let holds_valid_cert = self.certs.is_valid_at(SystemTime::now());
        let result = if holds_valid_cert {
            match self.call(csr.clone(), String::new()).await {
                // Refused by the control plane, or already at the handshake (say, after the
                // trust anchor changed): the token may still prove who we are.
                Err(error @ (CertifyError::Refused(_) | CertifyError::Connect(_))) if !matches!(&error, CertifyError::Refused(s) if s.code() != tonic::Code::Unauthenticated) =>
                {
                    tracing::info!(%error, "renewal by certificate failed; proving identity with the token");
                    self.call(csr, self.read_token().await?).await
                }
                other => other,
            }
        } else {
            self.call(csr, self.read_token().await?).await
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(CertifyError::Refused(status)) => code_label(status.code()),
            Err(_) => "unavailable",
        };
        self.metrics.cert_renewals.with_label_values(&[label]).inc();
        let chain = result?;
        let chain: Vec<_> = chain
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
        let now = SystemTime::now();
        weft_certs::verify_peer(&self.trust.anchors(), &chain, &self.identity, now)
            .map_err(|e| CertifyError::Unverifiable(e.to_string()))?;
        let not_after = chain
            .first()
            .and_then(weft_certs::not_after_of)
            .ok_or_else(|| CertifyError::Unverifiable("no notAfter".to_string()))?;
        self.certs.set(Credential {
            key: key.certify(chain)?,
            identity: self.identity.clone(),
            valid_from: now,
            not_after,
        });
        self.metrics.cert_expiry.set(
            not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        Ok(not_after)
    }

    /// One Certify call on a fresh connection, so the certificate presented is the current one.
    async fn call(&self, csr: Vec<u8>, token: String) -> Result<Vec<Vec<u8>>, CertifyError> {
        let request = CertifyRequest {
            identity: self.identity.to_string(),
            csr,
            token,
        };
        let call = async {
            let channel = self.target.channel().await?;
            IdentityClient::new(channel)
                .certify(request)
                .await
                .map_err(CertifyError::Refused)
        };
        let response = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| CertifyError::Timeout)??;
        Ok(response.into_inner().chain)
    }

    async fn read_token(&self) -> Result<String, CertifyError> {
        // Read on every use: a projected token is rotated in place.
        tokio::fs::read_to_string(&self.token_path)
            .await
            .map(|token| token.trim().to_string())
            .map_err(|source| CertifyError::Token {
                path: self.token_path.clone(),
                source,
            })
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::Unavailable => "unavailable",
        _ => "error",
    }
}

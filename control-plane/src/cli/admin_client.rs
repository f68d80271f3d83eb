//! A connection to the admin API: TLS verified against the trust anchor and the control plane's
//! identity, and the admin credential as a bearer token.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use weft_api::admin::admin_client::AdminClient as AdminGrpc;
use weft_api::client::ControlPlaneTarget;
use weft_certs::{ALPN_H2, CertStore, Credential, TrustAnchors};

use super::{Cli, CliError};
use crate::admin_credential::ADMIN_TOKEN_FILE;
use crate::serving_cert::control_plane_identity;

/// The largest answer weftctl reads from the admin API.
const MAX_ANSWER: usize = 64 << 20;

/// An authenticated admin API client.
#[derive(Debug)]
pub struct AdminClient {
    /// The generated client, with the credential attached to every call.
    pub admin: AdminGrpc<InterceptedService<Channel, BearerToken>>,
}

/// Adds `authorization: Bearer <token>` to every call (none when a client certificate is used).
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

impl AdminClient {
    /// Connects as `cli`'s flags say.
    pub async fn connect(cli: &Cli) -> Result<Self, CliError> {
        let certs = CertStore::new();
        let bearer = match (&cli.client_cert, &cli.client_key) {
            // A client certificate proves the admin identity: no token needed.
            (Some(cert), Some(key)) => {
                let read = |path: &std::path::PathBuf| {
                    std::fs::read(path).map_err(|e| CliError(format!("{}: {e}", path.display())))
                };
                let credential = Credential::from_pem(&read(cert)?, &read(key)?)
                    .map_err(|e| CliError(format!("{}: {e}", cert.display())))?;
                certs.set(credential);
                None
            }
            _ => Some(bearer_token(cli)?),
        };

        let anchor_path = cli.trust_anchor_path();
        let anchor_pem = std::fs::read(&anchor_path)
            .map_err(|e| CliError(format!("trust anchor {}: {e}", anchor_path.display())))?;
        let anchors = TrustAnchors::from_pem(&anchor_pem)
            .map_err(|e| CliError(format!("trust anchor {}: {e}", anchor_path.display())))?;
        let trust_domain = anchors.trust_domain().cloned().ok_or_else(|| {
            CliError(format!(
                "trust anchor {}: carries no spiffe://<trust-domain> URI SAN",
                anchor_path.display()
            ))
        })?;

        let tls = weft_certs::client_config(&anchors, certs, &[ALPN_H2])
            .map_err(|e| CliError(format!("TLS setup: {e}")))?;
        let target = ControlPlaneTarget {
            addr: cli.server.clone(),
            server_name: control_plane_identity(&trust_domain).dns_name(),
            tls: Arc::new(tls),
        };
        let channel = target
            .channel()
            .await
            .map_err(|e| CliError(e.to_string()))?;
        Ok(Self {
            // Answers that gather many proxies' (ProxyMetrics, ProxyStatus) outgrow tonic's
            // default 4 MiB.
            admin: AdminGrpc::with_interceptor(channel, BearerToken(bearer))
                .max_decoding_message_size(MAX_ANSWER),
        })
    }
}

fn bearer_token(cli: &Cli) -> Result<MetadataValue<tonic::metadata::Ascii>, CliError> {
    let token_path = cli
        .admin_token_file
        .clone()
        .unwrap_or_else(|| cli.data_dir.join(ADMIN_TOKEN_FILE));
    let token = std::fs::read_to_string(&token_path)
        .map_err(|e| CliError(format!("admin token {}: {e}", token_path.display())))?;
    format!("Bearer {}", token.trim()).parse().map_err(|_| {
        CliError(format!(
            "admin token {}: not a valid header value",
            token_path.display()
        ))
    })
}

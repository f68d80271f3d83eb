//! `weftctl token`.

use std::time::{Duration, SystemTime};

use weft_api::admin::{CreateJoinTokenRequest, ListJoinTokensRequest, RevokeJoinTokenRequest};

use super::{AdminClient, CliError};

/// Join token commands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue a join token proving an identity; prints only the token.
    Create {
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        identity: String,
        /// Lifetime, e.g. 1h or 7d [default: the control plane's --join-token-ttl].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List the join tokens that have not expired (ids, never secrets).
    List,
    /// Revoke a join token by id.
    Revoke {
        /// The id shown by `weftctl token list`.
        id: String,
    },
}

pub(super) async fn run(
    command: &TokenCommand,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    match command {
        TokenCommand::Create { identity, ttl } => {
            let response = client
                .admin
                .create_join_token(CreateJoinTokenRequest {
                    identity: identity.clone(),
                    ttl_seconds: ttl.map_or(0, |ttl| ttl.as_secs().max(1)),
                })
                .await?
                .into_inner();
            let _ = writeln!(out, "{}", response.token);
        }
        TokenCommand::List => {
            let tokens = client
                .admin
                .list_join_tokens(ListJoinTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let _ = writeln!(out, "{:<18} {:<24} IDENTITY", "ID", "EXPIRES");
            for token in tokens {
                let expires = token
                    .expires_at
                    .and_then(|ts| SystemTime::try_from(ts).ok())
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default();
                let _ = writeln!(out, "{:<18} {:<24} {}", token.id, expires, token.identity);
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .admin
                .revoke_join_token(RevokeJoinTokenRequest { id: id.clone() })
                .await?;
            let _ = writeln!(out, "revoked {id}");
        }
    }
    Ok(())
}

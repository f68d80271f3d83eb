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
        /// How many certificates the token may obtain [default: no limit].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        uses: Option<u32>,
    },
    /// List the join tokens that have not expired, and revoked ones (ids, never secrets).
    List,
    /// Revoke a join token by id: it proves nothing any more, and no certificate obtained
    /// with it (or renewed from one that was) renews.
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
        TokenCommand::Create {
            identity,
            ttl,
            uses,
        } => {
            let response = client
                .admin
                .create_join_token(CreateJoinTokenRequest {
                    identity: identity.clone(),
                    ttl_seconds: ttl.map_or(0, |ttl| ttl.as_secs().max(1)),
                    max_uses: uses.unwrap_or(0),
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
            let _ = writeln!(
                out,
                "{:<18} {:<22} {:<9} {:<22} IDENTITY",
                "ID", "EXPIRES", "USES", "REVOKED"
            );
            for token in tokens {
                let time = |ts: Option<prost_types::Timestamp>| {
                    ts.and_then(|ts| SystemTime::try_from(ts).ok())
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                };
                let uses = match token.max_uses {
                    0 => format!("{}/-", token.uses),
                    max => format!("{}/{max}", token.uses),
                };
                let _ = writeln!(
                    out,
                    "{:<18} {:<22} {:<9} {:<22} {}",
                    token.id,
                    time(token.expires_at).unwrap_or_default(),
                    uses,
                    time(token.revoked_at).unwrap_or_else(|| "-".to_string()),
                    token.identity
                );
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

//! `weftctl identity`: revoke an identity, so no workload gets a certificate for it.

use std::time::SystemTime;

use weft_api::admin::{
    ListRevokedIdentitiesRequest, RevokeIdentityRequest, UnrevokeIdentityRequest,
};

use super::{AdminClient, CliError};

/// Identity revocation commands.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Refuse every certificate for an identity, by join token or renewal: its proxies keep
    /// their current certificates only until they expire.
    Revoke {
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        identity: String,
        /// When the revocation lapses (RFC 3339, e.g. 2027-01-31T12:00:00Z) [default: never].
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        until: Option<SystemTime>,
    },
    /// Lift an identity's revocation.
    Unrevoke {
        /// The identity.
        identity: String,
    },
    /// List the revocations in force.
    List,
}

pub(super) async fn run(
    command: &IdentityCommand,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    match command {
        IdentityCommand::Revoke { identity, until } => {
            client
                .admin
                .revoke_identity(RevokeIdentityRequest {
                    identity: identity.clone(),
                    until: until.map(Into::into),
                })
                .await?;
            let _ = writeln!(out, "revoked {identity}");
        }
        IdentityCommand::Unrevoke { identity } => {
            client
                .admin
                .unrevoke_identity(UnrevokeIdentityRequest {
                    identity: identity.clone(),
                })
                .await?;
            let _ = writeln!(out, "unrevoked {identity}");
        }
        IdentityCommand::List => {
            let revoked = client
                .admin
                .list_revoked_identities(ListRevokedIdentitiesRequest {})
                .await?
                .into_inner()
                .identities;
            let _ = writeln!(out, "{:<56} {:<22} UNTIL", "IDENTITY", "REVOKED");
            for entry in revoked {
                let time = |ts: Option<prost_types::Timestamp>| {
                    ts.and_then(|ts| SystemTime::try_from(ts).ok())
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                };
                let _ = writeln!(
                    out,
                    "{:<56} {:<22} {}",
                    entry.identity,
                    time(entry.revoked_at).unwrap_or_default(),
                    time(entry.until).unwrap_or_else(|| "-".to_string())
                );
            }
        }
    }
    Ok(())
}

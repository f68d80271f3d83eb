//! `weftctl certs`.

use std::path::PathBuf;

use weft_certs::TrustDomain;

use weft_api::admin::RotateRequest;

use super::{AdminClient, CliError};
use crate::pki;

/// PKI commands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Write a new trust anchor and issuer as PEM files into a directory.
    Init {
        /// The mesh's trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: TrustDomain,
        /// Directory to write trust-anchor.pem, trust-anchor-key.pem, issuer.pem and issuer-key.pem into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an admin client certificate, for `weftctl --client-cert/--client-key` instead of
    /// the bearer token. Needs the issuer's key.
    Admin {
        /// The directory `certs init` wrote (issuer.pem, issuer-key.pem, trust-anchor.pem).
        #[arg(long)]
        pki_dir: PathBuf,
        /// Directory to write admin.pem and admin-key.pem into.
        #[arg(long)]
        out: PathBuf,
        /// Identity to certify [default: spiffe://<trust-domain>/ns/weft/sa/weft-admin].
        #[arg(long)]
        identity: Option<weft_certs::Identity>,
        /// Lifetime of the certificate.
        #[arg(long, default_value = "720h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Replace the issuer with a new one under the same trust anchor, at once (no restart);
    /// leaves of the old one stay valid until they expire.
    RotateIssuer {
        /// The trust anchor's key, when weft-control does not keep it (used once, never stored).
        #[arg(long)]
        anchor_key: Option<PathBuf>,
    },
    /// Take the next step of a trust anchor rotation: (1) a new anchor goes to every proxy in a
    /// bundle with the old, (2) the issuer moves to the new anchor, (3) the old anchor is
    /// dropped. Run it three times; each step waits for every proxy to have taken the last.
    RotateAnchor,
}

impl CertsCommand {
    /// Whether the command talks to the control plane (the others work on files).
    pub fn needs_server(&self) -> bool {
        matches!(self, Self::RotateIssuer { .. } | Self::RotateAnchor)
    }
}

/// Runs a command that talks to the control plane.
pub(super) async fn run_online(
    command: &CertsCommand,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let response = match command {
        CertsCommand::RotateIssuer { anchor_key } => {
            let anchor_key_pem = match anchor_key {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| CliError(format!("--anchor-key {}: {e}", path.display())))?,
                None => String::new(),
            };
            client
                .admin
                .rotate_issuer(RotateRequest { anchor_key_pem })
                .await?
        }
        CertsCommand::RotateAnchor => client.admin.rotate_anchor(RotateRequest::default()).await?,
        CertsCommand::Init { .. } | CertsCommand::Admin { .. } => {
            return Err(CliError("this command works on files".to_string()));
        }
    };
    let _ = writeln!(out, "{}", response.into_inner().message);
    Ok(())
}

pub(super) fn run(command: CertsCommand, out: &mut impl std::io::Write) -> Result<(), CliError> {
    match command {
        CertsCommand::RotateIssuer { .. } | CertsCommand::RotateAnchor => Err(CliError(
            "this command talks to the control plane".to_string(),
        )),
        CertsCommand::Init {
            trust_domain,
            out: dir,
        } => {
            pki::write_new(&dir, &trust_domain, &dir.join(pki::TRUST_ANCHOR_KEY_FILE))
                .map_err(|e| CliError(e.to_string()))?;
            let _ = writeln!(
                out,
                "wrote {anchor} (give it to every proxy), {issuer} and {issuer_key} (give them to weft-control with --pki-dir {dir}), and {anchor_key} (keep it offline)",
                anchor = dir.join(pki::TRUST_ANCHOR_FILE).display(),
                issuer = dir.join(pki::ISSUER_FILE).display(),
                issuer_key = dir.join(pki::ISSUER_KEY_FILE).display(),
                anchor_key = dir.join(pki::TRUST_ANCHOR_KEY_FILE).display(),
                dir = dir.display(),
            );
            Ok(())
        }
        CertsCommand::Admin {
            pki_dir,
            out: dir,
            identity,
            ttl,
        } => {
            let (cert, key, identity) = pki::issue_admin(&pki_dir, &dir, identity, ttl)
                .map_err(|e| CliError(e.to_string()))?;
            let _ = writeln!(
                out,
                "wrote {} and {} for {identity}; use them with weftctl --client-cert and --client-key",
                cert.display(),
                key.display()
            );
            Ok(())
        }
    }
}

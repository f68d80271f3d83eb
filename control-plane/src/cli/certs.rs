//! `weftctl certs`.

use std::path::PathBuf;

use weft_certs::TrustDomain;

use super::CliError;
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
}

pub(super) fn run(command: CertsCommand, out: &mut impl std::io::Write) -> Result<(), CliError> {
    match command {
        CertsCommand::Init {
            trust_domain,
            out: dir,
        } => {
            pki::write_new(&dir, &trust_domain, true).map_err(|e| CliError(e.to_string()))?;
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
    }
}

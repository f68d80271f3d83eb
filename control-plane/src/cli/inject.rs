//! `weftctl inject` and `weftctl uninject`: manifests in, manifests out, as the admission webhook
//! would change them.

use std::path::{Path, PathBuf};

use weft_certs::TrustDomain;

use super::{CliError, manifests};
use crate::inject::{self, IdentitySource, InjectSettings, Outcome, SidecarMode};

/// Add the Weft proxy to the pods of Kubernetes manifests and print them.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifest file, directory of them, or - for stdin (YAML or JSON, several documents each).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,

    /// The weft-proxy image.
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = concat!("localhost/weft-proxy:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,

    /// The init container's image (weft-proxy with iptables and nft).
    #[arg(long, env = "WEFT_INIT_IMAGE", default_value = concat!("localhost/weft-init:", env!("CARGO_PKG_VERSION")))]
    pub init_image: String,

    /// The trust domain the proxies' identities are in [default: the trust anchor's].
    #[arg(long)]
    pub trust_domain: Option<TrustDomain>,

    /// The control plane's proxy API, as pods reach it.
    #[arg(long, default_value = "weft-control.weft.svc.cluster.local:7200")]
    pub control_plane_addr: String,

    /// Proxies prove their identity with the join token in this Secret's `token` key instead
    /// of a projected ServiceAccount token (for a control plane outside the cluster).
    #[arg(long, value_name = "SECRET")]
    pub join_token_secret: Option<String>,

    /// Where the proxy runs: native (an init container that keeps running, Kubernetes ≥ 1.29)
    /// or classic (the first container); a pod's config.weft.io/sidecar-mode wins.
    #[arg(long, default_value = "native")]
    pub sidecar_mode: SidecarMode,

    /// The OTLP/gRPC collector the proxies export spans to (http://collector:4317).
    #[arg(long)]
    pub trace_endpoint: Option<String>,

    /// The proxies write a JSON access-log line per request on stdout.
    #[arg(long)]
    pub access_log: bool,
}

/// Remove the Weft proxy from Kubernetes manifests and print them.
#[derive(Debug, clap::Args)]
pub struct UninjectArgs {
    /// Manifest file, directory of them, or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// Injects the manifests and writes them to `out`; what happened to each pod goes to stderr.
pub fn inject(
    args: &InjectArgs,
    trust_anchor: &Path,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let mut docs = manifests::read(&args.files)?;
    let trust_anchors_pem = std::fs::read_to_string(trust_anchor).map_err(|e| {
        CliError(format!(
            "trust anchor {}: {e} (give it with --trust-anchor)",
            trust_anchor.display()
        ))
    })?;
    let anchors = weft_certs::TrustAnchors::from_pem(trust_anchors_pem.as_bytes())
        .map_err(|e| CliError(format!("trust anchor {}: {e}", trust_anchor.display())))?;
    let trust_domain = args
        .trust_domain
        .clone()
        .or_else(|| anchors.trust_domain().cloned())
        .ok_or_else(|| {
            CliError(format!(
                "trust anchor {} names no trust domain: give --trust-domain",
                trust_anchor.display()
            ))
        })?;
    let settings = InjectSettings {
        proxy_image: args.proxy_image.clone(),
        init_image: args.init_image.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
        trust_domain,
        control_plane_addr: args.control_plane_addr.clone(),
        trust_anchors_pem,
        identity: args.join_token_secret.clone().map_or(
            IdentitySource::ServiceAccountToken,
            IdentitySource::JoinTokenSecret,
        ),
        sidecar_mode: args.sidecar_mode,
        trace_endpoint: args.trace_endpoint.clone(),
        access_log: args.access_log,
    };
    let mut outcomes = Vec::new();
    for doc in &mut docs {
        outcomes
            .extend(inject::inject_document(doc, &settings).map_err(|e| CliError(e.to_string()))?);
    }
    write(&docs, out)?;
    report(&outcomes, "injected");
    Ok(())
}

/// Uninjects the manifests and writes them to `out`.
pub fn uninject(args: &UninjectArgs, out: &mut impl std::io::Write) -> Result<(), CliError> {
    let mut docs = manifests::read(&args.files)?;
    let mut outcomes = Vec::new();
    for doc in &mut docs {
        outcomes.extend(inject::uninject_document(doc).map_err(|e| CliError(e.to_string()))?);
    }
    write(&docs, out)?;
    report(&outcomes, "uninjected");
    Ok(())
}

pub(super) fn write(
    docs: &[serde_json::Value],
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let yaml = serde_saphyr::to_string_multiple(docs)
        .map_err(|e| CliError(format!("cannot write YAML: {e}")))?;
    out.write_all(yaml.as_bytes())
        .map_err(|e| CliError(format!("cannot write: {e}")))
}

/// One line per pod template on stderr, as `linkerd inject` does: stdout stays a manifest.
fn report(outcomes: &[Outcome], done: &str) {
    for outcome in outcomes {
        match &outcome.result {
            Ok(()) => eprintln!("{} {done}", outcome.object),
            Err(why) => eprintln!("{} skipped: {why}", outcome.object),
        }
    }
}

//! `weftctl`: the operator's command line.
//!
//! Output meant for scripts (a token, a table) goes to stdout; a failure is one line on stderr
//! and a non-zero exit code.

use std::path::PathBuf;

mod admin_client;
mod certs;
mod check;
mod http_get;
mod identity;
mod inject;
mod install;
mod manifests;
mod proxy_config;
mod proxy_status;
mod resources;
mod stat;
mod tap;
mod token;
mod top;

pub use admin_client::AdminClient;
pub use install::write_crds;

/// Operate a Weft mesh.
#[derive(Debug, clap::Parser)]
#[command(name = "weftctl", version, about)]
pub struct Cli {
    /// The control plane's admin API, host:port.
    #[arg(
        long,
        global = true,
        env = "WEFT_ADMIN_ADDR",
        default_value = "127.0.0.1:7201"
    )]
    pub server: String,

    /// The control plane's data dir; the admin token and trust anchor are read from it unless
    /// given explicitly.
    #[arg(
        long,
        global = true,
        env = "WEFT_DATA_DIR",
        default_value = "weft-data"
    )]
    pub data_dir: PathBuf,

    /// File holding the admin bearer token [default: <data-dir>/admin-token].
    #[arg(long, global = true, env = "WEFT_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Trust anchor to verify the control plane against [default: <data-dir>/pki/trust-anchor.pem].
    #[arg(long, global = true, env = "WEFT_TRUST_ANCHOR")]
    pub trust_anchor: Option<PathBuf>,

    /// An admin client certificate (from `weftctl certs admin`), used instead of the token.
    #[arg(
        long,
        global = true,
        env = "WEFT_ADMIN_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// The admin client certificate's key.
    #[arg(
        long,
        global = true,
        env = "WEFT_ADMIN_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// weftctl's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create and inspect the mesh's PKI.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Issue, list and revoke join tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Revoke, unrevoke and list revoked identities.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Create or update policy resources from YAML or JSON files (all or none).
    Apply(resources::ApplyArgs),
    /// Show policy resources.
    Get(resources::GetArgs),
    /// Delete a policy resource.
    Delete(resources::DeleteArgs),
    /// List the proxies connected to discovery and the config versions they applied.
    ProxyStatus,
    /// Show one proxy's effective configuration and discovery state.
    ProxyConfig(proxy_config::ProxyConfigArgs),
    /// Success rate, request rate and latency of Services, routes or proxies, from Prometheus.
    Stat(stat::StatArgs),
    /// Stream the live requests of proxies (never bodies; headers only when asked).
    Tap(tap::TapArgs),
    /// The busiest paths of proxies, from their live requests.
    Top(top::TopArgs),
    /// Add the Weft proxy to the pods of Kubernetes manifests (what the admission webhook does).
    Inject(inject::InjectArgs),
    /// Remove the Weft proxy from Kubernetes manifests.
    Uninject(inject::UninjectArgs),
    /// Check a cluster before installing Weft (--pre), or the installed control plane.
    Check(check::CheckArgs),
    /// Print the control plane's manifests, as the Helm chart renders them
    /// (`weftctl install | kubectl apply -f -`).
    Install(install::InstallArgs),
}

impl Cli {
    /// The trust anchor file: given, or the control plane's own under the data dir.
    fn trust_anchor_path(&self) -> PathBuf {
        self.trust_anchor.clone().unwrap_or_else(|| {
            self.data_dir
                .join("pki")
                .join(crate::pki::TRUST_ANCHOR_FILE)
        })
    }
}

/// Why a command failed, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        // One line, whatever the server put in the message.
        let message = status
            .message()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Self(format!("{:?}: {message}", status.code()))
    }
}

/// Runs one command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut impl std::io::Write) -> Result<(), CliError> {
    match cli.command {
        Command::Certs(ref command) if command.needs_server() => {
            let client = AdminClient::connect(&cli).await?;
            certs::run_online(command, client, out).await
        }
        Command::Certs(command) => certs::run(command, out),
        Command::Token(ref command) => {
            let client = AdminClient::connect(&cli).await?;
            token::run(command, client, out).await
        }
        Command::Identity(ref command) => {
            let client = AdminClient::connect(&cli).await?;
            identity::run(command, client, out).await
        }
        Command::Apply(ref args) => {
            // Read and parse the files first: a YAML mistake needs no server.
            let manifests = manifests::read(&args.files)?;
            let client = AdminClient::connect(&cli).await?;
            resources::apply(args, manifests, client, out).await
        }
        Command::Get(ref args) => {
            resources::get(args, AdminClient::connect(&cli).await?, out).await
        }
        Command::Delete(ref args) => {
            resources::delete(args, AdminClient::connect(&cli).await?, out).await
        }
        Command::ProxyStatus => proxy_status::run(AdminClient::connect(&cli).await?, out).await,
        Command::ProxyConfig(ref args) => proxy_config::run(&cli, args, out).await,
        Command::Tap(ref args) => tap::run(args, AdminClient::connect(&cli).await?, out).await,
        Command::Top(ref args) => top::run(args, AdminClient::connect(&cli).await?, out).await,
        Command::Stat(ref args) => {
            // Only reading the proxies needs the control plane.
            let client = match args.prometheus {
                Some(_) => None,
                None => Some(AdminClient::connect(&cli).await?),
            };
            stat::run(args, client, out).await
        }
        Command::Inject(ref args) => inject::inject(args, &cli.trust_anchor_path(), out),
        Command::Uninject(ref args) => inject::uninject(args, out),
        Command::Check(ref args) => check::run(args, out).await,
        Command::Install(ref args) => install::run(args, out),
    }
}

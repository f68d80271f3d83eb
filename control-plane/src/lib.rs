//! `weft-control`, the Weft control plane, and `weftctl`, its CLI.
//!
//! The control plane signs proxies' CSRs (identity), streams endpoints and policy to them
//! (discovery), and takes operator requests on an authenticated admin API. Its state lives in an
//! embedded store under `--data-dir`, its policy there or in the Kubernetes API server. It
//! shares nothing with the proxy but the `.proto` contract in `weft-api`.

pub mod admin_api;
pub mod admin_credential;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod identity_api;
pub mod inject;
pub mod join_tokens;
pub mod kube_client;
pub mod kube_namespaces;
pub mod leader;
pub mod limits;
pub mod lineage;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod policy_admission;
pub mod policy_store;
pub mod resource_store;
pub mod route_status;
pub mod server;
pub mod service_account_tokens;
pub mod serving_cert;
pub mod store;
pub mod tls_incoming;
pub mod trust;
pub mod webhook;

/// The exit code for bad configuration or usage (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;
/// The exit code for a damaged store (BSD `EX_DATAERR`): restarting will not help.
pub const EXIT_DATA: i32 = 65;

/// Parses the command line; `--help` and `--version` print and exit 0, anything wrong prints
/// one line naming the problem and exits [`EXIT_USAGE`].
pub fn parse_args_or_exit<T: clap::Parser>(program: &str) -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            std::process::exit(0);
        }
        Err(error) => {
            let message = error.to_string();
            let first_line = message.lines().next().unwrap_or("invalid usage");
            eprintln!("{program}: {}", first_line.trim_start_matches("error: "));
            std::process::exit(EXIT_USAGE);
        }
    }
}

//! `weftctl proxy-config POD|ADDR`: one proxy's effective configuration and what discovery has
//! told it — through the control plane (which calls the proxy's tap API) for a pod, or from the
//! proxy's admin server's `/config` for an admin address.

use weft_api::admin::ProxyConfigRequest;

use super::{Cli, CliError};

/// The longest `/config` document read.
const MAX_CONFIG: usize = 16 << 20;

#[derive(Debug, clap::Args)]
pub struct ProxyConfigArgs {
    /// The proxy: a pod (NAME or pod/NAME), sa/NAME or addr/IP selecting exactly one proxy,
    /// asked through the control plane; or its admin address host:port, asked directly (`/config`
    /// answers only from loopback: `kubectl port-forward pod/NAME 7191` first).
    pub proxy: String,
    /// The namespace of the pod or service account.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

pub(super) async fn run(
    cli: &Cli,
    args: &ProxyConfigArgs,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let document = if is_admin_address(&args.proxy) {
        from_admin(&args.proxy).await?
    } else {
        let selector = super::tap::selector(&args.proxy, &args.namespace)?;
        let mut client = super::AdminClient::connect(cli).await?;
        let answer = client
            .admin
            .proxy_config(ProxyConfigRequest {
                selector: Some(selector),
            })
            .await?
            .into_inner();
        answer.json.into_bytes()
    };
    let _ = out.write_all(&document);
    if !document.ends_with(b"\n") {
        let _ = writeln!(out);
    }
    Ok(())
}

/// host:port with a numeric port; a pod name never has a colon.
fn is_admin_address(proxy: &str) -> bool {
    proxy
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

async fn from_admin(admin: &str) -> Result<Vec<u8>, CliError> {
    let (status, document) = super::http_get::get(admin, "/config", MAX_CONFIG).await?;
    if !status.is_success() {
        let said = String::from_utf8_lossy(&document);
        let said = said.lines().next().unwrap_or_default();
        return Err(CliError(format!("{admin}/config: {status}: {said}")));
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_addresses_are_told_from_pods() {
        assert!(super::is_admin_address("127.0.0.1:7191"));
        assert!(super::is_admin_address("[::1]:7191"));
        assert!(!super::is_admin_address("web-7d9f"));
        assert!(!super::is_admin_address("pod/web-7d9f"));
        assert!(!super::is_admin_address("addr/10.0.0.7"));
    }
}

//! `weftctl proxy-config ADDR`: one proxy's effective configuration and what discovery has told
//! it, from its admin server's `/config`.

use super::CliError;

/// The longest `/config` document read.
const MAX_CONFIG: usize = 16 << 20;

#[derive(Debug, clap::Args)]
pub struct ProxyConfigArgs {
    /// The proxy's admin address, host:port. `/config` answers only from loopback: for a pod,
    /// `kubectl port-forward pod/NAME 7191` first, then `weftctl proxy-config 127.0.0.1:7191`.
    pub admin: String,
}

pub(super) async fn run(
    args: &ProxyConfigArgs,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let admin = args.admin.as_str();
    if admin
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(CliError(format!(
            "{admin:?} is not a proxy's admin address (host:port); for a pod, `kubectl port-forward pod/{admin} 7191` then `weftctl proxy-config 127.0.0.1:7191`"
        )));
    }
    let (status, document) = super::http_get::get(admin, "/config", MAX_CONFIG).await?;
    if !status.is_success() {
        let said = String::from_utf8_lossy(&document);
        let said = said.lines().next().unwrap_or_default();
        return Err(CliError(format!("{admin}/config: {status}: {said}")));
    }
    let _ = out.write_all(&document);
    if !document.ends_with(b"\n") {
        let _ = writeln!(out);
    }
    Ok(())
}

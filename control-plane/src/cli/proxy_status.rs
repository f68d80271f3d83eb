//! `weftctl proxy-status`.

use std::time::SystemTime;

use weft_api::admin::ProxyStatusRequest;

use super::{AdminClient, CliError};

pub(super) async fn run(
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let proxies = client
        .admin
        .proxy_status(ProxyStatusRequest {})
        .await?
        .into_inner()
        .proxies;
    let _ = writeln!(
        out,
        "{:<48} {:<22} {:<24} {:<21} {:<16} {:<32} {:>8} {:>8} ERROR",
        "IDENTITY", "REMOTE", "POD", "CERT EXPIRY", "CERT ISSUER", "WATCHING", "SENT", "APPLIED"
    );
    for proxy in proxies {
        let expiry = proxy
            .cert_expiry
            .and_then(|t| SystemTime::try_from(t).ok())
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        // A revoked identity is the first thing an operator must see about a proxy.
        let revoked = if proxy.revoked.is_empty() {
            String::new()
        } else {
            format!("IDENTITY {}", proxy.revoked.to_uppercase())
        };
        let pod = if proxy.pod.is_empty() {
            "-"
        } else {
            proxy.pod.as_str()
        };
        if proxy.watches.is_empty() {
            let _ = writeln!(
                out,
                "{:<48} {:<22} {pod:<24} {expiry:<21} {:<16} {:<32} {:>8} {:>8} {revoked}",
                proxy.identity, proxy.remote, proxy.cert_issuer, "", "", ""
            );
        }
        for watch in proxy.watches {
            let error = [watch.error.as_str(), revoked.as_str()]
                .into_iter()
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                out,
                "{:<48} {:<22} {pod:<24} {expiry:<21} {:<16} {:<32} {:>8} {:>8} {error}",
                proxy.identity,
                proxy.remote,
                proxy.cert_issuer,
                watch.resource,
                watch.sent_version,
                watch.applied_version,
            );
        }
    }
    Ok(())
}

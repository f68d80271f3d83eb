//! `weftctl proxy-config ADDR`: one proxy's effective configuration and what discovery has told
//! it, from its admin server's `/config`.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::CliError;

/// The longest `/config` document read.
const MAX_CONFIG: usize = 16 << 20;
/// Connecting and reading together.
const DEADLINE: Duration = Duration::from_secs(10);

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
    let document = tokio::time::timeout(DEADLINE, fetch(admin))
        .await
        .map_err(|_| CliError(format!("{admin}: no answer within {DEADLINE:?}")))??;
    let _ = out.write_all(&document);
    if !document.ends_with(b"\n") {
        let _ = writeln!(out);
    }
    Ok(())
}

/// `GET /config` from the admin server at `admin`.
async fn fetch(admin: &str) -> Result<Vec<u8>, CliError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| CliError(format!("{admin}: {what}: {e}"));
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| failed("cannot connect", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed("HTTP", &e))?;
    tokio::spawn(connection);
    let request = http::Request::get("/config")
        .header(http::header::HOST, admin)
        .body(Empty::<hyper::body::Bytes>::new())
        .map_err(|e| failed("request", &e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed("HTTP", &e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_CONFIG)
        .collect()
        .await
        .map_err(|e| failed("reading /config", &e))?
        .to_bytes();
    if !status.is_success() {
        let said = String::from_utf8_lossy(&body);
        let said = said.lines().next().unwrap_or_default();
        return Err(CliError(format!("{admin}/config: {status}: {said}")));
    }
    Ok(body.to_vec())
}

//! One plain-HTTP GET with a deadline and a size limit: how weftctl reads a proxy's admin
//! server and a Prometheus.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::CliError;

/// Connecting and reading together.
const DEADLINE: Duration = Duration::from_secs(10);

/// `GET path` from `host:port`, at most `limit` bytes of body: the status and body, or why
/// there is none (one line naming `host`).
pub(super) async fn get(
    host: &str,
    path: &str,
    limit: usize,
) -> Result<(http::StatusCode, Vec<u8>), CliError> {
    tokio::time::timeout(DEADLINE, fetch(host, path, limit))
        .await
        .map_err(|_| CliError(format!("{host}: no answer within {DEADLINE:?}")))?
}

async fn fetch(
    host: &str,
    path: &str,
    limit: usize,
) -> Result<(http::StatusCode, Vec<u8>), CliError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| CliError(format!("{host}: {what}: {e}"));
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| failed("cannot connect", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed("HTTP", &e))?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<hyper::body::Bytes>::new())
        .map_err(|e| failed("request", &e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed("HTTP", &e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| failed("reading the answer", &e))?
        .to_bytes();
    Ok((status, body.to_vec()))
}

//! Plain HTTP to one fixed address, pooled: the local app (inbound) and destinations outside the
//! mesh (outbound pass-through).
//!
//! Our own small pool rather than hyper-util's legacy client: everything here goes to a single
//! address, so its keyed pool, its lazy connect future and the task it spawned per request to
//! watch the connection become idle again were pure cost on the inbound hot path. HTTP/1
//! connections go back to an idle list when their response body ends; HTTP/2 (prior knowledge,
//! for gRPC) is one multiplexed connection, dialed again when it closes.

mod http1;
mod http2;

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use tokio::net::TcpStream;

use crate::http_util::Body;

/// An address that does not accept the TCP connection by then is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PlainHttpError {
    /// TCP to the address failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The connect error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (handshake, send, or the response head).
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// Every HTTP/2 connection to the address is full of streams, and none freed up in time.
    #[error("{0} is saturated: every connection to it is full of streams")]
    Saturated(SocketAddr),
}

/// HTTP/1 and HTTP/2 (prior knowledge) clients to one address.
#[derive(Debug)]
pub struct PlainHttp {
    /// The address as a URI authority and as a `Host` value, made once rather than per request.
    authority: Option<Authority>,
    host: Option<HeaderValue>,
    http1: http1::Pool,
    http2: http2::Connection,
}

impl PlainHttp {
    /// Clients that always connect to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            authority: Authority::try_from(addr.to_string()).ok(),
            host: HeaderValue::try_from(addr.to_string()).ok(),
            http1: http1::Pool::new(addr),
            http2: http2::Connection::new(addr),
        }
    }

    /// Sends `request` in its own HTTP version. HTTP/2 keeps the client's `:authority`; HTTP/1
    /// carries it in `Host` (our address when the client named none) with an origin-form URI.
    pub async fn send(&self, mut request: Request<Body>) -> Result<Response<Body>, PlainHttpError> {
        if request.version() == Version::HTTP_2 {
            let uri = request.uri();
            if uri.scheme().is_none() || uri.authority().is_none() {
                let mut parts = uri.clone().into_parts();
                parts.scheme.get_or_insert(Scheme::HTTP);
                if parts.authority.is_none() {
                    parts.authority.clone_from(&self.authority);
                }
                parts
                    .path_and_query
                    .get_or_insert(PathAndQuery::from_static("/"));
                if let Ok(uri) = Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
            }
            return self.http2.send(request).await;
        }
        if !request.headers().contains_key(HOST) {
            let host = match request.uri().authority() {
                Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
                None => self.host.clone(),
            };
            if let Some(host) = host {
                request.headers_mut().insert(HOST, host);
            }
        }
        if request.uri().authority().is_some() || request.uri().path().is_empty() {
            let origin_form = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(origin_form);
        }
        self.http1.send(request).await
    }
}

/// A TCP connection to `addr`, without Nagle's delay (requests are written whole).
async fn connect(addr: SocketAddr) -> Result<TcpStream, PlainHttpError> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
        .map_err(|source| PlainHttpError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

#[cfg(test)]
mod tests;

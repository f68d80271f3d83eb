//! Plain HTTP to one fixed address, pooled: the local app (inbound) and destinations outside the
//! mesh (outbound pass-through).

use std::net::SocketAddr;

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::http_util::Body;

/// Idle connections kept per protocol.
const MAX_IDLE: usize = 32;

/// Dials the fixed address whatever the URI says.
type FixedConnector = tower::util::BoxCloneSyncService<Uri, TokioIo<TcpStream>, std::io::Error>;

/// HTTP/1 and HTTP/2 (prior knowledge) clients to one address.
#[derive(Debug, Clone)]
pub struct PlainHttp {
    /// The address as a URI authority, made once rather than per request.
    authority: Option<Authority>,
    http1: Client<FixedConnector, Body>,
    http2: Client<FixedConnector, Body>,
}

impl PlainHttp {
    /// Clients that always connect to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let connect =
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: Uri| async move {
                let tcp = TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                Ok::<_, std::io::Error>(TokioIo::new(tcp))
            }));
        let http1 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(MAX_IDLE)
            .build(connect.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(MAX_IDLE)
            .http2_only(true)
            .http2_initial_stream_window_size(crate::http_util::H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(crate::http_util::H2_CONNECTION_WINDOW)
            .http2_max_frame_size(crate::http_util::H2_MAX_FRAME)
            .build(connect);
        let authority = Authority::try_from(addr.to_string()).ok();
        Self {
            authority,
            http1,
            http2,
        }
    }

    /// Sends `request` in its own HTTP version. HTTP/2 keeps the client's `:authority`; HTTP/1
    /// carries it in `Host`, and the URI is pointed at our address so that connections pool per
    /// address rather than per authority a client may invent.
    pub async fn send(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        if request.version() == Version::HTTP_2 {
            return self.http2.request(request).await;
        }
        if !request.headers().contains_key(HOST)
            && let Some(authority) = request.uri().authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(HOST, host);
        }
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority.clone_from(&self.authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        self.http1.request(request).await
    }
}

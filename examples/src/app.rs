//! The demo's two apps, plain HTTP/1 servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The authority `frontend` uses for `backend`, routed by the frontend's proxy.
pub const BACKEND_AUTHORITY: &str = "backend.demo:8081";

/// Serves `backend`: answers with the identity of its caller, as its proxy verified it.
pub async fn serve_backend(listen: SocketAddr) -> anyhow::Result<()> {
    serve(listen, |req: Request<Incoming>| async move {
        let caller = req
            .headers()
            .get("weft-client-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(no weft-client-id: not called through the mesh)")
            .to_string();
        text(StatusCode::OK, format!("backend: hello, {caller}\n"))
    })
    .await
}

/// Where `frontend` finds `backend`.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Through its proxy's outbound address, naming the backend in `Host` (the local demo,
    /// where nothing redirects the app's traffic).
    Proxy(SocketAddr),
    /// At this URL, as any program would call it (in a pod, the mesh's redirect rules take the
    /// call to the proxy without the app knowing).
    Url(String),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Proxy(_) => write!(f, "http://{BACKEND_AUTHORITY}/"),
            Self::Url(url) => f.write_str(url),
        }
    }
}

/// Serves `frontend`: every request calls `backend`.
pub async fn serve_frontend(listen: SocketAddr, backend: Backend) -> anyhow::Result<()> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let client = Arc::new(client);
    // Steady background traffic, so the proxies' metrics move on their own.
    let (background, target) = (client.clone(), backend.clone());
    tokio::spawn(async move {
        loop {
            let _ = call_backend(&background, &target).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    serve(listen, move |_req: Request<Incoming>| {
        let (client, backend) = (client.clone(), backend.clone());
        async move {
            match call_backend(&client, &backend).await {
                Ok(answer) => text(
                    StatusCode::OK,
                    format!("frontend: called {backend} through weft-proxy (mTLS between the proxies)\n{answer}"),
                ),
                Err(error) => text(StatusCode::BAD_GATEWAY, format!("frontend: backend call failed: {error}\n")),
            }
        }
    })
    .await
}

/// Calls backend the way an app in a mesh does: a plain request.
pub async fn call_backend(
    client: &Client<HttpConnector, Full<Bytes>>,
    backend: &Backend,
) -> anyhow::Result<String> {
    let request = match backend {
        Backend::Proxy(proxy) => Request::get(format!("http://{proxy}/"))
            .header(http::header::HOST, BACKEND_AUTHORITY)
            .body(Full::new(Bytes::new()))?,
        Backend::Url(url) => Request::get(url.as_str()).body(Full::new(Bytes::new()))?,
    };
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request)).await??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    Ok(body)
}

/// Fetches `url` as any program outside a mesh would — a plain GET to the address it names —
/// trying `attempts` times, `interval` apart, until it answers 2xx; returns the body. In a pod,
/// the mesh's redirect rules carry the request through the proxies without the app knowing.
pub async fn fetch(url: &str, attempts: u32, interval: Duration) -> anyhow::Result<String> {
    // A URL that cannot be right fails at once rather than after every attempt.
    url.parse::<http::Uri>()
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let target = Backend::Url(url.to_string());
    let mut last = anyhow::anyhow!("no attempt made");
    for attempt in 1..=attempts.max(1) {
        match call_backend(&client, &target).await {
            Ok(body) => return Ok(body),
            Err(error) => last = error.context(url.to_string()),
        }
        if attempt < attempts {
            tokio::time::sleep(interval).await;
        }
    }
    Err(last)
}

async fn serve<F, Fut>(listen: SocketAddr, handler: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

//! In-process applications for the proxies to front: an HTTP echo server that also speaks gRPC
//! (the `Echo` service) on the same port, and a TCP echo server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::echo::echo_server::{Echo, EchoServer};
use crate::echo::{EchoReply, EchoRequest};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A running app; stops when dropped.
#[derive(Debug)]
pub struct App {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    /// Requests the app has answered.
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Starts the HTTP + gRPC echo app on a random loopback port.
pub async fn start_echo_app() -> App {
    start_echo_app_on("127.0.0.1:0").await
}

/// Starts the HTTP + gRPC echo app on `bind`.
pub async fn start_echo_app_on(bind: &str) -> App {
    start_app(bind, Duration::ZERO).await
}

/// Starts the echo app on a random loopback port, answering every request `delay` late: a
/// slow endpoint.
pub async fn start_slow_echo_app(delay: Duration) -> App {
    start_app("127.0.0.1:0", delay).await
}

async fn start_app(bind: &str, delay: Duration) -> App {
    let listener = TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let grpc = tonic::service::Routes::new(EchoServer::new(EchoService));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            let grpc = grpc.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let served = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let grpc = grpc.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(route(req, grpc, served).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    App {
        port,
        requests,
        task,
    }
}

async fn route(
    req: Request<Incoming>,
    grpc: tonic::service::Routes,
    served: usize,
) -> Response<Body> {
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        return match grpc.oneshot(req.map(tonic::body::Body::new)).await {
            Ok(response) => response.map(|body| body.map_err(BoxError::from).boxed_unsync()),
            Err(never) => match never {},
        };
    }
    echo(req, served).await
}

/// Echoes the request body, and reports what the app saw in `x-seen-*` headers.
async fn echo(req: Request<Incoming>, served: usize) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // /flaky/N: every Nth request this app serves fails with 503.
    if let Some(n) = parts
        .uri
        .path()
        .strip_prefix("/flaky/")
        .and_then(|n| n.parse::<usize>().ok())
        && n > 0
        && served.is_multiple_of(n)
    {
        return Response::builder()
            .status(503)
            .body(
                Full::new(Bytes::from_static(b"flaky\n"))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap();
    }
    if let Some(ms) = parts
        .uri
        .path()
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let client_ids: Vec<&str> = parts
        .headers
        .get_all("weft-client-id")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    Response::builder()
        .header(
            "x-seen-client-id",
            if client_ids.is_empty() {
                "none".to_string()
            } else {
                client_ids.join(",")
            },
        )
        .header("x-seen-weft-headers", weft_headers(&parts.headers))
        .header("x-seen-version", format!("{:?}", parts.version))
        .header("x-seen-method", parts.method.as_str())
        .header("x-seen-host", host)
        .header("x-seen-path", parts.uri.path())
        .header("x-seen-traceparent", seen(&parts.headers, "traceparent"))
        .header("x-seen-b3", seen(&parts.headers, "b3"))
        .header(
            "x-seen-upgrade",
            parts
                .headers
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none"),
        )
        .header(
            "x-seen-header",
            parts
                .headers
                .get("x-added")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none"),
        )
        .body(
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

/// Every header the app got whose name a CGI/WSGI app would read as `WEFT_*` (any case, `_` for
/// `-`), as `name=value` joined by `;`: only the proxy may set those.
fn weft_headers(headers: &http::HeaderMap) -> String {
    let seen: Vec<String> = headers
        .iter()
        .filter(|(name, _)| name.as_str().replace('_', "-").starts_with("weft-"))
        .map(|(name, value)| format!("{name}={}", value.to_str().unwrap_or("?")))
        .collect();
    seen.join(";")
}

#[derive(Debug)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let client_id = client_id(&request);
        let req = request.into_inner();
        if req.message == "fail" {
            let mut status = tonic::Status::failed_precondition("asked to fail");
            status
                .metadata_mut()
                .insert("x-detail", "trailer-detail".parse().unwrap());
            return Err(status);
        }
        let mut response = tonic::Response::new(EchoReply {
            message: req.message,
            client_id,
            index: 0,
        });
        response
            .metadata_mut()
            .insert("x-echo", "yes".parse().unwrap());
        Ok(response)
    }

    type ServerStreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

    async fn server_stream(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Self::ServerStreamStream>, tonic::Status> {
        let client_id = client_id(&request);
        let req = request.into_inner();
        let replies = (0..req.count).map(move |index| {
            Ok(EchoReply {
                message: req.message.clone(),
                client_id: client_id.clone(),
                index,
            })
        });
        Ok(tonic::Response::new(Box::pin(futures_util::stream::iter(
            replies,
        ))))
    }

    type HoldStream = HoldStream;

    async fn hold(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<HoldStream>, tonic::Status> {
        Ok(tonic::Response::new(Self::hold(request)))
    }
}

impl EchoService {
    /// One reply, then nothing until the caller cancels.
    fn hold(request: tonic::Request<EchoRequest>) -> HoldStream {
        let reply = EchoReply {
            client_id: client_id(&request),
            message: request.into_inner().message,
            index: 0,
        };
        let first = futures_util::stream::once(async move { Ok(reply) });
        Box::pin(futures_util::StreamExt::chain(
            first,
            futures_util::stream::pending(),
        ))
    }
}

type HoldStream = Pin<Box<dyn Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

fn client_id<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get("weft-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string()
}

/// A TCP echo server; stops when dropped.
#[derive(Debug)]
pub struct TcpEcho {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server-first TCP echo: it greets with "hello\n", then echoes every byte.
pub async fn start_tcp_echo(bind: &str) -> TcpEcho {
    let listener = TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if tcp.write_all(b"hello\n").await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    TcpEcho { port, task }
}

/// A request header's value as the app saw it, "none" when absent.
fn seen(headers: &http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string()
}

//! The pools against a real hyper server on loopback that counts the connections it accepts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::{PlainHttp, PlainHttpError};
use crate::http_util::{Body, empty_body};

/// What the test app does with a request.
#[derive(Clone, Copy)]
enum App {
    /// Answers with the request's URI and Host, keeping the connection.
    Echo,
    /// Answers and closes the connection.
    Close,
    /// Streams a body that never ends.
    Endless,
    /// Sends one chunk, then holds the stream open, idle (a long-lived gRPC stream).
    Hold,
}

/// An app on a random loopback port, speaking HTTP/1 or, with `h2`, HTTP/2 only; returns its
/// address and the count of connections it accepted.
async fn app(kind: App, h2: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(move |request: Request<Incoming>| async move {
                Ok::<_, Infallible>(respond(kind, &request))
            });
            tokio::spawn(async move {
                let io = TokioIo::new(tcp);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
            });
        }
    });
    (addr, accepted)
}

fn respond(kind: App, request: &Request<Incoming>) -> Response<Body> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("-");
    let echo = format!("{} {host}", request.uri());
    match kind {
        App::Echo => Response::new(
            Full::new(Bytes::from(echo))
                .map_err(|n| match n {})
                .boxed_unsync(),
        ),
        App::Close => {
            let mut response = Response::new(
                Full::new(Bytes::from(echo))
                    .map_err(|n| match n {})
                    .boxed_unsync(),
            );
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            response
        }
        App::Endless => {
            let chunks = futures_util::stream::repeat_with(|| {
                Ok::<_, crate::http_util::BoxError>(Frame::data(Bytes::from_static(&[0; 1024])))
            });
            Response::new(StreamBody::new(chunks).boxed_unsync())
        }
        App::Hold => {
            let first = futures_util::stream::once(async {
                Ok::<_, crate::http_util::BoxError>(Frame::data(Bytes::from_static(b"held")))
            });
            let held = futures_util::StreamExt::chain(first, futures_util::stream::pending());
            Response::new(StreamBody::new(held).boxed_unsync())
        }
    }
}

fn get(uri: &str, version: Version) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .version(version)
        .body(empty_body())
        .unwrap()
}

async fn text(response: Response<Body>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Sends every request at once and holds every response until all have come, so each
/// request needs its own connection, then reads every body (giving the connections back).
async fn all_at_once<E: std::fmt::Debug>(
    sends: impl IntoIterator<Item = impl Future<Output = Result<Response<Body>, E>>>,
) {
    let responses: Vec<_> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for response in responses {
        text(response).await;
    }
}

#[tokio::test]
async fn sequential_http1_requests_share_one_connection() {
    let (addr, accepted) = app(App::Echo, false).await;
    let client = PlainHttp::new(addr);
    for _ in 0..5 {
        let response = client.send(get("/x", Version::HTTP_11)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        text(response).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http1_goes_in_origin_form_with_the_authority_as_host() {
    let (addr, _) = app(App::Echo, false).await;
    let client = PlainHttp::new(addr);
    let named = client
        .send(get("http://svc.example:8080/a?b=1", Version::HTTP_11))
        .await
        .unwrap();
    assert_eq!(text(named).await, "/a?b=1 svc.example:8080");
    let unnamed = client.send(get("/c", Version::HTTP_11)).await.unwrap();
    assert_eq!(text(unnamed).await, format!("/c {addr}"));
}

#[tokio::test]
async fn a_connection_the_app_closes_is_not_reused() {
    let (addr, accepted) = app(App::Close, false).await;
    let client = PlainHttp::new(addr);
    for _ in 0..3 {
        let response = client.send(get("/", Version::HTTP_11)).await.unwrap();
        text(response).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn concurrent_requests_get_their_own_connections_and_come_back_to_the_pool() {
    let (addr, accepted) = app(App::Echo, false).await;
    let client = PlainHttp::new(addr);
    let first = client.send(get("/1", Version::HTTP_11)).await.unwrap();
    let second = client.send(get("/2", Version::HTTP_11)).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    text(first).await;
    text(second).await;
    for _ in 0..4 {
        text(client.send(get("/", Version::HTTP_11)).await.unwrap()).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_busy_app_keeps_as_many_connections_as_its_load_needs() {
    // A server pod taking 200 requests at a time from the mesh: its app's connections must
    // survive between waves, not be closed and dialed again for every request past a small
    // idle limit (that cost 40 % more CPU per request at 64 concurrent, and throughput).
    let (addr, accepted) = app(App::Echo, false).await;
    let client = PlainHttp::new(addr);
    for _ in 0..3 {
        all_at_once((0..200).map(|_| client.send(get("/", Version::HTTP_11)))).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 200);
}

#[tokio::test]
async fn connections_past_the_warm_few_close_once_idle_for_a_while() {
    let (addr, _) = app(App::Echo, false).await;
    let pool = super::http1::Pool::with_idle_timeout(addr, Duration::from_millis(200));
    let request = || {
        Request::get("/")
            .header(http::header::HOST, addr.to_string())
            .body(empty_body())
            .unwrap()
    };
    all_at_once((0..100).map(|_| pool.send(request()))).await;
    assert_eq!(
        pool.idle(),
        100,
        "every connection idles, ready for the next wave"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pool.idle() > 32 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.idle(), 32, "the warm few stay");
    // The pool still serves, and reaps again after another burst.
    text(pool.send(request()).await.unwrap()).await;
}

#[tokio::test]
async fn a_body_dropped_before_its_end_takes_its_connection_with_it() {
    let (addr, accepted) = app(App::Endless, false).await;
    let client = PlainHttp::new(addr);
    let mut body = client
        .send(get("/", Version::HTTP_11))
        .await
        .unwrap()
        .into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let mut next = client
        .send(get("/", Version::HTTP_11))
        .await
        .unwrap()
        .into_body();
    next.frame().await.unwrap().unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http2_requests_share_one_connection_and_keep_their_authority() {
    let (addr, accepted) = app(App::Echo, true).await;
    let client = PlainHttp::new(addr);
    for _ in 0..3 {
        let response = client
            .send(get("http://svc.example/g", Version::HTTP_2))
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(text(response).await, "http://svc.example/g -");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_address_is_a_connect_error_naming_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = PlainHttp::new(addr);
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let error = client.send(get("/", version)).await.unwrap_err();
        assert!(matches!(error, PlainHttpError::Connect { .. }), "{error}");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}

#[tokio::test]
async fn long_lived_http2_streams_beyond_one_connections_limit_open_more_connections() {
    // hyper's server allows 200 streams per connection: the 201st used to wait forever.
    let (addr, accepted) = app(App::Hold, true).await;
    let client = Arc::new(PlainHttp::new(addr));
    let mut streams = Vec::new();
    for _ in 0..350 {
        let client = client.clone();
        streams.push(tokio::spawn(async move {
            let response = client.send(get("/", Version::HTTP_2)).await.unwrap();
            let mut body = response.into_body();
            body.frame().await.unwrap().unwrap();
            // Kept open (never read to the end) until the test is done.
            body
        }));
    }
    let mut open = Vec::new();
    for stream in streams {
        let body = tokio::time::timeout(Duration::from_secs(30), stream)
            .await
            .expect("every stream gets its response")
            .unwrap();
        open.push(body);
    }
    assert_eq!(open.len(), 350);
    let connections = accepted.load(Ordering::SeqCst);
    assert!((4..=16).contains(&connections), "{connections} connections");
}

#[tokio::test]
async fn a_full_destination_answers_saturated_after_a_bounded_wait() {
    let (addr, _) = app(App::Hold, true).await;
    let shared = crate::transport::shared_h2::SharedH2::new(1, Duration::from_millis(200));
    let dial = |_| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (sender, connection) = crate::http_util::h2_client()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok::<_, std::io::Error>(sender)
    };
    let mut held = Vec::new();
    for _ in 0..crate::transport::shared_h2::MAX_STREAMS {
        let response = shared
            .send(get(&format!("http://{addr}/"), Version::HTTP_2), dial)
            .await
            .unwrap();
        held.push(response);
    }
    assert_eq!(
        shared.open_streams(),
        [crate::transport::shared_h2::MAX_STREAMS]
    );
    let refused = shared
        .send(get(&format!("http://{addr}/"), Version::HTTP_2), dial)
        .await
        .unwrap_err();
    assert!(matches!(
        refused,
        crate::transport::shared_h2::SendError::Saturated
    ));
    // A stream that ends frees its place at once.
    held.pop();
    shared
        .send(get(&format!("http://{addr}/"), Version::HTTP_2), dial)
        .await
        .unwrap();
}

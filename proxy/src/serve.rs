//! The pieces both listeners share: the accept loop and serving one HTTP connection.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use weft_telemetry::Drain;

use crate::detect::Protocol;
use crate::http_util::Body;
use crate::metrics::Direction;

/// Concurrent streams a peer proxy may open on one connection: more than it ever opens
/// ([`crate::shared_h2::MAX_STREAMS`]; past that it opens another connection), few enough that
/// one connection cannot hold the proxy's memory hostage.
pub const PEER_MAX_STREAMS: u32 = 2 * crate::shared_h2::MAX_STREAMS as u32;
/// Concurrent streams the local app may open on one connection: an app multiplexing all its
/// calls (gRPC) on one connection must not be capped by the proxy.
pub const APP_MAX_STREAMS: u32 = 10_000;

/// Serves `io` as `protocol` (HTTP/1 or HTTP/2) with `service`, allowing `max_streams`
/// concurrent HTTP/2 streams. When `drain` triggers, the connection stops taking new requests,
/// finishes those in flight, then closes.
pub async fn serve_http<I, S, F>(
    io: I,
    protocol: Protocol,
    max_streams: u32,
    service: S,
    drain: &Drain,
) where
    I: Read + Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future = F,
        > + Clone
        + Send
        + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    // A macro rather than `Drain::drive`: through a generic function, rustc cannot prove the
    // connection future `Send` (higher-ranked lifetime inference, rust-lang/rust#102211).
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                () = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }};
    }
    let result = match protocol {
        Protocol::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(crate::http_util::H2_STREAM_WINDOW)
                .initial_connection_window_size(crate::http_util::H2_CONNECTION_WINDOW)
                .max_frame_size(crate::http_util::H2_MAX_FRAME)
                .max_concurrent_streams(max_streams)
                .serve_connection(io, service);
            drive!(conn)
        }
        Protocol::Http1 | Protocol::Opaque => {
            // HTTP/1 is only ever served to the local app (peers speak HTTP/2), so no header
            // read timeout: it would arm and disarm a timer on every request for a client
            // that is not an attacker.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .serve_connection(io, service);
            drive!(conn)
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// Accepts on `listener` until `drain` triggers, running `handle` for each connection in its own
/// task, which the drain waits for, inside a span naming the direction and the client.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    drain: &Drain,
    direction: Direction,
    handle: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = drain.signaled() => return,
        };
        match accepted {
            Ok((tcp, client)) => {
                let _ = tcp.set_nodelay(true);
                let span = tracing::debug_span!("conn", direction = direction.as_str(), %client);
                drain.spawn(handle(tcp).instrument(span));
            }
            Err(error) => {
                tracing::warn!(%error, direction = direction.as_str(), "accept failed");
                // Out of file descriptors, typically: let some connections close first.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

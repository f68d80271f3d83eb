//! The pieces both listeners share: the accept loop and serving one HTTP connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::Instrument;
use weft_telemetry::Drain;

use crate::detect::Protocol;
use crate::http_util::{Body, MAX_HEADER_BYTES, MAX_HEADER_LIST_SIZE};
use crate::metrics::Direction;

/// Concurrent streams a peer proxy may open on one connection: more than it ever opens
/// ([`crate::transport::shared_h2::MAX_STREAMS`]; past that it opens another connection), few enough that
/// one connection cannot hold the proxy's memory hostage.
pub const PEER_MAX_STREAMS: u32 = 2 * crate::transport::shared_h2::MAX_STREAMS as u32;
/// Concurrent streams the local app may open on one connection: an app multiplexing all its
/// calls (gRPC) on one connection must not be capped by the proxy.
pub const APP_MAX_STREAMS: u32 = 10_000;
/// Once a connection must end (too old, peer certificate expired), in-flight requests get this
/// long to finish before the connection is cut.
const END_GRACE: Duration = Duration::from_secs(30);
/// How often an idle connection is looked for.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How one HTTP connection is served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Concurrent HTTP/2 streams allowed.
    pub max_streams: u32,
    /// HTTP/2 pings: (interval, timeout). A peer that stops answering is dropped.
    pub keepalive: Option<(Duration, Duration)>,
    /// A connection on which no request started for this long is closed (gracefully: streams
    /// in flight finish).
    pub idle_timeout: Option<Duration>,
    /// When the connection must end however busy it is: it stops taking requests then, and is
    /// cut [`END_GRACE`] later.
    pub deadline: Option<Instant>,
    /// An HTTP/1 request head must arrive within this (clients from the network); `None` for
    /// the local app, which would otherwise arm and disarm a timer on every request.
    pub header_read_timeout: Option<Duration>,
}

impl ServeOptions {
    /// The local app's connections: many streams, no timers (the app is ours to trust).
    pub fn app() -> Self {
        Self {
            max_streams: APP_MAX_STREAMS,
            keepalive: None,
            idle_timeout: None,
            deadline: None,
            header_read_timeout: None,
        }
    }
}

/// Serves `io` as `protocol` (HTTP/1 or HTTP/2) with `service`, as `options` say. When `drain`
/// triggers, the connection stops taking new requests, finishes those in flight, then closes.
pub async fn serve_http<I, S, F>(
    io: I,
    protocol: Protocol,
    options: ServeOptions,
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
    let activity = Activity::new();
    let touched = activity.clone();
    // One clock read per request, only where idleness is watched.
    let service = hyper::service::service_fn(move |request| {
        if options.idle_timeout.is_some() {
            touched.touch();
        }
        service.call(request)
    });
    // A macro rather than a generic function: through one, rustc cannot prove the connection
    // future `Send` (higher-ranked lifetime inference, rust-lang/rust#102211).
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            let mut idle_check = tokio::time::interval(IDLE_CHECK);
            let mut ending = false;
            let mut cut_at: Option<Instant> = None;
            let deadline = options.deadline;
            loop {
                tokio::select! {
                    result = conn.as_mut() => break result,
                    () = drain.signaled(), if !ending => {
                        ending = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = sleep_until(deadline), if !ending && deadline.is_some() => {
                        ending = true;
                        cut_at = Some(Instant::now() + END_GRACE);
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = idle_check.tick(), if !ending && options.idle_timeout.is_some() => {
                        if options.idle_timeout.is_some_and(|idle| activity.idle_for() >= idle) {
                            ending = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    () = sleep_until(cut_at), if cut_at.is_some() => break Ok(()),
                }
            }
        }};
    }
    let result = match protocol {
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .initial_stream_window_size(crate::http_util::H2_STREAM_WINDOW)
                .initial_connection_window_size(crate::http_util::H2_CONNECTION_WINDOW)
                .max_frame_size(crate::http_util::H2_MAX_FRAME)
                .max_header_list_size(MAX_HEADER_LIST_SIZE)
                .max_concurrent_streams(options.max_streams);
            if let Some((interval, timeout)) = options.keepalive {
                builder
                    .keep_alive_interval(interval)
                    .keep_alive_timeout(timeout);
            }
            drive!(builder.serve_connection(io, service))
        }
        Protocol::Http1 | Protocol::Opaque => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_read_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(io, service)
                .with_upgrades();
            drive!(conn)
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// Completes at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a connection last started a request.
#[derive(Debug)]
struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            since: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
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

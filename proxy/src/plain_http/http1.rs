//! HTTP/1 to one address: a connection per request in flight, kept idle between requests.
//! As many stay as the load needs (a busy app's connections survive between waves of
//! requests); past a warm few, those idle for a while are closed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{PlainHttpError, connect};
use crate::http_util::{Body, BoxError};

/// Idle connections kept however long they stay idle (until the app closes them).
const KEEP_IDLE: usize = 32;
/// Idle connections kept at most; more are closed as their responses end. Far above what one
/// proxy's inbound connections can have in flight to its app at once.
const MAX_IDLE: usize = 4096;
/// Past [`KEEP_IDLE`], a connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The idle connections, and whether a task is closing the stale ones.
#[derive(Debug)]
struct Idle {
    /// Most recently used last, so the warmest connection is reused first.
    conns: Mutex<Vec<IdleConn>>,
    reaping: AtomicBool,
    timeout: Duration,
}

#[derive(Debug)]
struct IdleConn {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Connections to one address.
#[derive(Debug)]
pub(super) struct Pool {
    addr: SocketAddr,
    idle: Arc<Idle>,
}

impl Pool {
    pub(super) fn new(addr: SocketAddr) -> Self {
        Self::with_idle_timeout(addr, IDLE_TIMEOUT)
    }

    /// A pool whose connections past [`KEEP_IDLE`] close once idle for `timeout`.
    pub(super) fn with_idle_timeout(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            idle: Arc::new(Idle {
                conns: Mutex::new(Vec::new()),
                reaping: AtomicBool::new(false),
                timeout,
            }),
        }
    }

    /// Idle connections now.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.idle.conns.lock().len()
    }

    /// Sends `request` (origin-form, with `Host`) on an idle connection, or a new one.
    pub(super) async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Body>, PlainHttpError> {
        let Some(mut sender) = self.checkout() else {
            let mut sender = self.dial().await?;
            let response = sender.send_request(request).await?;
            return Ok(self.give_back_after(response, sender));
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok(self.give_back_after(response, sender)),
            Err(mut error) => match error.take_message() {
                // The app closed the idle connection as we picked it, before anything was sent:
                // the request goes once more, on a new connection.
                Some(request) => {
                    let mut sender = self.dial().await?;
                    let response = sender.send_request(request).await?;
                    Ok(self.give_back_after(response, sender))
                }
                None => Err(error.into_error().into()),
            },
        }
    }

    /// The most recently used idle connection that is ready for a request, dropping any the
    /// app has closed.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.conns.lock();
        let mut busy = Vec::new();
        let mut ready = None;
        while let Some(conn) = idle.pop() {
            if conn.sender.is_ready() {
                ready = Some(conn.sender);
                break;
            }
            // Still open but not ready: the app answered before the request body was all
            // sent, and the connection is finishing that. It stays for a later request.
            if !conn.sender.is_closed() {
                busy.push(conn);
            }
        }
        idle.splice(0..0, busy);
        ready
    }

    async fn dial(&self) -> Result<SendRequest<Body>, PlainHttpError> {
        let tcp = connect(self.addr).await?;
        // Response heads are bounded as request heads are, on every hop.
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(crate::http_util::MAX_HEADER_BYTES)
            .handshake(TokioIo::new(tcp))
            .await?;
        let addr = self.addr;
        // Ends when the app closes the connection, or once idle with its sender dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }

    /// The response, whose connection returns to the idle list once its body has ended.
    fn give_back_after(
        &self,
        response: Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> Response<Body> {
        response.map(|body| {
            let mut returning = ReturnWhenDone {
                body,
                sender: Some(sender),
                idle: Arc::downgrade(&self.idle),
            };
            if returning.body.is_end_stream() {
                returning.give_back();
            }
            returning.boxed_unsync()
        })
    }
}

/// A response body holding its connection until the body ends. Dropped before its end, the
/// connection is dropped too: hyper closes it rather than reuse one with unread bytes.
struct ReturnWhenDone {
    body: Incoming,
    sender: Option<SendRequest<Body>>,
    idle: Weak<Idle>,
}

impl ReturnWhenDone {
    fn give_back(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let Some(idle) = self.idle.upgrade() else {
            return;
        };
        let mut conns = idle.conns.lock();
        // Checkout skips closed senders; sweep them here only when they would keep a live
        // one out.
        if conns.len() >= MAX_IDLE {
            conns.retain(|conn| !conn.sender.is_closed());
        }
        if conns.len() < MAX_IDLE {
            conns.push(IdleConn {
                sender,
                since: Instant::now(),
            });
        }
        // Checked under the lock the reaper decides to stop under: never two, never none
        // while there are more than the warm few.
        if conns.len() > KEEP_IDLE && !idle.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(self.idle.clone()));
        }
    }
}

/// Closes connections idle past the timeout, oldest first, down to [`KEEP_IDLE`]; ends once
/// no more than that remain, or with the pool.
async fn reap(idle: Weak<Idle>) {
    loop {
        let Some(timeout) = idle.upgrade().map(|idle| idle.timeout) else {
            return;
        };
        tokio::time::sleep(timeout / 2).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let mut conns = idle.conns.lock();
        let stale = expired(&conns, Instant::now(), idle.timeout);
        conns.drain(..stale);
        if conns.len() <= KEEP_IDLE {
            idle.reaping.store(false, Ordering::Relaxed);
            return;
        }
    }
}

/// How many of `conns`, from the front (least recently returned), are idle past `timeout`
/// and may go, leaving at least [`KEEP_IDLE`].
fn expired(conns: &[IdleConn], now: Instant, timeout: Duration) -> usize {
    let removable = conns.len().saturating_sub(KEEP_IDLE);
    conns
        .iter()
        .take(removable)
        .take_while(|conn| now.saturating_duration_since(conn.since) >= timeout)
        .count()
}

impl http_body::Body for ReturnWhenDone {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.give_back(),
            Some(Ok(_)) if self.body.is_end_stream() => self.give_back(),
            Some(Ok(_)) => {}
            // A broken response: its connection is not reused.
            Some(Err(_)) => self.sender = None,
        }
        Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

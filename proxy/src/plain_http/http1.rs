//! HTTP/1 to one address: a connection per request in flight, kept idle between requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use super::{PlainHttpError, connect};
use crate::http_util::{Body, BoxError};

/// Idle connections kept; more are closed as their responses end.
const MAX_IDLE: usize = 32;

type Idle = Mutex<Vec<SendRequest<Body>>>;

/// Connections to one address.
#[derive(Debug)]
pub(super) struct Pool {
    addr: SocketAddr,
    /// Most recently used last, so the warmest connection is reused first.
    idle: Arc<Idle>,
}

impl Pool {
    pub(super) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: Arc::new(Mutex::new(Vec::new())),
        }
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
        let mut idle = self.idle.lock();
        let mut busy = Vec::new();
        let mut ready = None;
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                ready = Some(sender);
                break;
            }
            // Still open but not ready: the app answered before the request body was all
            // sent, and the connection is finishing that. It stays for a later request.
            if !sender.is_closed() {
                busy.push(sender);
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
        let mut idle = idle.lock();
        // Checkout skips closed senders; sweep them here only when they would keep a live
        // one out.
        if idle.len() >= MAX_IDLE {
            idle.retain(|sender| !sender.is_closed());
        }
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }
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

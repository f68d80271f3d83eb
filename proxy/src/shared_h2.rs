//! One HTTP/2 connection shared by every request to a destination: dialed on first use, by one
//! request while the others wait for it, and again once it has closed. Peers (over mTLS) and
//! apps that speak HTTP/2 both use it; they differ only in how they dial.

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use parking_lot::Mutex;

use crate::http_util::Body;

/// Why a request sent on a shared connection got no response.
#[derive(Debug)]
pub enum SendError<E> {
    /// No connection: the dial failed.
    Dial(E),
    /// The HTTP/2 exchange failed.
    Http(hyper::Error),
}

/// The connection, if one is up.
#[derive(Debug, Default)]
pub struct SharedH2 {
    /// Cloned per request (a cheap handle); replaced when the connection dies.
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Held while dialing, so concurrent requests share one new connection.
    dialing: tokio::sync::Mutex<()>,
}

impl SharedH2 {
    /// Sends `request`, dialing with `dial` when no connection is up. `dial` is told since when
    /// the request has waited, so that it may answer with a failure no older than that rather
    /// than dial again. A request the connection refused before sending anything (it was
    /// closing) goes once more, on a new connection.
    pub async fn send<E, F, Fut>(
        &self,
        request: Request<Body>,
        dial: F,
    ) -> Result<Response<Incoming>, SendError<E>>
    where
        F: Fn(Instant) -> Fut,
        Fut: Future<Output = Result<SendRequest<Body>, E>>,
    {
        let mut sender = self.sender(&dial).await.map_err(SendError::Dial)?;
        let mut error = match sender.try_send_request(request).await {
            Ok(response) => return Ok(response),
            Err(error) => error,
        };
        self.forget_if_closed();
        let Some(request) = error.take_message() else {
            return Err(SendError::Http(error.into_error()));
        };
        let mut sender = self.sender(&dial).await.map_err(SendError::Dial)?;
        sender.send_request(request).await.map_err(|error| {
            self.forget_if_closed();
            SendError::Http(error)
        })
    }

    async fn sender<E, F, Fut>(&self, dial: &F) -> Result<SendRequest<Body>, E>
    where
        F: Fn(Instant) -> Fut,
        Fut: Future<Output = Result<SendRequest<Body>, E>>,
    {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let waited_since = Instant::now();
        let _dialing = self.dialing.lock().await;
        // Another request may have dialed while we waited.
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let sender = dial(waited_since).await?;
        *self.sender.lock() = Some(sender.clone());
        Ok(sender)
    }

    fn live(&self) -> Option<SendRequest<Body>> {
        let guard = self.sender.lock();
        guard.as_ref().filter(|sender| !sender.is_closed()).cloned()
    }

    /// Drops the handle of a closed connection, so the next request dials.
    fn forget_if_closed(&self) {
        let mut guard = self.sender.lock();
        if guard.as_ref().is_some_and(SendRequest::is_closed) {
            *guard = None;
        }
    }
}

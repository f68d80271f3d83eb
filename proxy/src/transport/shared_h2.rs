//! Multiplexed HTTP/2 to one destination: as few connections as the load needs. Requests share
//! the first connection until it carries [`MAX_STREAMS`] streams, then the next one is dialed,
//! up to [`MAX_CONNECTIONS`]; past that a request waits, at most [`MAX_WAITING`] of them and
//! each for at most the wait bound, then fails as saturated. A stream counts until its response
//! body is dropped, so long-lived gRPC streams hold their place for as long as they live. Each
//! connection is dialed on first use by one request while the others wait for it, and again
//! once it has closed. Peers (over mTLS) and apps that speak HTTP/2 both use it; they differ
//! only in how they dial.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http_util::{Body, BoxError};

/// Streams one connection carries at most. Below what our inbound server allows, and below the
/// usual defaults of app servers (hyper and Go allow 200 and 250), whose limit we cannot see
/// before a request would queue behind it.
pub const MAX_STREAMS: usize = 100;
/// Connections to one destination at most.
pub const MAX_CONNECTIONS: usize = 16;
/// Requests waiting for a stream at most; more fail at once.
pub const MAX_WAITING: usize = 1024;
/// How long a request waits for a stream when every connection is full.
pub const WAIT: Duration = Duration::from_secs(10);

/// Why a request sent on a shared connection got no response.
#[derive(Debug)]
pub enum SendError<E> {
    /// No connection: the dial failed.
    Dial(E),
    /// The HTTP/2 exchange failed.
    Http(hyper::Error),
    /// Every connection is full, and no stream freed up in time (or too many wait already).
    Saturated,
}

/// The connections to one destination.
#[derive(Debug)]
pub struct SharedH2 {
    lanes: Arc<[Lane]>,
    /// One permit per stream of every connection: the bound, and the queue when all are taken.
    streams: Arc<Semaphore>,
    waiting: AtomicUsize,
    wait: Duration,
}

/// One connection, if up, and the streams it carries.
#[derive(Debug, Default)]
struct Lane {
    /// Cloned per request (a cheap handle); replaced when the connection dies.
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Held while dialing, so concurrent requests share one new connection.
    dialing: tokio::sync::Mutex<()>,
    open: AtomicUsize,
}

/// A stream's place on its connection, given back when the response body goes.
#[derive(Debug)]
struct StreamSlot {
    lanes: Arc<[Lane]>,
    lane: usize,
    _permit: OwnedSemaphorePermit,
}

/// A response body that holds its stream's place until dropped.
#[derive(Debug)]
struct SlotBody {
    inner: Incoming,
    _slot: StreamSlot,
}

// === impl SharedH2 ===

impl Default for SharedH2 {
    fn default() -> Self {
        Self::new(MAX_CONNECTIONS, WAIT)
    }
}

impl SharedH2 {
    /// Up to `connections` connections; a request waits `wait` at most for a stream.
    pub fn new(connections: usize, wait: Duration) -> Self {
        let connections = connections.max(1);
        Self {
            lanes: (0..connections).map(|_| Lane::default()).collect(),
            streams: Arc::new(Semaphore::new(connections * MAX_STREAMS)),
            waiting: AtomicUsize::new(0),
            wait,
        }
    }

    /// Sends `request`, dialing with `dial` when the connection it goes on is down. `dial` is
    /// told since when the request has waited, so that it may answer with a failure no older
    /// than that rather than dial again. A request the connection refused before sending
    /// anything (it was closing) goes once more, on a new connection.
    pub async fn send<E, F, Fut>(
        &self,
        request: Request<Body>,
        dial: F,
    ) -> Result<Response<Body>, SendError<E>>
    where
        F: Fn(Instant) -> Fut,
        Fut: Future<Output = Result<SendRequest<Body>, E>>,
    {
        let slot = self.slot().await?;
        let lane = &self.lanes[slot.lane];
        let mut sender = lane.sender(&dial).await.map_err(SendError::Dial)?;
        let mut error = match sender.try_send_request(request).await {
            Ok(response) => return Ok(slot.hold(response)),
            Err(error) => error,
        };
        lane.forget_if_closed();
        let Some(request) = error.take_message() else {
            return Err(SendError::Http(error.into_error()));
        };
        let mut sender = lane.sender(&dial).await.map_err(SendError::Dial)?;
        match sender.send_request(request).await {
            Ok(response) => Ok(slot.hold(response)),
            Err(error) => {
                lane.forget_if_closed();
                Err(SendError::Http(error))
            }
        }
    }

    /// Streams open now on each connection, for tests and metrics.
    #[cfg(test)]
    pub fn open_streams(&self) -> Vec<usize> {
        self.lanes
            .iter()
            .map(|lane| lane.open.load(Ordering::Relaxed))
            .collect()
    }

    /// A place for one stream: on the first connection with room, waiting for one if none has.
    async fn slot<E>(&self) -> Result<StreamSlot, SendError<E>> {
        let permit = match self.streams.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_stream().await?,
        };
        // Holding a permit, some connection has room; another request may take it between the
        // look and the claim, so look again (rarely more than once).
        loop {
            for (lane, state) in self.lanes.iter().enumerate() {
                let claimed =
                    state
                        .open
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                            (open < MAX_STREAMS).then_some(open + 1)
                        });
                if claimed.is_ok() {
                    return Ok(StreamSlot {
                        lanes: self.lanes.clone(),
                        lane,
                        _permit: permit,
                    });
                }
            }
            tokio::task::yield_now().await;
        }
    }

    async fn wait_for_stream<E>(&self) -> Result<OwnedSemaphorePermit, SendError<E>> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Saturated);
        }
        let acquired = tokio::time::timeout(self.wait, self.streams.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(SendError::Saturated),
        }
    }
}

// === impl Lane ===

impl Lane {
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

// === impl StreamSlot ===

impl StreamSlot {
    /// The response, its body holding this slot until dropped.
    fn hold(self, response: Response<Incoming>) -> Response<Body> {
        use http_body_util::BodyExt;
        response.map(|inner| SlotBody { inner, _slot: self }.boxed_unsync())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.lanes[self.lane].open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl http_body::Body for SlotBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Bodies that count what passes through them, for the access log and spans.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use super::Observation;
use crate::http_util::{Body, BoxError};

/// A request body that adds the bytes it yields to a shared count.
pub(super) struct CountedRequest {
    pub(super) inner: Body,
    pub(super) bytes: Arc<AtomicU64>,
}

impl http_body::Body for CountedRequest {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that finishes its request's observation when it ends — fully read, failed,
/// or dropped unread — so spans and log lines cover the whole exchange and its bytes.
pub(super) struct ObservedResponse {
    pub(super) inner: Body,
    pub(super) observation: Option<Observation>,
    pub(super) bytes: u64,
    /// From trailers (or, for a trailers-only response, the headers).
    pub(super) grpc_status: Option<u32>,
}

impl ObservedResponse {
    fn finish(&mut self, failed: bool) {
        if let Some(observation) = self.observation.take() {
            observation.finish(self.bytes, self.grpc_status, failed);
        }
    }
}

impl http_body::Body for ObservedResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.grpc_status = super::grpc_status(trailers).or(this.grpc_status);
                }
                if this.inner.is_end_stream() {
                    this.finish(false);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(true),
            Poll::Ready(None) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedResponse {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or an empty body was never polled.
        let unfinished = !self.inner.is_end_stream();
        self.finish(unfinished);
    }
}

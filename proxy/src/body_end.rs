//! Bodies watched as they pass: one that reports how it ended — read to its end, failed, or
//! dropped before — with the bytes it carried and the gRPC status its trailers gave (the
//! moment a response is over, for what counts or logs it then), and one that tells the size of
//! each data frame (request bytes, counted as they go).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use crate::http_util::{Body, BoxError, grpc_status};

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Data bytes it carried.
    pub bytes: u64,
    /// From its trailers, else as given when it was wrapped (a trailers-only response's).
    pub grpc_status: Option<u32>,
    /// Read to its end: not failed, not dropped before.
    pub complete: bool,
}

/// `inner`, calling `on_end` once when it ends.
pub struct OnEnd<F: FnOnce(Ended)> {
    inner: Body,
    bytes: u64,
    grpc_status: Option<u32>,
    on_end: Option<F>,
}

impl<F: FnOnce(Ended)> OnEnd<F> {
    /// Watches `inner`, whose headers gave `grpc_status` (if any).
    pub fn new(inner: Body, grpc_status: Option<u32>, on_end: F) -> Self {
        Self {
            inner,
            bytes: 0,
            grpc_status,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, complete: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Ended {
                bytes: self.bytes,
                grpc_status: self.grpc_status,
                complete,
            });
        }
    }
}

impl<F: FnOnce(Ended) + Unpin> http_body::Body for OnEnd<F> {
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
                    this.grpc_status = grpc_status(trailers).or(this.grpc_status);
                }
                if this.inner.is_end_stream() {
                    this.end(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.end(false),
            Poll::Ready(None) => this.end(true),
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

impl<F: FnOnce(Ended)> Drop for OnEnd<F> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or an empty body was never polled.
        let complete = self.inner.is_end_stream();
        self.end(complete);
    }
}

/// `inner`, telling `on_data` the size of each data frame as it passes.
pub struct Counted<F: FnMut(u64)> {
    inner: Body,
    on_data: F,
}

impl<F: FnMut(u64)> Counted<F> {
    pub fn new(inner: Body, on_data: F) -> Self {
        Self { inner, on_data }
    }
}

impl<F: FnMut(u64) + Unpin> http_body::Body for Counted<F> {
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
            (this.on_data)(data.len() as u64);
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

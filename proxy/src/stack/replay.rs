//! Request bodies that can be sent more than once.
//!
//! A retry or a mirror needs the request body again. Bodies that are already complete when the
//! request arrives (empty, or small and sent with the headers, as almost every unary request is)
//! are kept, up to a bound; anything else streams through untouched and is never retried. The
//! proxy never waits for a body to finish before sending it on, so streaming calls are not held
//! up (and cannot deadlock waiting for a response that needs the request to proceed).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::http_util::{Body, BoxError};

/// How long a body of declared length may take to arrive before it streams instead.
const DECLARED_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request body, complete and replayable, or streaming.
#[derive(Debug)]
pub enum ReplayBody {
    /// The whole body (possibly empty) and its trailers, sendable any number of times.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
        /// Set once `data` has been yielded by this copy.
        sent: bool,
    },
    /// A body that was not complete on arrival (or too big): sendable once.
    Streaming { prefix: Option<Bytes>, inner: Body },
}

impl ReplayBody {
    /// Keeps `body` for replays when it is small: a body that declares a length within
    /// `limit` (an HTTP/1 `Content-Length`) is read whole first, which the client is already
    /// sending; a body of unknown length is kept only if it is complete on arrival. Anything
    /// else streams, with whatever was read in front.
    pub async fn buffer(mut body: Body, limit: usize) -> Self {
        if body.is_end_stream() {
            return Self::complete(Bytes::new(), None);
        }
        let declared = body.size_hint().exact().filter(|n| *n <= limit as u64);
        let deadline = tokio::time::Instant::now() + DECLARED_BODY_TIMEOUT;
        let mut data = BytesMut::new();
        loop {
            let frame = if declared.is_some() {
                match tokio::time::timeout_at(deadline, body.frame()).await {
                    Ok(frame) => frame,
                    // A client this slow streams like any other.
                    Err(_) => return Self::streaming(data.freeze(), body),
                }
            } else {
                // Only what is already here: never wait for the rest of a body of unknown
                // length (it may be a stream waiting on the response).
                match body.frame().now_or_never() {
                    Some(frame) => frame,
                    None => return Self::streaming(data.freeze(), body),
                }
            };
            match frame {
                None => return Self::complete(data.freeze(), None),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        data.extend_from_slice(&chunk);
                        if data.len() > limit {
                            return Self::streaming(data.freeze(), body);
                        }
                        if body.is_end_stream() {
                            return Self::complete(data.freeze(), None);
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        return Self::complete(data.freeze(), trailers);
                    }
                },
                Some(Err(error)) => {
                    // Let the failure surface where the body is sent.
                    let failed =
                        http_body_util::StreamBody::new(futures_util::stream::once(async move {
                            Err::<Frame<Bytes>, BoxError>(error)
                        }));
                    return Self::streaming(data.freeze(), failed.boxed_unsync());
                }
            }
        }
    }

    /// A body that is never kept: the request has no use for a replay.
    pub fn streaming_only(body: Body) -> Self {
        Self::Streaming {
            prefix: None,
            inner: body,
        }
    }

    fn complete(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self::Complete {
            data,
            trailers,
            sent: false,
        }
    }

    fn streaming(prefix: Bytes, inner: Body) -> Self {
        Self::Streaming {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
        }
    }

    /// A fresh copy of a complete body; `None` for a streaming one.
    pub fn try_clone(&self) -> Option<Self> {
        match self {
            Self::Complete { data, trailers, .. } => {
                Some(Self::complete(data.clone(), trailers.clone()))
            }
            Self::Streaming { .. } => None,
        }
    }

    /// Boxes it as the proxy's body type.
    pub fn into_body(self) -> Body {
        match self {
            Self::Streaming {
                prefix: None,
                inner,
            } => inner,
            other => other.boxed_unsync(),
        }
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Complete {
                data,
                trailers,
                sent,
            } => {
                if !*sent {
                    *sent = true;
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                    }
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Self::Streaming { prefix, inner } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Pin::new(inner).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Complete {
                data,
                trailers,
                sent,
            } => (*sent || data.is_empty()) && trailers.is_none(),
            Self::Streaming { prefix, inner } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Complete { data, sent, .. } => {
                SizeHint::with_exact(if *sent { 0 } else { data.len() as u64 })
            }
            Self::Streaming { prefix, inner } => {
                let mut hint = inner.size_hint();
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                hint.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    fn full(bytes: &'static [u8]) -> Body {
        Full::new(Bytes::from_static(bytes))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    #[tokio::test]
    async fn a_small_complete_body_replays() {
        let body = ReplayBody::buffer(full(b"hello"), 16).await;
        let copy = body.try_clone().unwrap();
        assert_eq!(
            body.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
        assert_eq!(
            copy.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_whole_but_never_replays() {
        let body = ReplayBody::buffer(full(b"0123456789"), 4).await;
        assert!(body.try_clone().is_none());
        assert_eq!(
            body.into_body().collect().await.unwrap().to_bytes(),
            "0123456789"
        );
    }

    #[tokio::test]
    async fn a_body_still_arriving_streams() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = tokio_stream_from(rx);
        let body = ReplayBody::buffer(stream, 1024).await;
        assert!(body.try_clone().is_none());
        drop(tx);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> Body {
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        http_body_util::StreamBody::new(stream).boxed_unsync()
    }

    #[tokio::test]
    async fn trailers_replay_too() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body =
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let body = ReplayBody::buffer(body, 16).await;
        let copy = body.try_clone().unwrap();
        let collected = copy.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    }
}

#[cfg(test)]
mod declared_length {
    use http_body_util::BodyExt;

    use super::*;

    /// An HTTP/1 body with a Content-Length: the chunk arrives after a delay, as it would when
    /// the request head was read before the body.
    #[tokio::test]
    async fn a_declared_small_body_is_awaited_and_kept() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let mut rx = rx;
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let body = http_body_util::StreamBody::new(stream);
        let body = Sized5 { inner: body }.boxed_unsync();
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"12345"))))
                .await
                .unwrap();
        });
        let body = ReplayBody::buffer(body, 1024).await;
        sender.await.unwrap();
        let copy = body.try_clone().expect("kept");
        assert_eq!(
            copy.into_body().collect().await.unwrap().to_bytes(),
            "12345"
        );
    }

    /// A stream body that declares it is 5 bytes long.
    struct Sized5<B> {
        inner: B,
    }

    impl<B: HttpBody<Data = Bytes, Error = BoxError> + Unpin> HttpBody for Sized5<B> {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Pin::new(&mut self.inner).poll_frame(cx)
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(5)
        }
    }
}

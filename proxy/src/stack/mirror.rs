//! Request mirroring: a copy goes to another backend, fire and forget; the primary never waits
//! for it, and its response is dropped.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::{BoxHttp, HttpRequest, HttpResponse, ProxyError};

/// Mirrors in flight at once per rule; more are skipped rather than queued.
const MAX_IN_FLIGHT: usize = 256;
/// A mirror that has not answered by then is abandoned, freeing its place.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends a copy of `percent` % of requests to `mirror`.
#[derive(Clone)]
pub struct Mirror {
    inner: BoxHttp,
    mirror: BoxHttp,
    percent: u32,
    in_flight: Arc<Semaphore>,
}

impl Mirror {
    pub fn new(inner: BoxHttp, mirror: BoxHttp, percent: u32) -> Self {
        Self {
            inner,
            mirror,
            percent,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    fn copy(&self, request: &HttpRequest) -> Option<HttpRequest> {
        if self.percent < 100 && rand::random_range(0..100) >= self.percent {
            return None;
        }
        // Only requests whose body is whole can be sent twice.
        let body = request.body().try_clone()?;
        let mut copy = http::Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        Some(copy)
    }
}

impl tower::Service<HttpRequest> for Mirror {
    type Response = HttpResponse;
    type Error = ProxyError;
    type Future = <BoxHttp as tower::Service<HttpRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        if let Some(copy) = self.copy(&request)
            && let Ok(permit) = self.in_flight.clone().try_acquire_owned()
        {
            let mirror = self.mirror.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(MIRROR_TIMEOUT, mirror.oneshot(copy)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "mirrored request failed"),
                    Err(_) => tracing::debug!("mirrored request timed out"),
                }
                drop(permit);
            });
        }
        self.inner.call(request)
    }
}

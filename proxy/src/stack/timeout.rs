//! A deadline on the layers below: the whole request (retries included) or each attempt.

use std::task::{Context, Poll};
use std::time::Duration;

use super::{BoxHttp, HttpRequest, HttpResponse, ProxyError};

/// Fails with [`ProxyError::Timeout`] if the response headers take longer than `after`.
#[derive(Clone)]
pub struct Timeout {
    inner: BoxHttp,
    after: Duration,
    what: &'static str,
}

impl Timeout {
    /// `what` names the timeout in the error ("request", "backend request").
    pub fn new(inner: BoxHttp, after: Duration, what: &'static str) -> Self {
        Self { inner, after, what }
    }
}

impl tower::Service<HttpRequest> for Timeout {
    type Response = HttpResponse;
    type Error = ProxyError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let response = self.inner.call(request);
        let (after, what) = (self.after, self.what);
        Box::pin(async move {
            tokio::time::timeout(after, response)
                .await
                .unwrap_or(Err(ProxyError::Timeout { what, after }))
        })
    }
}

//! Gateway API header modifiers on requests and responses.

use std::task::{Context, Poll};

use http::HeaderMap;

use super::{BoxHttp, HttpRequest, HttpResponse, ProxyError};
use crate::destination::HeaderModifier;

/// Applies a rule's header modifiers around the layers below.
#[derive(Clone)]
pub struct HeaderFilters {
    inner: BoxHttp,
    request: Option<HeaderModifier>,
    response: Option<HeaderModifier>,
}

impl HeaderFilters {
    pub fn new(
        inner: BoxHttp,
        request: Option<HeaderModifier>,
        response: Option<HeaderModifier>,
    ) -> Self {
        Self {
            inner,
            request,
            response,
        }
    }
}

/// Set replaces, add appends, remove deletes, in that order (as the Gateway API specifies).
pub fn apply(modifier: &HeaderModifier, headers: &mut HeaderMap) {
    for (name, value) in &modifier.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &modifier.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &modifier.remove {
        headers.remove(name);
    }
}

impl tower::Service<HttpRequest> for HeaderFilters {
    type Response = HttpResponse;
    type Error = ProxyError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        if let Some(modifier) = &self.request {
            apply(modifier, request.headers_mut());
        }
        let response = self.inner.call(request);
        let modifier = self.response.clone();
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(modifier) = &modifier {
                apply(modifier, response.headers_mut());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue};

    use super::*;

    #[test]
    fn set_add_remove() {
        let modifier = HeaderModifier {
            set: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("canary"),
            )],
            add: vec![(
                HeaderName::from_static("x-tag"),
                HeaderValue::from_static("b"),
            )],
            remove: vec![HeaderName::from_static("x-secret")],
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-env", HeaderValue::from_static("prod"));
        headers.insert("x-tag", HeaderValue::from_static("a"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        apply(&modifier, &mut headers);
        assert_eq!(headers["x-env"], "canary");
        assert_eq!(headers.get_all("x-tag").iter().count(), 2);
        assert!(!headers.contains_key("x-secret"));
    }
}

//! Weighted choice among a rule's backends.

use std::task::{Context, Poll};

use super::{BoxHttp, HttpRequest, HttpResponse, ProxyError};

/// Sends each request to one backend, chosen at random in proportion to the weights.
#[derive(Clone)]
pub struct Split {
    backends: Vec<(BoxHttp, u32)>,
    total: u64,
}

impl Split {
    /// Splits over `backends` (service, weight); zero weights get nothing.
    pub fn new(backends: Vec<(BoxHttp, u32)>) -> Self {
        let total = backends.iter().map(|(_, w)| u64::from(*w)).sum();
        Self { backends, total }
    }

    fn choose(&mut self) -> Option<&mut BoxHttp> {
        if self.backends.len() == 1 {
            return self.backends.first_mut().map(|(b, _)| b);
        }
        if self.total == 0 {
            return None;
        }
        let mut ticket = rand::random_range(0..self.total);
        for (backend, weight) in &mut self.backends {
            let weight = u64::from(*weight);
            if ticket < weight {
                return Some(backend);
            }
            ticket -= weight;
        }
        None
    }
}

impl tower::Service<HttpRequest> for Split {
    type Response = HttpResponse;
    type Error = ProxyError;
    type Future = <BoxHttp as tower::Service<HttpRequest>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        match self.choose() {
            // Balancers and the layers above them are always ready.
            Some(backend) => backend.call(request),
            None => Box::pin(async { Err(ProxyError::NoBackends("(all weights zero)".into())) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn answering(status: u16) -> BoxHttp {
        BoxHttp::new(service_fn(move |_req: HttpRequest| async move {
            let mut response = HttpResponse::new(crate::http_util::empty_body());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, ProxyError>(response)
        }))
    }

    #[tokio::test]
    async fn shares_follow_the_weights() {
        let split = Split::new(vec![
            (answering(200), 90),
            (answering(201), 10),
            (answering(202), 0),
        ]);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            let request = http::Request::new(super::super::ReplayBody::streaming_only(
                crate::http_util::empty_body(),
            ));
            let response = split.clone().oneshot(request).await.unwrap();
            counts[usize::from(response.status().as_u16() - 200)] += 1;
        }
        assert!((8_700..=9_300).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[2], 0);
    }
}

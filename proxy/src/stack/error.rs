//! Why the proxy, not the app, answered a request; each becomes a response with a reason.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::HttpResponse;
use crate::http_util::error_response;
use crate::transport::PeerError;

/// A failure inside the stack.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The endpoint could not be reached: the request was not sent, so retrying is safe.
    #[error("{0}")]
    Connect(PeerError),
    /// The exchange failed after the request may have been sent (reset, connection lost).
    #[error("{0}")]
    Stream(PeerError),
    /// The endpoint's connections are full: the request was not sent, but the endpoint is
    /// healthy.
    #[error("{0}")]
    Saturated(PeerError),
    /// The backend has no endpoints (all removed, or none registered).
    #[error("no endpoints for {0}")]
    NoEndpoints(Arc<str>),
    /// The matched rule sends nowhere.
    #[error("route {0} has no backends")]
    NoBackends(Arc<str>),
    /// A timeout of the route elapsed.
    #[error("{what} timeout of {after:?} elapsed")]
    Timeout { what: &'static str, after: Duration },
    /// The destination's outbound rate limit was exceeded.
    #[error("rate limit of {0}/s exceeded")]
    RateLimited(u32),
    /// No route of the destination matches the request.
    #[error("no route of {0} matches the request")]
    NoMatch(Arc<str>),
}

impl ProxyError {
    /// The request never reached the endpoint: any request may be retried.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Saturated(_))
    }

    /// The endpoint may have seen the request (reset, timeout): only idempotent requests may be
    /// retried.
    pub fn is_mid_request_failure(&self) -> bool {
        matches!(self, Self::Stream(_) | Self::Timeout { .. })
    }

    /// Whether it counts against the endpoint's health.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::Stream(_) | Self::Timeout { .. }
        )
    }

    /// The reason, as `weft_outbound_errors_total` labels it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Stream(_) => "stream",
            Self::Saturated(_) => "saturated",
            Self::NoEndpoints(_) => "no_endpoints",
            Self::NoBackends(_) => "no_backends",
            Self::Timeout { .. } => "timeout",
            Self::RateLimited(_) => "rate_limited",
            Self::NoMatch(_) => "no_route",
        }
    }

    /// The response the app gets.
    pub fn into_response(self) -> HttpResponse {
        let status = match &self {
            Self::Connect(_) | Self::Stream(_) => StatusCode::BAD_GATEWAY,
            Self::NoEndpoints(_) | Self::Saturated(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoBackends(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NoMatch(_) => StatusCode::NOT_FOUND,
        };
        error_response(status, self.to_string())
    }
}

impl From<PeerError> for ProxyError {
    fn from(error: PeerError) -> Self {
        match error {
            PeerError::Dial { .. } => Self::Connect(error),
            PeerError::Http { .. } => Self::Stream(error),
            PeerError::Saturated { .. } => Self::Saturated(error),
        }
    }
}

//! HTTP pieces both directions share: the body type, Weft's headers, synthetic error responses.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// HTTP/2 flow-control windows for every connection the proxy makes or accepts. Fixed and
/// generous rather than adaptive: the adaptive (BDP) estimator pings the peer as responses
/// arrive, which on small requests doubles the frames, syscalls and wakeups per request. 1 MiB
/// per stream keeps a 1 MiB transfer from stalling on window updates; the memory is only used
/// while a reader falls behind.
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// See [`H2_STREAM_WINDOW`].
pub const H2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// The largest HTTP/2 frame we accept: bigger DATA frames mean fewer frames, body chunks and
/// writes per byte on large transfers (the default, 16 KiB, is the protocol's minimum).
pub const H2_MAX_FRAME: u32 = 256 * 1024;

/// The largest header block the proxy takes, on every hop and in both directions: an HTTP/1
/// request's head (its read buffer may grow to this), and (with [`MAX_HEADER_LIST_SIZE`]) an
/// HTTP/2 one. What the app's side accepts, the peer's side accepts too, so a request is never
/// let in at one end only to be refused at the other.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// [`MAX_HEADER_BYTES`] as HTTP/2 counts a header list: 32 bytes more per header, for the
/// at most 100 headers HTTP/1 allows.
pub const MAX_HEADER_LIST_SIZE: u32 = (MAX_HEADER_BYTES + 100 * 32) as u32;

/// An HTTP/2 client handshake with the proxy's windows, frame size, header limit and timer, for
/// every HTTP/2 connection it makes (to peers, and to apps that speak it).
pub fn h2_client() -> hyper::client::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);
    builder
}

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type flowing through the proxy: the peer's or app's streaming body, or ours.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Set by the inbound proxy to the verified identity of the calling proxy.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("weft-client-id");
/// Marks an HTTP/1 request carried over HTTP/2 between proxies, so the far side restores it.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("weft-orig-proto");
/// Why the proxy (not the app) answered with an error.
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("weft-proxy-error");

/// Removes every header only the proxy may set: `weft-` in any case, or `weft_`, which CGI,
/// WSGI and PHP apps read as the same variable (`HTTP_WEFT_CLIENT_ID`). Requests without such
/// headers (nearly all) cost one scan of the names and no allocation.
pub fn remove_weft_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(is_weft_header) {
        return;
    }
    let smuggled: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_weft_header(n))
        .cloned()
        .collect();
    for name in smuggled {
        headers.remove(name);
    }
}

fn is_weft_header(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    name.len() > 5 && name[..4].eq_ignore_ascii_case(b"weft") && matches!(name[4], b'-' | b'_')
}

/// Whether a request or response is gRPC (by its content type).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status in trailers (or a trailers-only response's headers).
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// Boxes a hyper body; an empty one (a GET's) without allocating.
pub fn boxed(body: hyper::body::Incoming) -> Body {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return empty_body();
    }
    body.map_err(BoxError::from).boxed_unsync()
}

/// A body with nothing in it.
pub fn empty_body() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An error response made by the proxy, saying why in a header and the body.
pub fn error_response(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    let reason = reason.into();
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(format!("{reason}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&reason) {
        response.headers_mut().insert(PROXY_ERROR, value);
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Removes the connection-specific headers of HTTP/1 (RFC 9110 §7.6.1), which HTTP/2 forbids,
/// including any that `Connection` itself lists.
pub fn strip_connection_headers(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    // HTTP/2 allows only `te: trailers`.
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_headers_and_those_listed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_connection_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn removes_the_proxys_headers_in_every_spelling() {
        let mut headers = HeaderMap::new();
        for name in [
            "weft-client-id",
            "weft_client_id",
            "WEFT_Orig_Proto",
            "weft-anything",
            "weftx-kept",
            "x-weft-kept",
            "weft",
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        remove_weft_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["weft", "weftx-kept", "x-weft-kept"]);
    }

    #[test]
    fn keeps_te_trailers_for_grpc() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_connection_headers(&mut headers);
        assert!(headers.contains_key(header::TE));
    }
}

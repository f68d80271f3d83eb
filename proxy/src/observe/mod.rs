//! What the proxy tells about each request beyond its metrics: the trace context it passes on,
//! the span it records when the request is sampled, its access-log line, and its summary for
//! the operators tapping the proxy. All of it is off unless configured or watched, and then
//! costs nothing for requests it does not touch: an unsampled request without an access log
//! that no one taps is not observed at all.

mod context;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::{Method, Request, Response, Version};
use opentelemetry::trace::{TraceContextExt, TraceId};
use parking_lot::Mutex;
use tracing::field::{Empty, Field, Value};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use weft_telemetry::{ACCESS_LOG_TARGET, TRACE_TARGET};

use self::context::Incoming;
use crate::body_end::{Counted, Ended, OnEnd};
use crate::http_util::{Body, grpc_status, is_grpc};
use crate::metrics::Direction;
use crate::tap::{RequestHead, RequestInit, ResponseEnd, Tapped, Taps, shown_text};

/// How requests are observed: traced (at what sampling ratio when the caller does not say),
/// logged, tapped, all or none.
#[derive(Debug, Clone)]
pub struct Observer {
    /// `Some`: spans are exported, and requests arriving without a decision are sampled at
    /// this ratio (0 to 1).
    pub sampling: Option<f64>,
    /// Write an access-log line per request.
    pub access_log: bool,
    /// Operators watching the proxy's requests live.
    pub taps: Taps,
}

impl Default for Observer {
    fn default() -> Self {
        Self {
            sampling: None,
            access_log: false,
            taps: Taps::unregistered(),
        }
    }
}

/// What a Service's policy changes in how its requests are observed; `None`: the proxy's own
/// setting stands.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServiceObserving {
    pub sampling: Option<f64>,
    pub access_log: Option<bool>,
}

/// What the stack chose for a request (its route, backend and endpoint), for the request's
/// span and log line. Travels in the request's extensions, only on observed requests.
#[derive(Debug, Clone, Default)]
pub struct Picked(Arc<Mutex<Choice>>);

#[derive(Debug, Default)]
struct Choice {
    route: Option<Arc<str>>,
    backend: Option<Arc<str>>,
    endpoint: Option<String>,
}

/// One request being observed, until its response body ends.
#[derive(Debug)]
pub struct Observation {
    started: Instant,
    direction: Direction,
    method: Method,
    authority: String,
    path: String,
    version: Version,
    destination: Arc<str>,
    peer: Option<String>,
    picked: Picked,
    request_bytes: Arc<AtomicU64>,
    status: u16,
    span: tracing::Span,
    trace_id: Option<TraceId>,
    log: bool,
    tapped: Option<Tapped>,
}

impl Observer {
    /// The sampling ratio (where traces are exported at all) and access log for a Service
    /// whose policy says `service`.
    fn adjusted(&self, service: ServiceObserving) -> (Option<f64>, bool) {
        (
            self.sampling.map(|ratio| service.sampling.unwrap_or(ratio)),
            service.access_log.unwrap_or(self.access_log),
        )
    }

    /// Begins observing `request` (`None`: nothing observes it), writing the trace context the
    /// next hop gets into its headers. `peer` is the client's identity inbound; outbound, the
    /// endpoint the stack picks is named instead. `service` is what the destination Service's
    /// policy says.
    pub fn start<B>(
        &self,
        direction: Direction,
        request: &mut Request<B>,
        destination: &Arc<str>,
        peer: Option<&str>,
        service: ServiceObserving,
    ) -> Option<Observation> {
        let (sampling, access_log) = self.adjusted(service);
        let watched = self.taps.is_watched();
        if sampling.is_none() && !access_log && !watched {
            return None;
        }
        let incoming = Incoming::read(request.headers());
        let sampled = sampling.is_some_and(|ratio| {
            incoming
                .sampled()
                .unwrap_or_else(|| rand::random::<f64>() < ratio)
        });
        let path = request.uri().path().to_string();
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        // Credentials in an absolute-form target (`http://user:pass@host/`) are never told.
        let authority = match authority.rsplit_once('@') {
            Some((_, host)) => host.to_string(),
            None => authority,
        };
        let tapped = if watched {
            let head = RequestHead {
                direction,
                method: request.method(),
                authority: &authority,
                path: &path,
            };
            let init = || RequestInit {
                direction,
                method: request.method().clone(),
                authority: shown_text(&authority),
                path: shown_text(&path),
                version: request.version(),
                peer_identity: peer.map(str::to_string),
                destination: destination.clone(),
                at: std::time::SystemTime::now(),
                headers: Vec::new(),
            };
            self.taps.offer(head, init, request.headers())
        } else {
            None
        };
        if sampling.is_none() && !access_log && tapped.is_none() {
            return None;
        }
        let (span, trace_id) = if sampled {
            let span = request_span(direction, request, &path, &authority, destination);
            if incoming.span_context().is_some() {
                // Fails only when the span is not exported (no tracer installed).
                let _ = span.set_parent(incoming.parent.clone());
            }
            let context = span.context();
            let trace_id = context.span().span_context().trace_id();
            incoming.write(&context, request.headers_mut());
            (span, Some(trace_id).filter(|id| *id != TraceId::INVALID))
        } else {
            let trace_id = match incoming.span_context() {
                Some(parent) => Some(parent.trace_id()),
                // Traced, but not this request: the hops after this one are told so, rather
                // than each deciding again.
                None if sampling.is_some() && direction == Direction::Outbound => {
                    let root = context::unsampled_root();
                    incoming.write(&root, request.headers_mut());
                    Some(root.span().span_context().trace_id())
                }
                None => None,
            };
            (tracing::Span::none(), trace_id)
        };
        let picked = Picked::default();
        request.extensions_mut().insert(picked.clone());
        Some(Observation {
            started: Instant::now(),
            direction,
            method: request.method().clone(),
            authority,
            path,
            version: request.version(),
            destination: destination.clone(),
            peer: peer.map(str::to_string),
            picked,
            request_bytes: Arc::default(),
            status: 0,
            span,
            trace_id,
            log: access_log,
            tapped,
        })
    }
}

/// The span of one request, its attributes in OpenTelemetry's HTTP and RPC conventions;
/// those known only later are declared empty and recorded when known.
fn request_span<B>(
    direction: Direction,
    request: &Request<B>,
    path: &str,
    authority: &str,
    destination: &str,
) -> tracing::Span {
    let grpc = is_grpc(request.headers());
    // `/package.Service/Method`
    let rpc = grpc
        .then(|| path.strip_prefix('/')?.split_once('/'))
        .flatten();
    let name = match rpc {
        Some((service, method)) => format!("{service}/{method}"),
        None => request.method().to_string(),
    };
    let (host, port) = split_authority(authority);
    let kind = match direction {
        Direction::Outbound => "client",
        Direction::Inbound => "server",
    };
    tracing::info_span!(
        target: TRACE_TARGET,
        "request",
        otel.name = %name,
        otel.kind = kind,
        otel.status_code = Empty,
        http.request.method = %request.method(),
        url.path = path,
        server.address = host,
        server.port = port,
        network.protocol.version = protocol(request.version()),
        rpc.system = grpc.then_some("grpc"),
        rpc.service = rpc.map(|(service, _)| service),
        rpc.method = rpc.map(|(_, method)| method),
        http.response.status_code = Empty,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
        weft.direction = direction.as_str(),
        weft.destination = destination,
        weft.peer.identity = Empty,
        weft.route = Empty,
        weft.backend = Empty,
        http.request.body.size = Empty,
        http.response.body.size = Empty,
    )
}

impl Observation {
    /// `body`, counted for this request's log line and span.
    pub fn request_body(&self, body: Body) -> Body {
        use http_body_util::BodyExt;
        let bytes = self.request_bytes.clone();
        Counted::new(body, move |len| {
            bytes.fetch_add(len, Ordering::Relaxed);
        })
        .boxed_unsync()
    }

    /// `response`, whose body finishes this observation when it ends.
    pub fn respond(mut self, response: Response<Body>) -> Response<Body> {
        use http_body_util::BodyExt;
        self.status = response.status().as_u16();
        let grpc_status = grpc_status(response.headers());
        if let Some(tapped) = &self.tapped {
            tapped.response(self.status, self.started.elapsed(), response.headers());
        }
        response.map(|inner| {
            OnEnd::new(inner, grpc_status, move |ended: Ended| {
                self.finish(ended.bytes, ended.grpc_status, !ended.complete);
            })
            .boxed_unsync()
        })
    }

    /// The request is over: its span ends and its line is written.
    fn finish(mut self, response_bytes: u64, grpc_status: Option<u32>, failed: bool) {
        let choice = std::mem::take(&mut *self.picked.0.lock());
        let peer = self.peer.or(choice.endpoint);
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let duration = self.started.elapsed();
        if !self.span.is_disabled() {
            let status_text;
            let error_type = if failed {
                Some("incomplete")
            } else if is_error(self.direction, self.status, grpc_status) {
                status_text = self.status.to_string();
                Some(status_text.as_str())
            } else {
                None
            };
            record_end(
                &self.span,
                &SpanEnd {
                    status: self.status,
                    grpc_status,
                    peer: peer.as_deref(),
                    route: choice.route.as_deref(),
                    backend: choice.backend.as_deref(),
                    request_bytes,
                    response_bytes,
                    error_type,
                },
            );
        }
        if self.log {
            tracing::info!(
                target: ACCESS_LOG_TARGET,
                direction = self.direction.as_str(),
                method = %self.method,
                authority = %self.authority,
                path = %self.path,
                protocol = protocol(self.version),
                destination = &*self.destination,
                route = choice.route.as_deref().unwrap_or(""),
                backend = choice.backend.as_deref().unwrap_or(""),
                peer_identity = peer.as_deref().unwrap_or(""),
                status = self.status,
                grpc_status,
                duration_ms = duration.as_micros() as f64 / 1000.0,
                request_bytes,
                response_bytes,
                trace_id = self.trace_id.map(|id| id.to_string()),
                complete = !failed,
            );
        }
        if let Some(tapped) = self.tapped.take() {
            tapped.end(ResponseEnd {
                status: self.status,
                grpc_status,
                duration,
                request_bytes,
                response_bytes,
                complete: !failed,
                route: choice.route,
                backend: choice.backend,
                // Inbound, the peer is the client, told when the request began.
                peer_identity: peer.filter(|_| self.direction == Direction::Outbound),
            });
        }
    }
}

impl Picked {
    /// Notes the route a request matched, if the request is observed.
    pub fn route<B>(request: &Request<B>, route: &Arc<str>) {
        if let Some(picked) = request.extensions().get::<Self>() {
            picked.0.lock().route = Some(route.clone());
        }
    }

    /// Notes the backend and endpoint an attempt went to (the last attempt's stands).
    pub fn endpoint<B>(request: &Request<B>, backend: &Arc<str>, identity: &impl ToString) {
        if let Some(picked) = request.extensions().get::<Self>() {
            let mut choice = picked.0.lock();
            choice.backend = Some(backend.clone());
            choice.endpoint = Some(identity.to_string());
        }
    }
}

/// What is known of a request once it is over, for its span.
struct SpanEnd<'a> {
    status: u16,
    grpc_status: Option<u32>,
    peer: Option<&'a str>,
    route: Option<&'a str>,
    backend: Option<&'a str>,
    request_bytes: u64,
    response_bytes: u64,
    /// Why the exchange failed, if it did.
    error_type: Option<&'a str>,
}

/// The span fields [`SpanEnd`] fills, in its order.
const END_FIELDS: [&str; 9] = [
    "http.response.status_code",
    "rpc.grpc.status_code",
    "weft.peer.identity",
    "weft.route",
    "weft.backend",
    "http.request.body.size",
    "http.response.body.size",
    "otel.status_code",
    "error.type",
];

/// Records `end` on `span` in one go: every `record` is a trip through the subscriber and its
/// layers, and one per field made recording them cost as much as exporting the span.
fn record_end(span: &tracing::Span, end: &SpanEnd<'_>) {
    // Every request span comes from one callsite, so its fields are looked up once.
    static FIELDS: OnceLock<Option<[Field; 9]>> = OnceLock::new();
    let Some(metadata) = span.metadata() else {
        return;
    };
    let Some(
        [
            status,
            grpc_status,
            peer,
            route,
            backend,
            request_bytes,
            response_bytes,
            otel_status,
            error_type,
        ],
    ) = FIELDS.get_or_init(|| {
        let fields = metadata.fields();
        let found: Option<Vec<Field>> = END_FIELDS.iter().map(|name| fields.field(name)).collect();
        found.and_then(|found| found.try_into().ok())
    })
    else {
        return;
    };
    fn value<T: Value>(value: &Option<T>) -> Option<&dyn Value> {
        value.as_ref().map(|v| v as &dyn Value)
    }
    let otel_status_code = end.error_type.map(|_| "error");
    span.record_all(&metadata.fields().value_set(&[
        (status, Some(&end.status as &dyn Value)),
        (grpc_status, value(&end.grpc_status)),
        (peer, value(&end.peer)),
        (route, value(&end.route)),
        (backend, value(&end.backend)),
        (request_bytes, Some(&end.request_bytes as &dyn Value)),
        (response_bytes, Some(&end.response_bytes as &dyn Value)),
        (otel_status, value(&otel_status_code)),
        (error_type, value(&end.error_type)),
    ]));
}

/// Whether the exchange failed, as OpenTelemetry's conventions have each side see it: a client
/// sees any 4xx, 5xx or non-OK gRPC status as its error; a server only its own faults.
fn is_error(direction: Direction, status: u16, grpc_status: Option<u32>) -> bool {
    match direction {
        Direction::Outbound => status >= 400 || grpc_status.is_some_and(|code| code != 0),
        Direction::Inbound => {
            // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
            status >= 500
                || grpc_status.is_some_and(|code| matches!(code, 2 | 4 | 12 | 13 | 14 | 15))
        }
    }
}

pub(crate) fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "unknown",
    }
}

fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.parse::<http::uri::Authority>() {
        Ok(parsed) => {
            let host = parsed.host();
            // The host as a slice of `authority`, not of the parsed copy.
            let start = authority.find(host).unwrap_or(0);
            (&authority[start..start + host.len()], parsed.port_u16())
        }
        Err(_) => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_sees_its_own_errors() {
        assert!(is_error(Direction::Outbound, 404, None));
        assert!(!is_error(Direction::Inbound, 404, None));
        assert!(is_error(Direction::Inbound, 503, None));
        assert!(is_error(Direction::Outbound, 200, Some(5)));
        assert!(!is_error(Direction::Inbound, 200, Some(5)));
        assert!(is_error(Direction::Inbound, 200, Some(14)));
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("api.shop:8080"), ("api.shop", Some(8080)));
        assert_eq!(split_authority("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_authority("api"), ("api", None));
    }

    #[test]
    fn a_services_policy_adjusts_what_the_proxy_does_but_cannot_export_without_an_exporter() {
        let service = |sampling, access_log| ServiceObserving {
            sampling,
            access_log,
        };
        let untraced = Observer::default();
        assert_eq!(untraced.adjusted(service(Some(1.0), None)).0, None);
        assert!(untraced.adjusted(service(None, Some(true))).1);
        let traced = Observer {
            sampling: Some(0.01),
            access_log: true,
            ..Observer::default()
        };
        assert_eq!(
            traced.adjusted(service(Some(0.5), Some(false))),
            (Some(0.5), false)
        );
        assert_eq!(traced.adjusted(service(None, None)), (Some(0.01), true));
    }

    #[test]
    fn nothing_is_observed_when_nothing_is_on() {
        let mut request = Request::new(());
        let observer = Observer::default();
        assert!(
            observer
                .start(
                    Direction::Outbound,
                    &mut request,
                    &Arc::from("api"),
                    None,
                    ServiceObserving::default()
                )
                .is_none()
        );
        assert!(request.extensions().get::<Picked>().is_none());
        assert!(request.headers().is_empty());
    }

    #[test]
    fn an_unsampled_outbound_request_gets_a_context_saying_so() {
        let mut request = Request::new(());
        let observer = Observer {
            sampling: Some(0.0),
            access_log: false,
            ..Observer::default()
        };
        let observation = observer
            .start(
                Direction::Outbound,
                &mut request,
                &Arc::from("api"),
                None,
                ServiceObserving::default(),
            )
            .unwrap();
        let traceparent = request.headers().get("traceparent").unwrap();
        assert!(traceparent.to_str().unwrap().ends_with("-00"));
        assert!(observation.trace_id.is_some());
        // The far side's inbound keeps what it is told: no context is written over it.
        let mut inbound = Request::new(());
        *inbound.headers_mut() = request.headers().clone();
        observer
            .start(
                Direction::Inbound,
                &mut inbound,
                &Arc::from("api"),
                None,
                ServiceObserving::default(),
            )
            .unwrap();
        assert_eq!(inbound.headers().get("traceparent").unwrap(), traceparent);
    }
}

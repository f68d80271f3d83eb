//! Responses by status code and gRPC status, and their bytes. A gRPC status usually comes in
//! the trailers, so a gRPC response is counted when its body ends; any other when its headers
//! arrive. A body's bytes are counted when its length is declared, else when it ends.

use std::sync::Arc;

use http::Response;
use parking_lot::RwLock;
use prometheus::{IntCounter, IntCounterVec};

use crate::body_end::{Ended, OnEnd};
use crate::http_util::{Body, grpc_status, is_grpc};

/// Distinct (status, gRPC status) pairs remembered per label set; rarer ones are looked up in
/// the vector each time.
const REMEMBERED: usize = 16;
/// The last gRPC status code defined (UNAUTHENTICATED).
const MAX_GRPC_CODE: u32 = 16;

/// The response counters of one request label set, resolved as each
/// status is first seen (a label set only has series for the statuses it answered).
#[derive(Debug, Clone)]
pub struct ResponseCounters(Arc<Counters>);

#[derive(Debug)]
struct Counters {
    vec: IntCounterVec,
    labels: [String; 4],
    resolved: RwLock<Vec<(u16, Grpc, IntCounter)>>,
    bytes: IntCounter,
}

/// A response's gRPC status, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grpc {
    /// Not a gRPC response: the label is empty.
    Absent,
    Status(u32),
    /// A gRPC response that ended without a status (reset, cut short): `none`.
    Missing,
}

impl ResponseCounters {
    pub(super) fn new(vec: IntCounterVec, labels: [String; 4], bytes: IntCounter) -> Self {
        Self(Arc::new(Counters {
            vec,
            labels,
            resolved: RwLock::default(),
            bytes,
        }))
    }

    /// Counts `response`: now, or for a gRPC response whose status is still to come, when its
    /// body ends; and its bytes when its body ends.
    pub fn count(&self, response: Response<Body>) -> Response<Body> {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let status = response.status().as_u16();
        let pending_grpc = if !is_grpc(response.headers()) {
            self.inc(status, Grpc::Absent);
            false
        } else if let Some(code) = grpc_status(response.headers()) {
            self.inc(status, Grpc::Status(code));
            false
        } else {
            true
        };
        if !pending_grpc {
            // A body of known length (most) is counted now, without watching it.
            let body = response.body();
            if body.is_end_stream() {
                return response;
            }
            if let Some(length) = body.size_hint().exact() {
                self.0.bytes.inc_by(length);
                return response;
            }
        }
        let counters = self.clone();
        response.map(|inner| {
            OnEnd::new(inner, None, move |ended: Ended| {
                counters.0.bytes.inc_by(ended.bytes);
                if pending_grpc {
                    let grpc = ended.grpc_status.map_or(Grpc::Missing, Grpc::Status);
                    counters.inc(status, grpc);
                }
            })
            .boxed_unsync()
        })
    }

    fn inc(&self, status: u16, grpc: Grpc) {
        if let Some((_, _, counter)) = self
            .0
            .resolved
            .read()
            .iter()
            .find(|(s, g, _)| *s == status && *g == grpc)
        {
            counter.inc();
            return;
        }
        let [direction, peer, destination, route] = &self.0.labels;
        // Both come from the app or a peer: only the codes HTTP and gRPC define are labels,
        // anything else is `other`, so no response can add series at will.
        let code = http::StatusCode::from_u16(status)
            .ok()
            .filter(|code| code.canonical_reason().is_some())
            .map_or_else(|| "other".to_string(), |code| code.as_u16().to_string());
        let grpc_label = match grpc {
            Grpc::Absent => String::new(),
            Grpc::Status(code) if code <= MAX_GRPC_CODE => code.to_string(),
            Grpc::Status(_) => "other".to_string(),
            Grpc::Missing => "none".to_string(),
        };
        let counter = self.0.vec.with_label_values(&[
            direction.as_str(),
            peer,
            destination,
            route,
            &code,
            &grpc_label,
        ]);
        counter.inc();
        let mut resolved = self.0.resolved.write();
        if resolved.len() < REMEMBERED {
            resolved.push((status, grpc, counter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_response(status: u16, grpc_status: u32) -> Response<Body> {
        let mut response = Response::new(crate::http_util::empty_body());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        let headers = response.headers_mut();
        headers.insert("content-type", "application/grpc".parse().unwrap());
        headers.insert("grpc-status", grpc_status.to_string().parse().unwrap());
        response
    }

    #[test]
    fn statuses_nobody_defined_share_one_series() {
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::ProxyMetrics::register(&registry).unwrap();
        let labels =
            crate::metrics::RequestLabels::new(crate::metrics::Direction::Inbound, "", "api");
        let requests = metrics.requests(&labels);
        for code in 0..1000 {
            drop(requests.record(grpc_response(200, code), std::time::Duration::ZERO));
        }
        for status in 600..1000 {
            drop(requests.record(grpc_response(status, 0), std::time::Duration::ZERO));
        }
        let series: usize = registry
            .gather()
            .iter()
            .filter(|family| family.name() == "weft_http_responses_total")
            .map(|family| family.get_metric().len())
            .sum();
        // 17 defined gRPC codes and `other` on 200, and the undefined HTTP statuses as `other`.
        assert_eq!(series, 19);
    }
}

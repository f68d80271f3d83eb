//! Responses by status code and gRPC status. A gRPC status usually comes in the trailers, so a
//! gRPC response is counted when its body ends; any other when its headers arrive.

use std::sync::Arc;

use http::Response;
use parking_lot::RwLock;
use prometheus::{IntCounter, IntCounterVec};

use crate::body_end::{Ended, OnEnd};
use crate::http_util::{Body, grpc_status, is_grpc};

/// Distinct (status, gRPC status) pairs remembered per label set; rarer ones are looked up in
/// the vector each time.
const REMEMBERED: usize = 16;

/// The response counters of one (direction, peer, destination) label set, resolved as each
/// status is first seen (a label set only has series for the statuses it answered).
#[derive(Debug, Clone)]
pub struct ResponseCounters {
    vec: IntCounterVec,
    labels: Arc<[String; 3]>,
    resolved: Arc<RwLock<Vec<(u16, Grpc, IntCounter)>>>,
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
    pub(super) fn new(vec: IntCounterVec, labels: [String; 3]) -> Self {
        Self {
            vec,
            labels: Arc::new(labels),
            resolved: Arc::default(),
        }
    }

    /// Counts `response`: now, or for a gRPC response whose status is still to come, when its
    /// body ends.
    pub fn count(&self, response: Response<Body>) -> Response<Body> {
        use http_body_util::BodyExt;
        let status = response.status().as_u16();
        if !is_grpc(response.headers()) {
            self.inc(status, Grpc::Absent);
            return response;
        }
        if let Some(code) = grpc_status(response.headers()) {
            self.inc(status, Grpc::Status(code));
            return response;
        }
        let counters = self.clone();
        response.map(|inner| {
            OnEnd::new(inner, None, move |ended: Ended| {
                counters.inc(
                    status,
                    ended.grpc_status.map_or(Grpc::Missing, Grpc::Status),
                );
            })
            .boxed_unsync()
        })
    }

    fn inc(&self, status: u16, grpc: Grpc) {
        if let Some((_, _, counter)) = self
            .resolved
            .read()
            .iter()
            .find(|(s, g, _)| *s == status && *g == grpc)
        {
            counter.inc();
            return;
        }
        let [direction, peer, destination] = &*self.labels;
        let code = status.to_string();
        let grpc_label = match grpc {
            Grpc::Absent => String::new(),
            Grpc::Status(code) => code.to_string(),
            Grpc::Missing => "none".to_string(),
        };
        let counter = self.vec.with_label_values(&[
            direction.as_str(),
            peer,
            destination,
            &code,
            &grpc_label,
        ]);
        counter.inc();
        let mut resolved = self.resolved.write();
        if resolved.len() < REMEMBERED {
            resolved.push((status, grpc, counter));
        }
    }
}

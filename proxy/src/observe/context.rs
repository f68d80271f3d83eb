//! Trace context on the wire: W3C `traceparent`/`tracestate` and B3 (single `b3` header or the
//! `X-B3-*` set), read from a request and written back in each form it arrived in.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_propagator_b3::{B3Encoding, Propagator as B3Propagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The trace context a request arrived with, and the forms it arrived in.
#[derive(Debug)]
pub struct Incoming {
    /// The caller's span (invalid when the request carried none).
    pub parent: Context,
    b3_single: bool,
    b3_multi: bool,
}

impl Incoming {
    /// Reads `headers`: W3C first, B3 where no valid W3C context is present.
    pub fn read(headers: &HeaderMap) -> Self {
        let b3_single = headers.contains_key("b3");
        let b3_multi = headers.contains_key("x-b3-traceid");
        let extractor = HeaderExtractor(headers);
        let mut parent = TraceContextPropagator::new().extract(&extractor);
        if !parent.span().span_context().is_valid() && (b3_single || b3_multi) {
            parent =
                B3Propagator::with_encoding(B3Encoding::SingleAndMultiHeader).extract(&extractor);
        }
        Self {
            parent,
            b3_single,
            b3_multi,
        }
    }

    /// The caller's span, when the request carried a valid one.
    pub fn span_context(&self) -> Option<SpanContext> {
        let span = self.parent.span();
        let context = span.span_context();
        context.is_valid().then(|| context.clone())
    }

    /// Whether the caller asked for this request to be recorded; `None` when it said nothing.
    pub fn sampled(&self) -> Option<bool> {
        self.span_context().as_ref().map(SpanContext::is_sampled)
    }

    /// Writes `context` into `headers` as W3C, and as B3 in each form the request came with.
    pub fn write(&self, context: &Context, headers: &mut HeaderMap) {
        // Without a span (no exporter installed) there is nothing to say: the B3 propagator
        // would write a bare "not sampled" over what the caller sent.
        if !context.span().span_context().is_valid() {
            return;
        }
        let mut injector = HeaderInjector(headers);
        TraceContextPropagator::new().inject_context(context, &mut injector);
        if !(self.b3_single || self.b3_multi) {
            return;
        }
        // The propagator writes the multi-header form whatever it is asked for: written
        // aside, and only the forms the request came with are kept.
        let mut b3 = HeaderMap::new();
        B3Propagator::with_encoding(B3Encoding::SingleAndMultiHeader)
            .inject_context(context, &mut HeaderInjector(&mut b3));
        // The caller's parent is not this span's parent.
        headers.remove("x-b3-parentspanid");
        for (name, value) in b3 {
            let Some(name) = name else { continue };
            let single = name.as_str() == "b3";
            if (single && self.b3_single) || (!single && self.b3_multi) {
                headers.insert(name, value);
            }
        }
    }
}

/// A fresh trace that is not recorded: sent on so that every hop after this one agrees not
/// to record it either, rather than each deciding again.
pub fn unsampled_root() -> Context {
    let context = SpanContext::new(
        TraceId::from(rand::random::<u128>().max(1)),
        SpanId::from(rand::random::<u64>().max(1)),
        TraceFlags::default(),
        false,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn w3c_context_is_read() {
        let incoming = Incoming::read(&headers(&[("traceparent", TRACEPARENT)]));
        let context = incoming.span_context().unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(incoming.sampled(), Some(true));
    }

    #[test]
    fn b3_single_and_multi_are_read_and_written_back_in_their_form() {
        let single = Incoming::read(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        )]));
        assert_eq!(single.sampled(), Some(true));
        let mut out = HeaderMap::new();
        single.write(&single.parent, &mut out);
        assert!(out.contains_key("traceparent"));
        assert!(out.contains_key("b3"));
        assert!(!out.contains_key("x-b3-traceid"));

        let multi = Incoming::read(&headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]));
        assert_eq!(multi.sampled(), Some(false));
        let mut out = HeaderMap::new();
        multi.write(&multi.parent, &mut out);
        assert_eq!(
            out.get("x-b3-traceid").unwrap(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(!out.contains_key("b3"));
    }

    #[test]
    fn nothing_is_written_without_a_span() {
        let sent = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
        let mut request = headers(&[("b3", sent)]);
        let incoming = Incoming::read(&request);
        incoming.write(&Context::new(), &mut request);
        assert_eq!(request.get("b3").unwrap(), sent);
        assert!(!request.contains_key("traceparent"));
    }

    #[test]
    fn no_or_garbled_context_says_nothing() {
        assert_eq!(Incoming::read(&HeaderMap::new()).sampled(), None);
        let garbled = Incoming::read(&headers(&[("traceparent", "00-zz-yy-01")]));
        assert_eq!(garbled.sampled(), None);
    }

    #[test]
    fn an_unsampled_root_is_written_as_not_sampled() {
        let mut out = HeaderMap::new();
        Incoming::read(&HeaderMap::new()).write(&unsampled_root(), &mut out);
        let written = out.get("traceparent").unwrap().to_str().unwrap();
        assert!(written.ends_with("-00"), "{written}");
        assert_eq!(Incoming::read(&out).sampled(), Some(false));
    }
}

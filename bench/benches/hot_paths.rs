//! Micro-benchmarks of the data path's hot spots: what every request or connection pays.
//!
//! `cargo bench -p weft-bench --bench hot_paths`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use weft_proxy::internals::{
    Authorization, Client, Direction, InboundPolicy, InboundPorts, PathMatch, Policy, ProxyMetrics,
    RequestLabels, RequestMatch, Source, ValueMatch, classify, empty_body,
    strip_connection_headers,
};

fn route_matching(c: &mut Criterion) {
    let exact = RequestMatch {
        path: Some(PathMatch::Exact("/api/orders".into())),
        ..RequestMatch::any()
    };
    let prefix_header = RequestMatch {
        path: Some(PathMatch::Prefix("/api".into())),
        method: Some(Method::GET),
        headers: vec![(
            HeaderName::from_static("x-canary"),
            ValueMatch::Exact("true".into()),
        )],
        query: Vec::new(),
    };
    let regex = RequestMatch {
        path: Some(PathMatch::Regex(
            regex::Regex::new("^/api/orders/[0-9]+$").unwrap(),
        )),
        ..RequestMatch::any()
    };
    let request = Request::get("/api/orders/1234?v=2")
        .header("x-canary", "true")
        .body(())
        .unwrap();
    c.bench_function("route match: exact path (miss)", |b| {
        b.iter(|| black_box(&exact).matches(black_box(&request)))
    });
    c.bench_function("route match: prefix + method + header", |b| {
        b.iter(|| black_box(&prefix_header).matches(black_box(&request)))
    });
    c.bench_function("route match: regex path", |b| {
        b.iter(|| black_box(&regex).matches(black_box(&request)))
    });
}

fn metrics_recording(c: &mut Criterion) {
    let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
    let route = metrics.requests(&RequestLabels {
        route: "shop/orders",
        ..RequestLabels::new(
            Direction::Outbound,
            "spiffe://cluster.local/ns/shop/sa/api",
            "shop/api:8080",
        )
    });
    c.bench_function("metrics: record one response", |b| {
        b.iter(|| {
            route.record(
                black_box(http::Response::new(empty_body())),
                black_box(Duration::from_micros(420)),
            )
        })
    });
}

fn protocol_detection(c: &mut Criterion) {
    let http1 = b"GET /api/orders HTTP/1.1\r\nHost: api.shop:8080\r\nUser-Agent: bench\r\n\r\n";
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00";
    let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    c.bench_function("detect: HTTP/1.1 request head", |b| {
        b.iter(|| classify(black_box(http1)))
    });
    c.bench_function("detect: HTTP/2 preface", |b| {
        b.iter(|| classify(black_box(h2)))
    });
    c.bench_function("detect: TLS client hello (opaque)", |b| {
        b.iter(|| classify(black_box(tls)))
    });
}

fn header_rewriting(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("api.shop:8080"));
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    c.bench_function("headers: strip HTTP/1 connection headers", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut headers| {
                strip_connection_headers(&mut headers);
                headers
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn certificate_verification(c: &mut Criterion) {
    let now = SystemTime::now();
    let trust_domain = weft_certs::TrustDomain::cluster_local();
    let anchor = weft_certs::TrustAnchor::generate(&trust_domain, now).unwrap();
    let issuer = anchor.generate_issuer(now).unwrap();
    let anchors = weft_certs::TrustAnchors::from_pem(anchor.certificate_pem().as_bytes()).unwrap();
    let identity: weft_certs::Identity = "spiffe://cluster.local/ns/shop/sa/api".parse().unwrap();
    let key = weft_certs::LeafKey::generate().unwrap();
    let issued = issuer
        .issue(key.public_key(), &identity, Duration::from_secs(3600), now)
        .unwrap();
    c.bench_function("certs: verify a peer chain and identity", |b| {
        b.iter(|| {
            weft_certs::verify_peer(
                black_box(&anchors),
                black_box(&issued.chain),
                &identity,
                now,
            )
            .unwrap()
        })
    });
}

/// The benchmark's "weft + authz" mode, decided per request: ten policies on the port, nine
/// (two matches each) that the request does not match, then one allowing a namespace.
fn authorization(c: &mut Criterion) {
    let mut authorizations: Vec<Authorization> = (0..9)
        .map(|i| Authorization {
            name: format!("bench/rule-{i}"),
            ports: [8080].into(),
            http: vec![
                RequestMatch {
                    path: Some(PathMatch::Prefix(format!("/private-{i}"))),
                    method: Some(Method::POST),
                    ..RequestMatch::any()
                },
                RequestMatch {
                    headers: vec![(
                        HeaderName::from_static("x-team"),
                        ValueMatch::Exact(format!("team-{i}")),
                    )],
                    ..RequestMatch::any()
                },
            ],
            sources: vec![Source {
                identities: vec![
                    format!("spiffe://cluster.local/ns/other/sa/s{i}")
                        .parse()
                        .unwrap(),
                ],
                ..Source::default()
            }],
        })
        .collect();
    authorizations.push(Authorization {
        name: "bench/rule-9".into(),
        ports: [8080].into(),
        http: vec![RequestMatch {
            path: Some(PathMatch::Prefix("/".into())),
            ..RequestMatch::any()
        }],
        sources: vec![Source {
            identities: vec!["spiffe://cluster.local/ns/bench/sa/*".parse().unwrap()],
            ..Source::default()
        }],
    });
    let ten = InboundPolicy {
        authorizations,
        ..InboundPolicy::default()
    };
    let policy = Policy::new(InboundPorts::default(), None, std::sync::Arc::new(|_| true));
    let client = Client {
        identity: Some("spiffe://cluster.local/ns/bench/sa/client".parse().unwrap()),
        addr: [127, 0, 0, 1].into(),
    };
    let request = Request::get("/").body(()).unwrap();
    c.bench_function("authorize: the default only (no policy)", |b| {
        b.iter(|| black_box(policy.authorize(None, 8080, &client, Some(black_box(&request)))))
    });
    c.bench_function("authorize: ten policies, the last allowing", |b| {
        b.iter(|| black_box(policy.authorize(Some(&ten), 8080, &client, Some(black_box(&request)))))
    });
}

criterion_group!(
    hot_paths,
    route_matching,
    authorization,
    metrics_recording,
    protocol_detection,
    header_rewriting,
    certificate_verification
);
criterion_main!(hot_paths);

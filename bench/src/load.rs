//! The load generator: an open-loop constant rate and closed loops at a fixed concurrency, over
//! HTTP/1.1, gRPC, and for 1 MiB transfers.
//!
//! The open loop sends each request at its scheduled time whatever happened to earlier ones
//! (each is its own task on a pool of connections), so a slow response never holds back the
//! requests behind it: there is no coordinated omission to correct. Latency runs from the send
//! to the last byte of the response; the scheduler's own lateness (the timer's 1 ms grain) is
//! not charged to the system under test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;
use weft_tests::echo::EchoRequest;
use weft_tests::echo::echo_client::EchoClient;

/// The outcome of one workload.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed or were not answered 200.
    pub errors: u64,
    /// How long the workload ran.
    pub elapsed: Duration,
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
    /// Response bytes received.
    pub bytes: u64,
}

impl LoadResult {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 120_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
            bytes: 0,
        }
    }

    fn merge(&mut self, other: &LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.bytes += other.bytes;
        let _ = self.latency.add(&other.latency);
    }

    fn record(&mut self, latency: Duration) {
        self.ok += 1;
        let _ = self.latency.record(latency.as_micros().max(1) as u64);
    }

    /// The latency at quantile `q` (0–1).
    pub fn percentile(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Dials `target` whatever the URI says, as an app's intercepted connections would.
type Fixed = tower::util::BoxCloneSyncService<http::Uri, TokioIo<TcpStream>, std::io::Error>;

fn fixed(target: SocketAddr) -> Fixed {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: http::Uri| async move {
        let tcp = TcpStream::connect(target).await?;
        tcp.set_nodelay(true)?;
        Ok::<_, std::io::Error>(TokioIo::new(tcp))
    }))
}

/// `rate` GETs per second to `authority` via `target`, for `duration`, each sent on schedule.
pub async fn constant_rate(
    target: SocketAddr,
    authority: &str,
    rate: u32,
    duration: Duration,
) -> LoadResult {
    let client: Client<Fixed, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(fixed(target));
    let uri: http::Uri = match format!("http://{authority}/").parse() {
        Ok(uri) => uri,
        Err(_) => return LoadResult::new(),
    };
    let shared = Arc::new(Mutex::new(LoadResult::new()));
    let total = u64::from(rate) * duration.as_secs().max(1);
    let interval = Duration::from_secs(1) / rate.max(1);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, uri, shared) = (client.clone(), uri.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                let response = client.get(uri).await.ok()?;
                let ok = response.status().is_success();
                let body = response.into_body().collect().await.ok()?.to_bytes();
                ok.then_some(body.len())
            })
            .await;
            let mut result = shared.lock().await;
            match outcome {
                Ok(Some(bytes)) => {
                    result.record(sent.elapsed());
                    result.bytes += bytes as u64;
                }
                _ => result.errors += 1,
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut result = shared.lock().await.clone();
    result.elapsed = start.elapsed();
    result
}

/// `concurrency` connections, each sending GETs of `path` one after another for `duration`.
pub async fn closed_loop(
    target: SocketAddr,
    authority: &str,
    path: &str,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let request_uri = format!("http://{authority}{path}");
        let host = authority.to_string();
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::new();
            let Ok(tcp) = TcpStream::connect(target).await else {
                result.errors += 1;
                return result;
            };
            let _ = tcp.set_nodelay(true);
            let Ok((mut sender, connection)) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
            else {
                result.errors += 1;
                return result;
            };
            tokio::spawn(connection);
            while Instant::now() < deadline {
                let Ok(request) = Request::get(request_uri.as_str())
                    .header(http::header::HOST, host.as_str())
                    .body(Empty::<Bytes>::new())
                else {
                    break;
                };
                let sent = Instant::now();
                let outcome = async {
                    sender.ready().await.ok()?;
                    let response = sender.send_request(request).await.ok()?;
                    let ok = response.status().is_success();
                    let body = response.into_body().collect().await.ok()?.to_bytes();
                    ok.then_some(body.len())
                }
                .await;
                match outcome {
                    Some(bytes) => {
                        result.record(sent.elapsed());
                        result.bytes += bytes as u64;
                    }
                    None => {
                        result.errors += 1;
                        break;
                    }
                }
            }
            result
        }));
    }
    let mut total = LoadResult::new();
    for task in tasks {
        if let Ok(result) = task.await {
            total.merge(&result);
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// `concurrency` callers making gRPC unary calls one after another over one HTTP/2 connection,
/// for `duration`.
pub async fn grpc_closed_loop(
    target: SocketAddr,
    authority: &str,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let mut total = LoadResult::new();
    let (Ok(endpoint), Ok(origin)) = (
        tonic::transport::Endpoint::from_shared(format!("http://{target}")),
        format!("http://{authority}").parse::<http::Uri>(),
    ) else {
        total.errors += 1;
        return total;
    };
    let Ok(channel) = endpoint.origin(origin).tcp_nodelay(true).connect().await else {
        total.errors += 1;
        return total;
    };
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = EchoClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let request = EchoRequest {
                    message: "ping".to_string(),
                    count: 0,
                };
                match client.unary(request).await {
                    Ok(_) => result.record(sent.elapsed()),
                    Err(_) => result.errors += 1,
                }
            }
            result
        }));
    }
    for task in tasks {
        if let Ok(result) = task.await {
            total.merge(&result);
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// The time of the very first request through a fresh path: a new connection to `target`
/// and, behind it, whatever the path must set up (for a mesh: the mTLS connection between the
/// proxies).
pub async fn first_request(target: SocketAddr, authority: &str) -> Option<Duration> {
    let started = Instant::now();
    let tcp = TcpStream::connect(target).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = Request::get(format!("http://{authority}/"))
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let ok = response.status().is_success();
    response.into_body().collect().await.ok()?;
    ok.then(|| started.elapsed())
}

//! Destinations from the control plane: a watch per destination, opened the first time the app
//! addresses it, kept while the app keeps using it; and the watches every proxy keeps for its
//! whole life (the mesh's networks, its own inbound policy).
//!
//! Each watch is a task that feeds a `watch` channel the data path reads without locking. The
//! last good snapshot stays in force while the control plane is away; the task reconnects with
//! jittered backoff and the first message after a reconnect is a full snapshot (a resync). Every
//! snapshot is reported back as applied or rejected, with the reason. What the proxy holds is
//! bounded: at most `max_watches` destinations (the least recently used goes first), and a
//! destination the control plane refused is not asked again for a while.

mod certificate;
mod inbound;
mod mesh;
mod outbound;
mod report;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use weft_api::discovery::discovery_client::DiscoveryClient as DiscoveryGrpc;
use weft_api::discovery::{ConfigStatus, WatchMeshRequest};
use weft_certs::{CertStore, TrustStore};
use weft_telemetry::Drain;

use super::{Destination, InboundPolicy, MeshNetworks};
use crate::metrics::ProxyMetrics;

/// How long a request waits for a destination's first snapshot.
const FIRST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// A watch nobody used for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often watches check whether they are idle.
const IDLE_CHECK: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a destination the control plane refused is answered "outside the mesh" without
/// asking again.
const REFUSED_TTL: Duration = Duration::from_secs(60);
/// Refused destinations remembered at most.
const MAX_REFUSED: usize = 1024;
/// Destinations watched at most, by default.
pub const DEFAULT_MAX_WATCHES: usize = 1000;
/// Endpoints of one destination at most, by default.
pub const DEFAULT_MAX_ENDPOINTS: usize = 10_000;

/// What discovery knows of a destination.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// No snapshot yet.
    Pending,
    /// No Service answers to it: it is outside the mesh.
    NotFound,
    /// What it is now.
    Found(Arc<Destination>),
}

/// Why a destination could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("discovery has no answer for {0} yet (is the control plane reachable?)")]
pub struct Unavailable(pub String);

/// The proxy's discovery client, shared by every connection.
#[derive(Debug, Clone)]
pub struct DiscoveryClient {
    inner: Arc<Inner>,
}

/// How the client behaves, and what it holds at most.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// The mesh's networks before the control plane says.
    pub mesh: Option<MeshNetworks>,
    /// Destinations watched at most.
    pub max_watches: usize,
    /// Endpoints one destination may have; a snapshot with more is rejected.
    pub max_endpoints: usize,
    /// The anchors every TLS config of the proxy reads; replaced by the bundle the control plane
    /// pushes.
    pub trust: Arc<TrustStore>,
    /// Told to the control plane, which reaches the proxy's tap API there.
    pub tap_port: Option<u16>,
    /// The pod the proxy runs in, told to the control plane.
    pub pod: Option<String>,
}

#[derive(Debug)]
struct Inner {
    grpc: DiscoveryGrpc<Channel>,
    certs: Arc<CertStore>,
    metrics: ProxyMetrics,
    drain: Drain,
    max_watches: usize,
    max_endpoints: usize,
    watches: Mutex<HashMap<String, Arc<Watch>>>,
    /// Destinations the control plane refused, and when.
    refused: Mutex<HashMap<String, tokio::time::Instant>>,
    /// The mesh's networks as last pushed (or configured); `None` while unknown.
    mesh: ArcSwapOption<MeshNetworks>,
    trust: Arc<TrustStore>,
    /// What the mesh watch tells the control plane about this proxy.
    whereabouts: WatchMeshRequest,
    /// The workload's inbound policy; `None` until the control plane answers.
    inbound: watch::Receiver<Option<Arc<InboundPolicy>>>,
    inbound_tx: watch::Sender<Option<Arc<InboundPolicy>>>,
    reports: Arc<report::Reports>,
}

/// A destination's watch, kept by an app connection so that its next requests read the current
/// answer without looking the destination up again.
#[derive(Debug, Clone)]
pub struct Resolution(Arc<Watch>);

impl Resolution {
    /// The current answer, counting as a use; `None` once the watch has ended (idle or drained),
    /// when the destination must be resolved again.
    pub fn current(&self) -> Option<Resolved> {
        let Resolution(watch) = self;
        if watch.resolved.has_changed().is_err() {
            return None;
        }
        *watch.last_used.lock() = tokio::time::Instant::now();
        Some(watch.resolved.borrow().clone())
    }
}

#[derive(Debug)]
struct Watch {
    resolved: watch::Receiver<Resolved>,
    last_used: Mutex<tokio::time::Instant>,
    /// Ends the watch's task when the watch is evicted.
    stop: CancellationToken,
}

impl DiscoveryClient {
    /// A client over `channel`, which presents the certificate in `certs`.
    pub fn new(
        channel: Channel,
        certs: Arc<CertStore>,
        metrics: ProxyMetrics,
        drain: Drain,
        settings: DiscoverySettings,
    ) -> Self {
        let (inbound_tx, inbound) = watch::channel(None);
        let grpc = DiscoveryGrpc::new(channel);
        let reports = Arc::new(report::Reports::default());
        drain.spawn({
            let (reports, grpc, drain) = (reports.clone(), grpc.clone(), drain.clone());
            async move { reports.send(grpc, drain).await }
        });
        Self {
            inner: Arc::new(Inner {
                grpc,
                certs,
                metrics,
                drain,
                max_watches: settings.max_watches.max(1),
                max_endpoints: settings.max_endpoints,
                watches: Mutex::new(HashMap::new()),
                refused: Mutex::new(HashMap::new()),
                mesh: ArcSwapOption::from(settings.mesh.map(Arc::new)),
                trust: settings.trust,
                whereabouts: WatchMeshRequest {
                    tap_port: settings.tap_port.map_or(0, u32::from),
                    pod: settings.pod.unwrap_or_default(),
                },
                inbound,
                inbound_tx,
                reports,
            }),
        }
    }

    /// Whether `ip` may belong to the mesh: inside its networks, or any address while the proxy
    /// knows of none. Such a destination is never sent in plaintext without discovery's word.
    pub fn in_mesh(&self, ip: IpAddr) -> bool {
        self.inner
            .mesh
            .load()
            .as_ref()
            .is_none_or(|mesh| mesh.contains(ip))
    }

    /// Every destination watched now, by name, and what discovery says of it.
    pub fn watched(&self) -> Vec<(String, Resolved)> {
        let mut watched: Vec<(String, Resolved)> = self
            .inner
            .watches
            .lock()
            .iter()
            .map(|(name, watch)| (name.clone(), watch.resolved.borrow().clone()))
            .collect();
        watched.sort_by(|a, b| a.0.cmp(&b.0));
        watched
    }

    /// The mesh's networks as last pushed (or configured); `None` while unknown.
    pub fn mesh_networks(&self) -> Option<Arc<MeshNetworks>> {
        self.inner.mesh.load_full()
    }

    /// Keeps what every proxy must know — the mesh's networks and its own inbound policy — as
    /// the control plane pushes it, until drained.
    pub async fn watch_proxy_wide(self) {
        tokio::join!(
            self.inner.run_mesh(),
            self.inner.run_inbound(),
            self.inner.report_certificate()
        );
    }

    /// What discovery says of `destination` (`host:port`), waiting for the first snapshot.
    pub async fn resolve(&self, destination: &str) -> Result<Resolved, Unavailable> {
        self.resolve_and_keep(destination)
            .await
            .map(|(resolved, _)| resolved)
    }

    /// [`resolve`](Self::resolve), and the watch itself for the caller to keep.
    pub async fn resolve_and_keep(
        &self,
        destination: &str,
    ) -> Result<(Resolved, Resolution), Unavailable> {
        let key = destination.to_ascii_lowercase();
        if self.inner.was_refused(&key) {
            return Ok((Resolved::NotFound, Resolution::ended(Resolved::NotFound)));
        }
        let watch = self.watch(&key);
        *watch.last_used.lock() = tokio::time::Instant::now();
        let mut resolved = watch.resolved.clone();
        let ready = tokio::time::timeout(
            FIRST_SNAPSHOT_TIMEOUT,
            resolved.wait_for(|r| !matches!(r, Resolved::Pending)),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|r| r.clone());
        let resolved = ready.ok_or(Unavailable(key))?;
        Ok((resolved, Resolution(watch)))
    }

    /// The watch of `key`, started if new; the least recently used goes when there are too many.
    fn watch(&self, key: &str) -> Arc<Watch> {
        let mut watches = self.inner.watches.lock();
        if let Some(watch) = watches.get(key) {
            return watch.clone();
        }
        if watches.len() >= self.inner.max_watches {
            let oldest = watches
                .iter()
                .min_by_key(|(_, watch)| *watch.last_used.lock())
                .map(|(key, _)| key.clone());
            if let Some(evicted) = oldest.and_then(|oldest| watches.remove(&oldest)) {
                evicted.stop.cancel();
            }
        }
        let (tx, rx) = watch::channel(Resolved::Pending);
        let watch = Arc::new(Watch {
            resolved: rx,
            last_used: Mutex::new(tokio::time::Instant::now()),
            stop: CancellationToken::new(),
        });
        watches.insert(key.to_string(), watch.clone());
        self.inner.metrics.discovery_watches(watches.len());
        let inner = self.inner.clone();
        let destination = key.to_string();
        let task_watch = watch.clone();
        // Tracked by the drain: it ends on drain, on idleness, on eviction, or when refused.
        self.inner.drain.spawn(async move {
            tokio::select! {
                () = inner.run(&destination, &task_watch, tx) => {}
                () = task_watch.stop.cancelled() => {}
            }
            let mut watches = inner.watches.lock();
            // An evicted watch's key may hold a newer watch by now.
            if watches
                .get(&destination)
                .is_some_and(|current| Arc::ptr_eq(current, &task_watch))
            {
                watches.remove(&destination);
            }
            inner.metrics.discovery_watches(watches.len());
        });
        watch
    }
}

impl Resolution {
    /// A resolution whose watch has already ended: read once, then resolved again.
    fn ended(resolved: Resolved) -> Self {
        let (_, rx) = watch::channel(resolved);
        Resolution(Arc::new(Watch {
            resolved: rx,
            last_used: Mutex::new(tokio::time::Instant::now()),
            stop: CancellationToken::new(),
        }))
    }
}

impl Inner {
    /// Whether the control plane refused `key` recently.
    fn was_refused(&self, key: &str) -> bool {
        let refused = self.refused.lock();
        refused
            .get(key)
            .is_some_and(|at| at.elapsed() < REFUSED_TTL)
    }

    /// Remembers that the control plane refused `key`.
    fn refuse(&self, key: &str) {
        let mut refused = self.refused.lock();
        if refused.len() >= MAX_REFUSED {
            refused.retain(|_, at| at.elapsed() < REFUSED_TTL);
            if refused.len() >= MAX_REFUSED {
                refused.clear();
            }
        }
        refused.insert(key.to_string(), tokio::time::Instant::now());
    }

    /// Waits for our first certificate, which discovery requires; `false` if drained first.
    async fn certified(&self) -> bool {
        while !self.certs.is_valid_at(SystemTime::now()) {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = self.drain.signaled() => return false,
            }
        }
        true
    }

    /// Sleeps a jittered `backoff` and doubles it (up to the maximum); `false` if drained first.
    async fn back_off(&self, backoff: &mut Duration) -> bool {
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.drain.signaled() => false,
        }
    }

    /// Follows one proxy-wide stream until drained: opens it with `open` once certified, hands
    /// each message to `apply`, and reopens it with backoff whenever it ends.
    async fn follow<T, Open, Fut>(&self, open: Open, mut apply: impl FnMut(&T))
    where
        Open: Fn() -> Fut,
        Fut: Future<Output = Result<tonic::Streaming<T>, tonic::Status>>,
    {
        let mut backoff = MIN_BACKOFF;
        if !self.certified().await {
            return;
        }
        loop {
            if let Ok(mut stream) = open().await {
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(message)) => {
                                backoff = MIN_BACKOFF;
                                apply(&message);
                            }
                            _ => break,
                        },
                        () = self.drain.signaled() => return,
                    }
                }
            }
            if !self.back_off(&mut backoff).await {
                return;
            }
        }
    }

    /// Tells the control plane `version` of `resource` was applied (`error` empty) or rejected;
    /// never holds up applying the next snapshot.
    fn report(&self, resource: &str, version: &str, error: String) {
        self.reports.push(ConfigStatus {
            resource: resource.to_string(),
            version: version.to_string(),
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(resolved: watch::Receiver<Resolved>) -> Resolution {
        Resolution(Arc::new(Watch {
            resolved,
            last_used: Mutex::new(tokio::time::Instant::now()),
            stop: CancellationToken::new(),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_resolution_reads_the_latest_answer_and_counts_as_use() {
        let (tx, rx) = watch::channel(Resolved::Pending);
        let resolution = kept(rx);
        tokio::time::advance(Duration::from_secs(60)).await;
        tx.send_replace(Resolved::NotFound);
        assert!(matches!(resolution.current(), Some(Resolved::NotFound)));
        assert!(resolution.0.last_used.lock().elapsed() < Duration::from_secs(1));
    }

    /// A client whose control plane never answers (it holds no certificate to ask with).
    fn unanswered(max_watches: usize) -> DiscoveryClient {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        client_over(channel, max_watches)
    }

    fn client_over(channel: Channel, max_watches: usize) -> DiscoveryClient {
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let anchor = weft_certs::TrustAnchor::generate(
            &weft_certs::TrustDomain::cluster_local(),
            SystemTime::now(),
        )
        .unwrap();
        let anchors = weft_certs::TrustAnchors::from_pem(anchor.certificate_pem().as_bytes());
        let settings = DiscoverySettings {
            mesh: None,
            max_watches,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
            trust: TrustStore::new(anchors.unwrap()),
            tap_port: None,
            pod: None,
        };
        DiscoveryClient::new(channel, CertStore::new(), metrics, Drain::new(), settings)
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_watch_goes_when_too_many_are_open() {
        let client = unanswered(2);
        for destination in ["a.ns:80", "b.ns:80", "a.ns:80", "c.ns:80"] {
            assert!(client.resolve(destination).await.is_err());
        }
        let watched: Vec<String> = client.watched().into_iter().map(|(name, _)| name).collect();
        assert_eq!(watched, ["a.ns:80", "c.ns:80"]);
        // The evicted watch's task has ended.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(client.watched().len(), 2);
    }

    #[tokio::test]
    async fn a_refused_destination_is_answered_outside_the_mesh_without_a_watch() {
        let client = unanswered(10);
        client.inner.refuse("nope.ns:80");
        let (resolved, resolution) = client.resolve_and_keep("NOPE.ns:80").await.unwrap();
        assert!(matches!(resolved, Resolved::NotFound));
        assert!(resolution.current().is_none(), "asked again after a while");
        assert!(client.watched().is_empty());
    }

    #[tokio::test]
    async fn a_kept_resolution_whose_watch_ended_must_be_resolved_again() {
        let (tx, rx) = watch::channel(Resolved::NotFound);
        let resolution = kept(rx);
        drop(tx);
        assert!(resolution.current().is_none());
    }

    /// A control plane that answers only `ReportStatus`, recording the versions in the order it
    /// took them, and slow to take the first.
    #[derive(Default, Clone)]
    struct Recorder {
        taken: Arc<Mutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl weft_api::discovery::discovery_server::Discovery for Recorder {
        type WatchOutboundStream =
            tokio_stream::Empty<Result<weft_api::discovery::OutboundSnapshot, tonic::Status>>;
        type WatchInboundStream =
            tokio_stream::Empty<Result<weft_api::discovery::InboundSnapshot, tonic::Status>>;
        type WatchMeshStream =
            tokio_stream::Empty<Result<weft_api::discovery::MeshSnapshot, tonic::Status>>;

        async fn watch_outbound(
            &self,
            _: tonic::Request<weft_api::discovery::WatchOutboundRequest>,
        ) -> Result<tonic::Response<Self::WatchOutboundStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not here"))
        }

        async fn watch_inbound(
            &self,
            _: tonic::Request<weft_api::discovery::WatchInboundRequest>,
        ) -> Result<tonic::Response<Self::WatchInboundStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not here"))
        }

        async fn watch_mesh(
            &self,
            _: tonic::Request<WatchMeshRequest>,
        ) -> Result<tonic::Response<Self::WatchMeshStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not here"))
        }

        async fn report_status(
            &self,
            request: tonic::Request<ConfigStatus>,
        ) -> Result<tonic::Response<weft_api::discovery::ReportStatusResponse>, tonic::Status>
        {
            let status = request.into_inner();
            if self.taken.lock().is_empty() && status.version == "1" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            self.taken.lock().push(status.version);
            Ok(tonic::Response::new(
                weft_api::discovery::ReportStatusResponse {},
            ))
        }
    }

    #[tokio::test]
    async fn reports_reach_the_control_plane_in_the_order_snapshots_were_applied() {
        let recorder = Recorder::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(weft_api::discovery::discovery_server::DiscoveryServer::new(
                recorder.clone(),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let client = client_over(channel, 10);

        // Versions applied one after the other; the control plane is slow to take the first.
        for version in ["1", "2"] {
            client.inner.report("mesh", version, String::new());
        }
        let taken = recorder.taken.clone();
        tokio::time::timeout(Duration::from_secs(30), async {
            while !taken.lock().iter().any(|version| version == "2") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        // What the control plane holds last is what the proxy applied last.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let taken = taken.lock().clone();
        assert_eq!(taken.last().map(String::as_str), Some("2"), "{taken:?}");
    }
}

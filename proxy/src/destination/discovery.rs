//! Destinations from the control plane: a watch per destination, opened the first time the app
//! addresses it, kept while the app keeps using it.
//!
//! Each watch is a task that feeds a `watch` channel the data path reads without locking. The
//! last good snapshot stays in force while the control plane is away; the task reconnects with
//! jittered backoff and the first message after a reconnect is a full snapshot (a resync). Every
//! snapshot is reported back as applied or rejected, with the reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::transport::Channel;
use weft_api::discovery::discovery_client::DiscoveryClient as DiscoveryGrpc;
use weft_api::discovery::{
    ConfigStatus, MeshSnapshot, OutboundSnapshot, WatchInboundRequest, WatchMeshRequest,
    WatchOutboundRequest,
};
use weft_certs::CertStore;
use weft_telemetry::Drain;

use super::{Destination, MeshNetworks};
use crate::metrics::ProxyMetrics;
use crate::outbound::PeerPool;
use crate::stack::{DestinationRuntime, DestinationStack};

/// How the mesh watch is reported to the control plane (`weftctl proxy-status`).
const MESH_RESOURCE: &str = "mesh";
/// How long a request waits for a destination's first snapshot.
const FIRST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// A watch nobody used for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often watches check whether they are idle.
const IDLE_CHECK: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Local ports whose inbound policy is watched at most.
const MAX_INBOUND_WATCHES: usize = 64;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What discovery knows of a destination.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// No snapshot yet.
    Pending,
    /// No Service answers to it: it is outside the mesh.
    NotFound,
    /// Its current stack.
    Found(Arc<DestinationStack>),
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

#[derive(Debug)]
struct Inner {
    grpc: DiscoveryGrpc<Channel>,
    certs: Arc<CertStore>,
    pool: PeerPool,
    metrics: ProxyMetrics,
    drain: Drain,
    replay_limit: usize,
    watches: Mutex<HashMap<String, Arc<Watch>>>,
    /// The mesh's networks as last pushed (or configured); `None` while unknown.
    mesh: ArcSwapOption<MeshNetworks>,
    /// Whether each local port is opaque, by inbound policy.
    inbound: Mutex<HashMap<u16, watch::Receiver<Option<bool>>>>,
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
}

impl DiscoveryClient {
    /// A client over `channel`, which presents the certificate in `certs`; `mesh` is what the
    /// proxy knows of the mesh's networks before the control plane says.
    pub fn new(
        channel: Channel,
        certs: Arc<CertStore>,
        pool: PeerPool,
        metrics: ProxyMetrics,
        drain: Drain,
        replay_limit: usize,
        mesh: Option<MeshNetworks>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                grpc: DiscoveryGrpc::new(channel),
                certs,
                pool,
                metrics,
                drain,
                replay_limit,
                watches: Mutex::new(HashMap::new()),
                mesh: ArcSwapOption::from(mesh.map(Arc::new)),
                inbound: Mutex::new(HashMap::new()),
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

    /// Keeps the mesh's networks as the control plane pushes them, until drained.
    pub async fn watch_mesh(self) {
        self.inner.run_mesh().await;
    }

    /// Whether inbound policy makes local `port` opaque (a Service port with appProtocol tcp,
    /// or a ServicePolicy's opaquePorts). `false` while the control plane has not answered.
    pub async fn inbound_opaque(&self, port: u16) -> bool {
        let mut receiver = {
            let mut watches = self.inner.inbound.lock();
            // The port comes from the peer; a proxy serves few ports, so a flood of others is
            // refused rather than watched.
            if watches.len() >= MAX_INBOUND_WATCHES && !watches.contains_key(&port) {
                return false;
            }
            watches
                .entry(port)
                .or_insert_with(|| {
                    let (tx, rx) = watch::channel(None);
                    let inner = self.inner.clone();
                    self.inner
                        .drain
                        .spawn(async move { inner.run_inbound(port, tx).await });
                    rx
                })
                .clone()
        };
        let answered =
            tokio::time::timeout(FIRST_SNAPSHOT_TIMEOUT, receiver.wait_for(Option::is_some)).await;
        matches!(answered, Ok(Ok(opaque)) if *opaque == Some(true))
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

    fn watch(&self, key: &str) -> Arc<Watch> {
        let mut watches = self.inner.watches.lock();
        if let Some(watch) = watches.get(key) {
            return watch.clone();
        }
        let (tx, rx) = watch::channel(Resolved::Pending);
        let watch = Arc::new(Watch {
            resolved: rx,
            last_used: Mutex::new(tokio::time::Instant::now()),
        });
        watches.insert(key.to_string(), watch.clone());
        let inner = self.inner.clone();
        let destination = key.to_string();
        let task_watch = watch.clone();
        // Tracked by the drain: it ends on drain, on idleness, or never starts a stream again.
        self.inner.drain.spawn(async move {
            inner.run(&destination, &task_watch, tx).await;
            inner.watches.lock().remove(&destination);
        });
        watch
    }
}

impl Inner {
    async fn run(&self, destination: &str, watch: &Watch, tx: watch::Sender<Resolved>) {
        let runtime =
            DestinationRuntime::new(self.pool.clone(), self.metrics.clone(), self.replay_limit);
        let mut backoff = MIN_BACKOFF;
        if !self.certified().await {
            return;
        }
        loop {
            let request = WatchOutboundRequest {
                destination: destination.to_string(),
            };
            match self.grpc.clone().watch_outbound(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let mut idle_check = tokio::time::interval(IDLE_CHECK);
                    loop {
                        tokio::select! {
                            message = stream.message() => match message {
                                Ok(Some(snapshot)) => {
                                    backoff = MIN_BACKOFF;
                                    self.apply(destination, &snapshot, &runtime, &tx);
                                }
                                Ok(None) => break,
                                Err(status) => {
                                    tracing::info!(%destination, code = ?status.code(), message = status.message(), "discovery stream ended");
                                    break;
                                }
                            },
                            _ = idle_check.tick() => if watch.last_used.lock().elapsed() > IDLE_TIMEOUT {
                                tracing::debug!(%destination, "closing idle discovery watch");
                                return;
                            },
                            () = self.drain.signaled() => return,
                        }
                    }
                }
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    // The control plane will never answer this destination: it is outside the
                    // mesh, for good, and the watch ends.
                    tracing::debug!(%destination, message = status.message(), "destination refused by discovery");
                    tx.send_replace(Resolved::NotFound);
                    return;
                }
                Err(status) => {
                    tracing::info!(%destination, code = ?status.code(), message = status.message(), "cannot watch destination");
                }
            }
            // Unused destinations go even while the control plane is away.
            if watch.last_used.lock().elapsed() > IDLE_TIMEOUT || !self.back_off(&mut backoff).await
            {
                return;
            }
        }
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

    /// Watches the inbound policy of `port` until drained (ports are few and fixed).
    async fn run_inbound(&self, port: u16, tx: watch::Sender<Option<bool>>) {
        let mut backoff = MIN_BACKOFF;
        if !self.certified().await {
            return;
        }
        loop {
            let request = WatchInboundRequest {
                port: u32::from(port),
            };
            if let Ok(response) = self.grpc.clone().watch_inbound(request).await {
                let mut stream = response.into_inner();
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(snapshot)) => {
                                backoff = MIN_BACKOFF;
                                tx.send_replace(Some(snapshot.opaque));
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

    /// Watches the mesh snapshot until drained, applying each one (or keeping the last).
    async fn run_mesh(&self) {
        let mut backoff = MIN_BACKOFF;
        if !self.certified().await {
            return;
        }
        loop {
            if let Ok(response) = self.grpc.clone().watch_mesh(WatchMeshRequest {}).await {
                let mut stream = response.into_inner();
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(snapshot)) => {
                                backoff = MIN_BACKOFF;
                                self.apply_mesh(&snapshot);
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

    fn apply_mesh(&self, snapshot: &MeshSnapshot) {
        let parsed = MeshNetworks::parse(snapshot.networks.iter().map(String::as_str));
        let error = match parsed {
            Ok(networks) => {
                self.mesh.store(Some(Arc::new(networks)));
                self.metrics.discovery_update(true);
                String::new()
            }
            Err(error) => {
                self.metrics.discovery_update(false);
                tracing::warn!(version = %snapshot.version, %error, "rejected mesh snapshot; keeping the last one");
                format!("networks: {error}")
            }
        };
        self.report(MESH_RESOURCE, &snapshot.version, error);
    }

    /// Tells the control plane `version` of `resource` was applied (`error` empty) or rejected.
    fn report(&self, resource: &str, version: &str, error: String) {
        let mut grpc = self.grpc.clone();
        let status = ConfigStatus {
            resource: resource.to_string(),
            version: version.to_string(),
            error,
        };
        // Reporting must not hold up applying the next snapshot.
        tokio::spawn(async move {
            if let Err(status) = grpc.report_status(status).await {
                tracing::debug!(code = ?status.code(), "cannot report config status");
            }
        });
    }

    /// Turns a snapshot into the destination's new stack, or rejects it (keeping the last).
    fn apply(
        &self,
        destination: &str,
        snapshot: &OutboundSnapshot,
        runtime: &DestinationRuntime,
        tx: &watch::Sender<Resolved>,
    ) {
        let outcome = if snapshot.found {
            Destination::try_from(snapshot)
                .map(|compiled| Resolved::Found(Arc::new(runtime.build(&compiled, ""))))
        } else {
            Ok(Resolved::NotFound)
        };
        let error = match outcome {
            Ok(resolved) => {
                tx.send_replace(resolved);
                self.metrics.discovery_update(true);
                tracing::debug!(%destination, version = %snapshot.version, "applied discovery snapshot");
                String::new()
            }
            Err(error) => {
                self.metrics.discovery_update(false);
                tracing::warn!(%destination, version = %snapshot.version, %error, "rejected discovery snapshot; keeping the last one");
                error.to_string()
            }
        };
        self.report(destination, &snapshot.version, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(resolved: watch::Receiver<Resolved>) -> Resolution {
        Resolution(Arc::new(Watch {
            resolved,
            last_used: Mutex::new(tokio::time::Instant::now()),
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

    #[tokio::test]
    async fn a_kept_resolution_whose_watch_ended_must_be_resolved_again() {
        let (tx, rx) = watch::channel(Resolved::NotFound);
        let resolution = kept(rx);
        drop(tx);
        assert!(resolution.current().is_none());
    }
}

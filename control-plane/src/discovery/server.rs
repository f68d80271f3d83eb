//! The Discovery gRPC service: one task per watch, woken by every policy change, sending a new
//! snapshot only when the destination's changed.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_api::discovery::discovery_server::Discovery;
use weft_api::discovery::{
    ConfigStatus, InboundSnapshot, MeshSnapshot, OutboundSnapshot, ReportStatusResponse,
    WatchInboundRequest, WatchMeshRequest, WatchOutboundRequest,
};
use weft_telemetry::Drain;

use super::limits::WatchLimits;
use super::registry::Caller;
use super::{ClusterDomain, ProxyRegistry, SnapshotCache, inbound_snapshot};
use crate::metrics::Metrics;
use crate::policy::Port;
use crate::policy_store::{PolicyState, PolicyStore};
use crate::tls_incoming::PeerInfo;

/// Snapshots queued per watch before the sender waits for the proxy.
const STREAM_BUFFER: usize = 4;
/// How the mesh watch appears in `weftctl proxy-status`.
pub const MESH_RESOURCE: &str = "mesh";
/// The longest destination accepted (a DNS name and a port).
const MAX_DESTINATION_LEN: usize = 261;

/// The Discovery service.
#[derive(Debug, Clone)]
pub struct DiscoveryApi {
    store: Arc<PolicyStore>,
    cache: Arc<SnapshotCache>,
    registry: Arc<ProxyRegistry>,
    /// What every proxy learns of the mesh as a whole, as it changes.
    mesh: tokio::sync::watch::Receiver<Arc<MeshSnapshot>>,
    limits: Arc<WatchLimits>,
    metrics: Metrics,
    drain: Drain,
}

/// How discovery answers and what it holds at most.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// Service names resolve under it.
    pub cluster_domain: ClusterDomain,
    /// Watch streams one proxy identity may hold.
    pub max_watches_per_identity: usize,
    /// Watch streams in all.
    pub max_watches: usize,
}

/// A stream of snapshots.
pub type SnapshotStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl DiscoveryApi {
    /// Serves `store`'s policy and the `mesh` snapshot as `options` say, recording proxies in
    /// `registry`; streams end on `drain`.
    pub fn new(
        store: Arc<PolicyStore>,
        registry: Arc<ProxyRegistry>,
        mesh: tokio::sync::watch::Receiver<Arc<MeshSnapshot>>,
        options: DiscoveryOptions,
        metrics: Metrics,
        drain: Drain,
    ) -> Self {
        Self {
            store,
            cache: Arc::new(SnapshotCache::new(options.cluster_domain)),
            registry,
            mesh,
            limits: WatchLimits::new(options.max_watches_per_identity, options.max_watches),
            metrics,
            drain,
        }
    }

    /// Runs one watch: sends what `compute` makes of each new state, when it changed, until the
    /// proxy goes away or the control plane drains.
    fn watch<T, F>(
        &self,
        caller: Caller,
        (kind, resource): (&'static str, String),
        compute: F,
    ) -> Result<SnapshotStream<T>, Status>
    where
        T: PartialEq + Clone + Send + 'static + Versioned,
        F: Fn(&PolicyState) -> T + Send + 'static,
    {
        let states = self.store.subscribe_state();
        // Nothing is sent from part of the cluster: a watch opened before the cluster's view
        // waits for it.
        let complete = |state: &Arc<PolicyState>| !state.cluster_pending;
        self.follow(caller, (kind, resource), states, complete, move |state| {
            (compute(state), state.served_version_string())
        })
    }

    /// Runs one watch of `states`: sends what `compute` makes of each (a snapshot and its
    /// version), when it changed. `kind` (outbound, inbound, mesh) labels its pushes;
    /// `resource` names it to `weftctl proxy-status`.
    fn follow<S, T, F>(
        &self,
        caller: Caller,
        (kind, resource): (&'static str, String),
        mut states: tokio::sync::watch::Receiver<S>,
        complete: fn(&S) -> bool,
        compute: F,
    ) -> Result<SnapshotStream<T>, Status>
    where
        S: Clone + Send + Sync + 'static,
        T: PartialEq + Clone + Send + 'static + Versioned,
        F: Fn(&S) -> (T, String) + Send + 'static,
    {
        let permit = self.limits.admit(&caller.identity).inspect_err(|_| {
            self.metrics
                .discovery_watches
                .with_label_values(&["exhausted"])
                .inc();
        })?;
        self.metrics
            .discovery_watches
            .with_label_values(&["opened"])
            .inc();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let registry = self.registry.clone();
        let drain = self.drain.clone();
        let (limits, open) = (
            self.limits.clone(),
            self.metrics.discovery_watches_open.clone(),
        );
        let pushes = self.metrics.discovery_pushes.with_label_values(&[kind]);
        let push_duration = self
            .metrics
            .discovery_push_duration
            .with_label_values(&[kind]);
        open.set(limits.open() as i64);
        registry.opened(&caller, &resource);
        tokio::spawn(async move {
            let held = permit;
            let mut last: Option<T> = None;
            let mut changed_at = std::time::Instant::now();
            loop {
                let state = states.borrow_and_update().clone();
                if complete(&state) {
                    let (snapshot, version) = compute(&state);
                    if last.as_ref() != Some(&snapshot) {
                        let mut message = snapshot.clone();
                        message.set_version(version.clone());
                        if tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                        registry.sent(&caller, &resource, &version);
                        pushes.inc();
                        push_duration.observe(changed_at.elapsed().as_secs_f64());
                        last = Some(snapshot);
                    }
                }
                tokio::select! {
                    changed = states.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                    () = drain.signaled() => break,
                }
                changed_at = std::time::Instant::now();
            }
            registry.closed(&caller, &resource);
            drop(held);
            open.set(limits.open() as i64);
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Snapshots carry the revision they were sent at.
pub trait Versioned {
    /// Sets the version.
    fn set_version(&mut self, version: String);
}

impl Versioned for OutboundSnapshot {
    fn set_version(&mut self, version: String) {
        self.version = version;
    }
}

impl Versioned for MeshSnapshot {
    fn set_version(&mut self, version: String) {
        self.version = version;
    }
}

impl Versioned for InboundSnapshot {
    fn set_version(&mut self, version: String) {
        self.version = version;
    }
}

/// The proxy on the other end; discovery is only for proxies with a valid certificate.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let peer = request.extensions().get::<PeerInfo>().ok_or_else(|| {
        Status::unauthenticated("discovery requires the proxy's client certificate")
    })?;
    let identity = peer.identity.clone().ok_or_else(|| {
        Status::unauthenticated("discovery requires the proxy's client certificate")
    })?;
    Ok(Caller {
        remote: peer.remote,
        identity,
        cert_expiry: peer.not_after,
    })
}

#[tonic::async_trait]
impl Discovery for DiscoveryApi {
    type WatchOutboundStream = SnapshotStream<OutboundSnapshot>;

    async fn watch_outbound(
        &self,
        request: Request<WatchOutboundRequest>,
    ) -> Result<Response<Self::WatchOutboundStream>, Status> {
        let caller = caller(&request)?;
        let destination = request.into_inner().destination.to_ascii_lowercase();
        let valid = !destination.is_empty()
            && destination.len() <= MAX_DESTINATION_LEN
            && destination
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            self.metrics
                .discovery_watches
                .with_label_values(&["invalid"])
                .inc();
            return Err(Status::invalid_argument(format!(
                "destination: {:?} is not host:port",
                destination.chars().take(64).collect::<String>()
            )));
        }
        let cache = self.cache.clone();
        let key = destination.clone();
        let stream = self.watch(caller, ("outbound", destination), move |state| {
            (*cache.outbound(state, &key)).clone()
        })?;
        Ok(Response::new(stream))
    }

    type WatchInboundStream = SnapshotStream<InboundSnapshot>;

    async fn watch_inbound(
        &self,
        request: Request<WatchInboundRequest>,
    ) -> Result<Response<Self::WatchInboundStream>, Status> {
        let caller = caller(&request)?;
        let port = match request.into_inner().port {
            0 => None,
            port => Some(Port::from_u32(port).ok_or_else(|| {
                Status::invalid_argument(format!("port: {port} is not a port (or 0 for all)"))
            })?),
        };
        let identity = caller.identity.to_string();
        let resource = match port {
            None => "inbound".to_string(),
            Some(port) => format!("inbound:{port}"),
        };
        let stream = self.watch(caller, ("inbound", resource), move |state| {
            inbound_snapshot(state, &identity, port)
        })?;
        Ok(Response::new(stream))
    }

    type WatchMeshStream = SnapshotStream<MeshSnapshot>;

    async fn watch_mesh(
        &self,
        request: Request<WatchMeshRequest>,
    ) -> Result<Response<Self::WatchMeshStream>, Status> {
        let caller = caller(&request)?;
        let told = request.get_ref();
        let tap_port = u16::try_from(told.tap_port).ok().filter(|port| *port != 0);
        let pod = told.pod.clone();
        let described = caller.clone();
        let stream = self.follow(
            caller,
            ("mesh", MESH_RESOURCE.to_string()),
            self.mesh.clone(),
            |_| true,
            |mesh: &Arc<MeshSnapshot>| ((**mesh).clone(), mesh.version.clone()),
        )?;
        self.registry.described(&described, tap_port, &pod);
        Ok(Response::new(stream))
    }

    async fn report_status(
        &self,
        request: Request<ConfigStatus>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        let caller = caller(&request)?;
        let status = request.into_inner();
        self.registry
            .reported(&caller, &status.resource, &status.version, &status.error);
        if !status.error.is_empty() {
            // Shown by `weftctl proxy-status`; a proxy decides how often it reports.
            tracing::debug!(proxy = %caller.identity, resource = %status.resource, version = %status.version, error = %status.error, "proxy rejected a snapshot");
        }
        Ok(Response::new(ReportStatusResponse {}))
    }
}

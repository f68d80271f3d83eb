//! Wires the proxy together: listeners first (so a port in use is a configuration error), then
//! identity, the two proxies and the admin server, all on one drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;
use weft_api::client::ControlPlaneTarget;
use weft_certs::{ALPN_H2, ALPN_WEFT, CertStore, ClientAuth, TrustStore};
use weft_telemetry::{AdminServer, ConfigView, Drain, Traces};

use crate::admin_config;
use crate::config::{self, Config};
use crate::destination::discovery::{DiscoveryClient, DiscoverySettings};
use crate::identity::IdentityDaemon;
use crate::inbound::{Inbound, InboundPorts, Policy};
use crate::metrics::ProxyMetrics;
use crate::outbound::{Outbound, OutboundSettings};
use crate::tap::{TapServer, TapServerSettings, Taps};
use crate::transport::{PeerPool, StandardTls};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address is unusable (in use, not local…): a configuration error.
    #[error("{var}: cannot listen on {addr}: {source}")]
    Bind {
        /// The variable naming the address.
        var: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Setup(String),
}

/// The addresses the proxy actually listens on.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// Inbound (mTLS from peers).
    pub inbound: SocketAddr,
    /// Outbound (the app's traffic).
    pub outbound: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
    /// The tap API, when served.
    pub tap: Option<SocketAddr>,
}

/// Binds every listener and spawns the proxy's tasks on `drain`, the inbound side's on
/// `inbound_drain`: a terminating pod stops taking traffic (and reports not ready) first, while
/// its app's own outgoing calls still go out until `drain` ends everything.
pub async fn start(
    config: Config,
    drain: &Drain,
    inbound_drain: &Drain,
    traces: Option<&Traces>,
) -> Result<Listening, StartError> {
    let inbound_listeners = bind_dual_stack(config::ENV_INBOUND_ADDR, config.inbound_addr)?;
    let outbound_listeners = bind_dual_stack(config::ENV_OUTBOUND_ADDR, config.outbound_addr)?;
    let admin_listener = bind(config::ENV_ADMIN_ADDR, config.admin_addr).await?;
    let tap_listener = match config.tap_addr {
        Some(addr) => Some(bind(config::ENV_TAP_ADDR, addr).await?),
        None => None,
    };
    let listening = Listening {
        inbound: local_addr(&inbound_listeners[0])?,
        outbound: local_addr(&outbound_listeners[0])?,
        admin: local_addr(&admin_listener)?,
        tap: tap_listener.as_ref().map(local_addr).transpose()?,
    };
    let all_addrs = |listeners: &[TcpListener]| {
        listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (inbound_addrs, outbound_addrs) = (
        all_addrs(&inbound_listeners),
        all_addrs(&outbound_listeners),
    );

    let registry = weft_telemetry::metrics::new_registry();
    let metrics =
        ProxyMetrics::register(&registry).map_err(|e| StartError::Setup(e.to_string()))?;
    if let Some(traces) = traces {
        traces
            .register(&registry)
            .map_err(|e| StartError::Setup(e.to_string()))?;
    }
    let taps = Taps::new(&registry).map_err(|e| StartError::Setup(e.to_string()))?;
    let observer = config.observer(taps.clone());
    let certs = CertStore::new();
    let setup = |e: rustls::Error| StartError::Setup(format!("TLS setup: {e}"));
    // The anchors from the file until the control plane pushes its bundle; every TLS config
    // reads the current ones, so a rotated bundle applies from the next handshake on.
    let trust = TrustStore::new(config.trust_anchors.clone());
    let peer_client = weft_certs::client_config_with(trust.clone(), certs.clone(), &[ALPN_WEFT])
        .map_err(setup)?;
    let peer_server = weft_certs::server_config_with(
        trust.clone(),
        config.identity.trust_domain(),
        certs.clone(),
        ClientAuth::Required,
        &Inbound::ALPN,
    )
    .map_err(setup)?;
    let control_tls = Arc::new(
        weft_certs::client_config_with(trust.clone(), certs.clone(), &[ALPN_H2]).map_err(setup)?,
    );

    let target = ControlPlaneTarget {
        addr: config.control_plane_addr.clone(),
        server_name: config.control_plane_identity.dns_name(),
        tls: control_tls.clone(),
    };
    let identity = IdentityDaemon::new(
        target.clone(),
        config.identity.clone(),
        config.token_path.clone(),
        trust.clone(),
        certs.clone(),
        metrics.clone(),
    );
    drain.spawn(identity.run(drain.clone()));

    let ports = InboundPorts {
        app_port: config.app_port,
        opaque_ports: config.opaque_ports.clone(),
        own_ports: vec![
            listening.inbound.port(),
            listening.outbound.port(),
            listening.admin.port(),
        ]
        .into_iter()
        .chain(listening.tap.map(|tap| tap.port()))
        .collect(),
        default_authorization: config.default_inbound_policy,
        mode: config.inbound_mode,
    };
    // Foreign SPIFFE workloads take the same certificate: ALPN h2 (as the control plane) for
    // HTTP, none for opaque streams.
    let standard_tls = StandardTls {
        h2: control_tls.clone(),
        opaque: Arc::new(
            weft_certs::client_config_with(trust.clone(), certs.clone(), &[]).map_err(setup)?,
        ),
    };
    let pool = PeerPool::new(Arc::new(peer_client), standard_tls, metrics.clone());
    let discovery_channel = target
        .lazy_channel()
        .map_err(|e| StartError::Setup(format!("discovery: {e}")))?;
    let discovery = DiscoveryClient::new(
        discovery_channel,
        certs.clone(),
        metrics.clone(),
        drain.clone(),
        DiscoverySettings {
            mesh: config.mesh_networks.clone(),
            max_watches: config.max_destinations,
            max_endpoints: config.max_endpoints,
            trust: trust.clone(),
            tap_port: listening.tap.map(|tap| tap.port()),
            pod: config.pod_name.clone(),
        },
    );
    drain.spawn(discovery.clone().watch_proxy_wide());
    let config_view: ConfigView = {
        let (config, discovery) = (config.clone(), discovery.clone());
        Arc::new(move || admin_config::render(&config, &discovery))
    };
    if let Some(listener) = tap_listener {
        let tls = weft_certs::server_config_with(
            trust.clone(),
            config.identity.trust_domain(),
            certs.clone(),
            ClientAuth::Required,
            &[ALPN_H2],
        )
        .map_err(setup)?;
        let allowed = std::iter::once(config.control_plane_identity.clone())
            .chain(config.tap_identities.iter().cloned())
            .collect();
        let tap = TapServer::new(TapServerSettings {
            taps,
            config: config_view.clone(),
            registry: registry.clone(),
            tls: Arc::new(tls),
            allowed,
        });
        drain.spawn(tap.serve(listener, drain.clone()));
    }
    let in_cluster = {
        let discovery = discovery.clone();
        Arc::new(move |ip| discovery.in_mesh(ip))
    };
    let policy = Policy::new(ports, Some(discovery.inbound_policy()), in_cluster);
    let inbound = Inbound::new(
        Arc::new(peer_server),
        policy,
        config.inbound_limits,
        metrics.clone(),
        config.detect_timeout,
        observer.clone(),
    );
    for listener in inbound_listeners {
        inbound_drain.spawn(inbound.clone().serve(listener, inbound_drain.clone()));
    }
    let outbound = Outbound::new(
        config.static_routes.clone(),
        pool,
        Some(discovery),
        metrics,
        OutboundSettings {
            detect_timeout: config.detect_timeout,
            opaque_ports: config.opaque_ports.clone(),
            replay_limit: config.max_replay_bytes,
            max_destinations: config.max_destinations,
            observer,
        },
    )
    .map_err(|e| StartError::Setup(format!("static routes: {e}")))?;
    for listener in outbound_listeners {
        drain.spawn(outbound.clone().serve(listener, drain.clone()));
    }

    let ready_certs = certs.clone();
    let stopping = inbound_drain.clone();
    let admin = AdminServer::new(
        registry,
        Arc::new(move || ready_certs.is_ready_at(SystemTime::now()) && !stopping.is_draining()),
        drain.clone(),
    )
    .with_shutdown_endpoint(config.shutdown_endpoint)
    .with_config(config_view);
    drain.spawn(admin.serve(admin_listener));

    tracing::info!(
        identity = %config.identity,
        inbound = %inbound_addrs,
        outbound = %outbound_addrs,
        admin = %listening.admin,
        tap = %listening.tap.map_or("off".to_string(), |tap| tap.to_string()),
        "weft-proxy started"
    );
    Ok(listening)
}

/// Binds `addr`, and its IPv6 counterpart where the pod has IPv6 (see `listen`).
fn bind_dual_stack(var: &'static str, addr: SocketAddr) -> Result<Vec<TcpListener>, StartError> {
    crate::listen::bind_dual_stack(addr).map_err(|source| StartError::Bind { var, addr, source })
}

async fn bind(var: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { var, addr, source })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|e| StartError::Setup(e.to_string()))
}

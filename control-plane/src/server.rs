//! Wires weft-control together: store, PKI, credentials, the three listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use weft_api::admin::admin_server::AdminServer;
use weft_api::discovery::discovery_server::DiscoveryServer;
use weft_api::identity::identity_server::IdentityServer;
use weft_certs::{ALPN_H2, CertStore, ClientAuth, TrustDomain};
use weft_telemetry::{Drain, GrpcCallMetrics, GrpcCalls};

use crate::admin_api::{
    AdminApi, IdentityAdmin, ProxyAccess, RequireAdmin, ResourceAdmin, TokenAdmin,
};
use crate::admin_credential::{ADMIN_TOKEN_FILE, AdminCredential};
use crate::config::{Config, PolicyBackend};
use crate::discovery::{DiscoveryApi, DiscoveryOptions, ProxyRegistry};
use crate::inject::{IdentitySource, InjectSettings};
use crate::leader::{self, LeaseConfig};
use crate::limits::{
    Admission, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_ADMIN_MESSAGE, MAX_HEADER_LIST,
    MAX_LOCAL_RESETS, MAX_PENDING_RESETS, MAX_PROXY_MESSAGE, RateLimit,
};
use crate::lineage::Lineage;
use crate::metrics::Metrics;
use crate::policy_store::PolicyStore;
use crate::resource_store::{Embedded, Kubernetes, ResourceStore, Timed};
use crate::service_account_tokens::TokenReviewer;
use crate::store::Store;
use crate::trust::Trust;
use crate::{
    cluster, kube_client, kube_namespaces, pki, route_status, serving_cert, tls_incoming, webhook,
};

/// How often records of expired certificates, lapsed revocations and spent tokens are purged.
const RECORD_PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Why weft-control could not start. Every variant is a configuration or environment problem
/// the operator must fix, reported in one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("--data-dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The PKI is missing or broken.
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    /// The admin credential is unusable.
    #[error("{0}")]
    Credential(#[from] crate::admin_credential::CredentialError),
    /// A listener could not bind.
    #[error("{flag} {addr}: {source}")]
    Bind {
        /// The flag naming the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// Anything else during setup.
    #[error("{0}")]
    Setup(String),
}

/// Elects, through a Lease, the one replica that writes route status, and writes it there.
fn write_route_status(
    config: &Config,
    client: &kube::Client,
    policy: &PolicyStore,
    metrics: &Metrics,
    drain: &Drain,
) {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "weft-control".to_string());
    let lease = LeaseConfig {
        namespace: config.lease_namespace.clone(),
        name: "weft-control".to_string(),
        // Unique even for two processes of one host (a restart before the lease expires).
        identity: format!("{host}-{:08x}", rand::random::<u32>()),
        duration: config.lease_duration,
    };
    // The lease is released only once status writing has stopped, so the next leader never
    // writes beside this one.
    let (written, writing_stopped) = tokio::sync::oneshot::channel::<()>();
    let (leading, elect) = leader::elect(client.clone(), lease, async move {
        let _ = writing_stopped.await;
    });
    drain.spawn(elect);
    let draining = drain.clone();
    let writing = route_status::keep_written(
        client.clone(),
        policy.subscribe_state(),
        leading,
        metrics.clone(),
        async move { draining.signaled().await },
    );
    drain.spawn(async move {
        writing.await;
        let _ = written.send(());
    });
}

/// The policy store on the backend `config` names.
async fn load_policy(
    config: &Config,
    store: &Store,
    kubernetes: Option<&kube::Client>,
    metrics: &Metrics,
) -> Result<PolicyStore, StartError> {
    let backend: Arc<dyn ResourceStore> = match (config.policy_store, kubernetes) {
        (PolicyBackend::Embedded, _) => Arc::new(Embedded::open(store.clone())?),
        (PolicyBackend::Kubernetes, Some(client)) => {
            tracing::info!("policy: resources live in the Kubernetes API server");
            Arc::new(Kubernetes::connect(client.clone()).await?)
        }
        (PolicyBackend::Kubernetes, None) => {
            return Err(StartError::Setup(
                "--policy-store kubernetes needs --kubeconfig, or running in a cluster".to_string(),
            ));
        }
    };
    let backend: Arc<dyn ResourceStore> =
        Arc::new(Timed::new(backend, metrics.store_duration.clone()));
    tokio::task::spawn_blocking(move || PolicyStore::load(backend))
        .await
        .map_err(|e| StartError::Setup(format!("loading the policy failed: {e}")))?
        .map_err(StartError::from)
}

/// A started control plane: its listeners are bound, so the addresses are final.
#[derive(Debug)]
pub struct Running {
    /// Where the proxy API listens.
    pub proxy_api_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Where /metrics listens.
    pub metrics_addr: SocketAddr,
    /// Where the admission webhook listens, when it was given a certificate.
    pub webhook_addr: Option<SocketAddr>,
}

/// Loads state, binds every listener, and spawns the servers on `drain`.
pub async fn start(
    config: &Config,
    drain: &Drain,
    traces: Option<&weft_telemetry::Traces>,
) -> Result<Running, StartError> {
    // Bind first: a port in use must fail before any state is created.
    let proxy_listener = bind("--proxy-api-addr", config.proxy_api_addr).await?;
    let admin_listener = bind("--admin-addr", config.admin_addr).await?;
    let metrics_listener = bind("--metrics-addr", config.metrics_addr).await?;
    let webhook_listener = match (&config.webhook_cert, &config.webhook_key) {
        (Some(cert), Some(key)) => {
            let acceptor =
                webhook::tls_acceptor(cert, key).map_err(|e| StartError::Setup(e.to_string()))?;
            Some((bind("--webhook-addr", config.webhook_addr).await?, acceptor))
        }
        _ => None,
    };
    let running = Running {
        proxy_api_addr: local_addr(&proxy_listener)?,
        admin_addr: local_addr(&admin_listener)?,
        metrics_addr: local_addr(&metrics_listener)?,
        webhook_addr: match &webhook_listener {
            Some((listener, _)) => Some(local_addr(listener)?),
            None => None,
        },
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let pki = load_pki(config)?;
    let trust_domain = pki.issuer.trust_domain().clone();
    let store = Store::open(&config.data_dir.join("store.redb"))?;
    let kubernetes = match kube_client::cluster_client(config.kubeconfig.as_deref()).await {
        Ok(client) => client,
        // A kubeconfig asked for and unusable is a mistake to stop on; an in-cluster setup
        // without its ServiceAccount token only costs TokenReview and the namespace watch.
        Err(error)
            if config.kubeconfig.is_none() && config.policy_store == PolicyBackend::Embedded =>
        {
            tracing::warn!(%error, "no Kubernetes API: ServiceAccount tokens are not reviewed, the webhook reads no namespaces");
            None
        }
        Err(error) => return Err(StartError::Setup(error.to_string())),
    };
    let registry = weft_telemetry::metrics::new_registry();
    let metrics = Metrics::register(&registry).map_err(|e| StartError::Setup(e.to_string()))?;
    let policy = Arc::new(load_policy(config, &store, kubernetes.as_ref(), &metrics).await?);
    let following = policy.clone().follow();
    let draining = drain.clone();
    drain.spawn(async move {
        tokio::select! {
            () = following => {}
            () = draining.signaled() => {}
        }
    });
    if let Some(client) = &kubernetes {
        tracing::info!("discovery: following the cluster's Services, EndpointSlices and Pods");
        cluster::follow(client.clone(), trust_domain.clone(), policy.clone(), drain);
    }
    let proxies = Arc::new(ProxyRegistry::default());
    let credential = match &config.admin_token_file {
        Some(path) => AdminCredential::load(path)?,
        None => AdminCredential::load_or_create(&config.data_dir.join(ADMIN_TOKEN_FILE))?,
    };

    if let Some(traces) = traces {
        traces
            .register(&registry)
            .map_err(|e| StartError::Setup(e.to_string()))?;
    }
    let grpc_metrics = GrpcCallMetrics::register(&registry, "weft_control")
        .map_err(|e| StartError::Setup(e.to_string()))?;
    // Every call counted; Certify and admin calls traced, but not discovery's watches, open
    // for a proxy's life.
    let calls = |api: &'static str| {
        GrpcCalls::new(api, &GRPC_SERVICES)
            .counted(&grpc_metrics)
            .traced(
                config
                    .trace_endpoint
                    .as_ref()
                    .map(|_| config.trace_sampling),
                &["/weft.discovery."],
            )
    };
    if let (PolicyBackend::Kubernetes, Some(client)) = (config.policy_store, &kubernetes) {
        write_route_status(config, client, &policy, &metrics, drain);
    }

    let serving = CertStore::new();
    let not_after = serving_cert::issue(&pki.issuer, &serving).map_err(StartError::Setup)?;
    let networks = config
        .mesh_networks
        .iter()
        .map(ToString::to_string)
        .collect();
    let trust = Trust::load(
        config.pki_dir(),
        pki,
        networks,
        serving.clone(),
        metrics.clone(),
    )?;
    drain.spawn(serving_cert::keep_fresh(
        trust.clone(),
        serving.clone(),
        not_after,
        drain.clone(),
    ));
    drain.spawn(trust.clone().warn_before_expiry(drain.clone()));
    // The control plane calls the proxies' tap APIs as itself.
    let proxy_client_tls =
        weft_certs::client_config_with(trust.anchors(), serving.clone(), &[ALPN_H2])
            .map_err(|e| StartError::Setup(e.to_string()))?;
    let tls = weft_certs::server_config_with(
        trust.anchors(),
        &trust_domain,
        serving,
        ClientAuth::Optional,
        &[ALPN_H2],
    )
    .map_err(|e| StartError::Setup(e.to_string()))?;
    let acceptor = tls_incoming::acceptor(tls);

    let lineage = Lineage::new(store.clone())
        .map_err(|e| StartError::Setup(format!("cannot start the lineage writer: {e}")))?;
    drain.spawn(
        lineage
            .clone()
            .purge_periodically(RECORD_PURGE_INTERVAL, drain.clone()),
    );
    let limits = config.limits;
    let mut identity = crate::identity_api::IdentityApi::new(
        trust.clone(),
        lineage.clone(),
        config.leaf_lifetime,
        RateLimit::new(limits.certify_rate, limits.certify_rate_per_ip),
        metrics.clone(),
    );
    if let Some(client) = &kubernetes {
        tracing::info!(
            "identity: Kubernetes ServiceAccount tokens are reviewed with the API server"
        );
        identity = identity
            .with_service_account_tokens(TokenReviewer::new(client.clone(), trust_domain.clone()));
    }
    let discovery = DiscoveryServer::new(DiscoveryApi::new(
        policy.clone(),
        proxies.clone(),
        trust.mesh(),
        DiscoveryOptions {
            cluster_domain: config.cluster_domain.clone(),
            max_watches_per_identity: config.max_watches_per_identity,
            max_watches: config.max_watches,
        },
        metrics.clone(),
        drain.clone(),
    ))
    .max_decoding_message_size(MAX_PROXY_MESSAGE);
    let proxy_api = grpc_server(limits.max_streams)
        .layer(calls("proxy"))
        .add_service(IdentityServer::new(identity).max_decoding_message_size(MAX_PROXY_MESSAGE))
        .add_service(discovery)
        .serve_with_incoming_shutdown(
            tls_incoming::incoming(
                proxy_listener,
                acceptor.clone(),
                Admission::new(limits),
                metrics.connections_refused.clone(),
                drain.clone(),
            ),
            drain_signal(drain.clone()),
        );
    spawn_server(drain, "proxy API", proxy_api);

    let mesh = trust.mesh();
    let refused = metrics.connections_refused.clone();
    let webhook_refused = metrics.connections_refused.clone();
    let tokens = TokenAdmin::new(store, trust_domain.clone(), config.join_token_ttl, metrics);
    let identities = IdentityAdmin::new(lineage, trust_domain.clone());
    let admin = AdminApi::new(
        tokens,
        identities,
        ResourceAdmin::new(policy.clone()),
        proxies.clone(),
        ProxyAccess::new(proxies, Arc::new(proxy_client_tls)),
        trust,
    );
    let admin_identities = if config.admin_identities.is_empty() {
        vec![pki::admin_identity(&trust_domain)]
    } else {
        config.admin_identities.clone()
    };
    let admin_api = grpc_server(ADMIN_MAX_STREAMS)
        .layer(calls("admin"))
        .add_service(InterceptedService::new(
            AdminServer::new(admin).max_decoding_message_size(MAX_ADMIN_MESSAGE),
            RequireAdmin::new(credential, admin_identities),
        ))
        .serve_with_incoming_shutdown(
            tls_incoming::incoming(
                admin_listener,
                acceptor,
                Admission::new(limits),
                refused,
                drain.clone(),
            ),
            drain_signal(drain.clone()),
        );
    spawn_server(drain, "admin API", admin_api);

    if let Some((listener, acceptor)) = webhook_listener {
        let settings = inject_settings(config, trust_domain.clone());
        let namespaces: Arc<dyn webhook::NamespaceAnnotations> = match kubernetes {
            Some(client) => {
                let namespaces = kube_namespaces::ClusterNamespaces::watch(client, drain);
                let synced = namespaces.clone();
                drain.spawn(async move {
                    synced.ready().await;
                    tracing::info!("webhook: namespaces listed; their weft.io/inject applies");
                });
                Arc::new(namespaces)
            }
            None => {
                tracing::info!(
                    "webhook: no Kubernetes API; only pods annotated weft.io/inject themselves are injected"
                );
                Arc::new(webhook::StaticNamespaces::default())
            }
        };
        let webhook = webhook::Webhook::new(
            move || InjectSettings {
                trust_anchors_pem: mesh.borrow().trust_anchors_pem.clone(),
                ..settings.clone()
            },
            namespaces,
        );
        let connections = tls_incoming::incoming(
            listener,
            acceptor,
            Admission::new(limits),
            webhook_refused,
            drain.clone(),
        );
        drain.spawn(webhook::serve(connections, webhook, drain.clone()));
    }

    // Not ready while discovery waits for the cluster's first listings.
    let listed = policy.clone();
    let admin_http = weft_telemetry::AdminServer::new(
        registry,
        Arc::new(move || !listed.state().cluster_pending),
        drain.clone(),
    );
    drain.spawn(admin_http.serve(metrics_listener));

    tracing::info!(
        trust_domain = %trust_domain,
        proxy_api = %running.proxy_api_addr,
        admin = %running.admin_addr,
        metrics = %running.metrics_addr,
        webhook = %running.webhook_addr.map_or("off".to_string(), |addr| addr.to_string()),
        "weft-control started"
    );
    Ok(running)
}

/// What the webhook injects, but for the trust bundle, which it reads at each review.
fn inject_settings(config: &Config, trust_domain: TrustDomain) -> InjectSettings {
    InjectSettings {
        proxy_image: config.proxy_image.clone(),
        init_image: config.init_image.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
        trust_domain,
        control_plane_addr: config.proxy_api_service.clone(),
        trust_anchors_pem: String::new(),
        identity: config.inject_join_token_secret.clone().map_or(
            IdentitySource::ServiceAccountToken,
            IdentitySource::JoinTokenSecret,
        ),
        sidecar_mode: config.sidecar_mode,
        trace_endpoint: config.inject_trace_endpoint.clone(),
        access_log: config.inject_access_log,
    }
}

/// The gRPC services the control plane implements: calls to any other are counted as
/// `unknown`.
const GRPC_SERVICES: [&str; 3] = [
    "weft.identity.v1.Identity",
    "weft.discovery.v1.Discovery",
    "weft.admin.v1.Admin",
];

/// Concurrent streams on one admin connection: weftctl makes a call or a watch at a time.
const ADMIN_MAX_STREAMS: u32 = 100;

/// A gRPC server with the listeners' protections: bounded streams and header lists, pings that
/// drop silent clients, and the HTTP/2 reset-flood bounds.
fn grpc_server(max_streams: u32) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(max_streams)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .tcp_nodelay(true)
}

fn load_pki(config: &Config) -> Result<pki::Pki, StartError> {
    let dir = config.pki_dir();
    if config.pki_dir.is_none() && pki::is_empty(&dir) {
        let trust_domain = config
            .trust_domain
            .clone()
            .unwrap_or_else(TrustDomain::cluster_local);
        let anchor_key = config
            .anchor_key_out
            .clone()
            .unwrap_or_else(|| dir.join(pki::TRUST_ANCHOR_KEY_FILE));
        pki::write_new(&dir, &trust_domain, &anchor_key)?;
        tracing::warn!(
            dir = %dir.display(),
            anchor_key = %anchor_key.display(),
            "generated a new trust anchor and issuer; for production, create them with `weftctl certs init` and pass --pki-dir"
        );
    }
    Ok(pki::load(&dir, config.trust_domain.as_ref())?)
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { flag, addr, source })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|e| StartError::Setup(e.to_string()))
}

/// Completes once draining starts; tonic then stops accepting and finishes in-flight calls,
/// which `main` bounds by `--shutdown-grace`.
async fn drain_signal(drain: Drain) {
    drain.signaled().await;
}

fn spawn_server<F>(drain: &Drain, name: &'static str, server: F)
where
    F: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    drain.spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, server = name, "server failed");
        }
    });
}

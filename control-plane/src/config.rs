//! `weft-control`'s flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_certs::TrustDomain;

/// The private and shared address ranges Kubernetes clusters take pod and service addresses
/// from (RFC 1918, RFC 6598, and IPv6 unique local addresses).
pub const DEFAULT_MESH_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// Where policy resources live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyBackend {
    /// The control plane's own file.
    Embedded,
    /// The Kubernetes API server.
    Kubernetes,
}

/// weft-control: signs proxy certificates and serves the admin API.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "weft-control", version, about)]
pub struct Config {
    /// Directory for the store, the admin credential and (by default) the PKI.
    #[arg(long, env = "WEFT_CONTROL_DATA_DIR", default_value = "weft-data")]
    pub data_dir: PathBuf,

    /// Directory holding trust-anchor.pem, issuer.pem and issuer-key.pem (as written by
    /// `weftctl certs init`). Defaults to <data-dir>/pki, where a new PKI is generated on first
    /// start if none exists.
    #[arg(long, env = "WEFT_CONTROL_PKI_DIR")]
    pub pki_dir: Option<PathBuf>,

    /// Where to write the trust anchor's key when a PKI is generated on first start [default:
    /// <pki-dir>/trust-anchor-key.pem]; elsewhere, `weftctl certs rotate-issuer` needs it given
    /// back with --anchor-key.
    #[arg(long, env = "WEFT_CONTROL_ANCHOR_KEY_OUT")]
    pub anchor_key_out: Option<PathBuf>,

    /// Trust domain; must match the issuer's. Used to generate a PKI on first start
    /// (default cluster.local).
    #[arg(long, env = "WEFT_CONTROL_TRUST_DOMAIN")]
    pub trust_domain: Option<TrustDomain>,

    /// DNS suffix of Service names: apps may name a Service `<svc>.<ns>`, `<svc>.<ns>.svc` or
    /// `<svc>.<ns>.svc.<cluster-domain>`, and nothing else.
    #[arg(
        long,
        env = "WEFT_CONTROL_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: crate::discovery::ClusterDomain,

    /// The networks (CIDRs) of the mesh's workloads and services, pushed to every proxy: a
    /// connection to an address inside them is never sent in plaintext, even while discovery
    /// cannot place it. The default covers the private ranges clusters use.
    #[arg(
        long,
        env = "WEFT_CONTROL_MESH_NETWORKS",
        value_delimiter = ',',
        default_value = DEFAULT_MESH_NETWORKS
    )]
    pub mesh_networks: Vec<ipnet::IpNet>,

    /// Discovery watch streams one proxy identity may hold open at once (all its replicas
    /// together); more are refused with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "WEFT_CONTROL_MAX_WATCHES_PER_IDENTITY",
        default_value_t = 10_000
    )]
    pub max_watches_per_identity: usize,

    /// Discovery watch streams open at once, all proxies together.
    #[arg(long, env = "WEFT_CONTROL_MAX_WATCHES", default_value_t = 100_000)]
    pub max_watches: usize,

    /// What anyone reaching the API ports can make the control plane hold.
    #[command(flatten)]
    pub limits: crate::limits::ListenerLimits,

    /// Address of the proxy API (Identity, Discovery), served over TLS.
    #[arg(
        long,
        env = "WEFT_CONTROL_PROXY_API_ADDR",
        default_value = "0.0.0.0:7200"
    )]
    pub proxy_api_addr: SocketAddr,

    /// Address of the admin API used by weftctl, served over TLS.
    #[arg(long, env = "WEFT_CONTROL_ADMIN_ADDR", default_value = "0.0.0.0:7201")]
    pub admin_addr: SocketAddr,

    /// Address of /metrics, /live and /ready.
    #[arg(
        long,
        env = "WEFT_CONTROL_METRICS_ADDR",
        default_value = "0.0.0.0:7290"
    )]
    pub metrics_addr: SocketAddr,

    /// Lifetime of the leaf certificates signed for proxies (e.g. 24h, 10s).
    #[arg(long, env = "WEFT_CONTROL_LEAF_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    pub leaf_lifetime: Duration,

    /// Lifetime of a join token when weftctl does not give one.
    #[arg(long, env = "WEFT_CONTROL_JOIN_TOKEN_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub join_token_ttl: Duration,

    /// File holding the admin bearer token. Defaults to <data-dir>/admin-token, created with a
    /// random token on first start.
    #[arg(long, env = "WEFT_CONTROL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Identities whose client certificates may use the admin API instead of the bearer token
    /// (repeatable) [default: spiffe://<trust-domain>/ns/weft/sa/weft-admin].
    #[arg(
        long = "admin-identity",
        env = "WEFT_CONTROL_ADMIN_IDENTITIES",
        value_delimiter = ','
    )]
    pub admin_identities: Vec<weft_certs::Identity>,

    /// Address of the sidecar-injection admission webhook (HTTPS, path /inject); served only
    /// when --webhook-cert and --webhook-key are given.
    #[arg(
        long,
        env = "WEFT_CONTROL_WEBHOOK_ADDR",
        default_value = "0.0.0.0:7243"
    )]
    pub webhook_addr: SocketAddr,

    /// The webhook's serving certificate chain (PEM), the one its MutatingWebhookConfiguration's
    /// caBundle vouches for.
    #[arg(long, env = "WEFT_CONTROL_WEBHOOK_CERT", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,

    /// The webhook certificate's private key (PEM).
    #[arg(long, env = "WEFT_CONTROL_WEBHOOK_KEY", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,

    /// A kubeconfig for the Kubernetes API (ServiceAccount tokens are reviewed with it, and the
    /// webhook reads namespaces' `weft.io/inject`); without it, the pod's own ServiceAccount
    /// when running in a cluster, else none.
    #[arg(long, env = "WEFT_CONTROL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Where policy resources live: `embedded` (a file under --data-dir) or `kubernetes` (the
    /// API server, as Weft's CRDs and the Gateway API's routes, so kubectl and weftctl edit
    /// the same policy; needs --kubeconfig or running in a cluster).
    #[arg(long, env = "WEFT_CONTROL_POLICY_STORE", value_enum, default_value_t = PolicyBackend::Embedded)]
    pub policy_store: PolicyBackend,

    /// The namespace of the Lease replicas elect the one that writes route status with (the
    /// control plane's own), with --policy-store kubernetes.
    #[arg(long, env = "WEFT_CONTROL_LEASE_NAMESPACE", default_value = "weft")]
    pub lease_namespace: String,

    /// How long a leader's Lease lasts unrenewed before another replica takes over.
    #[arg(long, env = "WEFT_CONTROL_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,

    /// The weft-proxy image the webhook injects.
    #[arg(long, env = "WEFT_CONTROL_PROXY_IMAGE", default_value = concat!("localhost/weft-proxy:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,

    /// The init container's image the webhook injects (weft-proxy with iptables and nft).
    #[arg(long, env = "WEFT_CONTROL_INIT_IMAGE", default_value = concat!("localhost/weft-init:", env!("CARGO_PKG_VERSION")))]
    pub init_image: String,

    /// The proxy API as injected pods reach it (the Service in front of this control plane).
    #[arg(
        long,
        env = "WEFT_CONTROL_PROXY_API_SERVICE",
        default_value = "weft-control.weft.svc.cluster.local:7200"
    )]
    pub proxy_api_service: String,

    /// Where injected proxies run unless a pod's config.weft.io/sidecar-mode says otherwise:
    /// native (Kubernetes ≥ 1.29) or classic.
    #[arg(long, env = "WEFT_CONTROL_SIDECAR_MODE", default_value = "native")]
    pub sidecar_mode: crate::inject::SidecarMode,

    /// Injected proxies prove their identity with the join token in this Secret (of their own
    /// namespace) instead of a projected ServiceAccount token.
    #[arg(long, env = "WEFT_CONTROL_INJECT_JOIN_TOKEN_SECRET")]
    pub inject_join_token_secret: Option<String>,

    /// How long in-flight calls may take to finish after SIGTERM.
    #[arg(long, env = "WEFT_CONTROL_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// The OTLP/gRPC collector injected proxies export spans to (http://collector:4317).
    #[arg(long, env = "WEFT_CONTROL_INJECT_TRACE_ENDPOINT", value_parser = weft_telemetry::parse_trace_endpoint)]
    pub inject_trace_endpoint: Option<String>,

    /// Injected proxies write a JSON access-log line per request on stdout.
    #[arg(long, env = "WEFT_CONTROL_INJECT_ACCESS_LOG")]
    pub inject_access_log: bool,

    /// How log lines are written: plain or json (one object per line, for log pipelines).
    #[arg(long, env = "WEFT_CONTROL_LOG_FORMAT", default_value = "plain")]
    pub log_format: weft_telemetry::LogFormat,

    /// The OTLP/gRPC collector (http://collector:4317) that spans of Certify and admin calls are
    /// exported to; unset: none are recorded.
    #[arg(long, env = "WEFT_CONTROL_TRACE_ENDPOINT", value_parser = weft_telemetry::parse_trace_endpoint)]
    pub trace_endpoint: Option<String>,

    /// The share (0 to 1) of calls without a caller's sampling decision that are traced. They
    /// are few (a proxy's certificate, an operator's command): all of them by default.
    #[arg(long, env = "WEFT_CONTROL_TRACE_SAMPLING", default_value_t = 1.0, value_parser = weft_telemetry::parse_trace_sampling)]
    pub trace_sampling: f64,
}

fn parse_lifetime(value: &str) -> Result<Duration, String> {
    let lifetime = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if lifetime < Duration::from_secs(5) {
        return Err("must be at least 5s".to_string());
    }
    Ok(lifetime)
}

impl Config {
    /// The PKI directory, explicit or default.
    pub fn pki_dir(&self) -> PathBuf {
        self.pki_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pki"))
    }
}

/// A Lease's duration: whole seconds, as the Lease holds it, at least 3 (renewed every third).
fn parse_lease_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration.as_secs() < 3 || duration.subsec_nanos() != 0 {
        return Err(format!("{value}: a lease lasts whole seconds, at least 3s"));
    }
    Ok(duration)
}

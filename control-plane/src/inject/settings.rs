//! What the injector needs to know of the mesh: the same for every pod it injects.

use weft_certs::TrustDomain;

/// How an injected proxy proves who it is to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A projected ServiceAccount token (audience `weft`), checked by the control plane with a
    /// TokenReview: the pod's identity is its ServiceAccount.
    ServiceAccountToken,
    /// A join token (`weftctl token create`) held in this Secret's `token` key: for control
    /// planes outside the cluster, which cannot review Kubernetes tokens.
    JoinTokenSecret(String),
}

/// Where the proxy runs in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29): started before the
    /// app and its init containers, stopped after them, so Jobs end on their own.
    Native,
    /// The first app container, holding the others back with a `postStart` hook until ready.
    Classic,
}

impl std::str::FromStr for SidecarMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(Self::Native),
            "classic" => Ok(Self::Classic),
            other => Err(format!("{other:?} is not native or classic")),
        }
    }
}

/// The mesh-wide part of injection.
#[derive(Debug, Clone)]
pub struct InjectSettings {
    /// The `weft-proxy` image.
    pub proxy_image: String,
    /// The init container's image: the proxy's plus the iptables and nft programs that
    /// `weft-proxy init` drives, kept out of the sidecar's image.
    pub init_image: String,
    /// Written to `weft.io/proxy-version`, so upgrades can tell old pods from new.
    pub proxy_version: String,
    /// The trust domain of the identities proxies ask for.
    pub trust_domain: TrustDomain,
    /// The control plane's proxy API, host:port.
    pub control_plane_addr: String,
    /// The trust anchors (PEM) proxies verify the control plane and their peers against.
    pub trust_anchors_pem: String,
    /// How proxies authenticate to the control plane.
    pub identity: IdentitySource,
    /// The sidecar mode of pods that do not choose one.
    pub sidecar_mode: SidecarMode,
    /// The OTLP/gRPC collector injected proxies export spans to (`WEFT_PROXY_TRACE_ENDPOINT`).
    pub trace_endpoint: Option<String>,
    /// Injected proxies write an access-log line per request (`WEFT_PROXY_ACCESS_LOG=json`).
    pub access_log: bool,
}

//! Every `WEFT_PROXY_*` variable, parsed and validated before any port is bound.
//!
//! Parsing reads through a lookup function rather than the process environment, so tests pass
//! their own variables and never mutate the environment.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_certs::{Identity, TrustAnchors};
use weft_telemetry::LogFormat;

use crate::destination::MeshNetworks;
use crate::destination::{DefaultAuthorization, Mode};
use crate::inbound::InboundLimits;
use crate::static_routes::StaticRoutes;

/// host:port of the control plane's proxy API.
pub const ENV_CONTROL_PLANE_ADDR: &str = "WEFT_PROXY_CONTROL_PLANE_ADDR";
/// The identity the control plane must present (default: spiffe://<td>/ns/weft/sa/weft-control).
pub const ENV_CONTROL_PLANE_IDENTITY: &str = "WEFT_PROXY_CONTROL_PLANE_IDENTITY";
/// PEM file of the trust anchor(s).
pub const ENV_TRUST_ANCHORS: &str = "WEFT_PROXY_TRUST_ANCHORS";
/// The trust anchor(s) themselves, as PEM: what the injector sets, since a pod cannot mount a
/// ConfigMap of the control plane's namespace. Exactly one of this and the file is set.
pub const ENV_TRUST_ANCHORS_PEM: &str = "WEFT_PROXY_TRUST_ANCHORS_PEM";
/// This workload's SPIFFE identity.
pub const ENV_IDENTITY: &str = "WEFT_PROXY_IDENTITY";
/// File holding the token that proves the identity on first contact.
pub const ENV_TOKEN_PATH: &str = "WEFT_PROXY_TOKEN_PATH";
/// Where mTLS from other proxies is accepted.
pub const ENV_INBOUND_ADDR: &str = "WEFT_PROXY_INBOUND_ADDR";
/// Where the local app's outgoing traffic is accepted.
pub const ENV_OUTBOUND_ADDR: &str = "WEFT_PROXY_OUTBOUND_ADDR";
/// Where /metrics, /ready, /live (and /shutdown) are served.
pub const ENV_ADMIN_ADDR: &str = "WEFT_PROXY_ADMIN_ADDR";
/// Where the tap API (`weftctl tap`, `top`, `proxy-config`) is served over mTLS; `off`: nowhere.
pub const ENV_TAP_ADDR: &str = "WEFT_PROXY_TAP_ADDR";
/// Identities besides the control plane's that may call the tap API (comma-separated)
/// [default: the trust domain's `weft/weft-admin`, which `weftctl certs admin` issues].
pub const ENV_TAP_IDENTITIES: &str = "WEFT_PROXY_TAP_IDENTITIES";
/// The pod the proxy runs in (the injector sets it from the downward API), reported to the
/// control plane so operators can select it by name.
pub const ENV_POD_NAME: &str = "WEFT_POD_NAME";
/// The local app's port, that inbound traffic is forwarded to.
pub const ENV_APP_PORT: &str = "WEFT_PROXY_APP_PORT";
/// YAML file of static routes (authority → endpoint and identity).
pub const ENV_STATIC_ROUTES: &str = "WEFT_PROXY_STATIC_ROUTES";
/// Runtime worker threads.
pub const ENV_WORKERS: &str = "WEFT_PROXY_WORKERS";
/// How long in-flight requests may take to finish after SIGTERM.
pub const ENV_SHUTDOWN_GRACE: &str = "WEFT_PROXY_SHUTDOWN_GRACE";
/// Enables POST /shutdown on the admin port.
pub const ENV_SHUTDOWN_ENDPOINT: &str = "WEFT_PROXY_SHUTDOWN_ENDPOINT";
/// How long to wait for an app's first bytes before treating a connection as opaque TCP.
pub const ENV_DETECT_TIMEOUT: &str = "WEFT_PROXY_DETECT_TIMEOUT";
/// Ports whose traffic is opaque TCP: no detection, outbound or inbound.
pub const ENV_OPAQUE_PORTS: &str = "WEFT_PROXY_OPAQUE_PORTS";

/// TLS handshakes in progress at once on the inbound port; more connections are closed.
pub const ENV_INBOUND_MAX_HANDSHAKES: &str = "WEFT_PROXY_INBOUND_MAX_HANDSHAKES";
/// Connections one peer identity may hold at once on the inbound port.
pub const ENV_INBOUND_MAX_CONNECTIONS_PER_IDENTITY: &str =
    "WEFT_PROXY_INBOUND_MAX_CONNECTIONS_PER_IDENTITY";
/// An inbound HTTP connection on which no request started for this long is closed.
pub const ENV_INBOUND_IDLE_TIMEOUT: &str = "WEFT_PROXY_INBOUND_IDLE_TIMEOUT";
/// Every inbound connection ends after this long (gracefully for HTTP).
pub const ENV_INBOUND_MAX_CONNECTION_AGE: &str = "WEFT_PROXY_INBOUND_MAX_CONNECTION_AGE";
/// Destinations whose discovery watch is kept at most (the least recently used goes first).
pub const ENV_MAX_DESTINATIONS: &str = "WEFT_PROXY_MAX_DESTINATIONS";
/// Endpoints one destination may have; a discovery snapshot with more is rejected.
pub const ENV_MAX_ENDPOINTS: &str = "WEFT_PROXY_MAX_ENDPOINTS";
/// What inbound ports allow where no AuthorizationPolicy or pushed default says: `deny`,
/// `all-authenticated` (the default), `cluster-authenticated`, `all-unauthenticated`, `audit`
/// (the `config.weft.io/default-inbound-policy` annotation).
pub const ENV_DEFAULT_INBOUND_POLICY: &str = "WEFT_PROXY_DEFAULT_INBOUND_POLICY";
/// `strict` (mTLS only) or `permissive` (plaintext clients too) where the control plane does
/// not say; unset: permissive only under `all-unauthenticated` and `audit`, or on a port an
/// AuthorizationPolicy opens to unauthenticated clients.
pub const ENV_INBOUND_MODE: &str = "WEFT_PROXY_INBOUND_MODE";
/// CIDRs of the mesh's networks, until the control plane pushes its own.
pub const ENV_MESH_NETWORKS: &str = "WEFT_PROXY_MESH_NETWORKS";

/// The largest request body kept for retries and mirroring.
pub const ENV_MAX_REPLAY_BYTES: &str = "WEFT_PROXY_MAX_REPLAY_BYTES";
/// How the proxy's own log lines are written: `plain` (default) or `json`.
pub const ENV_LOG_FORMAT: &str = "WEFT_PROXY_LOG_FORMAT";
/// The OTLP/gRPC collector spans are exported to (`http://collector:4317`); unset: no traces.
pub const ENV_TRACE_ENDPOINT: &str = "WEFT_PROXY_TRACE_ENDPOINT";
/// The share (0 to 1) of requests arriving without a sampling decision that are traced.
pub const ENV_TRACE_SAMPLING: &str = "WEFT_PROXY_TRACE_SAMPLING";
/// `json`: one access-log line per request on stdout; `off` (default).
pub const ENV_ACCESS_LOG: &str = "WEFT_PROXY_ACCESS_LOG";
/// Requests traced when the caller has not decided, by default: Istio's 1 %, enough to see
/// every path of a busy service without paying for every request.
pub const DEFAULT_TRACE_SAMPLING: f64 = 0.01;
/// Request bodies up to this size are kept for a retry or a mirror, by default: enough for the
/// small JSON and gRPC messages retries are for, small enough to hold many in flight.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// Server-first and common non-HTTP protocols: SMTP, MySQL, Galera, PostgreSQL, Redis,
/// Elasticsearch transport, memcached (the same defaults as Linkerd).
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// A bad variable: its name and what is wrong, printed as one line before exiting 64.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// The proxy's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// host:port of the control plane.
    pub control_plane_addr: String,
    /// The identity the control plane must present.
    pub control_plane_identity: Identity,
    /// The roots every peer must chain to.
    pub trust_anchors: TrustAnchors,
    /// This workload's identity.
    pub identity: Identity,
    /// File holding the join token.
    pub token_path: PathBuf,
    /// Inbound listener address.
    pub inbound_addr: SocketAddr,
    /// Outbound listener address.
    pub outbound_addr: SocketAddr,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// Tap API listener address; `None`: not served.
    pub tap_addr: Option<SocketAddr>,
    /// Who may call the tap API (the control plane always may).
    pub tap_identities: Vec<Identity>,
    /// The pod the proxy runs in, when known.
    pub pod_name: Option<String>,
    /// The local app's port.
    pub app_port: Option<u16>,
    /// Destinations known without discovery.
    pub static_routes: StaticRoutes,
    /// Runtime worker threads.
    pub workers: usize,
    /// Drain deadline.
    pub shutdown_grace: Duration,
    /// Whether POST /shutdown is served.
    pub shutdown_endpoint: bool,
    /// How the proxy's log lines are written.
    pub log_format: LogFormat,
    /// Where spans are exported; `None`: not traced.
    pub trace_endpoint: Option<String>,
    /// The share of undecided requests traced.
    pub trace_sampling: f64,
    /// Write an access-log line per request.
    pub access_log: bool,
    /// Protocol detection deadline.
    pub detect_timeout: Duration,
    /// Ports of opaque TCP.
    pub opaque_ports: BTreeSet<u16>,
    /// Request bodies up to this size may be retried.
    pub max_replay_bytes: usize,
    /// The mesh's networks before the control plane says; `None`: every address may be in the
    /// mesh, so none is sent in plaintext without discovery's word.
    pub mesh_networks: Option<MeshNetworks>,
    /// Destinations watched at most.
    pub max_destinations: usize,
    /// Endpoints of one destination at most.
    pub max_endpoints: usize,
    /// What one peer can make the inbound side hold.
    pub inbound_limits: InboundLimits,
    /// Inbound authorization where nothing pushed says.
    pub default_inbound_policy: DefaultAuthorization,
    /// Inbound mode where nothing pushed says.
    pub inbound_mode: Option<Mode>,
}

impl Config {
    /// Reads and validates the configuration from `env`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &'static str| env(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| {
            var(name).ok_or_else(|| ConfigError {
                var: name,
                reason: "must be set".to_string(),
            })
        };

        let identity: Identity = parse(ENV_IDENTITY, &required(ENV_IDENTITY)?)?;
        let control_plane_identity = match var(ENV_CONTROL_PLANE_IDENTITY) {
            Some(value) => parse(ENV_CONTROL_PLANE_IDENTITY, &value)?,
            None => Identity::new(identity.trust_domain().clone(), "weft", "weft-control")
                .map_err(|e| ConfigError {
                    var: ENV_IDENTITY,
                    reason: e.to_string(),
                })?,
        };
        let trust_anchors = match (var(ENV_TRUST_ANCHORS), var(ENV_TRUST_ANCHORS_PEM)) {
            (Some(path), None) => {
                let pem = std::fs::read(&path).map_err(|e| ConfigError {
                    var: ENV_TRUST_ANCHORS,
                    reason: format!("cannot read {path}: {e}"),
                })?;
                TrustAnchors::from_pem(&pem).map_err(|e| ConfigError {
                    var: ENV_TRUST_ANCHORS,
                    reason: format!("{path}: {e}"),
                })?
            }
            (None, Some(pem)) => {
                TrustAnchors::from_pem(pem.as_bytes()).map_err(|e| ConfigError {
                    var: ENV_TRUST_ANCHORS_PEM,
                    reason: e.to_string(),
                })?
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    var: ENV_TRUST_ANCHORS_PEM,
                    reason: format!("set it or {ENV_TRUST_ANCHORS}, not both"),
                });
            }
            (None, None) => {
                return Err(ConfigError {
                    var: ENV_TRUST_ANCHORS,
                    reason: format!("must be set (or {ENV_TRUST_ANCHORS_PEM})"),
                });
            }
        };
        let token_path = PathBuf::from(required(ENV_TOKEN_PATH)?);
        std::fs::metadata(&token_path).map_err(|e| ConfigError {
            var: ENV_TOKEN_PATH,
            reason: format!("cannot read {}: {e}", token_path.display()),
        })?;
        let control_plane_addr = required(ENV_CONTROL_PLANE_ADDR)?;
        if !control_plane_addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(ConfigError {
                var: ENV_CONTROL_PLANE_ADDR,
                reason: format!("{control_plane_addr:?} is not host:port"),
            });
        }
        let static_routes = match var(ENV_STATIC_ROUTES) {
            Some(path) => {
                StaticRoutes::load(std::path::Path::new(&path)).map_err(|e| ConfigError {
                    var: ENV_STATIC_ROUTES,
                    reason: e.to_string(),
                })?
            }
            None => StaticRoutes::default(),
        };
        let workers = var(ENV_WORKERS).map_or(Ok(1), |v| parse::<usize>(ENV_WORKERS, &v))?;
        if workers == 0 {
            return Err(ConfigError {
                var: ENV_WORKERS,
                reason: "must be at least 1".to_string(),
            });
        }
        let tap_identities = match var(ENV_TAP_IDENTITIES) {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| parse(ENV_TAP_IDENTITIES, item))
                .collect::<Result<_, _>>()?,
            None => vec![
                Identity::new(identity.trust_domain().clone(), "weft", "weft-admin").map_err(
                    |e| ConfigError {
                        var: ENV_IDENTITY,
                        reason: e.to_string(),
                    },
                )?,
            ],
        };
        Ok(Self {
            control_plane_addr,
            control_plane_identity,
            trust_anchors,
            identity,
            token_path,
            inbound_addr: addr(&var, ENV_INBOUND_ADDR, "0.0.0.0:7143")?,
            outbound_addr: addr(&var, ENV_OUTBOUND_ADDR, "127.0.0.1:7140")?,
            admin_addr: addr(&var, ENV_ADMIN_ADDR, "0.0.0.0:7191")?,
            tap_addr: match var(ENV_TAP_ADDR) {
                Some(value) if value.trim() == "off" => None,
                _ => Some(addr(&var, ENV_TAP_ADDR, "0.0.0.0:7190")?),
            },
            tap_identities,
            pod_name: var(ENV_POD_NAME).map(|name| name.trim().to_string()),
            app_port: var(ENV_APP_PORT)
                .map(|v| parse(ENV_APP_PORT, &v))
                .transpose()?,
            static_routes,
            workers,
            shutdown_grace: duration(&var, ENV_SHUTDOWN_GRACE, "10s")?,
            shutdown_endpoint: var(ENV_SHUTDOWN_ENDPOINT)
                .map_or(Ok(false), |v| parse(ENV_SHUTDOWN_ENDPOINT, &v))?,
            log_format: var(ENV_LOG_FORMAT)
                .map_or(Ok(LogFormat::default()), |v| parse(ENV_LOG_FORMAT, &v))?,
            trace_endpoint: var(ENV_TRACE_ENDPOINT)
                .map(|v| trace_endpoint(&v))
                .transpose()?,
            trace_sampling: var(ENV_TRACE_SAMPLING)
                .map_or(Ok(DEFAULT_TRACE_SAMPLING), |v| sampling(&v))?,
            access_log: var(ENV_ACCESS_LOG).map_or(Ok(false), |v| access_log(&v))?,
            detect_timeout: duration(&var, ENV_DETECT_TIMEOUT, "1s")?,
            max_replay_bytes: var(ENV_MAX_REPLAY_BYTES)
                .map_or(Ok(DEFAULT_MAX_REPLAY_BYTES), |v| {
                    parse(ENV_MAX_REPLAY_BYTES, &v)
                })?,
            opaque_ports: ports(
                &var(ENV_OPAQUE_PORTS).unwrap_or_else(|| DEFAULT_OPAQUE_PORTS.to_string()),
            )?,
            inbound_limits: inbound_limits(&var)?,
            default_inbound_policy: var(ENV_DEFAULT_INBOUND_POLICY)
                .map_or(Ok(DefaultAuthorization::AllAuthenticated), |v| {
                    parse(ENV_DEFAULT_INBOUND_POLICY, &v)
                })?,
            inbound_mode: var(ENV_INBOUND_MODE)
                .map(|v| parse(ENV_INBOUND_MODE, &v))
                .transpose()?,
            max_destinations: at_least_one(
                &var,
                ENV_MAX_DESTINATIONS,
                crate::destination::discovery::DEFAULT_MAX_WATCHES,
            )?,
            max_endpoints: at_least_one(
                &var,
                ENV_MAX_ENDPOINTS,
                crate::destination::discovery::DEFAULT_MAX_ENDPOINTS,
            )?,
            mesh_networks: var(ENV_MESH_NETWORKS)
                .map(|list| {
                    MeshNetworks::parse(list.split(',')).map_err(|e| ConfigError {
                        var: ENV_MESH_NETWORKS,
                        reason: e.to_string(),
                    })
                })
                .transpose()?,
        })
    }
}

impl Config {
    /// How requests are observed: traced when an endpoint is set, logged when asked, and shown
    /// to `taps`.
    pub fn observer(&self, taps: crate::tap::Taps) -> crate::observe::Observer {
        crate::observe::Observer {
            sampling: self.trace_endpoint.as_ref().map(|_| self.trace_sampling),
            access_log: self.access_log,
            taps,
        }
    }
}

fn trace_endpoint(value: &str) -> Result<String, ConfigError> {
    weft_telemetry::parse_trace_endpoint(value).map_err(|reason| ConfigError {
        var: ENV_TRACE_ENDPOINT,
        reason,
    })
}

fn sampling(value: &str) -> Result<f64, ConfigError> {
    weft_telemetry::parse_trace_sampling(value).map_err(|reason| ConfigError {
        var: ENV_TRACE_SAMPLING,
        reason,
    })
}

fn access_log(value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "json" => Ok(true),
        "off" | "" => Ok(false),
        _ => Err(ConfigError {
            var: ENV_ACCESS_LOG,
            reason: format!("{value:?}: json or off"),
        }),
    }
}

/// A count of at least 1, `default` when unset.
fn at_least_one(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    default: usize,
) -> Result<usize, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(value) => match parse::<usize>(name, &value)? {
            0 => Err(ConfigError {
                var: name,
                reason: "must be at least 1".to_string(),
            }),
            n => Ok(n),
        },
    }
}

fn inbound_limits(
    var: &impl Fn(&'static str) -> Option<String>,
) -> Result<InboundLimits, ConfigError> {
    let defaults = InboundLimits::default();
    let count = |name: &'static str, default: usize| at_least_one(var, name, default);
    let positive = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        let value = match var(name) {
            None => return Ok(default),
            Some(value) => value,
        };
        match humantime::parse_duration(value.trim()) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(ConfigError {
                var: name,
                reason: "must be longer than 0s".to_string(),
            }),
            Err(e) => Err(ConfigError {
                var: name,
                reason: format!("{value:?}: {e}"),
            }),
        }
    };
    Ok(InboundLimits {
        max_handshakes: count(ENV_INBOUND_MAX_HANDSHAKES, defaults.max_handshakes)?,
        max_connections_per_identity: count(
            ENV_INBOUND_MAX_CONNECTIONS_PER_IDENTITY,
            defaults.max_connections_per_identity,
        )?,
        idle_timeout: positive(ENV_INBOUND_IDLE_TIMEOUT, defaults.idle_timeout)?,
        max_connection_age: positive(ENV_INBOUND_MAX_CONNECTION_AGE, defaults.max_connection_age)?,
    })
}

fn parse<T>(var: &'static str, value: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| ConfigError {
        var,
        reason: format!("{value:?}: {e}"),
    })
}

fn ports(list: &str) -> Result<BTreeSet<u16>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|port| !port.is_empty())
        .map(|port| parse(ENV_OPAQUE_PORTS, port))
        .collect()
}

fn addr(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    parse(name, &var(name).unwrap_or_else(|| default.to_string()))
}

fn duration(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<Duration, ConfigError> {
    let value = var(name).unwrap_or_else(|| default.to_string());
    humantime::parse_duration(value.trim()).map_err(|e| ConfigError {
        var: name,
        reason: format!("{value:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::tap::Taps;

    struct Env {
        dir: tempfile::TempDir,
        vars: HashMap<&'static str, String>,
    }

    impl Env {
        fn valid() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let td = weft_certs::TrustDomain::cluster_local();
            let anchor =
                weft_certs::TrustAnchor::generate(&td, std::time::SystemTime::now()).unwrap();
            std::fs::write(dir.path().join("anchor.pem"), anchor.certificate_pem()).unwrap();
            std::fs::write(dir.path().join("token"), "weftjt_x").unwrap();
            let mut vars = HashMap::new();
            vars.insert(
                ENV_IDENTITY,
                "spiffe://cluster.local/ns/shop/sa/web".to_string(),
            );
            vars.insert(
                ENV_TRUST_ANCHORS,
                dir.path().join("anchor.pem").display().to_string(),
            );
            vars.insert(
                ENV_TOKEN_PATH,
                dir.path().join("token").display().to_string(),
            );
            vars.insert(ENV_CONTROL_PLANE_ADDR, "127.0.0.1:7200".to_string());
            Self { dir, vars }
        }

        fn with(mut self, name: &'static str, value: &str) -> Self {
            self.vars.insert(name, value.to_string());
            self
        }

        fn without(mut self, name: &'static str) -> Self {
            self.vars.remove(name);
            self
        }

        fn parse(&self) -> Result<Config, ConfigError> {
            Config::from_env(|name| self.vars.get(name).cloned())
        }
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = Env::valid().parse().unwrap();
        assert_eq!(config.inbound_addr.port(), 7143);
        assert_eq!(config.outbound_addr.port(), 7140);
        assert_eq!(config.admin_addr.port(), 7191);
        assert_eq!(config.workers, 1);
        assert_eq!(
            config.control_plane_identity.to_string(),
            "spiffe://cluster.local/ns/weft/sa/weft-control"
        );
        assert!(!config.shutdown_endpoint);
        assert!(config.opaque_ports.contains(&5432) && !config.opaque_ports.contains(&80));
        let blank = Env::valid().with(ENV_OPAQUE_PORTS, " ").parse().unwrap();
        assert!(
            blank.opaque_ports.contains(&3306),
            "blank means the default list"
        );
    }

    #[test]
    fn each_bad_variable_is_named() {
        let env = Env::valid();
        let missing_anchor = env.dir.path().join("nope.pem").display().to_string();
        let cases = [
            (
                Env::valid().without(ENV_IDENTITY),
                ENV_IDENTITY,
                "must be set",
            ),
            (
                Env::valid().with(ENV_IDENTITY, "spiffe://cluster.local/web"),
                ENV_IDENTITY,
                "must have the form",
            ),
            (
                Env::valid().with(ENV_TRUST_ANCHORS, &missing_anchor),
                ENV_TRUST_ANCHORS,
                "cannot read",
            ),
            (
                Env::valid().with(ENV_INBOUND_ADDR, "7143"),
                ENV_INBOUND_ADDR,
                "invalid socket address",
            ),
            (
                Env::valid().with(ENV_CONTROL_PLANE_ADDR, "control"),
                ENV_CONTROL_PLANE_ADDR,
                "not host:port",
            ),
            (
                Env::valid().with(ENV_WORKERS, "0"),
                ENV_WORKERS,
                "at least 1",
            ),
            (
                Env::valid().with(ENV_SHUTDOWN_GRACE, "soon"),
                ENV_SHUTDOWN_GRACE,
                "soon",
            ),
            (
                Env::valid().with(ENV_APP_PORT, "70000"),
                ENV_APP_PORT,
                "70000",
            ),
            (
                Env::valid().with(ENV_OPAQUE_PORTS, "5432,x"),
                ENV_OPAQUE_PORTS,
                "\"x\"",
            ),
            (
                Env::valid().with(ENV_MESH_NETWORKS, "10.0.0.0/8,10.0.0.0/40"),
                ENV_MESH_NETWORKS,
                "\"10.0.0.0/40\" is not a CIDR",
            ),
            (
                Env::valid().with(ENV_TRACE_ENDPOINT, "collector:4317"),
                ENV_TRACE_ENDPOINT,
                "http://otel-collector:4317",
            ),
            (
                Env::valid().with(ENV_TRACE_SAMPLING, "5%"),
                ENV_TRACE_SAMPLING,
                "from 0 to 1",
            ),
            (
                Env::valid().with(ENV_TRACE_SAMPLING, "1.5"),
                ENV_TRACE_SAMPLING,
                "from 0 to 1",
            ),
            (
                Env::valid().with(ENV_ACCESS_LOG, "yes"),
                ENV_ACCESS_LOG,
                "json or off",
            ),
        ];
        for (env, var, reason) in cases {
            let err = env.parse().unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(reason), "{err}");
        }
        drop(env);
    }

    #[test]
    fn the_tap_api_is_served_to_admins_unless_turned_off() {
        let config = Env::valid().parse().unwrap();
        assert_eq!(config.tap_addr, Some("0.0.0.0:7190".parse().unwrap()));
        assert_eq!(
            config.tap_identities[0].to_string(),
            "spiffe://cluster.local/ns/weft/sa/weft-admin"
        );
        let off = Env::valid().with(ENV_TAP_ADDR, "off").parse().unwrap();
        assert_eq!(off.tap_addr, None);
        let bad = Env::valid()
            .with(ENV_TAP_IDENTITIES, "spiffe://cluster.local/ns/a/sa/b, nope")
            .parse()
            .unwrap_err();
        assert_eq!(bad.var, ENV_TAP_IDENTITIES);
    }

    #[test]
    fn observation_is_off_unless_configured() {
        let config = Env::valid().parse().unwrap();
        let observer = config.observer(Taps::unregistered());
        assert!(observer.sampling.is_none() && !observer.access_log);
        // A sampling ratio alone (the injector always passes the annotation's) traces nothing.
        let ratio_only = Env::valid().with(ENV_TRACE_SAMPLING, "1").parse().unwrap();
        assert_eq!(ratio_only.observer(Taps::unregistered()).sampling, None);
        let traced = Env::valid()
            .with(ENV_TRACE_ENDPOINT, "http://127.0.0.1:4317")
            .parse()
            .unwrap();
        assert_eq!(
            traced.observer(Taps::unregistered()).sampling,
            Some(DEFAULT_TRACE_SAMPLING)
        );
        let logged = Env::valid().with(ENV_ACCESS_LOG, "json").parse().unwrap();
        assert!(logged.observer(Taps::unregistered()).access_log);
    }

    #[test]
    fn a_file_that_is_not_pem_is_refused() {
        let env = Env::valid();
        let token = env.vars[ENV_TOKEN_PATH].clone();
        let err = env.with(ENV_TRUST_ANCHORS, &token).parse().unwrap_err();
        assert_eq!(err.var, ENV_TRUST_ANCHORS);
    }

    #[test]
    fn trust_anchors_inline_or_from_a_file_but_not_both() {
        let env = Env::valid();
        let pem = std::fs::read_to_string(&env.vars[ENV_TRUST_ANCHORS]).unwrap();
        let inline = Env::valid()
            .without(ENV_TRUST_ANCHORS)
            .with(ENV_TRUST_ANCHORS_PEM, &pem);
        let config = inline.parse().unwrap();
        assert_eq!(
            config.trust_anchors.trust_domain().map(ToString::to_string),
            Some("cluster.local".to_string())
        );

        let both = env.with(ENV_TRUST_ANCHORS_PEM, &pem).parse().unwrap_err();
        assert_eq!(both.var, ENV_TRUST_ANCHORS_PEM);
        assert!(both.to_string().contains("not both"), "{both}");
        let garbage = Env::valid()
            .without(ENV_TRUST_ANCHORS)
            .with(ENV_TRUST_ANCHORS_PEM, "not a certificate")
            .parse()
            .unwrap_err();
        assert_eq!(garbage.var, ENV_TRUST_ANCHORS_PEM);
        let neither = Env::valid().without(ENV_TRUST_ANCHORS).parse().unwrap_err();
        assert_eq!(neither.var, ENV_TRUST_ANCHORS);
        assert!(
            neither.to_string().contains(ENV_TRUST_ANCHORS_PEM),
            "{neither}"
        );
    }
}

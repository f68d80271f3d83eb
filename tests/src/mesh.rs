//! A control plane and proxies, as real processes on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use crate::client::http_get;
use crate::process::{Proc, bin, run};
use crate::{eventually, free_port};

/// How long a process may take to become ready.
pub const STARTUP: Duration = Duration::from_secs(30);

/// A running `weft-control` with its own data dir.
#[derive(Debug)]
pub struct ControlPlane {
    // Dropped first, so its log is printed before the directory holding it goes.
    pub proc: Proc,
    pub dir: Arc<TempDir>,
    pub proxy_api: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub leaf_lifetime: String,
    /// Flags beyond the harness's own, kept for restarts.
    pub args: Vec<String>,
    /// While killed: its ports, held so `restart` finds them free (see [`hold_port`]).
    held: Vec<std::os::fd::OwnedFd>,
}

impl ControlPlane {
    /// Starts a control plane signing leaves valid for `leaf_lifetime` (e.g. "24h", "10s").
    pub async fn start(leaf_lifetime: &str) -> Self {
        Self::start_with(leaf_lifetime, &[]).await
    }

    /// Like [`ControlPlane::start`], with more flags.
    pub async fn start_with(leaf_lifetime: &str, args: &[&str]) -> Self {
        Self::start_serving_proxies_on(leaf_lifetime, args, [127, 0, 0, 1].into()).await
    }

    /// Like [`ControlPlane::start_with`], the proxy API on `ip` (proxies in other network
    /// namespaces reach it there; the admin API stays on loopback).
    pub async fn start_serving_proxies_on(
        leaf_lifetime: &str,
        args: &[&str],
        ip: std::net::IpAddr,
    ) -> Self {
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        let dir = Arc::new(tempfile::tempdir().unwrap());
        for attempt in 1..=PORT_RACE_ATTEMPTS {
            let proxy_api = SocketAddr::new(ip, free_port());
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let proc = Self::spawn(&dir, proxy_api, admin, metrics, leaf_lifetime, &args);
            let mut cp = Self {
                dir: dir.clone(),
                proxy_api,
                admin,
                metrics,
                leaf_lifetime: leaf_lifetime.to_string(),
                args: args.clone(),
                proc,
                held: Vec::new(),
            };
            let ready = move || control_plane_ready(metrics, admin);
            match ready_or_exited(&mut cp.proc, "weft-control to be ready", ready).await {
                Startup::Ready => return cp,
                Startup::Exited if attempt < PORT_RACE_ATTEMPTS && lost_a_port_race(&cp.proc) => {}
                Startup::Exited => panic!("weft-control exited before it was ready"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(
        dir: &TempDir,
        proxy_api: SocketAddr,
        admin: SocketAddr,
        metrics: SocketAddr,
        lifetime: &str,
        args: &[String],
    ) -> Proc {
        let mut command = Command::new(bin("weft-control"));
        command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--proxy-api-addr")
            .arg(proxy_api.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .arg("--leaf-lifetime")
            .arg(lifetime)
            .args(args)
            .env("WEFT_CONTROL_LOG", "info");
        Proc::spawn("weft-control", command, dir.path().join("weft-control.log"))
    }

    pub async fn wait_ready(&self) {
        let (metrics, admin) = (self.metrics, self.admin);
        eventually("weft-control to be ready", STARTUP, || async move {
            control_plane_ready(metrics, admin).await.then_some(())
        })
        .await;
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The trust anchor proxies are given.
    pub fn trust_anchor(&self) -> PathBuf {
        self.data_dir().join("pki").join("trust-anchor.pem")
    }

    /// `weftctl`, pointed at this control plane.
    pub fn weftctl_command(&self) -> Command {
        let mut command = Command::new(bin("weftctl"));
        command
            .arg("--server")
            .arg(self.admin.to_string())
            .arg("--data-dir")
            .arg(self.data_dir());
        command
    }

    /// Runs `weftctl` against this control plane.
    pub fn weftctl(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        let mut command = self.weftctl_command();
        command.args(args);
        run(command)
    }

    /// Runs `weftctl apply -f -` with `yaml` on stdin.
    pub fn apply(&self, yaml: &str) -> (std::process::ExitStatus, String, String) {
        use std::io::Write;
        let mut command = self.weftctl_command();
        command
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("spawn weftctl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Applies `yaml`, which must succeed.
    pub fn apply_ok(&self, yaml: &str) {
        let (status, stdout, stderr) = self.apply(yaml);
        assert!(status.success(), "weftctl apply failed: {stderr}\n{stdout}");
    }

    /// Creates a join token for `identity` and writes it to a file; returns the file.
    pub fn token_file(&self, identity: &str) -> PathBuf {
        let (status, stdout, stderr) = self.weftctl(&["token", "create", "--identity", identity]);
        assert!(status.success(), "weftctl token create failed: {stderr}");
        let path = self.dir.path().join(format!("token-{}", free_port()));
        std::fs::write(&path, stdout.trim()).unwrap();
        path
    }

    /// A certificate for `identity`, obtained through Certify with a fresh join token: what a
    /// proxy holds, for tests that play a (possibly misbehaving) peer themselves.
    pub async fn credential(&self, identity: &str) -> Arc<weft_certs::CertStore> {
        let (chain, key) = self.credential_pem(identity).await;
        let certs = weft_certs::CertStore::new();
        certs.set(weft_certs::Credential::from_pem(chain.as_bytes(), key.as_bytes()).unwrap());
        certs
    }

    /// Like [`ControlPlane::credential`], as PEM (chain, key): for peers configured by file,
    /// such as the benchmark's Envoys.
    pub async fn credential_pem(&self, identity: &str) -> (String, String) {
        use weft_api::identity::{CertifyRequest, identity_client::IdentityClient};
        let anchors = self.anchors();
        let tls = weft_certs::client_config(
            &anchors,
            weft_certs::CertStore::new(),
            &[weft_certs::ALPN_H2],
        )
        .unwrap();
        let target = weft_api::client::ControlPlaneTarget {
            addr: self.proxy_api.to_string(),
            server_name: "weft-control.weft.serviceaccount.identity.cluster.local".to_string(),
            tls: Arc::new(tls),
        };
        let id: weft_certs::Identity = identity.parse().unwrap();
        let key = weft_certs::LeafKey::generate().unwrap();
        let token = std::fs::read_to_string(self.token_file(identity)).unwrap();
        let request = CertifyRequest {
            identity: identity.to_string(),
            csr: key.csr(&id).unwrap().to_vec(),
            token,
        };
        let chain = IdentityClient::new(target.channel().await.unwrap())
            .certify(request)
            .await
            .unwrap()
            .into_inner()
            .chain;
        let chain: String = chain
            .iter()
            .map(|der| weft_certs::pem_encode("CERTIFICATE", der))
            .collect();
        (chain, key.private_key_pem())
    }

    /// The trust anchors, parsed.
    pub fn anchors(&self) -> weft_certs::TrustAnchors {
        weft_certs::TrustAnchors::from_pem(&std::fs::read(self.trust_anchor()).unwrap()).unwrap()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.proc.kill9();
        self.held = [self.proxy_api, self.admin, self.metrics]
            .into_iter()
            .filter_map(hold_port)
            .collect();
    }

    /// Starts the control plane again, on the same ports and data dir.
    pub async fn restart(&mut self) {
        self.proc.kill9();
        self.held.clear();
        self.proc = Self::spawn(
            &self.dir,
            self.proxy_api,
            self.admin,
            self.metrics,
            &self.leaf_lifetime,
            &self.args,
        );
        self.wait_ready().await;
    }
}

/// Binds `addr` without listening, until the returned socket is dropped. The ports of a killed
/// control plane must stay free for its restart, yet any process's outgoing connection (or
/// `free_port`) could otherwise take one in the meantime; a bound socket keeps them out, while
/// connecting to it is still refused, as to a control plane that is down.
fn hold_port(addr: SocketAddr) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    // The killed process's connections may linger in TIME_WAIT on these ports.
    setsockopt(&fd, sockopt::ReuseAddr, &true).ok()?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(v4)).ok()?;
    Some(fd)
}

/// One static route of a client proxy.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub authority: String,
    pub address: SocketAddr,
    pub identity: String,
    pub opaque: bool,
}

/// A running `weft-proxy`.
#[derive(Debug)]
pub struct Proxy {
    pub identity: String,
    /// The join token file the proxy was given.
    pub token: PathBuf,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// The tap API.
    pub tap: SocketAddr,
    // Dropped first, so its log (in the control plane's directory) is printed on a failure even
    // when the control plane went before it.
    pub proc: Proc,
    _dir: Arc<TempDir>,
}

/// How to start a proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxySpec {
    pub identity: String,
    pub app_port: Option<u16>,
    pub routes: Vec<RouteSpec>,
    pub env: Vec<(String, String)>,
    /// A join token file made beforehand; by default one is created when the proxy starts.
    pub token: Option<PathBuf>,
    /// Run the proxy as this user (as in a pod, so iptables can exempt its own traffic).
    pub uid: Option<u32>,
}

impl ProxySpec {
    pub fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_string(),
            ..Self::default()
        }
    }

    pub fn app_port(mut self, port: u16) -> Self {
        self.app_port = Some(port);
        self
    }

    pub fn route(mut self, authority: &str, to: &Proxy) -> Self {
        self.routes.push(RouteSpec {
            authority: authority.to_string(),
            address: to.inbound,
            identity: to.identity.clone(),
            opaque: false,
        });
        self
    }

    /// Like [`ProxySpec::route`], forwarding bytes without protocol detection.
    pub fn opaque_route(mut self, authority: &str, to: &Proxy) -> Self {
        self = self.route(authority, to);
        if let Some(route) = self.routes.last_mut() {
            route.opaque = true;
        }
        self
    }

    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    pub fn token(mut self, path: PathBuf) -> Self {
        self.token = Some(path);
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

impl Proxy {
    /// Starts a proxy and waits until it holds a certificate.
    pub async fn start(cp: &ControlPlane, spec: ProxySpec) -> Self {
        let what = format!("proxy {} to be ready", spec.identity);
        for attempt in 1..=PORT_RACE_ATTEMPTS {
            let mut proxy = Self::spawn(cp, &spec);
            let admin = proxy.admin;
            match ready_or_exited(&mut proxy.proc, &what, move || proxy_ready(admin)).await {
                Startup::Ready => return proxy,
                Startup::Exited
                    if attempt < PORT_RACE_ATTEMPTS && lost_a_port_race(&proxy.proc) => {}
                Startup::Exited => panic!("proxy {} exited before it was ready", spec.identity),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts a proxy without waiting.
    pub fn spawn(cp: &ControlPlane, spec: &ProxySpec) -> Self {
        let dir = cp.dir.path();
        let token = spec
            .token
            .clone()
            .unwrap_or_else(|| cp.token_file(&spec.identity));
        // An address the spec sets itself (all addresses, in a pod) is the one to report.
        let given = |name: &str| {
            spec.env
                .iter()
                .find(|(var, _)| var == name)
                .and_then(|(_, value)| value.parse::<SocketAddr>().ok())
        };
        let inbound = given("WEFT_PROXY_INBOUND_ADDR")
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tap = given("WEFT_PROXY_TAP_ADDR")
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut command = Command::new(bin("weft-proxy"));
        command
            .env_clear()
            .env("WEFT_PROXY_CONTROL_PLANE_ADDR", cp.proxy_api.to_string())
            .env("WEFT_PROXY_TRUST_ANCHORS", cp.trust_anchor())
            .env("WEFT_PROXY_IDENTITY", &spec.identity)
            .env("WEFT_PROXY_TOKEN_PATH", &token)
            .env("WEFT_PROXY_INBOUND_ADDR", inbound.to_string())
            .env("WEFT_PROXY_OUTBOUND_ADDR", outbound.to_string())
            .env("WEFT_PROXY_ADMIN_ADDR", admin.to_string())
            .env("WEFT_PROXY_TAP_ADDR", tap.to_string())
            .env("WEFT_PROXY_LOG", "info,weft_proxy=debug");
        if let Some(port) = spec.app_port {
            command.env("WEFT_PROXY_APP_PORT", port.to_string());
        }
        if !spec.routes.is_empty() {
            let path = dir.join(format!("routes-{}.yaml", free_port()));
            std::fs::write(&path, routes_yaml(&spec.routes)).unwrap();
            command.env("WEFT_PROXY_STATIC_ROUTES", path);
        }
        for (name, value) in &spec.env {
            command.env(name, value);
        }
        if let Some(uid) = spec.uid {
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            // The proxy's files (anchor, token, routes) live in the test's private temp dir.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            command.uid(uid);
        }
        let name = format!("weft-proxy {}", spec.identity);
        let log = dir.join(format!("proxy-{}.log", admin.port()));
        Self {
            identity: spec.identity.clone(),
            token,
            inbound,
            outbound,
            admin,
            tap,
            proc: Proc::spawn(&name, command, log),
            _dir: Arc::clone(&cp.dir),
        }
    }

    /// Waits until /ready answers 200.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        eventually(
            &format!("proxy {} to be ready", self.identity),
            STARTUP,
            || async move { proxy_ready(admin).await.then_some(()) },
        )
        .await;
    }

    /// The proxy's /metrics text.
    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of the first sample whose line starts with `prefix` (a name and labels).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        metric_value(&self.metrics().await, prefix)
    }
}

/// Sum of every sample of `text` whose line starts with `prefix`.
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|line| line.starts_with(prefix)) {
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

fn routes_yaml(routes: &[RouteSpec]) -> String {
    let mut yaml = String::from("routes:\n");
    for route in routes {
        yaml.push_str(&format!(
            "  - authority: \"{}\"\n    address: \"{}\"\n    identity: {}\n    opaque: {}\n",
            route.authority, route.address, route.identity, route.opaque
        ));
    }
    yaml
}

/// Writes `text` to a fresh file under `dir`.
pub fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `free_port` hands out a port that was free a moment ago; another test's process, or an
/// outgoing connection's ephemeral port, may take it before ours binds. A process that exits
/// for that reason is started again on other ports, up to this many times in all.
const PORT_RACE_ATTEMPTS: usize = 5;

fn lost_a_port_race(proc: &Proc) -> bool {
    proc.log().contains("Address already in use")
}

/// How a freshly spawned process came up.
enum Startup {
    Ready,
    Exited,
}

/// Polls `ready` until it says yes or the process exits; panics with `what` after `STARTUP`.
async fn ready_or_exited<F, Fut>(proc: &mut Proc, what: &str, mut ready: F) -> Startup
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STARTUP;
    loop {
        if ready().await {
            return Startup::Ready;
        }
        if !proc.is_running() {
            return Startup::Exited;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {STARTUP:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn proxy_ready(admin: SocketAddr) -> bool {
    http_get(admin, "/ready")
        .await
        .is_some_and(|(status, _)| status == 200)
}

async fn control_plane_ready(metrics: SocketAddr, admin: SocketAddr) -> bool {
    let ready = http_get(metrics, "/ready")
        .await
        .is_some_and(|(status, _)| status == 200);
    ready && tokio::net::TcpStream::connect(admin).await.is_ok()
}

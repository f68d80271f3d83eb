//! Starts the demo mesh as real processes and checks that traffic flows over mTLS.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::app::BACKEND_AUTHORITY;

/// The frontend's identity.
pub const FRONTEND_ID: &str = "spiffe://cluster.local/ns/demo/sa/frontend";
/// The backend's identity.
pub const BACKEND_ID: &str = "spiffe://cluster.local/ns/demo/sa/backend";

/// Every address the demo uses.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub control_proxy_api: SocketAddr,
    pub control_admin: SocketAddr,
    pub control_metrics: SocketAddr,
    pub frontend_app: SocketAddr,
    pub frontend_inbound: SocketAddr,
    pub frontend_outbound: SocketAddr,
    pub frontend_admin: SocketAddr,
    pub frontend_tap: SocketAddr,
    pub backend_app: SocketAddr,
    pub backend_inbound: SocketAddr,
    pub backend_outbound: SocketAddr,
    pub backend_admin: SocketAddr,
    pub backend_tap: SocketAddr,
}

impl Ports {
    /// The documented ports, so the printed URLs are the same every time.
    pub fn fixed() -> Self {
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            control_proxy_api: at(7200),
            control_admin: at(7201),
            control_metrics: at(7290),
            frontend_app: at(8080),
            frontend_inbound: at(7143),
            frontend_outbound: at(7140),
            frontend_admin: at(7191),
            frontend_tap: at(7190),
            backend_app: at(8081),
            backend_inbound: at(7243),
            backend_outbound: at(7240),
            backend_admin: at(7291),
            backend_tap: at(7292),
        }
    }

    /// Checks that every port is free, naming the first that is not and what it is for.
    pub fn ensure_free(&self) -> Result<(), PortTaken> {
        for (addr, what) in self.described() {
            if let Err(error) = TcpListener::bind(addr) {
                return Err(PortTaken { addr, what, error });
            }
        }
        Ok(())
    }

    fn described(&self) -> [(SocketAddr, &'static str); 13] {
        [
            (self.control_proxy_api, "weft-control's proxy API"),
            (self.control_admin, "weft-control's admin API"),
            (self.control_metrics, "weft-control's metrics"),
            (self.frontend_app, "the frontend app"),
            (self.frontend_inbound, "the frontend proxy's inbound"),
            (self.frontend_outbound, "the frontend proxy's outbound"),
            (self.frontend_admin, "the frontend proxy's admin"),
            (self.frontend_tap, "the frontend proxy's tap API"),
            (self.backend_app, "the backend app"),
            (self.backend_inbound, "the backend proxy's inbound"),
            (self.backend_outbound, "the backend proxy's outbound"),
            (self.backend_admin, "the backend proxy's admin"),
            (self.backend_tap, "the backend proxy's tap API"),
        ]
    }

    /// Free random ports, for a run that must not collide with anything (CI's smoke run).
    pub fn random() -> anyhow::Result<Self> {
        // Hold every listener until all are chosen, so no port is handed out twice.
        let mut held = Vec::new();
        let mut next = || -> anyhow::Result<SocketAddr> {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            held.push(listener);
            Ok(addr)
        };
        Ok(Self {
            control_proxy_api: next()?,
            control_admin: next()?,
            control_metrics: next()?,
            frontend_app: next()?,
            frontend_inbound: next()?,
            frontend_outbound: next()?,
            frontend_admin: next()?,
            frontend_tap: next()?,
            backend_app: next()?,
            backend_inbound: next()?,
            backend_outbound: next()?,
            backend_admin: next()?,
            backend_tap: next()?,
        })
    }
}

/// A port the demo needs is taken.
#[derive(Debug, thiserror::Error)]
#[error(
    "{addr} ({what}) is already in use ({error}): is another demo running? Stop it with Ctrl-C, or run this one with --random-ports"
)]
pub struct PortTaken {
    /// The address.
    pub addr: SocketAddr,
    /// What the demo uses it for.
    pub what: &'static str,
    /// The bind error.
    pub error: std::io::Error,
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Process {
    pub name: &'static str,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The running mesh; dropping it stops every process.
#[derive(Debug)]
pub struct Mesh {
    pub ports: Ports,
    pub work_dir: PathBuf,
    pub processes: Vec<Process>,
}

/// Builds the mesh's binaries with the same cargo and profile as the demo itself, so a single
/// `cargo run` is enough on a fresh clone.
pub fn build_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["build", "--workspace", "--bins", "--manifest-path"])
        .arg(&manifest);
    if bin_dir.ends_with("release") {
        command.arg("--release");
    }
    let status = command
        .status()
        .context("cannot run cargo to build weft-proxy and weft-control")?;
    if !status.success() {
        bail!("building the mesh's binaries failed");
    }
    Ok(())
}

/// Starts control plane, apps and proxies under `work_dir`, and waits until a request flows
/// frontend → proxy → mTLS → proxy → backend.
pub async fn start(bin_dir: &Path, work_dir: &Path, ports: Ports) -> anyhow::Result<Mesh> {
    let mut mesh = Mesh {
        ports,
        work_dir: work_dir.to_path_buf(),
        processes: Vec::new(),
    };
    let data_dir = work_dir.join("control");
    let mut control = Command::new(bin_dir.join("weft-control"));
    control
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--proxy-api-addr", &ports.control_proxy_api.to_string()])
        .args(["--admin-addr", &ports.control_admin.to_string()])
        .args(["--metrics-addr", &ports.control_metrics.to_string()]);
    mesh.spawn("weft-control", control)?;
    wait_http(ports.control_metrics, "/ready", "weft-control").await?;

    let anchor = data_dir.join("pki/trust-anchor.pem");
    let frontend_token = create_token(
        bin_dir,
        &data_dir,
        ports.control_admin,
        FRONTEND_ID,
        work_dir,
    )?;
    let backend_token = create_token(
        bin_dir,
        &data_dir,
        ports.control_admin,
        BACKEND_ID,
        work_dir,
    )?;
    // The mesh learns where backend runs from policy, as it would on a real cluster: a Service,
    // and a Workload for the backend's proxy.
    let policy = work_dir.join("policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(ports.backend_inbound.port(), ports.backend_app.port()),
    )?;
    weftctl(
        bin_dir,
        &data_dir,
        ports.control_admin,
        &["apply", "-f", &policy.display().to_string()],
    )?;

    let mut backend_app = Command::new(bin_dir.join("demo-app"));
    backend_app.args(["backend", "--listen", &ports.backend_app.to_string()]);
    mesh.spawn("backend app", backend_app)?;
    let mut frontend_app = Command::new(bin_dir.join("demo-app"));
    frontend_app.args(["frontend", "--listen", &ports.frontend_app.to_string()]);
    frontend_app.args(["--proxy", &ports.frontend_outbound.to_string()]);
    mesh.spawn("frontend app", frontend_app)?;

    let common = |identity: &str,
                  token: &Path,
                  inbound: SocketAddr,
                  outbound: SocketAddr,
                  admin: SocketAddr,
                  tap: SocketAddr,
                  pod: &str| {
        let mut proxy = Command::new(bin_dir.join("weft-proxy"));
        proxy
            .env(
                "WEFT_PROXY_CONTROL_PLANE_ADDR",
                ports.control_proxy_api.to_string(),
            )
            .env("WEFT_PROXY_TRUST_ANCHORS", &anchor)
            .env("WEFT_PROXY_IDENTITY", identity)
            .env("WEFT_PROXY_TOKEN_PATH", token)
            .env("WEFT_PROXY_INBOUND_ADDR", inbound.to_string())
            .env("WEFT_PROXY_OUTBOUND_ADDR", outbound.to_string())
            .env("WEFT_PROXY_ADMIN_ADDR", admin.to_string())
            .env("WEFT_PROXY_TAP_ADDR", tap.to_string())
            .env("WEFT_POD_NAME", pod);
        proxy
    };
    let mut backend_proxy = common(
        BACKEND_ID,
        &backend_token,
        ports.backend_inbound,
        ports.backend_outbound,
        ports.backend_admin,
        ports.backend_tap,
        "backend",
    );
    backend_proxy.env("WEFT_PROXY_APP_PORT", ports.backend_app.port().to_string());
    mesh.spawn("backend proxy", backend_proxy)?;
    let mut frontend_proxy = common(
        FRONTEND_ID,
        &frontend_token,
        ports.frontend_inbound,
        ports.frontend_outbound,
        ports.frontend_admin,
        ports.frontend_tap,
        "frontend",
    );
    frontend_proxy.env("WEFT_PROXY_APP_PORT", ports.frontend_app.port().to_string());
    mesh.spawn("frontend proxy", frontend_proxy)?;

    wait_http(ports.backend_admin, "/ready", "backend proxy").await?;
    wait_http(ports.frontend_admin, "/ready", "frontend proxy").await?;
    let answer = wait_http(ports.frontend_app, "/", "traffic frontend → backend").await?;
    if !answer.contains(FRONTEND_ID) {
        bail!("backend did not see the frontend's identity: {answer}");
    }
    Ok(mesh)
}

impl Mesh {
    /// What `weftctl tap pod/backend -n demo` shows of two of the frontend's calls.
    pub async fn tap_backend(&self, bin_dir: &Path) -> anyhow::Result<String> {
        let printed = self
            .weftctl_during_traffic(bin_dir, &["tap", "pod/backend", "-n", "demo", "--max", "2"])
            .await?;
        let ended = printed
            .lines()
            .filter(|line| line.starts_with("end "))
            .count();
        if ended != 2 || !printed.contains(&format!("client={FRONTEND_ID}")) {
            bail!("weftctl tap showed not the frontend's two calls:\n{printed}");
        }
        Ok(printed)
    }

    /// What `weftctl stat svc -n demo` shows of the frontend's calls, read from the proxies
    /// (no Prometheus here).
    pub async fn stat_services(&self, bin_dir: &Path) -> anyhow::Result<String> {
        let printed = self
            .weftctl_during_traffic(bin_dir, &["stat", "svc", "-n", "demo", "--window", "3s"])
            .await?;
        let backend = printed
            .lines()
            .find(|line| line.starts_with("demo/backend:"));
        if !backend.is_some_and(|line| line.contains("100.00%")) {
            bail!("weftctl stat showed no successful calls to the backend:\n{printed}");
        }
        Ok(printed)
    }

    /// Runs weftctl with `args` while the frontend calls the backend, and returns what it
    /// printed.
    async fn weftctl_during_traffic(
        &self,
        bin_dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let ports = self.ports;
        let mut weftctl = tokio::process::Command::new(bin_dir.join("weftctl"));
        weftctl
            .args(["--server", &ports.control_admin.to_string(), "--data-dir"])
            .arg(self.work_dir.join("control"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let running = weftctl
            .spawn()
            .context("cannot run weftctl")?
            .wait_with_output();
        let calling = async {
            loop {
                let _ = wait_http(ports.frontend_app, "/", "traffic frontend → backend").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let output = tokio::select! {
            output = tokio::time::timeout(Duration::from_secs(30), running) => output
                .with_context(|| format!("weftctl {} did not finish within 30 s", args.join(" ")))??,
            () = calling => unreachable!("calls loop until weftctl ends"),
        };
        if !output.status.success() {
            bail!(
                "weftctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn spawn(&mut self, name: &'static str, mut command: Command) -> anyhow::Result<()> {
        let log_name = name.replace(' ', "-");
        let log = std::fs::File::create(self.work_dir.join(format!("{log_name}.log")))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.processes.push(Process { name, child });
        Ok(())
    }

    /// A process that has exited, if any (with its name).
    pub fn exited(&mut self) -> Option<&'static str> {
        self.processes
            .iter_mut()
            .find_map(|p| (!matches!(p.child.try_wait(), Ok(None))).then_some(p.name))
    }
}

/// The demo's policy: the `backend` Service and its one Workload.
pub fn policy_yaml(backend_proxy_port: u16, backend_app_port: u16) -> String {
    let (name, namespace) = BACKEND_AUTHORITY
        .split_once(':')
        .and_then(|(host, _)| host.split_once('.'))
        .unwrap_or(("backend", "demo"));
    let port = BACKEND_AUTHORITY.rsplit(':').next().unwrap_or("8081");
    format!(
        "apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{selector: {{app: {name}}}, ports: [{{port: {port}, targetPort: {backend_app_port}}}]}}
---
apiVersion: policy.weft.io/v1alpha1
kind: Workload
metadata: {{name: {name}-1, namespace: {namespace}, labels: {{app: {name}}}}}
spec: {{address: 127.0.0.1, proxyPort: {backend_proxy_port}, identity: \"{BACKEND_ID}\"}}
"
    )
}

fn weftctl(
    bin_dir: &Path,
    data_dir: &Path,
    admin: SocketAddr,
    args: &[&str],
) -> anyhow::Result<String> {
    let output = Command::new(bin_dir.join("weftctl"))
        .args(["--server", &admin.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()
        .context("cannot run weftctl")?;
    if !output.status.success() {
        bail!(
            "weftctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn create_token(
    bin_dir: &Path,
    data_dir: &Path,
    admin: SocketAddr,
    identity: &str,
    work_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let token = weftctl(
        bin_dir,
        data_dir,
        admin,
        &["token", "create", "--identity", identity],
    )?;
    let name = identity.rsplit('/').next().unwrap_or("proxy");
    let path = work_dir.join(format!("{name}.token"));
    std::fs::write(&path, token)?;
    Ok(path)
}

/// Polls `GET path` on `addr` until it answers 2xx (30 s at most); returns the body.
async fn wait_http(addr: SocketAddr, path: &str, what: &str) -> anyhow::Result<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri: http::Uri = format!("http://{addr}{path}").parse()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), client.get(uri.clone())).await;
        if let Ok(Ok(response)) = attempt {
            let ok = response.status().is_success();
            let body = response.into_body().collect().await?.to_bytes();
            if ok {
                return Ok(String::from_utf8_lossy(&body).into_owned());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what} not ready at http://{addr}{path} after 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_named_with_what_it_is_for() {
        let mut ports = Ports::random().unwrap();
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        ports.backend_admin = taken.local_addr().unwrap();
        let error = ports.ensure_free().unwrap_err().to_string();
        assert!(error.contains("the backend proxy's admin"), "{error}");
        assert!(error.contains("another demo running"), "{error}");
        drop(taken);
        ports.ensure_free().unwrap();
    }
}

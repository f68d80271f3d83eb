//! The topology every mode measures: load generator → [client sidecar → mTLS → server sidecar]
//! → upstream, with the sidecars being nothing (direct), two weft-proxies, or two Envoys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use weft_tests::free_port;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};
use weft_tests::process::{Proc, bin};

use crate::envoy;
use crate::placement::{Placement, pin};

/// The authority the load generator addresses.
pub const AUTHORITY: &str = "upstream.bench:80";
/// The client side's identity.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/client";
/// The server side's identity.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";

/// What sits between the load generator and the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Weft,
    /// The Weft pair, the server side under ten AuthorizationPolicies (the allowing one last).
    WeftAuthz,
    /// The same pair as `WeftAuthz`, between its slices, with the policies selecting nothing:
    /// authorization's baseline, measured on the same processes.
    WeftAuthzOff,
    /// The Weft pair tracing every request (a Service's policy sampling all of them), spans
    /// exported over OTLP to a collector that discards them.
    WeftTraced,
    /// The same pair as `WeftTraced`, between its slices, sampling none: tracing's baseline.
    WeftTracedOff,
    Envoy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Weft => "weft",
            Mode::WeftAuthz => "weft + authz",
            Mode::WeftAuthzOff => "weft + authz, policies off",
            Mode::WeftTraced => "weft + traces (100 %)",
            Mode::WeftTracedOff => "weft + traces, sampling 0",
            Mode::Envoy => "envoy",
        }
    }
}

/// What the Weft pair runs with besides routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Authz,
    Traces,
}

/// What every mode shares: the control plane (it signs the Envoys' certificates too, from the
/// same trust anchor), the upstream, and the Envoys' certificate files.
#[derive(Debug)]
pub struct Fixture {
    pub cp: ControlPlane,
    pub upstream: SocketAddr,
    _upstream: Proc,
    /// Where traced proxies export their spans.
    pub collector: SocketAddr,
    _collector: Proc,
    pub dir: tempfile::TempDir,
    pub envoy: Option<PathBuf>,
    /// The same CPUs for every mode's processes, when there are two.
    pub placement: Option<Placement>,
}

/// One mode, running.
#[derive(Debug)]
pub struct Running {
    pub mode: Mode,
    /// Where the load generator connects.
    pub entry: SocketAddr,
    /// The sidecars' process ids (none for direct).
    pub proxy_pids: Vec<u32>,
    /// The client sidecar's admin address.
    pub admin: Option<SocketAddr>,
    /// The server sidecar's admin address (Weft only).
    pub server_admin: Option<SocketAddr>,
    _weft: Vec<Proxy>,
    _envoy: Vec<Proc>,
}

impl Fixture {
    /// Starts the control plane and the upstream; `envoy` is the Envoy binary, if any.
    pub async fn start(
        envoy: Option<PathBuf>,
        placement: Option<Placement>,
    ) -> anyhow::Result<Self> {
        let cp = ControlPlane::start("24h").await;
        let dir = tempfile::tempdir()?;
        let upstream = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(bin("bench-upstream"));
        command.arg("--listen").arg(upstream.to_string());
        let upstream_proc = Proc::spawn("bench-upstream", command, dir.path().join("upstream.log"));
        wait_for_port(upstream).await?;
        let collector = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(bin("bench-otlp-sink"));
        command.arg("--listen").arg(collector.to_string());
        let collector_proc =
            Proc::spawn("bench-otlp-sink", command, dir.path().join("collector.log"));
        wait_for_port(collector).await?;
        if let Some(placement) = placement {
            pin(upstream_proc.pid(), placement.upstream())?;
            // A node's collector agent: on the server's CPU, away from the load generator.
            pin(collector_proc.pid(), placement.upstream())?;
        }
        let fixture = Self {
            cp,
            upstream,
            _upstream: upstream_proc,
            collector,
            _collector: collector_proc,
            dir,
            envoy,
            placement,
        };
        if fixture.envoy.is_some() {
            for (name, identity) in [("client", CLIENT_ID), ("server", SERVER_ID)] {
                let (chain, key) = fixture.cp.credential_pem(identity).await;
                std::fs::write(fixture.dir.path().join(format!("{name}.pem")), chain)?;
                std::fs::write(fixture.dir.path().join(format!("{name}-key.pem")), key)?;
            }
            std::fs::copy(
                fixture.cp.trust_anchor(),
                fixture.dir.path().join("anchor.pem"),
            )?;
        }
        Ok(fixture)
    }

    /// Starts `mode` with `workers` threads per sidecar, and waits until a request flows.
    pub async fn run(&self, mode: Mode, workers: usize) -> anyhow::Result<Running> {
        let running = match mode {
            Mode::Direct => Running {
                mode,
                entry: self.upstream,
                proxy_pids: Vec::new(),
                admin: None,
                server_admin: None,
                _weft: Vec::new(),
                _envoy: Vec::new(),
            },
            Mode::Weft => self.run_weft(workers, Extra::None).await,
            Mode::WeftAuthz | Mode::WeftAuthzOff => self.run_weft(workers, Extra::Authz).await,
            Mode::WeftTraced | Mode::WeftTracedOff => self.run_weft(workers, Extra::Traces).await,
            Mode::Envoy => self.run_envoy(workers).await?,
        };
        if let Some(placement) = self.placement {
            // Client first, then server, in every mode.
            let cpus = [placement.client_sidecar(), placement.server_sidecar()];
            for (pid, cpu) in running.proxy_pids.iter().zip(cpus) {
                pin(*pid, cpu)?;
            }
        }
        Ok(running)
    }

    /// The Weft pair; with `Extra::Authz`, its server workload selected by ten
    /// AuthorizationPolicies on the upstream's port, nine of which (path and identity rules) do
    /// not allow the client, so every request is checked against all ten; with `Extra::Traces`,
    /// both proxies exporting spans (sampling none by themselves: the Service's policy decides).
    async fn run_weft(&self, workers: usize, extra: Extra) -> Running {
        let authz = extra == Extra::Authz;
        let collector = format!("http://{}", self.collector);
        let quiet = |spec: ProxySpec| {
            let spec = spec
                .env("WEFT_PROXY_WORKERS", &workers.to_string())
                .env("WEFT_PROXY_LOG", "warn");
            if extra == Extra::Traces {
                spec.env("WEFT_PROXY_TRACE_ENDPOINT", &collector)
                    .env("WEFT_PROXY_TRACE_SAMPLING", "0")
            } else {
                spec
            }
        };
        let server = Proxy::start(
            &self.cp,
            quiet(ProxySpec::new(SERVER_ID).app_port(self.upstream.port())),
        )
        .await;
        // The client finds the server the way it would in production: through discovery.
        let labels = if authz {
            "{app: upstream, authz: \"on\"}"
        } else {
            "{app: upstream}"
        };
        self.cp.apply_ok(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: upstream, namespace: bench}}\nspec: {{selector: {{app: upstream}}, ports: [{{port: 80, targetPort: {target}}}]}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: upstream-1, namespace: bench, labels: {labels}}}\nspec: {{address: 127.0.0.1, proxyPort: {proxy}, identity: \"{SERVER_ID}\"}}\n",
            target = self.upstream.port(),
            proxy = server.inbound.port(),
        ));
        if authz {
            self.select_authz(true);
        }
        if extra == Extra::Traces {
            self.select_tracing(true);
        }
        let client = Proxy::start(&self.cp, quiet(ProxySpec::new(CLIENT_ID))).await;
        Running {
            mode: Mode::Weft,
            entry: client.outbound,
            proxy_pids: vec![client.proc.pid(), server.proc.pid()],
            admin: Some(client.admin),
            server_admin: Some(server.admin),
            _weft: vec![client, server],
            _envoy: Vec::new(),
        }
    }

    async fn run_envoy(&self, workers: usize) -> anyhow::Result<Running> {
        let Some(binary) = &self.envoy else {
            bail!("no Envoy binary: ./scripts/bench installs one");
        };
        let dir = self.dir.path();
        let server_port = free_port();
        let client_port = free_port();
        let client_admin = free_port();
        let server_config = envoy::server_config(dir, server_port, free_port(), self.upstream);
        let client_config = envoy::client_config(dir, client_port, client_admin, server_port);
        let spawn = |name: &str, config: &str| -> anyhow::Result<Proc> {
            let path = dir.join(format!("envoy-{name}-{}.yaml", free_port()));
            std::fs::write(&path, config)?;
            let mut command = Command::new(binary);
            command
                .arg("-c")
                .arg(&path)
                .args(["--concurrency", &workers.to_string()])
                .args(["--disable-hot-restart", "--log-level", "warn"]);
            Ok(Proc::spawn(
                &format!("envoy {name}"),
                command,
                dir.join(format!("envoy-{name}.log")),
            ))
        };
        let server = spawn("server", &server_config)?;
        let client = spawn("client", &client_config)?;
        let entry = SocketAddr::from(([127, 0, 0, 1], client_port));
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], server_port))).await?;
        wait_for_port(entry).await?;
        let pids = vec![client.pid(), server.pid()];
        Ok(Running {
            mode: Mode::Envoy,
            entry,
            proxy_pids: pids,
            admin: Some(SocketAddr::from(([127, 0, 0, 1], client_admin))),
            server_admin: None,
            _weft: Vec::new(),
            _envoy: vec![client, server],
        })
    }

    /// Points the ten AuthorizationPolicies at the `authz: on` workload (`on`), or at none —
    /// the server's default (`all-authenticated`) then decides alone. Only the server's inbound
    /// policy changes; its processes, connections and endpoints stay as they are.
    pub fn select_authz(&self, on: bool) {
        let selecting = if on { "on" } else { "nothing" };
        self.cp
            .apply_ok(&ten_authorization_policies(self.upstream.port(), selecting));
    }

    /// Has the upstream Service's policy sample every request (`on`) or none.
    pub fn select_tracing(&self, on: bool) {
        self.cp.apply_ok(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: ServicePolicy\nmetadata: {{name: upstream-tracing, namespace: bench}}\nspec:\n  targetRef: {{name: upstream}}\n  telemetry: {{traceSampling: {}}}\n",
            if on { 1 } else { 0 }
        ));
    }

    /// The spans the client sidecar has handed to its exporter so far: delivered or dropped.
    pub async fn spans_recorded(&self, running: &Running) -> Option<u64> {
        let (_, metrics) = weft_tests::client::http_get(running.admin?, "/metrics").await?;
        Some(
            metrics
                .lines()
                .filter(|l| {
                    l.starts_with("weft_trace_spans_exported_total")
                        || l.starts_with("weft_trace_spans_dropped_total{")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// The decisions the server sidecar has counted under `policy` so far.
    pub async fn authz_decisions(&self, running: &Running, policy: &str) -> Option<u64> {
        let (_, metrics) = weft_tests::client::http_get(running.server_admin?, "/metrics").await?;
        let label = format!("policy=\"{policy}\"");
        Some(
            metrics
                .lines()
                .filter(|l| l.starts_with("weft_inbound_authz_total{") && l.contains(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// What TLS the client sidecar negotiated with the server sidecar (cipher suite and key
    /// exchange), from its own statistics.
    pub async fn negotiated(&self, running: &Running) -> String {
        let Some(admin) = running.admin else {
            return "no TLS".to_string();
        };
        match running.mode {
            Mode::Direct => "no TLS".to_string(),
            Mode::Weft
            | Mode::WeftAuthz
            | Mode::WeftAuthzOff
            | Mode::WeftTraced
            | Mode::WeftTracedOff => {
                let metrics = weft_tests::client::http_get(admin, "/metrics")
                    .await
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                metrics
                    .lines()
                    .find(|l| l.starts_with("weft_tls_handshakes_total{") && l.contains("outbound"))
                    .and_then(|l| {
                        let label = |name: &str| {
                            let start = l.find(&format!("{name}=\""))? + name.len() + 2;
                            Some(l[start..start + l[start..].find('"')?].to_string())
                        };
                        Some(format!(
                            "{} with {}",
                            label("cipher_suite")?,
                            label("key_exchange")?
                        ))
                    })
                    .unwrap_or_else(|| "unknown".to_string())
            }
            Mode::Envoy => {
                let stats = weft_tests::client::http_get(admin, "/stats?filter=server_sidecar.ssl")
                    .await
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                let used = |kind: &str| {
                    stats
                        .lines()
                        .filter(|l| {
                            l.contains(&format!(".ssl.{kind}.")) && !l.trim_end().ends_with(": 0")
                        })
                        .filter_map(|l| {
                            l.split(&format!(".ssl.{kind}."))
                                .nth(1)?
                                .split(':')
                                .next()
                                .map(str::to_string)
                        })
                        .collect::<Vec<_>>()
                        .join("/")
                };
                format!("{} with {}", used("ciphers"), used("curves"))
            }
        }
    }

    /// The directory the Envoy certificates are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Ten AuthorizationPolicies on `port` of the workloads labelled `authz: <selecting>`: nine
/// whose path or identity the benchmark's requests never match, then the one that allows its
/// client.
fn ten_authorization_policies(port: u16, selecting: &str) -> String {
    let mut yaml = String::new();
    for i in 0..9 {
        yaml.push_str(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: rule-{i}, namespace: bench}}\nspec:\n  selector: {{authz: \"{selecting}\"}}\n  ports: [{port}]\n  http: [{{path: {{type: PathPrefix, value: /private-{i}}}, method: POST}}, {{headers: [{{name: x-team, value: team-{i}}}]}}]\n  from: [{{identities: [\"spiffe://cluster.local/ns/other/sa/s{i}\"]}}, {{namespaces: [other-{i}]}}]\n---\n"
        ));
    }
    yaml.push_str(&format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: rule-9, namespace: bench}}\nspec:\n  selector: {{authz: \"{selecting}\"}}\n  ports: [{port}]\n  http: [{{path: {{type: PathPrefix, value: /}}}}]\n  from: [{{identities: [\"spiffe://cluster.local/ns/bench/sa/*\"]}}]\n"
    ));
    yaml
}

async fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow::anyhow!("nothing listens on {addr} after 30 s"))
                .context("starting the benchmark topology");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! A real Prometheus (Debian's package, which `scripts/install-test-deps` installs) on a
//! loopback port, scraping the given targets every second and evaluating the given rule files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::process::Proc;

/// Where the Debian package puts the binaries.
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// A running Prometheus; killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    /// Its HTTP API.
    pub addr: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job name, admin address) every second and
    /// evaluating `rule_files`, and waits until it is ready.
    pub async fn start(targets: &[(&str, SocketAddr)], rule_files: &[PathBuf]) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run scripts/install-test-deps"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            String::from("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files:\n");
        for file in rule_files {
            config.push_str(&format!("  - {}\n", file.display()));
        }
        config.push_str("scrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: \"{job}-{}\"\n    static_configs: [{{targets: [\"{addr}\"], labels: {{component: {job}}}}}]\n",
                addr.port()
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let mut command = Command::new(PROMETHEUS);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let proc = Proc::spawn("prometheus", command, dir.path().join("prometheus.log"));
        crate::eventually(
            "Prometheus to be ready",
            Duration::from_secs(30),
            || async {
                crate::client::http_get(addr, "/-/ready")
                    .await
                    .filter(|(status, _)| *status == 200)
            },
        )
        .await;
        Self {
            addr,
            proc,
            _dir: dir,
        }
    }

    /// An instant query's result vector (`None` if Prometheus refused the query).
    pub async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let query: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (status, body) =
            crate::client::http_get(self.addr, &format!("/api/v1/query?query={query}")).await?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        if status != 200 || answer["status"] != "success" {
            return None;
        }
        answer["data"]["result"].as_array().cloned()
    }

    /// The value of a query that yields one sample.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await?;
        match result.as_slice() {
            [sample] => sample["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// The rule groups as Prometheus evaluates them (`/api/v1/rules`).
    pub async fn rules(&self) -> Vec<Value> {
        let (_, body) = crate::client::http_get(self.addr, "/api/v1/rules")
            .await
            .unwrap_or_default();
        let answer: Value = serde_json::from_str(&body).unwrap_or_default();
        answer["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Everything Prometheus has logged.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// `promtool check metrics` on a /metrics body: its complaints, if any.
pub fn check_metrics(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PROMTOOL} (scripts/install-test-deps): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

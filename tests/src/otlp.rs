//! A real OTLP/gRPC trace receiver (`tests/otlp_receiver.py`, on the `opentelemetry-proto` and
//! `grpcio` Python packages that `scripts/install-test-deps` puts in `.tools/otlp-venv`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::Proc;

/// A running receiver; killed on drop.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    proc: Proc,
    _dir: TempDir,
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port and waits until it listens.
    pub async fn start() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("../.tools/otlp-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/install-test-deps",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let mut command = Command::new(python);
        command
            .arg(root.join("otlp_receiver.py"))
            .arg(port.to_string());
        let proc = Proc::spawn("otlp-receiver", command, dir.path().join("receiver.log"));
        let receiver = Self {
            port,
            proc,
            _dir: dir,
        };
        crate::eventually(
            "the OTLP receiver to listen",
            Duration::from_secs(30),
            || async { receiver.proc.log().contains("\"listening\"").then_some(()) },
        )
        .await;
        receiver
    }

    /// The endpoint proxies export to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far (whole lines only).
    pub fn spans(&self) -> Vec<serde_json::Value> {
        let log = self.proc.log();
        let whole = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
        whole
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|span| span.get("trace_id").is_some())
            .collect()
    }

    /// The spans of `trace_id`, once there are at least `count` of them.
    pub async fn trace(&self, trace_id: &str, count: usize) -> Vec<serde_json::Value> {
        crate::eventually(
            &format!("{count} spans of trace {trace_id}"),
            Duration::from_secs(20),
            || async {
                let spans: Vec<_> = self
                    .spans()
                    .into_iter()
                    .filter(|span| span["trace_id"] == trace_id)
                    .collect();
                (spans.len() >= count).then_some(spans)
            },
        )
        .await
    }
}

//! Test harness for Weft's end-to-end tests: starts the real `weft-control` and `weft-proxy`
//! binaries on loopback with random ports and temp dirs, plus in-process apps for them to front.
//! Every spawned process is killed when its handle drops.
//!
//! The binaries are the workspace's own build: `./scripts/test` builds them before the tests
//! run (`cargo build --bins`); set `WEFT_BIN_DIR` to test others.

// Test support: a failed setup step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod apps;
pub mod client;
pub mod fake_apiserver;
pub mod kube_api;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod podman;
pub mod process;
pub mod prometheus;
pub mod websocket;

pub mod echo {
    #![allow(clippy::all, unused_qualifications, missing_debug_implementations)]
    tonic::include_proto!("weft.test.echo");
}

use std::time::Duration;

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free loopback port")
}

/// Installs the rustls crypto provider for in-process TLS clients (idempotent).
pub fn init() {
    weft_certs::install_default_provider();
}

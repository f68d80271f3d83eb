//! Bad configuration exits 64 with one line naming the problem, before serving anything.

use std::process::Command;
use std::time::SystemTime;

use weft_tests::process::{bin, run};

struct Env {
    dir: tempfile::TempDir,
    vars: Vec<(&'static str, String)>,
}

impl Env {
    fn valid() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let anchor = weft_certs::TrustAnchor::generate(
            &weft_certs::TrustDomain::cluster_local(),
            SystemTime::now(),
        )
        .unwrap();
        let anchor_path = dir.path().join("anchor.pem");
        std::fs::write(&anchor_path, anchor.certificate_pem()).unwrap();
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "weftjt_test").unwrap();
        let vars = vec![
            ("WEFT_PROXY_CONTROL_PLANE_ADDR", "127.0.0.1:1".to_string()),
            (
                "WEFT_PROXY_TRUST_ANCHORS",
                anchor_path.display().to_string(),
            ),
            (
                "WEFT_PROXY_IDENTITY",
                "spiffe://cluster.local/ns/shop/sa/web".to_string(),
            ),
            ("WEFT_PROXY_TOKEN_PATH", token_path.display().to_string()),
            ("WEFT_PROXY_INBOUND_ADDR", "127.0.0.1:0".to_string()),
            ("WEFT_PROXY_OUTBOUND_ADDR", "127.0.0.1:0".to_string()),
            ("WEFT_PROXY_ADMIN_ADDR", "127.0.0.1:0".to_string()),
            ("WEFT_PROXY_TAP_ADDR", "127.0.0.1:0".to_string()),
        ];
        Self { dir, vars }
    }

    fn set(mut self, name: &'static str, value: &str) -> Self {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value.to_string()));
        self
    }

    /// Runs the proxy and returns its exit code and stderr.
    fn run(&self) -> (Option<i32>, String) {
        let mut command = Command::new(bin("weft-proxy"));
        command
            .env_clear()
            .envs(self.vars.iter().map(|(n, v)| (*n, v)));
        let (status, _, stderr) = run(command);
        (status.code(), stderr)
    }
}

fn assert_usage_error(code: Option<i32>, stderr: &str, names: &str) {
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line, got: {stderr}"
    );
    assert!(stderr.contains(names), "expected {names:?} in: {stderr}");
}

#[test]
fn missing_trust_anchor_file() {
    let env = Env::valid();
    let missing = env.dir.path().join("missing.pem");
    let (code, stderr) = env
        .set("WEFT_PROXY_TRUST_ANCHORS", missing.to_str().unwrap())
        .run();
    assert_usage_error(code, &stderr, "WEFT_PROXY_TRUST_ANCHORS");
    assert!(stderr.contains("missing.pem"), "{stderr}");
}

#[test]
fn malformed_identity() {
    let (code, stderr) = Env::valid()
        .set("WEFT_PROXY_IDENTITY", "spiffe://cluster.local/web")
        .run();
    assert_usage_error(code, &stderr, "WEFT_PROXY_IDENTITY");
}

#[test]
fn unknown_log_format() {
    let (code, stderr) = Env::valid().set("WEFT_PROXY_LOG_FORMAT", "yaml").run();
    assert_usage_error(code, &stderr, "WEFT_PROXY_LOG_FORMAT");
    assert!(stderr.contains("plain or json"), "{stderr}");
}

#[test]
fn port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = Env::valid().set("WEFT_PROXY_INBOUND_ADDR", &addr).run();
    assert_usage_error(code, &stderr, "WEFT_PROXY_INBOUND_ADDR");
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn missing_required_variable_and_bad_routes_file() {
    let (code, stderr) = Env::valid().set("WEFT_PROXY_CONTROL_PLANE_ADDR", "").run();
    assert_usage_error(code, &stderr, "WEFT_PROXY_CONTROL_PLANE_ADDR: must be set");

    let env = Env::valid();
    let routes = env.dir.path().join("routes.yaml");
    std::fs::write(&routes, "routes:\n  - authority: a\n    address: nowhere\n    identity: spiffe://cluster.local/ns/a/sa/b\n").unwrap();
    let (code, stderr) = env
        .set("WEFT_PROXY_STATIC_ROUTES", routes.to_str().unwrap())
        .run();
    assert_usage_error(code, &stderr, "routes[0].address");

    // YAML that does not parse is one line too, not the parser's drawing of the input.
    let env = Env::valid();
    let routes = env.dir.path().join("routes.yaml");
    std::fs::write(&routes, "routes:\n  - authority: [::1]:9006\n").unwrap();
    let (code, stderr) = env
        .set("WEFT_PROXY_STATIC_ROUTES", routes.to_str().unwrap())
        .run();
    assert_usage_error(code, &stderr, "WEFT_PROXY_STATIC_ROUTES");
}

#[test]
fn control_plane_bad_flags_and_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(bin("weft-control"));
    command
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--leaf-lifetime")
        .arg("1s");
    let (status, _, stderr) = run(command);
    assert_usage_error(status.code(), &stderr, "--leaf-lifetime");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut command = Command::new(bin("weft-control"));
    command
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--proxy-api-addr")
        .arg(taken.local_addr().unwrap().to_string());
    let (status, _, stderr) = run(command);
    assert_usage_error(status.code(), &stderr, "--proxy-api-addr");
    // Nothing was created before the bind failed.
    assert!(!dir.path().join("data").exists());
}

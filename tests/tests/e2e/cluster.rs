//! The policy tests' cluster: a control plane, two versions of `api` behind their proxies, and
//! a client proxy that knows nothing but discovery; and a bounded load to drive through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use weft_tests::apps::{App, start_echo_app};
use weft_tests::client::MeshClient;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::CLIENT_ID;

pub const API_ID: &str = "spiffe://cluster.local/ns/shop/sa/api";
pub const AUTHORITY: &str = "api.shop:8080";

/// The Services every test uses: `api` over every version, `api-v1` and `api-v2` over one each.
pub const SERVICES: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{name: http, port: 8080}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api-v1, namespace: shop}
spec: {selector: {app: api, version: v1}, ports: [{port: 8080}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api-v2, namespace: shop}
spec: {selector: {app: api, version: v2}, ports: [{port: 8080}]}
"#;

/// An app behind its proxy, registered as a Workload.
pub struct Backend {
    pub app: App,
    pub proxy: Proxy,
    pub name: String,
}

impl Backend {
    pub async fn start(cp: &ControlPlane, name: &str, version: &str) -> Self {
        Self::start_with(cp, name, version, start_echo_app().await).await
    }

    /// A backend fronting `app`.
    pub async fn start_with(cp: &ControlPlane, name: &str, version: &str, app: App) -> Self {
        Self::start_with_env(cp, name, version, app, &[]).await
    }

    /// A backend fronting `app`, its proxy configured with `env` besides.
    pub async fn start_with_env(
        cp: &ControlPlane,
        name: &str,
        version: &str,
        app: App,
        env: &[(&str, &str)],
    ) -> Self {
        let proxy =
            Proxy::start(cp, with_env(ProxySpec::new(API_ID).app_port(app.port), env)).await;
        let backend = Self {
            app,
            proxy,
            name: name.to_string(),
        };
        cp.apply_ok(&backend.workload(version));
        backend
    }

    /// A backend whose proxy takes inbound traffic at `ip` (as a Pod's address), which the
    /// test makes known some other way (as a Pod).
    pub async fn start_undeclared(cp: &ControlPlane, name: &str, ip: &str) -> Self {
        let app = start_echo_app().await;
        let inbound = format!("{ip}:{}", weft_tests::free_port());
        let spec = ProxySpec::new(API_ID)
            .app_port(app.port)
            .env("WEFT_PROXY_INBOUND_ADDR", &inbound);
        let proxy = Proxy::start(cp, spec).await;
        Self {
            app,
            proxy,
            name: name.to_string(),
        }
    }

    pub fn workload(&self, version: &str) -> String {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: {}, namespace: shop, labels: {{app: api, version: {version}}}}}\nspec: {{address: 127.0.0.1, proxyPort: {}, identity: \"{API_ID}\"}}\n",
            self.name,
            self.proxy.inbound.port()
        )
    }
}

/// A control plane, two versions of `api`, and a client proxy that knows nothing but discovery.
pub struct Cluster {
    pub cp: ControlPlane,
    pub v1: Backend,
    pub v2: Backend,
    pub client: Proxy,
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with_env(&[]).await
    }

    /// The cluster, every proxy configured with `env` besides.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Self {
        weft_tests::init();
        let cp = ControlPlane::start("24h").await;
        cp.apply_ok(SERVICES);
        let v1 = Backend::start_with_env(&cp, "api-1", "v1", start_echo_app().await, env).await;
        let v2 = Backend::start_with_env(&cp, "api-2", "v2", start_echo_app().await, env).await;
        let client = Proxy::start(&cp, with_env(ProxySpec::new(CLIENT_ID), env)).await;
        Self { cp, v1, v2, client }
    }

    pub fn http(&self) -> MeshClient {
        MeshClient::http1(self.client.outbound)
    }

    /// A GET of `path` through the client proxy to `api`, answered 200.
    pub async fn get_ok(&self, path: &str) -> weft_tests::client::Collected {
        let response = self
            .http()
            .send("GET", AUTHORITY, path, Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response
    }
}

fn with_env(mut spec: ProxySpec, env: &[(&str, &str)]) -> ProxySpec {
    for (name, value) in env {
        spec = spec.env(name, value);
    }
    spec
}

/// Sends `total` GETs of `path`, `concurrency` at a time; returns the statuses (0: transport
/// error). Bounded in count, and each request in time by the client.
pub async fn load(
    client: &MeshClient,
    total: usize,
    concurrency: usize,
    path: &str,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<u16> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        let path = path.to_string();
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let status = match client
                    .send_with("GET", AUTHORITY, &path, Bytes::new(), headers)
                    .await
                {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                statuses.push(status);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for worker in workers {
        statuses.extend(worker.await.unwrap());
    }
    statuses
}

pub fn split(v1: u32, v2: u32) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split, namespace: shop}}
spec:
  parentRefs: [{{name: api, kind: Service, port: 8080}}]
  rules:
  - backendRefs: [{{name: api-v1, port: 8080, weight: {v1}}}, {{name: api-v2, port: 8080, weight: {v2}}}]
"#
    )
}

pub fn share(of: usize, total: usize) -> f64 {
    of as f64 * 100.0 / total as f64
}

/// Sends GETs of `path` to the api, `concurrency` at a time, until `stop` is set or `limit`
/// has passed; the statuses (0: transport error) come back from the task.
pub fn load_until(
    client: &MeshClient,
    concurrency: usize,
    path: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
    limit: std::time::Duration,
) -> tokio::task::JoinHandle<Vec<u16>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, path, stop) = (client.clone(), path.to_string(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                let status = match client.send("GET", AUTHORITY, &path, Bytes::new()).await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                statuses.push(status);
            }
            statuses
        }));
    }
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        for worker in workers {
            statuses.extend(worker.await.unwrap_or_default());
        }
        statuses
    })
}

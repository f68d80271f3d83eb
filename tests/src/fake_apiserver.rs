//! `weft-fake-apiserver` started for one test: a real HTTPS process speaking the Kubernetes API
//! (no kube-apiserver can run here), its kubeconfig, a kube-rs client for it, and the controls a
//! test steers it with — ServiceAccount tokens, compaction, failing TokenReviews.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{Proc, bin};

#[derive(Debug)]
pub struct FakeApiServer {
    proc: Proc,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeApiServer {
    /// Starts one and waits until it serves.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts one with `args` (`--unserved httproutes.gateway.networking.k8s.io`: as a cluster
    /// without that CRD).
    pub async fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(bin("weft-fake-apiserver"));
        command.arg("--dir").arg(dir.path()).args(args);
        let proc = Proc::spawn(
            "weft-fake-apiserver",
            command,
            dir.path().join("fake-apiserver.log"),
        );
        let server = Self {
            kubeconfig: dir.path().join("kubeconfig"),
            proc,
            _dir: dir,
        };
        crate::eventually(
            "the fake API server to listen",
            Duration::from_secs(10),
            || {
                let up = server.proc.log().contains("listening on");
                async move { up.then_some(()) }
            },
        )
        .await;
        server
    }

    /// Its kubeconfig: the address, its CA and an admin bearer token.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube-rs client of it, configured from the kubeconfig like any other cluster's.
    pub async fn client(&self) -> kube::Client {
        let file = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Makes `token` a projected token of ServiceAccount `namespace/service_account` for
    /// `audiences`, expired or not.
    pub async fn add_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        expired: bool,
    ) {
        self.control(
            http::Method::POST,
            "tokens",
            serde_json::json!({
                "token": token,
                "namespace": namespace,
                "serviceAccount": service_account,
                "audiences": audiences,
                "expired": expired,
            }),
        )
        .await;
    }

    /// Drops the change history: watches end with 410 Gone, resumes from before get it too.
    pub async fn compact(&self) {
        self.control(http::Method::POST, "compact", serde_json::json!({}))
            .await;
    }

    /// Makes every TokenReview fail with HTTP `code` (`None`: answer new ones again; those
    /// already hanging stay hung).
    pub async fn fail_token_reviews(&self, code: Option<u16>) {
        self.control(
            http::Method::PUT,
            "token-review-failure",
            serde_json::json!({ "code": code }),
        )
        .await;
    }

    /// Makes every TokenReview hang, never answering (until `fail_token_reviews(None)`).
    pub async fn hang_token_reviews(&self) {
        self.control(
            http::Method::PUT,
            "token-review-failure",
            serde_json::json!({ "hang": true }),
        )
        .await;
    }

    /// How many TokenReviews it has answered.
    pub async fn token_reviews_answered(&self) -> u64 {
        let request = http::Request::get("/fake/token-reviews")
            .body(Vec::new())
            .unwrap();
        let text = self.client().await.request_text(request).await.unwrap();
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        answer["answered"].as_u64().unwrap()
    }

    async fn control(&self, method: http::Method, what: &str, body: serde_json::Value) {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("/fake/{what}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into_bytes())
            .unwrap();
        self.client().await.request_text(request).await.unwrap();
    }

    /// What `kubectl apply --server-side -f -` does with `yaml` (documents separated by
    /// `---`): creates or updates each object.
    pub async fn kubectl_apply(&self, yaml: &str) {
        let client = self.client().await;
        for document in yaml.split("\n---").filter(|d| !d.trim().is_empty()) {
            let object: serde_json::Value = serde_saphyr::from_str(document).unwrap();
            let (api, name) = dynamic_api(&client, &object);
            let object: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
            api.patch(
                &name,
                &kube::api::PatchParams::apply("kubectl").force(),
                &kube::api::Patch::Apply(&object),
            )
            .await
            .unwrap();
        }
    }

    /// What `kubectl delete` does with the object `yaml` names.
    pub async fn kubectl_delete(&self, yaml: &str) {
        let client = self.client().await;
        let object: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        let (api, name) = dynamic_api(&client, &object);
        api.delete(&name, &Default::default()).await.unwrap();
    }

    /// One object as `kubectl get -o json` prints it (`null` when absent).
    pub async fn kubectl_get_json(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> serde_json::Value {
        let client = self.client().await;
        let object = serde_json::json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"namespace": namespace, "name": name},
        });
        let (api, name) = dynamic_api(&client, &object);
        match api.get_opt(&name).await.unwrap() {
            Some(object) => serde_json::to_value(object).unwrap(),
            None => serde_json::Value::Null,
        }
    }

    /// The names of the objects of `kind` (`apiVersion` and `kind` as in a manifest) in
    /// `namespace`, as `kubectl get` lists them.
    pub async fn kubectl_get(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<String> {
        let client = self.client().await;
        let object = serde_json::json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"namespace": namespace, "name": ""},
        });
        let (api, _) = dynamic_api(&client, &object);
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()
    }
}

/// The API of the kind `object` says, in its namespace, and its name.
fn dynamic_api(
    client: &kube::Client,
    object: &serde_json::Value,
) -> (kube::Api<kube::api::DynamicObject>, String) {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let lower = kind.to_ascii_lowercase();
    let plural = match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None if lower.ends_with('s') => lower,
        None => format!("{lower}s"),
    };
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(group, version, kind),
        &plural,
    );
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    (
        kube::Api::namespaced_with(client.clone(), namespace, &resource),
        name.to_string(),
    )
}

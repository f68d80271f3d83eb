//! `weftctl check` against a stand-in API server (no API server can run here) whose service
//! proxy reaches a real weft-control: its webhook and its `/ready`.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use weft_tests::kube_api::{self, Reply};

use crate::webhook::{WebhookPki, post, start_in};

/// What the stand-in cluster holds.
#[derive(Clone)]
struct Cluster {
    minor: &'static str,
    denied: &'static [&'static str],
    webhook_installed: bool,
    available: u32,
    issuer_pem: String,
    webhook_cert_pem: String,
    ca_bundle: String,
    webhook_ca: String,
    /// The real control plane behind the service proxy, or none (its pods are down).
    control_plane: Option<(SocketAddr, Arc<WebhookPki>, SocketAddr)>,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn answer(cluster: Cluster, method: http::Method, path: String, body: bytes::Bytes) -> Reply {
    let path = path.split('?').next().unwrap_or_default().to_string();
    match (method.as_str(), path.as_str()) {
        ("GET", "/version") => Reply::Json(
            200,
            json!({
                "major": "1", "minor": cluster.minor, "gitVersion": format!("v1.{}.2", cluster.minor),
                "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64",
            }),
        ),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => {
            let mut review: Value = serde_json::from_slice(&body).unwrap();
            let resource = review["spec"]["resourceAttributes"]["resource"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            review["status"] = json!({"allowed": !cluster.denied.contains(&resource.as_str())});
            Reply::Json(201, review)
        }
        (
            "GET",
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/weft-inject",
        ) if cluster.webhook_installed => Reply::Json(
            200,
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "weft-inject"},
                "webhooks": [{
                    "name": "inject.weft.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                    "clientConfig": {"caBundle": b64(&cluster.ca_bundle), "service": {"name": "weft-webhook", "namespace": "weft", "path": "/inject"}},
                }],
            }),
        ),
        ("GET", "/apis/apps/v1/namespaces/weft/deployments/weft-control") => Reply::Json(
            200,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "weft-control", "namespace": "weft"},
                "spec": {"replicas": 1, "selector": {}, "template": {}},
                "status": {"availableReplicas": cluster.available},
            }),
        ),
        ("GET", "/api/v1/namespaces/weft/secrets/weft-issuer") => Reply::Json(
            200,
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "weft-issuer"},
                "data": {"tls.crt": b64(&cluster.issuer_pem)},
            }),
        ),
        ("GET", "/api/v1/namespaces/weft/secrets/weft-webhook-tls") => Reply::Json(
            200,
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "weft-webhook-tls"},
                "data": {"tls.crt": b64(&cluster.webhook_cert_pem), "ca.crt": b64(&cluster.webhook_ca)},
            }),
        ),
        ("POST", "/api/v1/namespaces/weft/services/https:weft-webhook:443/proxy/inject") => {
            match &cluster.control_plane {
                Some((webhook, pki, _)) => {
                    let (status, answer) = post(*webhook, pki, "/inject", body.to_vec()).await;
                    Reply::Text(status, String::from_utf8_lossy(&answer).into_owned())
                }
                None => Reply::Text(
                    503,
                    "no endpoints available for service \"weft-webhook\"".to_string(),
                ),
            }
        }
        ("GET", "/api/v1/namespaces/weft/services/http:weft-control:metrics/proxy/ready") => {
            match &cluster.control_plane {
                Some((_, _, metrics)) => {
                    match weft_tests::client::http_get(*metrics, "/ready").await {
                        Some((status, body)) => Reply::Text(status, body),
                        None => Reply::Text(503, "unreachable".to_string()),
                    }
                }
                None => Reply::Text(
                    503,
                    "no endpoints available for service \"weft-control\"".to_string(),
                ),
            }
        }
        _ => kube_api::not_found(&path),
    }
}

async fn stand_in(cluster: Cluster) -> SocketAddr {
    kube_api::serve(Arc::new(move |method, path, body| {
        Box::pin(answer(cluster.clone(), method, path, body))
    }))
    .await
}

fn lines(stdout: &str) -> Vec<&str> {
    stdout.lines().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_passes_before_and_after_install() {
    weft_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (cp, webhook, pki) = start_in(dir.path(), &[]).await;
    let issuer_pem = std::fs::read_to_string(cp.data_dir().join("pki/issuer.pem")).unwrap();
    let webhook_cert_pem = std::fs::read_to_string(&pki.cert).unwrap();
    let pki = Arc::new(pki);
    let cluster = Cluster {
        minor: "33",
        denied: &[],
        webhook_installed: false,
        available: 1,
        issuer_pem,
        webhook_cert_pem,
        ca_bundle: pki.ca_pem.clone(),
        webhook_ca: pki.ca_pem.clone(),
        control_plane: Some((webhook, pki.clone(), cp.metrics)),
    };
    let before = kube_api::kubeconfig(dir.path(), stand_in(cluster.clone()).await);
    let (status, stdout, stderr) =
        cp.weftctl(&["check", "--pre", "--kubeconfig", before.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");
    let out = lines(&stdout);
    assert_eq!(out.len(), 12, "{stdout}");
    assert!(out.iter().all(|line| line.starts_with("✔ ")), "{stdout}");
    assert_eq!(
        out[1],
        "✔ Kubernetes is 1.29 or newer (native sidecars) (v1.33.2)"
    );

    let installed = Cluster {
        webhook_installed: true,
        ..cluster
    };
    let after = tempfile::tempdir().unwrap();
    let after = kube_api::kubeconfig(after.path(), stand_in(installed).await);
    let (status, stdout, stderr) = cp.weftctl(&["check", "--kubeconfig", after.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");
    let out = lines(&stdout);
    assert_eq!(out.len(), 8, "{stdout}");
    assert!(out.iter().all(|line| line.starts_with("✔ ")), "{stdout}");
    assert!(
        stdout.contains("✔ the webhook answers AdmissionReviews (answered)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✔ the control plane is ready (/ready answers 200)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_problem_is_a_line_saying_how_to_fix_it() {
    weft_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let cp = weft_tests::mesh::ControlPlane::start("24h").await;
    // An issuer that expired in 2020, and a webhook CA that is not the configured caBundle.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let expired = params.self_signed(&key).unwrap().pem();
    let webhook = crate::webhook::webhook_pki(dir.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let other = crate::webhook::webhook_pki(elsewhere.path());
    let cluster = Cluster {
        minor: "27",
        denied: &["clusterroles"],
        webhook_installed: true,
        available: 0,
        issuer_pem: expired,
        webhook_cert_pem: std::fs::read_to_string(&webhook.cert).unwrap(),
        ca_bundle: other.ca_pem.clone(),
        webhook_ca: webhook.ca_pem.clone(),
        control_plane: None,
    };
    let kubeconfig = kube_api::kubeconfig(dir.path(), stand_in(cluster).await);

    let (status, stdout, stderr) = cp.weftctl(&[
        "check",
        "--pre",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.trim(), "weftctl: 3 of 12 checks failed");
    for expected in [
        "✘ Kubernetes is 1.29 or newer (native sidecars): the cluster runs v1.27.2: upgrade it, or inject with --sidecar-mode classic",
        "✘ you may create clusterroles: not allowed: install as a cluster administrator",
        "✘ no Weft is installed yet: the weft-inject webhook exists",
        "✔ you may create secrets (allowed)",
    ] {
        assert!(stdout.contains(expected), "{expected}\n{stdout}");
    }

    let (status, stdout, stderr) =
        cp.weftctl(&["check", "--kubeconfig", kubeconfig.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.trim(), "weftctl: 6 of 8 checks failed");
    for expected in [
        "✘ the control plane is running: 0 of 1 replicas available: see `kubectl -n weft describe deployment weft-control`",
        "✘ the issuer certificate is valid for 30 days more: expired at 2020-01-01T00:00:00Z",
        "✔ the webhook's certificate is valid for 30 days more",
        "✘ the webhook is configured with its CA: caBundle is not weft-webhook-tls's CA",
        "✘ the webhook answers AdmissionReviews: no answer",
        "✘ the control plane is ready: /ready:",
    ] {
        assert!(stdout.contains(expected), "{expected}\n{stdout}");
    }
}

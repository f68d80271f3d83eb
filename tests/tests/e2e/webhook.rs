//! The admission webhook, as the API server calls it: AdmissionReview v1 over HTTPS to a real
//! weft-control, the JSON Patch applied to the pod, compared with `weftctl inject`'s output.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::{Value, json};
use weft_tests::fake_apiserver::FakeApiServer;
use weft_tests::mesh::{ControlPlane, write_temp};

/// A serving certificate for the webhook from a CA made for this test: what the chart makes and
/// puts in the MutatingWebhookConfiguration's caBundle.
pub(crate) struct WebhookPki {
    ca: rustls::pki_types::CertificateDer<'static>,
    pub(crate) ca_pem: String,
    pub(crate) cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

pub(crate) fn webhook_pki(dir: &Path) -> WebhookPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["weft-webhook.weft.svc".to_string()]).unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    WebhookPki {
        ca: ca.der().clone(),
        ca_pem: ca.pem(),
        cert: write_temp(dir, "webhook.pem", &leaf.pem()),
        key: write_temp(dir, "webhook-key.pem", &key.serialize_pem()),
    }
}

async fn start() -> (ControlPlane, SocketAddr, WebhookPki, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cp, addr, pki) = start_in(dir.path(), &[]).await;
    (cp, addr, pki, dir)
}

/// A control plane serving the webhook with a certificate made in `dir`, and `more` flags.
pub(crate) async fn start_in(dir: &Path, more: &[&str]) -> (ControlPlane, SocketAddr, WebhookPki) {
    let pki = webhook_pki(dir);
    let addr: SocketAddr = ([127, 0, 0, 1], weft_tests::free_port()).into();
    let addr_flag = addr.to_string();
    let mut flags = vec![
        "--webhook-addr",
        &addr_flag,
        "--webhook-cert",
        pki.cert.to_str().unwrap(),
        "--webhook-key",
        pki.key.to_str().unwrap(),
    ];
    flags.extend_from_slice(more);
    let cp = ControlPlane::start_with("24h", &flags).await;
    (cp, addr, pki)
}

/// POSTs `body` to the webhook as the API server does (TLS verified against the caBundle).
pub(crate) async fn post(
    addr: SocketAddr,
    pki: &WebhookPki,
    path: &str,
    body: Vec<u8>,
) -> (u16, Bytes) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("weft-webhook.weft.svc").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn review_of(pod: &Value, namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .unwrap()
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d4b9c-",
            "namespace": "shop",
            "labels": {"app": "web"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "app", "image": "registry.example/web:1.0", "ports": [{"containerPort": 8080}]}],
        }
    })
}

/// The AdmissionReview's response, with its patch (if any) applied to `pod`.
fn outcome(body: &[u8], pod: &Value) -> (Value, Option<Value>) {
    let review: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    let response = review["response"].clone();
    let patched = response.get("patch").map(|patch| {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch.as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        patched
    });
    (response, patched)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_patch_gives_the_pod_weftctl_inject_gives() {
    weft_tests::init();
    let (cp, addr, pki, dir) = start().await;
    let pod = pod(json!({"weft.io/inject": "enabled", "config.weft.io/opaque-ports": "5432"}));
    let (status, body) = post(addr, &pki, "/inject", review_of(&pod, "shop")).await;
    assert_eq!(status, 200);
    let (response, patched) = outcome(&body, &pod);
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true, "{response}");
    let patched = patched.expect("a patch");

    let manifest = write_temp(
        dir.path(),
        "pod.yaml",
        &serde_json::to_string(&pod).unwrap(),
    );
    let (status, stdout, stderr) = cp.weftctl(&["inject", "-f", manifest.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "pod/web-7d4b9c- injected");
    let injected: Value = serde_saphyr::from_str(&stdout).unwrap();
    assert_eq!(patched, injected);
    let env = &patched["spec"]["initContainers"][1]["env"];
    let anchors = env
        .as_array()
        .unwrap()
        .iter()
        .find(|var| var["name"] == "WEFT_PROXY_TRUST_ANCHORS_PEM")
        .unwrap();
    let expected = std::fs::read_to_string(cp.trust_anchor()).unwrap();
    assert_eq!(anchors["value"].as_str().unwrap().trim(), expected.trim());

    // The same pod again, already injected (a re-admitted pod): nothing more to change.
    let (_, body) = post(addr, &pki, "/inject", review_of(&patched, "shop")).await;
    let (response, again) = outcome(&body, &patched);
    assert_eq!(response["allowed"], true);
    assert!(again.is_none_or(|again| again == patched));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_did_not_opt_in_and_other_kinds_pass_unchanged() {
    weft_tests::init();
    let (_cp, addr, pki, _dir) = start().await;
    for annotations in [json!({}), json!({"weft.io/inject": "disabled"})] {
        let pod = pod(annotations);
        let (status, body) = post(addr, &pki, "/inject", review_of(&pod, "shop")).await;
        assert_eq!(status, 200);
        let (response, patched) = outcome(&body, &pod);
        assert_eq!(response["allowed"], true, "{response}");
        assert!(patched.is_none(), "{response}");
    }
    let mut review: Value = serde_json::from_slice(&review_of(&pod(json!({})), "shop")).unwrap();
    review["request"]["kind"]["kind"] = "Service".into();
    review["request"]["object"] =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
    let (_, body) = post(addr, &pki, "/inject", serde_json::to_vec(&review).unwrap()).await;
    let (response, patched) = outcome(&body, &Value::Null);
    assert_eq!(response["allowed"], true);
    assert!(patched.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reviews_and_bad_annotations_get_an_answer_saying_why_and_the_webhook_lives_on() {
    weft_tests::init();
    let (_cp, addr, pki, _dir) = start().await;
    let bodies: [(&[u8], &str); 3] = [
        (b"{not json", "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "no request",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
            "not an AdmissionReview",
        ),
    ];
    for (body, why) in bodies {
        let (status, answer) = post(addr, &pki, "/inject", body.to_vec()).await;
        assert_eq!(status, 200);
        let (response, patched) = outcome(&answer, &Value::Null);
        assert_eq!(response["allowed"], false, "{response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
        assert!(patched.is_none());
    }

    let pod =
        pod(json!({"weft.io/inject": "enabled", "config.weft.io/skip-outbound-ports": "http"}));
    let (_, body) = post(addr, &pki, "/inject", review_of(&pod, "shop")).await;
    let (response, patched) = outcome(&body, &pod);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("config.weft.io/skip-outbound-ports"),
        "{message}"
    );
    assert!(patched.is_none());

    let (status, _) = post(addr, &pki, "/mutate", review_of(&pod, "shop")).await;
    assert_eq!(status, 404);
    let oversized = vec![b' '; 5 * 1024 * 1024];
    let (status, _) = post(addr, &pki, "/inject", oversized).await;
    assert_eq!(status, 413);

    // Still serving.
    let pod = self::pod(json!({"weft.io/inject": "enabled"}));
    let (_, body) = post(addr, &pki, "/inject", review_of(&pod, "shop")).await;
    assert!(outcome(&body, &pod).1.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_annotated_weft_io_inject_opts_its_pods_in() {
    weft_tests::init();
    let dir = tempfile::tempdir().unwrap();
    // The namespaces, on an API server the webhook lists and watches.
    let api = FakeApiServer::start().await;
    let namespaces: kube::Api<Namespace> = kube::Api::all(api.client().await);
    for namespace in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "annotations": {"weft.io/inject": "enabled"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
    ] {
        let namespace: Namespace = serde_json::from_value(namespace).unwrap();
        namespaces
            .create(&kube::api::PostParams::default(), &namespace)
            .await
            .unwrap();
    }
    let kubeconfig = api.kubeconfig().to_path_buf();
    let (_cp, addr, pki) =
        start_in(dir.path(), &["--kubeconfig", kubeconfig.to_str().unwrap()]).await;

    let plain = pod(json!({}));
    let pki = Arc::new(pki);
    weft_tests::eventually(
        "the namespace's annotation to apply",
        Duration::from_secs(20),
        || {
            let (pki, plain) = (pki.clone(), plain.clone());
            async move {
                let (_, body) = post(addr, &pki, "/inject", review_of(&plain, "shop")).await;
                outcome(&body, &plain).1.map(|_| ())
            }
        },
    )
    .await;
    for (annotations, namespace) in [
        (json!({"weft.io/inject": "disabled"}), "shop"),
        (json!({}), "other"),
        (json!({}), "nowhere"),
    ] {
        let pod = pod(annotations);
        let (_, body) = post(addr, &pki, "/inject", review_of(&pod, namespace)).await;
        let (response, patched) = outcome(&body, &pod);
        assert_eq!(response["allowed"], true);
        assert!(patched.is_none(), "{namespace}: {response}");
    }
}

/// The API server is one caller among whoever reaches the webhook's port: the port's connections
/// are capped per address like the gRPC ports', and a request head that never ends is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_hold_the_webhook_are_capped_and_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    weft_tests::init();
    crate::limits::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let (cp, addr, pki) = start_in(dir.path(), &["--max-connections-per-ip", "20"]).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 3);
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(stream) =
            crate::limits::tls_from(attacker, addr, "weft-webhook.weft.svc", tls.clone()).await
        {
            held.push(stream);
        }
    }
    assert!(
        held.len() <= 20,
        "{} connections admitted from one address",
        held.len()
    );
    let metrics = weft_tests::client::http_get(cp.metrics, "/metrics")
        .await
        .unwrap()
        .1;
    let refused = weft_tests::mesh::metric_value(
        &metrics,
        "weft_control_connections_refused_total{reason=\"connections_per_ip\"}",
    );
    assert!(refused >= Some(80.0), "{refused:?}");

    // The API server, from its own address, is still answered.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": {"weft.io/inject": "enabled"}}, "spec": {"containers": [{"name": "app", "image": "app"}]}});
    let (status, _) = post(addr, &pki, "/inject", review_of(&pod, "default")).await;
    assert_eq!(status, 200);

    // A request head that stops half-way is closed by the server, not held.
    let mut slow = held.pop().unwrap();
    slow.write_all(b"POST /inject HTTP/1.1\r\nHost: weft-webhook\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a half-sent request head held its connection for a minute"
    );
}

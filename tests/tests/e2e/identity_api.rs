//! Identity/Certify and the admin API over real gRPC, with their error statuses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft_api::client::ControlPlaneTarget;
use weft_api::identity::CertifyRequest;
use weft_api::identity::identity_client::IdentityClient;
use weft_certs::{ALPN_H2, CertStore, Credential, Identity, LeafKey, TrustAnchors};
use weft_tests::eventually;
use weft_tests::mesh::ControlPlane;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

struct Caller {
    anchors: TrustAnchors,
    target: ControlPlaneTarget,
    certs: Arc<CertStore>,
}

impl Caller {
    fn new(cp: &ControlPlane) -> Self {
        weft_tests::init();
        let anchors = TrustAnchors::from_pem(&std::fs::read(cp.trust_anchor()).unwrap()).unwrap();
        let certs = CertStore::new();
        let tls = weft_certs::client_config(&anchors, certs.clone(), &[ALPN_H2]).unwrap();
        let target = ControlPlaneTarget {
            addr: cp.proxy_api.to_string(),
            server_name: "weft-control.weft.serviceaccount.identity.cluster.local".to_string(),
            tls: Arc::new(tls),
        };
        Self {
            anchors,
            target,
            certs,
        }
    }

    async fn certify(
        &self,
        identity: &str,
        csr: Vec<u8>,
        token: &str,
    ) -> Result<Vec<Vec<u8>>, tonic::Status> {
        let channel = self.target.channel().await.unwrap();
        let request = CertifyRequest {
            identity: identity.to_string(),
            csr,
            token: token.to_string(),
        };
        IdentityClient::new(channel)
            .certify(request)
            .await
            .map(|r| r.into_inner().chain)
    }
}

impl Caller {
    /// `chain` as DER certificates, checked to be `identity`'s under the trust anchors.
    fn verified(
        &self,
        chain: Vec<Vec<u8>>,
        identity: &Identity,
    ) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        let chain: Vec<_> = chain
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
        weft_certs::verify_peer(&self.anchors, &chain, identity, SystemTime::now()).unwrap();
        chain
    }

    /// Presents `chain` (for `key`) as the client certificate from now on: renewal's proof.
    fn present(
        &self,
        key: &LeafKey,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        identity: &Identity,
    ) {
        self.certs.set(Credential {
            key: key.certify(chain).unwrap(),
            identity: identity.clone(),
            valid_from: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        });
    }
}

fn csr_for(identity: &str) -> (LeafKey, Vec<u8>) {
    let key = LeafKey::generate().unwrap();
    let csr = key.csr(&identity.parse().unwrap()).unwrap().to_vec();
    (key, csr)
}

fn token(cp: &ControlPlane, identity: &str, ttl: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--identity", identity];
    if let Some(ttl) = ttl {
        args.extend(["--ttl", ttl]);
    }
    let (status, stdout, stderr) = cp.weftctl(&args);
    assert!(status.success(), "{stderr}");
    stdout.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_signs_a_csr_proven_by_a_token_and_renews_by_certificate() {
    let cp = ControlPlane::start("1h").await;
    let caller = Caller::new(&cp);
    let web_token = token(&cp, WEB, None);

    let (key, csr) = csr_for(WEB);
    let chain = caller.certify(WEB, csr, &web_token).await.unwrap();
    let web: Identity = WEB.parse().unwrap();
    let chain = caller.verified(chain, &web);

    // Without a token and without a certificate: refused.
    let (_, csr) = csr_for(WEB);
    let status = caller.certify(WEB, csr, "").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // Presenting the current certificate is proof enough.
    caller.present(&key, chain, &web);
    let (_, csr) = csr_for(WEB);
    caller.certify(WEB, csr, "").await.unwrap();

    // …but only for its own identity.
    let (_, csr) = csr_for(API);
    let status = caller.certify(API, csr, "").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_errors_are_precise_grpc_statuses() {
    let cp = ControlPlane::start("1h").await;
    let caller = Caller::new(&cp);
    let web_token = token(&cp, WEB, None);

    let status = caller
        .certify(WEB, b"not a csr".to_vec(), &web_token)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("malformed CSR"),
        "{}",
        status.message()
    );

    let status = caller
        .certify("spiffe://nope", csr_for(WEB).1, &web_token)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("identity:"),
        "{}",
        status.message()
    );

    let status = caller
        .certify(WEB, csr_for(WEB).1, "weftjt_unknown")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "unknown join token");

    // A token for web cannot get a certificate for api.
    let status = caller
        .certify(API, csr_for(API).1, &web_token)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("proved spiffe://cluster.local/ns/shop/sa/web"),
        "{}",
        status.message()
    );

    let short = token(&cp, WEB, Some("1s"));
    let status = eventually(
        "the 1s token to expire",
        Duration::from_secs(10),
        || async { caller.certify(WEB, csr_for(WEB).1, &short).await.err() },
    )
    .await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "join token expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_admin_credential() {
    let cp = ControlPlane::start("1h").await;
    let wrong = cp.dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-admin-credential").unwrap();
    let (status, _, stderr) = cp.weftctl(&[
        "--admin-token-file",
        wrong.to_str().unwrap(),
        "token",
        "create",
        "--identity",
        WEB,
    ]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr.trim(),
        "weftctl: Unauthenticated: admin token is not valid"
    );

    let (status, _, stderr) = cp.weftctl(&[
        "token",
        "create",
        "--identity",
        "spiffe://other.domain/ns/a/sa/b",
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("outside this control plane's trust domain"),
        "{stderr}"
    );

    // The control plane's own namespace is reserved: no workload may pose as weft-control.
    let (status, _, stderr) = cp.weftctl(&[
        "token",
        "create",
        "--identity",
        "spiffe://cluster.local/ns/weft/sa/weft-control",
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("reserved for the control plane"),
        "{stderr}"
    );

    // Listing shows ids, never secrets; revoking works by id.
    let secret = token(&cp, WEB, None);
    let (_, list, _) = cp.weftctl(&["token", "list"]);
    assert!(list.contains(WEB) && !list.contains(&secret), "{list}");
    let id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (status, _, stderr) = cp.weftctl(&["token", "revoke", &id]);
    assert!(status.success(), "{stderr}");
    let caller = Caller::new(&cp);
    let status = caller
        .certify(WEB, csr_for(WEB).1, &secret)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_certs_init_makes_a_pki_the_control_plane_and_proxies_use() {
    use std::process::Command;
    use weft_tests::mesh::{Proxy, ProxySpec};
    use weft_tests::process::{Proc, bin, run};

    weft_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let mut init = Command::new(bin("weftctl"));
    init.args(["certs", "init", "--trust-domain", "prod.example", "--out"])
        .arg(&pki);
    let (status, stdout, stderr) = run(init);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("keep it offline"), "{stdout}");
    for file in [
        "trust-anchor.pem",
        "trust-anchor-key.pem",
        "issuer.pem",
        "issuer-key.pem",
    ] {
        assert!(pki.join(file).exists(), "{file} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pki.join("issuer-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "issuer key must not be readable by others");

    // Writing over an existing PKI is refused.
    let mut again = Command::new(bin("weftctl"));
    again.args(["certs", "init", "--out"]).arg(&pki);
    let (status, _, stderr) = run(again);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");

    // A control plane on that PKI signs for prod.example, and a proxy of that domain gets ready.
    let mut cp = ControlPlane::start("1h").await;
    cp.kill9();
    let ports = (cp.proxy_api, cp.admin, cp.metrics);
    let mut command = Command::new(bin("weft-control"));
    command
        .arg("--data-dir")
        .arg(cp.data_dir())
        .arg("--pki-dir")
        .arg(&pki)
        .args(["--proxy-api-addr", &ports.0.to_string()])
        .args(["--admin-addr", &ports.1.to_string()])
        .args(["--metrics-addr", &ports.2.to_string()]);
    cp.proc = Proc::spawn(
        "weft-control (custom PKI)",
        command,
        dir.path().join("cp.log"),
    );
    cp.wait_ready().await;
    std::fs::copy(pki.join("trust-anchor.pem"), cp.trust_anchor()).unwrap();
    let proxy = Proxy::start(&cp, ProxySpec::new("spiffe://prod.example/ns/shop/sa/web")).await;
    assert!(
        proxy
            .metric("weft_identity_cert_expiry_timestamp_seconds")
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_client_certificate_replaces_the_token() {
    use std::process::Command;
    use weft_tests::process::{bin, run};

    let cp = ControlPlane::start("1h").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = cp.data_dir().join("pki");
    let mint = |identity: Option<&str>, out: &std::path::Path| {
        let mut command = Command::new(bin("weftctl"));
        command
            .args(["certs", "admin", "--pki-dir"])
            .arg(&pki)
            .arg("--out")
            .arg(out);
        if let Some(identity) = identity {
            command.args(["--identity", identity]);
        }
        let (status, _, stderr) = run(command);
        assert!(status.success(), "{stderr}");
    };
    mint(None, &dir.path().join("admin"));
    mint(Some(WEB), &dir.path().join("web"));
    let with_cert = |who: &str| {
        let cert = dir.path().join(who).join("admin.pem");
        let key = dir.path().join(who).join("admin-key.pem");
        cp.weftctl(&[
            "--admin-token-file",
            "/nonexistent",
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
            "get",
            "services",
        ])
    };
    let (status, stdout, stderr) = with_cert("admin");
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("NAMESPACE"), "{stdout}");
    // A valid certificate of another identity is not an admin.
    let (status, _, stderr) = with_cert("web");
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
}

/// Tokens as the kubelet projects them: JWT-shaped, opaque to Weft, known to the API server.
const SA_WEB: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzaG9wL3dlYiJ9.c2lnbmF0dXJl";
const SA_API: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzaG9wL2FwaSJ9.c2lnbmF0dXJl";
const SA_WEB_FOR_API_SERVER: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJrdWJlIn0.c2lnbmF0dXJl";
const SA_WEB_EXPIRED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl";
const SA_WEB_LATER: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJsYXRlciJ9.c2lnbmF0dXJl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_reviewed_by_the_api_server_proves_that_service_account_only() {
    weft_tests::init();
    let api = weft_tests::fake_apiserver::FakeApiServer::start().await;
    let kubeconfig = api.kubeconfig().to_str().unwrap().to_string();
    let cp = ControlPlane::start_with("1h", &["--kubeconfig", &kubeconfig]).await;
    api.add_token(SA_WEB, "shop", "web", &["weft"], false).await;
    api.add_token(SA_API, "shop", "api", &["weft"], false).await;
    api.add_token(
        SA_WEB_FOR_API_SERVER,
        "shop",
        "web",
        &["https://kubernetes.default.svc"],
        false,
    )
    .await;
    api.add_token(SA_WEB_EXPIRED, "shop", "web", &["weft"], true)
        .await;
    api.add_token(SA_WEB_LATER, "shop", "web", &["weft"], false)
        .await;
    let caller = Caller::new(&cp);

    // The token of ServiceAccount shop/web gets exactly spiffe://…/ns/shop/sa/web.
    let (key, csr) = csr_for(WEB);
    let chain = caller.certify(WEB, csr, SA_WEB).await.unwrap();
    let web: Identity = WEB.parse().unwrap();
    let chain = caller.verified(chain, &web);

    // The review is reused for a while: a burst of Certify calls with one token (a proxy
    // restarting, retrying) costs the API server one review, not one each.
    let reviewed = api.token_reviews_answered().await;
    assert!(reviewed >= 1, "the first Certify was reviewed");
    for _ in 0..3 {
        let (_, csr) = csr_for(WEB);
        caller.certify(WEB, csr, SA_WEB).await.unwrap();
    }
    assert_eq!(api.token_reviews_answered().await, reviewed);

    // Another ServiceAccount's token proves that one, not web: the identity comes from the
    // review, never from the request.
    let (_, csr) = csr_for(WEB);
    let status = caller.certify(WEB, csr, SA_API).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // A token minted for the API server's audience, not Weft's.
    let (_, csr) = csr_for(WEB);
    let status = caller
        .certify(WEB, csr, SA_WEB_FOR_API_SERVER)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("is invalid for the target audiences"),
        "{}",
        status.message()
    );

    let (_, csr) = csr_for(WEB);
    let status = caller.certify(WEB, csr, SA_WEB_EXPIRED).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{}", status.message());

    // The API server cannot review: the caller is told to come back, not refused for good.
    api.fail_token_reviews(Some(500)).await;
    let (_, csr) = csr_for(WEB);
    let status = caller.certify(WEB, csr, SA_WEB_LATER).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // An API server that does not answer at all: the same, after a bounded wait, never a hang.
    api.hang_token_reviews().await;
    let (_, csr) = csr_for(WEB);
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        caller.certify(WEB, csr, SA_WEB_LATER),
    )
    .await
    .expect("Certify must not hang on a silent API server");
    let status = waited.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("did not answer"),
        "{}",
        status.message()
    );
    api.fail_token_reviews(None).await;
    let (_, csr) = csr_for(WEB);
    caller.certify(WEB, csr, SA_WEB_LATER).await.unwrap();

    // Join tokens keep working beside them (VMs).
    let api_join_token = token(&cp, API, None);
    let (_, csr) = csr_for(API);
    caller.certify(API, csr, &api_join_token).await.unwrap();

    // A certificate from a ServiceAccount token does not renew by itself: a deleted pod or
    // ServiceAccount must stop renewing, so each renewal brings a token to review again (a
    // proxy falls back to its token on this UNAUTHENTICATED).
    caller.present(&key, chain, &web);
    let (_, csr) = csr_for(WEB);
    let status = caller.certify(WEB, csr, "").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("renew with a fresh one"),
        "{}",
        status.message()
    );
    let (_, csr) = csr_for(WEB);
    caller.certify(WEB, csr, SA_WEB_LATER).await.unwrap();
    // A revoked identity gets nothing, whatever the token.
    let (status, _, stderr) = cp.weftctl(&["identity", "revoke", WEB]);
    assert!(status.success(), "{stderr}");
    let (_, csr) = csr_for(WEB);
    let status = caller.certify(WEB, csr, SA_WEB_LATER).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kubernetes_api_a_service_account_token_is_refused_saying_why() {
    let cp = ControlPlane::start("1h").await;
    let caller = Caller::new(&cp);
    let (_, csr) = csr_for(WEB);
    let status = caller.certify(WEB, csr, SA_WEB).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("reviews no Kubernetes ServiceAccount tokens"),
        "{}",
        status.message()
    );
}

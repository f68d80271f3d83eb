//! The mesh on Kubernetes, against weft-fake-apiserver (no kube-apiserver can run here): real
//! proxies and a real control plane that reaches the API over HTTPS with a kubeconfig.

use std::time::Duration;

use bytes::Bytes;
use weft_tests::apps::start_echo_app;
use weft_tests::client::MeshClient;
use weft_tests::fake_apiserver::FakeApiServer;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::{CLIENT_ID, HTTP_AUTHORITY, SERVER_ID};

/// Projected ServiceAccount tokens as the kubelet writes them into the pods (audience `weft`).
const WEB_TOKEN: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDp3ZWIifQ.c2ln";
const API_TOKEN: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDphcGkifQ.c2ln";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_proving_their_service_accounts_with_projected_tokens_talk_as_those_identities() {
    weft_tests::init();
    let api = FakeApiServer::start().await;
    let kubeconfig = api.kubeconfig().to_str().unwrap().to_string();
    // Certificates live 10 s, so the proxies renew during the test.
    let cp = ControlPlane::start_with("10s", &["--kubeconfig", &kubeconfig]).await;
    api.add_token(WEB_TOKEN, "shop", "web", &["weft"], false)
        .await;
    api.add_token(API_TOKEN, "shop", "api", &["weft"], false)
        .await;
    let tokens = tempfile::tempdir().unwrap();
    let token_file = |name: &str, token: &str| {
        let path = tokens.path().join(name);
        std::fs::write(&path, token).unwrap();
        path
    };

    let app = start_echo_app().await;
    let server = ProxySpec::new(SERVER_ID)
        .app_port(app.port)
        .token(token_file("api", API_TOKEN));
    let server = Proxy::start(&cp, server).await;
    let client = ProxySpec::new(CLIENT_ID)
        .route(HTTP_AUTHORITY, &server)
        .token(token_file("web", WEB_TOKEN));
    let client = Proxy::start(&cp, client).await;

    let call = || async {
        MeshClient::http1(client.outbound)
            .send("GET", HTTP_AUTHORITY, "/", Bytes::new())
            .await
            .unwrap()
    };
    let response = call().await;
    assert_eq!(response.status(), 200);
    // The server proxy verified the client's certificate, issued for the ServiceAccount the
    // API server said the token belongs to.
    assert_eq!(response.headers()["x-seen-client-id"], CLIENT_ID);

    // A ServiceAccount certificate renews only with the token, reviewed again: the proxy's
    // renewal by certificate is refused, it falls back to its token, and carries on.
    weft_tests::eventually(
        "the client proxy to renew its certificate",
        Duration::from_secs(60),
        || async {
            let metrics = client.metrics().await;
            let renewed = metrics.lines().any(|line| {
                line.strip_prefix(r#"weft_identity_cert_requests_total{result="ok"} "#)
                    .and_then(|count| count.parse::<u64>().ok())
                    .is_some_and(|count| count >= 2)
            });
            renewed.then_some(())
        },
    )
    .await;
    let response = call().await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-seen-client-id"], CLIENT_ID);
}

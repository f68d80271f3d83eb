//! Inbound authorization, modes and rate limits, end to end: policies applied with `weftctl`,
//! pushed through the inbound watch, enforced on real connections from a Weft client proxy, a
//! raw peer of another identity, and plaintext clients.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use weft_tests::apps::{App, start_echo_app};
use weft_tests::client::{MeshClient, peer_h2};
use weft_tests::eventually;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};

use crate::{CLIENT_ID, SERVER_ID};

const AUTHORITY: &str = "api.shop:8080";
const CART_ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

/// A control plane, the `api` app behind its proxy (registered as a Workload of Service
/// `api`), and a client proxy as `web`.
struct Pods {
    cp: ControlPlane,
    app: App,
    server: Proxy,
    client: Proxy,
}

impl Pods {
    async fn start(server_env: &[(&str, &str)]) -> Self {
        weft_tests::init();
        let cp = ControlPlane::start("24h").await;
        let app = start_echo_app().await;
        let mut spec = ProxySpec::new(SERVER_ID).app_port(app.port);
        for (name, value) in server_env {
            spec = spec.env(name, value);
        }
        let server = Proxy::start(&cp, spec).await;
        cp.apply_ok(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: api, namespace: shop}}\nspec: {{selector: {{app: api}}, ports: [{{port: 8080, targetPort: {port}}}]}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: api-1, namespace: shop, labels: {{app: api}}}}\nspec: {{address: 127.0.0.1, proxyPort: {inbound}, identity: \"{SERVER_ID}\"}}\n",
            port = app.port,
            inbound = server.inbound.port(),
        ));
        let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
        Self {
            cp,
            app,
            server,
            client,
        }
    }

    fn http(&self) -> MeshClient {
        MeshClient::http1(self.client.outbound)
    }

    /// `InboundDefaults` for the api workload.
    fn defaults(&self, spec: &str) {
        self.cp.apply_ok(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: InboundDefaults\nmetadata: {{name: api, namespace: shop}}\nspec:\n  selector: {{app: api}}\n{spec}\n"
        ));
    }

    /// A raw peer of the trust domain holding `identity`'s certificate.
    async fn peer(&self, identity: &str) -> SendRequest<Empty<Bytes>> {
        let certs = self.cp.credential(identity).await;
        peer_h2(self.server.inbound, &self.cp.anchors(), certs, SERVER_ID)
            .await
            .unwrap()
    }
}

/// Sends GET `path` with `headers` on a raw peer connection; the response head.
async fn peer_send(
    peer: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<Bytes> {
    let mut request = http::Request::builder()
        .method(if headers.is_empty() { "GET" } else { "POST" })
        .uri(format!("http://{AUTHORITY}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        peer.send_request(request.body(Empty::new()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    http::Response::from_parts(parts, body)
}

/// A plaintext GET of `path` straight to the server proxy's inbound port.
async fn plaintext_get(proxy: &Proxy, path: &str) -> Option<u16> {
    weft_tests::client::plaintext_get(proxy.inbound, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_with_one_policy_allows_only_what_it_names_and_audit_counts_the_rest() {
    let pods = Pods::start(&[]).await;
    let port = pods.app.port;
    pods.defaults("  authorization: deny");
    pods.cp.apply_ok(&format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: web-api, namespace: shop}}\nspec:\n  selector: {{app: api}}\n  ports: [{port}]\n  http: [{{path: {{type: PathPrefix, value: /api}}}}]\n  from: [{{identities: [\"{CLIENT_ID}\"]}}]\n"
    ));
    let client = pods.http();
    eventually(
        "the policy to reach the server proxy",
        Duration::from_secs(20),
        || async {
            let response = client.send("GET", AUTHORITY, "/admin", Bytes::new()).await;
            response.ok().filter(|r| r.status() == 403)
        },
    )
    .await;
    let allowed = client
        .send("GET", AUTHORITY, "/api/x", Bytes::new())
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["x-seen-client-id"], CLIENT_ID);
    let denied = client
        .send("GET", AUTHORITY, "/admin", Bytes::new())
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let reason = denied.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(
        reason.starts_with("unauthorized:") && reason.contains(CLIENT_ID),
        "{reason}"
    );

    // A third pod: refused on every path, and over gRPC with PERMISSION_DENIED.
    let mut cart = pods.peer(CART_ID).await;
    assert_eq!(peer_send(&mut cart, "/api/x", &[]).await.status(), 403);
    let grpc = peer_send(
        &mut cart,
        "/api.v1.Api/Get",
        &[("content-type", "application/grpc"), ("te", "trailers")],
    )
    .await;
    assert_eq!(grpc.status(), 200);
    assert_eq!(grpc.headers()["grpc-status"], "7");
    // An unmeshed client: a deny default is strict, so plaintext is not even answered.
    assert_eq!(plaintext_get(&pods.server, "/api/x").await, None);
    let requests_before = pods.app.request_count();

    // Audit: the third pod gets through, and is counted as what would have been denied.
    pods.defaults("  authorization: audit");
    eventually("audit to apply", Duration::from_secs(20), || {
        let mut cart = cart.clone();
        async move {
            let status = peer_send(&mut cart, "/api/x", &[]).await.status();
            (status == 200).then_some(())
        }
    })
    .await;
    assert!(pods.app.request_count() > requests_before);
    let audited = pods
        .server
        .metric("weft_inbound_authz_total{decision=\"audit\",policy=\"default:deny\"}")
        .await;
    assert!(audited >= Some(1.0), "{audited:?}");
    let allowed = pods
        .server
        .metric("weft_inbound_authz_total{decision=\"allow\",policy=\"shop/web-api\"}")
        .await;
    assert!(allowed >= Some(1.0), "{allowed:?}");
    let denied = pods
        .server
        .metric("weft_inbound_authz_total{decision=\"deny\",policy=\"default:deny\"}")
        .await;
    assert!(denied >= Some(3.0), "{denied:?}");

    // Deleting the policy leaves the default alone in charge: web's /admin passes (audit).
    let (status, _, stderr) =
        pods.cp
            .weftctl(&["delete", "authorizationpolicy", "web-api", "-n", "shop"]);
    assert!(status.success(), "{stderr}");
    eventually("the deletion to apply", Duration::from_secs(20), || async {
        let response = client.send("GET", AUTHORITY, "/admin", Bytes::new()).await;
        response.ok().filter(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissive_port_takes_the_kubelet_in_plaintext_and_a_strict_one_refuses_it() {
    let pods = Pods::start(&[]).await;
    let port = pods.app.port;
    // The proxy's own default (all-authenticated) is strict.
    assert_eq!(plaintext_get(&pods.server, "/healthz").await, None);
    pods.defaults(&format!(
        "  mode: strict\n  ports: [{{port: {port}, mode: permissive, authorization: all-unauthenticated}}]"
    ));
    eventually(
        "the port to turn permissive",
        Duration::from_secs(20),
        || async { (plaintext_get(&pods.server, "/healthz").await == Some(200)).then_some(()) },
    )
    .await;
    let metrics = pods.server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("weft_http_requests_total")
                && line.contains("peer_identity=\"unauthenticated\"")),
        "{metrics}"
    );
    // Meshed traffic still works, with its identity.
    let response = pods
        .http()
        .send("GET", AUTHORITY, "/", Bytes::new())
        .await
        .unwrap();
    assert_eq!(response.headers()["x-seen-client-id"], CLIENT_ID);
    pods.defaults(&format!("  ports: [{{port: {port}, mode: strict}}]"));
    eventually(
        "the port to turn strict",
        Duration::from_secs(20),
        || async {
            plaintext_get(&pods.server, "/healthz")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    let refused = pods
        .server
        .metric("weft_inbound_refused_total{reason=\"plaintext\"}")
        .await;
    assert!(refused >= Some(2.0), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_configuration_sets_the_default_where_the_control_plane_says_nothing() {
    let pods = Pods::start(&[("WEFT_PROXY_DEFAULT_INBOUND_POLICY", "all-unauthenticated")]).await;
    // Permissive by implication: a plaintext client is served, with no identity stamped.
    eventually(
        "plaintext to be served",
        Duration::from_secs(20),
        || async { (plaintext_get(&pods.server, "/").await == Some(200)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_rate_limits_refuse_with_429_per_identity() {
    let pods = Pods::start(&[]).await;
    pods.defaults("  rateLimit: {perIdentity: {requestsPerSecond: 1, burst: 2}}");
    let client = pods.http();
    // Bounded: at most 50 requests until the limit (pushed meanwhile) refuses one.
    let mut limited = None;
    for _ in 0..50 {
        let response = client
            .send("GET", AUTHORITY, "/", Bytes::new())
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let limited = limited.expect("a request past the per-identity limit");
    let reason = limited.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(reason.contains("per client identity"), "{reason}");
    // Another identity has a bucket of its own.
    let mut cart = pods.peer(CART_ID).await;
    assert_eq!(peer_send(&mut cart, "/", &[]).await.status(), 200);
    let counted = pods
        .server
        .metric("weft_inbound_rate_limited_total{limit=\"per_identity\"}")
        .await;
    assert!(counted >= Some(1.0), "{counted:?}");
}

/// An opaque stream from a raw peer holding `identity`'s certificate, its header sent.
async fn opaque_peer(
    cp: &ControlPlane,
    server: &Proxy,
    identity: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let certs = cp.credential(identity).await;
    weft_tests::client::opaque_peer(server.inbound, &cp.anchors(), certs, SERVER_ID)
        .await
        .unwrap()
}

/// The app's greeting on `stream`, or `None` when the connection was closed instead.
async fn greeting<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut hello = [0u8; 6];
    match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut hello))
        .await
        .expect("an answer or a close")
    {
        Ok(_) => Some(String::from_utf8_lossy(&hello).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_is_authorized_when_it_opens_and_again_when_the_policy_changes() {
    weft_tests::init();
    let cp = ControlPlane::start("24h").await;
    let echo = weft_tests::apps::start_tcp_echo("127.0.0.1:0").await;
    let server = Proxy::start(
        &cp,
        ProxySpec::new(SERVER_ID)
            .app_port(echo.port)
            .env("WEFT_PROXY_OPAQUE_PORTS", &echo.port.to_string()),
    )
    .await;
    let allow = |who: &str| {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: db-1, namespace: shop, labels: {{app: db}}}}\nspec: {{address: 127.0.0.1, proxyPort: {inbound}, identity: \"{SERVER_ID}\"}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: db-clients, namespace: shop}}\nspec:\n  selector: {{app: db}}\n  ports: [{port}]\n  from: [{{identities: [\"{who}\"]}}]\n",
            inbound = server.inbound.port(),
            port = echo.port,
        )
    };
    cp.apply_ok(&allow(CLIENT_ID));
    // Until the policy arrives, the default lets every authenticated peer in: wait for cart's
    // refusal.
    eventually(
        "the policy to reach the proxy",
        Duration::from_secs(20),
        || async {
            let mut cart = opaque_peer(&cp, &server, CART_ID).await;
            greeting(&mut cart).await.is_none().then_some(())
        },
    )
    .await;
    let mut web = opaque_peer(&cp, &server, CLIENT_ID).await;
    assert_eq!(greeting(&mut web).await.as_deref(), Some("hello\n"));

    // The policy now names cart only: web's open connection is closed at the change.
    cp.apply_ok(&allow(CART_ID));
    assert_eq!(
        greeting(&mut web).await,
        None,
        "the open connection must be closed once its client is no longer allowed"
    );
    let mut cart = opaque_peer(&cp, &server, CART_ID).await;
    assert_eq!(greeting(&mut cart).await.as_deref(), Some("hello\n"));
    let refused = server
        .metric("weft_inbound_refused_total{reason=\"unauthorized\"}")
        .await;
    assert!(refused >= Some(2.0), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_for_unauthenticated_probes_opens_only_their_path_to_plaintext() {
    let pods = Pods::start(&[]).await;
    let port = pods.app.port;
    pods.defaults("  authorization: deny");
    pods.cp.apply_ok(&format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: probes, namespace: shop}}\nspec:\n  selector: {{app: api}}\n  ports: [{port}]\n  http: [{{path: {{type: Exact, value: /healthz}}}}]\n  from: [{{unauthenticated: true}}]\n"
    ));
    // No mode is set: the policy that takes unauthenticated clients makes the port permissive.
    eventually(
        "the probe policy to apply",
        Duration::from_secs(20),
        || async { (plaintext_get(&pods.server, "/healthz").await == Some(200)).then_some(()) },
    )
    .await;
    assert_eq!(plaintext_get(&pods.server, "/admin").await, Some(403));
    let meshed = pods
        .http()
        .send("GET", AUTHORITY, "/admin", Bytes::new())
        .await
        .unwrap();
    assert_eq!(meshed.status(), 403);
}

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

/// Policy in the API server: `weftctl apply` writes it there through weft-control, what
/// kubectl writes there is served to the proxies (traffic moves when a route changes), and
/// `weftctl get` shows what kubectl wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_weftctl_change_the_same_policy_in_the_api_server() {
    use crate::cluster::{Backend, SERVICES, split};

    weft_tests::init();
    let api = FakeApiServer::start().await;
    let cp = control_plane_keeping_policy_in(&api).await;
    cp.apply_ok(SERVICES);
    let v1 = Backend::start(&cp, "api-1", "v1").await;
    let v2 = Backend::start(&cp, "api-2", "v2").await;
    let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    let mut workloads = api
        .kubectl_get("policy.weft.io/v1alpha1", "Workload", "shop")
        .await;
    workloads.sort();
    assert_eq!(
        workloads,
        ["api-1", "api-2"],
        "weftctl apply wrote to the API server"
    );

    let client = MeshClient::http1(client.outbound);
    api.kubectl_apply(&split(0, 100)).await;
    all_traffic_reaches(&client, &v2).await;
    api.kubectl_apply(&split(100, 0)).await;
    all_traffic_reaches(&client, &v1).await;

    let (status, stdout, stderr) = cp.weftctl(&["get", "httproutes", "-n", "shop"]);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("split"),
        "weftctl shows kubectl's route: {stdout}"
    );
    api.kubectl_delete(&split(100, 0)).await;
    weft_tests::eventually("weftctl to see the delete", Duration::from_secs(10), || {
        let (_, stdout, _) = cp.weftctl(&["get", "httproutes", "-n", "shop"]);
        async move { (!stdout.contains("split")).then_some(()) }
    })
    .await;
}

/// Discovery from the cluster itself: core Services, their EndpointSlices and meshed Pods, all
/// written with kubectl and no Weft resource, place a Service's traffic at the Pods' proxies;
/// traffic follows the EndpointSlice as it changes (across a watch broken by 410 Gone too), and
/// an HTTPRoute kubectl attaches to the Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_clusters_endpoint_slices_pods_and_routes() {
    use crate::cluster::{Backend, load};

    weft_tests::init();
    let api = FakeApiServer::start().await;
    let cp = control_plane_keeping_policy_in(&api).await;
    // Each Pod its own address, as on a pod network.
    let v1 = Backend::start_undeclared(&cp, "api-1", "127.0.0.2").await;
    let v2 = Backend::start_undeclared(&cp, "api-2", "127.0.0.3").await;
    let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID)).await;
    let client = MeshClient::http1(client.outbound);

    api.kubectl_apply(&core_service("api")).await;
    api.kubectl_apply(&core_service("api-v2")).await;
    api.kubectl_apply(&meshed_pod(&v1)).await;
    api.kubectl_apply(&meshed_pod(&v2)).await;
    // The Service is known, but no EndpointSlice lists anything for it yet.
    weft_tests::eventually(
        "the Service without endpoints",
        Duration::from_secs(15),
        || async { (load(&client, 1, 1, "/", &[]).await == [503]).then_some(()) },
    )
    .await;
    assert_eq!(v1.app.request_count(), 0);
    api.kubectl_apply(&endpoint_slice("api", &v1)).await;
    api.kubectl_apply(&endpoint_slice("api-v2", &v2)).await;
    all_traffic_reaches(&client, &v1).await;

    api.kubectl_apply(&endpoint_slice("api", &v2)).await;
    all_traffic_reaches(&client, &v2).await;
    // Every watch ends with 410 Gone: the reflectors list again, and follow what comes after.
    api.compact().await;
    api.kubectl_apply(&endpoint_slice("api", &v1)).await;
    all_traffic_reaches(&client, &v1).await;

    api.kubectl_apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-v2, namespace: shop}
spec:
  parentRefs: [{name: api, kind: Service, port: 8080}]
  rules: [{backendRefs: [{name: api-v2, port: 8080}]}]
"#,
    )
    .await;
    all_traffic_reaches(&client, &v2).await;
}

/// A control plane whose policy lives in `api`.
async fn control_plane_keeping_policy_in(api: &FakeApiServer) -> ControlPlane {
    let kubeconfig = api.kubeconfig().to_str().unwrap().to_string();
    ControlPlane::start_with(
        "24h",
        &["--kubeconfig", &kubeconfig, "--policy-store", "kubernetes"],
    )
    .await
}

/// A core Service whose port 8080 targets the Pods' port named `http`.
fn core_service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 8080, targetPort: http}}]}}\n"
    )
}

/// The EndpointSlice of Service `service`, listing the Pod of `backend` alone, ready.
fn endpoint_slice(service: &str, backend: &crate::cluster::Backend) -> String {
    let (pod, ip) = (&backend.name, backend.proxy.inbound.ip());
    format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-abc, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{ip}], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: {pod}, namespace: shop}}}}]
"#
    )
}

/// `backend` as the injector leaves its Pod: annotated, the proxy beside the app, running as
/// ServiceAccount `api` (the identity its proxy holds).
fn meshed_pod(backend: &crate::cluster::Backend) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: api}}, annotations: {{weft.io/proxy-version: test}}}}
spec:
  serviceAccountName: api
  containers:
  - {{name: app, image: echo, ports: [{{name: http, containerPort: 8080}}]}}
  - {{name: weft-proxy, image: weft-proxy, ports: [{{name: weft-inbound, containerPort: {inbound}}}]}}
status: {{phase: Running, podIP: {ip}}}
"#,
        name = backend.name,
        ip = backend.proxy.inbound.ip(),
        inbound = backend.proxy.inbound.port(),
    )
}

/// Waits until every one of a round of requests succeeds at `backend`.
async fn all_traffic_reaches(client: &MeshClient, backend: &crate::cluster::Backend) {
    weft_tests::eventually(
        "traffic to follow the route",
        Duration::from_secs(15),
        || async {
            let before = backend.app.request_count();
            let statuses = crate::cluster::load(client, 20, 4, "/", &[]).await;
            (statuses.iter().all(|s| *s == 200) && backend.app.request_count() - before == 20)
                .then_some(())
        },
    )
    .await;
}

/// Two replicas on one API server: the one holding the Lease writes route status, the other
/// writes nothing until the first dies, then takes over and keeps the status true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_status_is_written_by_the_replica_holding_the_lease() {
    use weft_tests::client::http_get;
    use weft_tests::mesh::metric_value;

    weft_tests::init();
    let api = FakeApiServer::start().await;
    let kubeconfig = api.kubeconfig().to_str().unwrap().to_string();
    let args = [
        "--kubeconfig",
        &kubeconfig,
        "--policy-store",
        "kubernetes",
        "--lease-duration",
        "3s",
    ];
    let mut replicas = vec![
        ControlPlane::start_with("24h", &args).await,
        ControlPlane::start_with("24h", &args).await,
    ];
    let metric = |cp: &ControlPlane, name: &'static str| {
        let addr = cp.metrics;
        async move {
            let (_, text) = http_get(addr, "/metrics").await?;
            metric_value(&text, name)
        }
    };
    let leader = |replicas: &[ControlPlane]| {
        let replicas: Vec<_> = replicas.iter().map(|cp| cp.metrics).collect();
        async move {
            let mut leading = Vec::new();
            for addr in replicas {
                let (_, text) = http_get(addr, "/metrics").await?;
                leading.push(metric_value(&text, "weft_control_leader")? == 1.0);
            }
            (leading.iter().filter(|l| **l).count() == 1)
                .then(|| leading.iter().position(|l| *l))?
        }
    };
    let first =
        weft_tests::eventually("one leader", Duration::from_secs(20), || leader(&replicas)).await;
    api.kubectl_apply(crate::cluster::SERVICES).await;
    api.kubectl_apply(&crate::cluster::split(50, 50)).await;
    let route_status = |wanted: &'static str| {
        let api = &api;
        async move {
            weft_tests::eventually("the route's status", Duration::from_secs(20), || async {
                let text = api
                    .kubectl_get_json("gateway.networking.k8s.io/v1", "HTTPRoute", "shop", "split")
                    .await;
                let conditions = &text["status"]["parents"][0]["conditions"];
                (conditions[0]["reason"] == wanted).then(|| text["status"].clone())
            })
            .await
        }
    };
    let status = route_status("Accepted").await;
    assert_eq!(
        status["parents"][0]["controllerName"],
        "weft.io/mesh-controller"
    );
    assert_eq!(
        status["parents"][0]["conditions"][1]["reason"],
        "ResolvedRefs"
    );
    let follower = 1 - first;
    assert_eq!(
        metric(
            &replicas[follower],
            "weft_control_route_status_writes_total"
        )
        .await,
        Some(0.0),
        "the follower writes nothing"
    );

    // The leader dies without a word: the other takes the Lease over once it expires, and
    // keeps the status true (the parent Service goes: NoMatchingParent).
    replicas[first].kill9();
    api.kubectl_delete(
        "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {name: api, namespace: shop}\n",
    )
    .await;
    route_status("NoMatchingParent").await;
    assert_eq!(
        metric(&replicas[follower], "weft_control_leader").await,
        Some(1.0)
    );
    replicas.clear();
}

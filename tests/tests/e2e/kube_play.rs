//! Injected pods running for real: plain manifests through `weftctl inject`, played by podman
//! with the images `scripts/images` built. The init container installs the redirect rules, the
//! client app's plain `http://<server pod>:8080/` crosses both proxies over mTLS, and the server
//! app is told the client's SPIFFE identity — nothing in either app knows about the mesh.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weft_tests::mesh::{ControlPlane, write_temp};
use weft_tests::netns::{NetNs, within};
use weft_tests::podman::Podman;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";

fn pod_manifest(name: &str, service_account: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: {name}}}\n\
         spec:\n  serviceAccountName: {service_account}\n  restartPolicy: Never\n  containers:\n  \
         - name: app\n    image: localhost/weft-demo:{VERSION}\n    args: [{}]\n    ports: [{{containerPort: 8080}}]\n",
        args.join(", ")
    )
}

/// `weftctl inject` of `manifest`, then what podman 4.3 needs to play it: its `kube play`
/// publishes every containerPort on the host (here: the node namespace), so two pods declaring
/// the proxy's ports would collide. Ports are informational in Kubernetes; nothing else changes.
fn inject_for_podman(
    cp: &ControlPlane,
    dir: &Path,
    name: &str,
    manifest: &str,
    control_plane: &str,
) -> std::path::PathBuf {
    let input = write_temp(dir, &format!("{name}.yaml"), manifest);
    let secret = format!("weft-join-token-{name}-{}", std::process::id());
    let (status, stdout, stderr) = cp.weftctl(&[
        "inject",
        "--sidecar-mode",
        "classic",
        "--join-token-secret",
        &secret,
        "--control-plane-addr",
        control_plane,
        "--proxy-image",
        &format!("localhost/weft-proxy:{VERSION}"),
        "--init-image",
        &format!("localhost/weft-init:{VERSION}"),
        "-f",
        input.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    let mut pod: Value = serde_saphyr::from_str(&stdout).unwrap();
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["name"], "weft-init");
    assert_eq!(pod["spec"]["containers"][0]["name"], "weft-proxy");
    for list in ["initContainers", "containers"] {
        for container in pod["spec"][list].as_array_mut().unwrap() {
            container.as_object_mut().unwrap().remove("ports");
        }
    }
    write_temp(
        dir,
        &format!("{name}.injected.yaml"),
        &serde_json::to_string(&pod).unwrap(),
    )
}

#[test]
fn pods_injected_by_weftctl_talk_through_their_proxies_under_podman() {
    let images = [
        format!("localhost/weft-proxy:{VERSION}"),
        format!("localhost/weft-init:{VERSION}"),
        format!("localhost/weft-demo:{VERSION}"),
    ];
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    if let Some(reason) = weft_tests::netns::missing_prerequisites()
        .or_else(|| weft_tests::podman::missing_prerequisites(&images))
    {
        panic!("{reason}");
    }
    weft_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let node = NetNs::create();
    let runtime = node.runtime();
    let podman = Podman::in_netns(node.name());
    let id = weft_tests::free_port();
    let network = format!("weft-e2e-{}-{id}", std::process::id());
    let gateway = podman.network(
        &network,
        &format!("10.{}.{}.0/24", 100 + id % 100, id % 250),
    );

    // The control plane on the node, where the pods' bridge ends; join tokens for both pods
    // (the control plane outside the cluster, as the join-token mode is for).
    let cp = within(&runtime, async {
        ControlPlane::start_serving_proxies_on("24h", &[], IpAddr::from([0, 0, 0, 0])).await
    });
    let control_plane = format!("{gateway}:{}", cp.proxy_api.port());
    let cp = std::sync::Arc::new(cp);
    for (name, identity) in [
        ("server", "spiffe://cluster.local/ns/shop/sa/server"),
        ("client", CLIENT_ID),
    ] {
        let cp = cp.clone();
        let token = within(&runtime, async move {
            std::fs::read_to_string(cp.token_file(identity)).unwrap()
        });
        // podman 4.3 mounts a Secret's data as it is, without base64-decoding it.
        let secret = write_temp(
            dir.path(),
            &format!("secret-{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: x}}\ntype: Opaque\ndata:\n  token: {}\n",
                token.trim()
            ),
        );
        podman.secret(
            &format!("weft-join-token-{name}-{}", std::process::id()),
            &secret,
        );
    }

    let server_pod = format!("server-{id}");
    let manifest = {
        let cp = cp.clone();
        let (dir, control_plane) = (dir.path().to_path_buf(), control_plane.clone());
        let manifest = pod_manifest(
            &server_pod,
            "server",
            &["backend", "--listen", "0.0.0.0:8080"],
        );
        within(&runtime, async move {
            inject_for_podman(&cp, &dir, "server", &manifest, &control_plane)
        })
    };
    podman.play(&server_pod, &manifest, &network);
    let server_ip = podman.ip(&format!("{server_pod}-app"));

    // What the Kubernetes store will learn from the API server (issue 11): the pod's address and
    // identity, and the Service port it serves.
    {
        let cp = cp.clone();
        let yaml = format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: server, namespace: shop}}\n\
             spec: {{selector: {{app: server}}, ports: [{{port: 8080}}]}}\n---\n\
             apiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: server, namespace: shop, labels: {{app: server}}}}\n\
             spec: {{address: \"{server_ip}\", identity: \"spiffe://cluster.local/ns/shop/sa/server\"}}\n"
        );
        within(&runtime, async move { cp.apply_ok(&yaml) });
    }

    let client_pod = format!("client-{id}");
    let url = format!("http://{server_ip}:8080/");
    let manifest = {
        let cp = cp.clone();
        let (dir, control_plane) = (dir.path().to_path_buf(), control_plane.clone());
        let manifest = pod_manifest(&client_pod, "client", &["get", &url, "--attempts", "90"]);
        within(&runtime, async move {
            inject_for_podman(&cp, &dir, "client", &manifest, &control_plane)
        })
    };
    podman.play(&client_pod, &manifest, &network);

    // The client app exits once it has its answer (or gives up after 90 tries).
    let app = format!("{client_pod}-app");
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    while podman.state(&app).0 == "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "the client app never finished"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs = podman.logs(&app);
    assert_eq!(
        podman.state(&app).1,
        0,
        "{logs}\n{}",
        podman.logs(&format!("{client_pod}-weft-proxy"))
    );
    assert_eq!(logs.trim(), format!("backend: hello, {CLIENT_ID}"));

    // The rules the init container installed, read in the client pod's own namespace.
    let pid = podman.pid(&format!("{client_pod}-weft-proxy")).to_string();
    let rules = std::process::Command::new("nsenter")
        .args([
            "--net=/proc/".to_string() + &pid + "/ns/net",
            "iptables-nft-save".to_string(),
            "-t".to_string(),
            "nat".to_string(),
        ])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("-A WEFT_OUTBOUND -m owner --uid-owner 7102 -j RETURN"),
        "{rules}"
    );
    assert!(
        rules.contains("-A WEFT_OUTBOUND -p tcp -j REDIRECT --to-ports 7140"),
        "{rules}"
    );
    drop(podman);
    drop(cp);
}

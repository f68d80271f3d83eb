//! Two pods, as Kubernetes would make them: each a network namespace on a bridge (the node)
//! with an unmodified app and a proxy behind rules `weft-proxy init` installed. The apps talk as
//! if no mesh existed; a packet capture on the bridge shows only TLS.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use weft_tests::apps::{App, TcpEcho, start_echo_app_on, start_tcp_echo};
use weft_tests::client::MeshClient;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};
use weft_tests::netns::{NetNs, within};
use weft_tests::process::bin;
use weft_tests::websocket::{self, GREETING, WebSocketEcho, start_websocket_echo};

use crate::{CLIENT_ID, SERVER_ID};

const PROXY_UID: u32 = 7102;
const NODE_V4: &str = "10.77.0.1";
const NODE_V6: &str = "fd77::1";
const CLIENT_V4: &str = "10.77.0.10";
const CLIENT_V6: &str = "fd77::10";
const SERVER_V4: &str = "10.77.0.20";
const SERVER_V6: &str = "fd77::20";
/// Written into every request: it must never cross the bridge in the clear.
const MARKER: &str = "weft-plaintext-marker-5e1f";

/// The node: a namespace holding the bridge, with a runtime inside it.
struct Node {
    ns: NetNs,
    runtime: Runtime,
}

/// A pod: a namespace with one end of a veth pair on the node's bridge.
struct Pod {
    ns: NetNs,
    runtime: Runtime,
}

impl Node {
    fn create() -> Self {
        let ns = NetNs::create();
        ns.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.exec(&["ip", "addr", "add", &format!("{NODE_V4}/24"), "dev", "br0"]);
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{NODE_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        ns.exec(&["ip", "link", "set", "br0", "up"]);
        let runtime = ns.runtime();
        Self { ns, runtime }
    }

    /// A pod on the bridge at `v4` and `v6`.
    fn pod(&self, name: &str, v4: &str, v6: &str) -> Pod {
        let ns = NetNs::create();
        let host_end = format!("{name}-host");
        self.ns.exec(&[
            "ip",
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        self.ns
            .exec(&["ip", "link", "set", &host_end, "master", "br0", "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
        ns.exec(&["ip", "route", "add", "default", "via", NODE_V4]);
        let runtime = ns.runtime();
        Pod { ns, runtime }
    }
}

/// tcpdump on the bridge, writing to a file until stopped.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(node: &Node, dir: &std::path::Path) -> Self {
        let file = dir.join("bridge.pcap");
        let mut child = node
            .ns
            .command("tcpdump")
            .args([
                "-i",
                "br0",
                "--immediate-mode",
                "-U",
                "-n",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (./scripts/install-test-deps installs it)");
        // It says so once it captures.
        let mut stderr = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            use std::io::Read;
            match stderr.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!("tcpdump did not start: {}", String::from_utf8_lossy(&seen)),
            }
        }
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, file }
    }

    /// Stops the capture; what crossed the bridge, as tcpdump prints it with payloads.
    fn stop(mut self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let output = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-n", "-A"])
            .output()
            .unwrap();
        format!(
            "{}\n(tcpdump: {})",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `weft-proxy init` in `pod` for `proxy`'s ports; its output on failure.
fn init(pod: &Pod, proxy: &Proxy) {
    let output = pod
        .ns
        .command(bin("weft-proxy"))
        .args([
            "init",
            "--ipv6",
            "on",
            "--proxy-uid",
            &PROXY_UID.to_string(),
        ])
        .args(["--inbound-port", &proxy.inbound.port().to_string()])
        .args(["--outbound-port", &proxy.outbound.port().to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// A proxy in a pod: every listener on all addresses, the control plane at the node.
fn pod_proxy(cp: &ControlPlane, identity: &str, token: PathBuf) -> ProxySpec {
    let any = |port: u16| format!("0.0.0.0:{port}");
    ProxySpec::new(identity)
        .uid(PROXY_UID)
        .token(token)
        .env(
            "WEFT_PROXY_CONTROL_PLANE_ADDR",
            &SocketAddr::new(NODE_V4.parse().unwrap(), cp.proxy_api.port()).to_string(),
        )
        .env("WEFT_PROXY_INBOUND_ADDR", &any(weft_tests::free_port()))
}

/// The server pod's apps: HTTP on 8080, WebSocket on 8081, a TCP echo on 7000 (declared opaque),
/// a server-first one on the opaque port 5432, and HTTPS of its own on 8443 (detected: the
/// client's first bytes are a TLS ClientHello).
struct ServerApps {
    http: App,
    _websocket: WebSocketEcho,
    _echo: TcpEcho,
    _server_first: TcpEcho,
    _tls: tokio::task::JoinHandle<()>,
    tls_anchor: Vec<u8>,
}

async fn start_server_apps() -> ServerApps {
    let http = start_echo_app_on("[::]:8080").await;
    let echo = start_tcp_echo("[::]:7000").await;
    let server_first = start_tcp_echo("[::]:5432").await;
    let (tls, tls_anchor) = start_tls_app("[::]:8443").await;
    ServerApps {
        http,
        _websocket: start_websocket_echo("[::]:8081").await,
        _echo: echo,
        _server_first: server_first,
        _tls: tls,
        tls_anchor,
    }
}

/// An app serving HTTPS itself (its own certificate, nothing of the mesh's): answers every
/// request with 200 and the request line it saw.
async fn start_tls_app(bind: &str) -> (tokio::task::JoinHandle<()>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["tls-app.shop".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().to_vec();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{line}",
                    line.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (task, der)
}

/// An HTTP proxy outside the mesh that takes `CONNECT host:port` and tunnels to it.
async fn start_connect_proxy(bind: &str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if tcp.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|rest| rest.split(' ').next())
                else {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    let _ = tcp.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
            });
        }
    })
}

/// Connects to `addr`, sends `send`, and reads until `expect` bytes arrived.
async fn exchange(addr: SocketAddr, send: &[u8], expect: usize) -> Vec<u8> {
    let mut tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    if !send.is_empty() {
        tcp.write_all(send).await.unwrap();
    }
    let mut answer = vec![0u8; expect];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut answer))
        .await
        .expect("an answer through the mesh")
        .unwrap();
    answer
}

/// HTTPS to the TLS app, trusting only its own certificate.
async fn https_get(addr: SocketAddr, anchor: Vec<u8>, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor.into()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("tls-app.shop".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: tls-app.shop\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn two_pods_talk_through_their_proxies_and_the_bridge_sees_only_tls() {
    if let Some(reason) = weft_tests::netns::missing_prerequisites() {
        panic!("{reason}");
    }
    weft_tests::init();
    let node = Node::create();
    let client_pod = node.pod("a", CLIENT_V4, CLIENT_V6);
    let server_pod = node.pod("b", SERVER_V4, SERVER_V6);

    // The control plane on the node; the server pod registered as a Workload whose app ports
    // are intercepted on its side.
    let (cp, client_token, server_token) = within(&node.runtime, async {
        let cp = ControlPlane::start_serving_proxies_on("24h", &[], NODE_V4.parse().unwrap()).await;
        cp.apply_ok(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: api, namespace: shop}}\nspec: {{selector: {{app: api}}, ports: [{{port: 8080}}, {{port: 8081}}, {{port: 7000, appProtocol: tcp}}, {{port: 5432}}, {{port: 8443}}]}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: api-v4, namespace: shop, labels: {{app: api}}}}\nspec: {{address: \"{SERVER_V4}\", identity: \"{SERVER_ID}\"}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: api-v6, namespace: shop, labels: {{app: api}}}}\nspec: {{address: \"{SERVER_V6}\", identity: \"{SERVER_ID}\"}}\n"
        ));
        let tokens = (cp.token_file(CLIENT_ID), cp.token_file(SERVER_ID));
        (cp, tokens.0, tokens.1)
    });

    let apps = within(&server_pod.runtime, start_server_apps());
    let server_spec = pod_proxy(&cp, SERVER_ID, server_token);
    let client_spec = pod_proxy(&cp, CLIENT_ID, client_token);
    let cp = Arc::new(cp);
    let server = {
        let cp = cp.clone();
        within(&server_pod.runtime, async move {
            Proxy::start(&cp, server_spec).await
        })
    };
    let client = {
        let cp = cp.clone();
        within(&client_pod.runtime, async move {
            Proxy::start(&cp, client_spec).await
        })
    };
    init(&server_pod, &server);
    init(&client_pod, &client);

    // Outside the mesh, on the node: an HTTP proxy taking CONNECT, and what it tunnels to.
    let _outside = within(&node.runtime, async {
        (
            start_connect_proxy(&format!("{NODE_V4}:3128")).await,
            start_tcp_echo("127.0.0.1:9000").await,
        )
    });

    let dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(&node, dir.path());
    let tls_anchor = apps.tls_anchor.clone();
    within(&client_pod.runtime, async move {
        // HTTP over IPv4 and IPv6, addressed as if there were no mesh.
        for host in [SERVER_V4.to_string(), format!("[{SERVER_V6}]")] {
            let authority = format!("{host}:8080");
            let response = MeshClient::http1(authority.parse().unwrap())
                .send("GET", &authority, &format!("/{MARKER}"), Bytes::new())
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{authority}: {response:?}");
            assert_eq!(
                response.headers()["x-seen-client-id"],
                CLIENT_ID,
                "{authority}"
            );
        }
        // Opaque TCP: a client-first text echo on a port its Service declares `tcp`, and a
        // server-first protocol on a port opaque by default.
        let addr = |port: u16| SocketAddr::new(SERVER_V4.parse::<IpAddr>().unwrap(), port);
        let echoed = exchange(addr(7000), MARKER.as_bytes(), 6 + MARKER.len()).await;
        assert_eq!(echoed, format!("hello\n{MARKER}").as_bytes());
        let greeting = exchange(addr(5432), b"", 6).await;
        assert_eq!(greeting, b"hello\n");
        // A WebSocket echo, messages both ways.
        let received =
            websocket::exchange(addr(8081), &format!("{SERVER_V4}:8081"), &[MARKER]).await;
        assert_eq!(received, [GREETING.to_string(), format!("echo: {MARKER}")]);
        // CONNECT to a proxy outside the mesh, then a tunnelled exchange.
        let outside = SocketAddr::new(NODE_V4.parse::<IpAddr>().unwrap(), 3128);
        let mut tcp = TcpStream::connect(outside).await.unwrap();
        tcp.write_all(b"CONNECT 127.0.0.1:9000 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nhello\n") && answer.len() < 4096 {
            let mut chunk = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
                .await
                .expect("the tunnel answers")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        tcp.write_all(b"through").await.unwrap();
        let mut echoed = [0u8; 7];
        tcp.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"through");
        // The app's own TLS, carried inside the mesh's.
        let answer = https_get(addr(8443), tls_anchor, &format!("/{MARKER}")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(MARKER), "{answer}");
    });
    let seen = capture.stop();
    assert!(
        seen.contains(&format!("{SERVER_V4}.8080")) && seen.contains(&format!("{SERVER_V6}.8080")),
        "the capture saw no traffic to the server pod:\n{seen}"
    );
    assert!(
        !seen.contains(MARKER),
        "plaintext crossed the bridge:\n{seen}"
    );
    assert_eq!(apps.http.request_count(), 2);

    // The kubelet, from the node, in plaintext: refused while the port is strict (the
    // default), served once the workload's defaults make it permissive.
    let healthz = SocketAddr::new(SERVER_V4.parse().unwrap(), 8080);
    let kubelet = || {
        within(
            &node.runtime,
            weft_tests::client::plaintext_get(healthz, "/healthz"),
        )
    };
    assert_eq!(kubelet(), None);
    {
        let cp = cp.clone();
        within(&node.runtime, async move {
            cp.apply_ok("apiVersion: policy.weft.io/v1alpha1\nkind: InboundDefaults\nmetadata: {name: api, namespace: shop}\nspec:\n  selector: {app: api}\n  ports: [{port: 8080, authorization: all-unauthenticated}]\n");
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while kubelet() != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "the port never turned permissive"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Other ports stay strict.
    let other = SocketAddr::new(SERVER_V4.parse().unwrap(), 8081);
    assert_eq!(
        within(&node.runtime, weft_tests::client::plaintext_get(other, "/")),
        None
    );
    drop((client, server));
}

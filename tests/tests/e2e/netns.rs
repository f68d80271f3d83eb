//! Traffic intercepted by real iptables rules, inside a network namespace of the test's own:
//! opaque TCP through the mesh, and destinations outside the mesh passed through.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::apps::{start_echo_app_on, start_tcp_echo};
use weft_tests::client::MeshClient;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};
use weft_tests::netns::NetNs;

use crate::{CLIENT_ID, SERVER_ID};

/// The proxy's user, whose own connections the rules leave alone (as `weft-proxy init` does).
const PROXY_UID: u32 = 7102;
/// A meshed destination marked opaque in the client's route.
const OPAQUE_PORT: u16 = 9000;
/// A meshed destination found opaque by detection (a server-first protocol).
const DETECTED_PORT: u16 = 9001;
/// An HTTP server outside the mesh.
const UNMESHED_HTTP_PORT: u16 = 9002;
/// A TCP server outside the mesh, on a port listed in WEFT_PROXY_OPAQUE_PORTS.
const UNMESHED_TCP_PORT: u16 = 9003;
/// A meshed workload's opaque port, known to the client only through discovery.
const DISCOVERED_PORT: u16 = 9004;
const PAYLOAD_LEN: usize = 256 * 1024;

fn iptables(args: &[&str]) {
    nat("iptables", args);
}

fn ip6tables(args: &[&str]) {
    nat("ip6tables", args);
}

/// Adds a rule to the nat table with `tool` (iptables or ip6tables).
fn nat(tool: &str, args: &[&str]) {
    let status = Command::new(tool)
        .args(["-t", "nat"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "{tool} {args:?}");
}

/// Sends the app's outgoing TCP to `ports` (`first:last`) to `outbound`, except the proxy's own.
fn intercept(outbound: u16, ports: &str) {
    iptables(&[
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-m",
        "owner",
        "--uid-owner",
        &PROXY_UID.to_string(),
        "-j",
        "RETURN",
    ]);
    iptables(&[
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1",
        "--dport",
        ports,
        "-j",
        "REDIRECT",
        "--to-ports",
        &outbound.to_string(),
    ]);
}

/// Dials `port` as the app would, reads the server's greeting, then echoes `payload`.
async fn exchange(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut greeting = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut greeting))
        .await
        .expect("greeting")
        .unwrap();
    assert_eq!(&greeting, b"hello\n");
    let (mut read, mut write) = stream.into_split();
    let payload = payload.to_vec();
    let writer = tokio::spawn(async move {
        write.write_all(&payload).await.unwrap();
        write
    });
    let mut echoed = vec![0u8; PAYLOAD_LEN];
    tokio::time::timeout(Duration::from_secs(20), read.read_exact(&mut echoed))
        .await
        .expect("echo")
        .unwrap();
    drop(writer.await.unwrap());
    echoed
}

#[test]
fn intercepted_tcp_goes_through_the_mesh_and_unmeshed_destinations_pass_through() {
    weft_tests::init();
    let ns = NetNs::create();
    ns.run(|| async {
        let cp = ControlPlane::start("24h").await;
        let echo = start_tcp_echo("127.0.0.1:0").await;
        let _unmeshed_tcp = start_tcp_echo(&format!("127.0.0.1:{UNMESHED_TCP_PORT}")).await;
        let unmeshed_http = start_echo_app_on(&format!("127.0.0.1:{UNMESHED_HTTP_PORT}")).await;
        let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(echo.port)).await;
        // The server side must know the echo port is opaque, or it refuses opaque streams: here
        // it learns it from policy (a Service port with appProtocol tcp selecting its workload).
        cp.apply_ok(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: echo, namespace: shop}}\nspec: {{selector: {{app: echo}}, ports: [{{port: 9000, targetPort: {port}, appProtocol: tcp}}]}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: echo-1, namespace: shop, labels: {{app: echo}}}}\nspec: {{address: 127.0.0.1, proxyPort: {proxy}, identity: \"{SERVER_ID}\"}}\n",
            port = echo.port,
            proxy = server.inbound.port(),
        ));
        let client_spec = ProxySpec::new(CLIENT_ID)
            .opaque_route(&format!("127.0.0.1:{OPAQUE_PORT}"), &server)
            .route(&format!("127.0.0.1:{DETECTED_PORT}"), &server)
            .env("WEFT_PROXY_OPAQUE_PORTS", &UNMESHED_TCP_PORT.to_string())
            .uid(PROXY_UID);
        let client = Proxy::start(&cp, client_spec).await;
        intercept(client.outbound.port(), &format!("{OPAQUE_PORT}:{UNMESHED_TCP_PORT}"));

        let payload: Vec<u8> = (0..PAYLOAD_LEN).map(|i| (i * 7 % 256) as u8).collect();
        assert!(exchange(OPAQUE_PORT, &payload).await == payload, "opaque bytes altered");
        assert!(exchange(DETECTED_PORT, &payload).await == payload, "detected-opaque bytes altered");
        assert!(exchange(UNMESHED_TCP_PORT, &payload).await == payload, "passed-through bytes altered");

        // HTTP to a destination with no route goes there as it is, outside the mesh.
        let app = MeshClient::http1(std::net::SocketAddr::from(([127, 0, 0, 1], UNMESHED_HTTP_PORT)));
        let response = app
            .send("GET", &format!("127.0.0.1:{UNMESHED_HTTP_PORT}"), "/outside", Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-seen-client-id"], "none");
        assert_eq!(unmeshed_http.request_count(), 1);

        let outbound = client.metric("weft_tcp_connections_total{direction=\"outbound\",protocol=\"opaque\"}").await;
        assert_eq!(outbound, Some(3.0));
        let inbound = server.metric("weft_tcp_connections_total{direction=\"inbound\",protocol=\"opaque\"}").await;
        assert_eq!(inbound, Some(2.0));
        let unmeshed = client
            .metric("weft_http_requests_total{destination=\"unmeshed\",direction=\"outbound\",peer_identity=\"\",route=\"\",status_class=\"2xx\"}")
            .await;
        assert_eq!(unmeshed, Some(1.0));
    });
}

#[test]
fn a_workload_address_is_found_through_discovery_and_its_opaque_port_carried_over_mtls() {
    weft_tests::init();
    let ns = NetNs::create();
    ns.run(|| async {
        let cp = ControlPlane::start("24h").await;
        // A server-first protocol on the workload's own port: only the Service's appProtocol
        // tells the client's proxy not to wait for the app to speak first.
        let _echo = start_tcp_echo(&format!("127.0.0.1:{DISCOVERED_PORT}")).await;
        // Both proxies run as the proxy user, so neither's own connections are intercepted.
        let server = Proxy::start(
            &cp,
            ProxySpec::new(SERVER_ID).app_port(DISCOVERED_PORT).uid(PROXY_UID),
        )
        .await;
        cp.apply_ok(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: db, namespace: shop}}\nspec: {{selector: {{app: db}}, ports: [{{port: {DISCOVERED_PORT}, appProtocol: tcp}}]}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: db-1, namespace: shop, labels: {{app: db}}}}\nspec: {{address: 127.0.0.1, proxyPort: {proxy}, identity: \"{SERVER_ID}\"}}\n",
            proxy = server.inbound.port(),
        ));
        // No static route: the client proxy knows the address only from discovery.
        let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID).uid(PROXY_UID)).await;
        intercept(client.outbound.port(), &DISCOVERED_PORT.to_string());

        let payload: Vec<u8> = (0..PAYLOAD_LEN).map(|i| (i * 11 % 256) as u8).collect();
        assert!(exchange(DISCOVERED_PORT, &payload).await == payload, "bytes altered");
        assert!(exchange(DISCOVERED_PORT, &payload).await == payload, "bytes altered");

        // Through the mesh: the server's proxy accepted them as opaque streams over mTLS (it
        // takes nothing else), from the client's identity.
        let inbound = server.metric("weft_tcp_connections_total{direction=\"inbound\",protocol=\"opaque\"}").await;
        assert_eq!(inbound, Some(2.0));
        let outbound = client.metric("weft_tcp_connections_total{direction=\"outbound\",protocol=\"opaque\"}").await;
        assert_eq!(outbound, Some(2.0));
    });
}

/// An address of the mesh's networks and one outside them, on the namespace's loopback.
const MESHED_IP: &str = "10.10.0.1";
const OUTSIDE_IP: &str = "10.20.0.1";
const HTTP_PORT: u16 = 8080;
/// On WEFT_PROXY_OPAQUE_PORTS' default list: no protocol detection.
const TCP_PORT: u16 = 5432;

/// What an app gets from a TCP server at `ip:port` through interception: its greeting, or
/// nothing when the proxy closed the connection instead.
async fn greeting(ip: &str, port: u16) -> Option<Vec<u8>> {
    let stream = TcpStream::connect((ip, port)).await.ok()?;
    let mut greeting = Vec::new();
    // The server greets, then echoes until the client closes: read the greeting, or EOF.
    tokio::time::timeout(
        Duration::from_secs(20),
        stream.take(6).read_to_end(&mut greeting),
    )
    .await
    .expect("the proxy must answer or close, not hang")
    .ok()?;
    Some(greeting)
}

#[test]
fn with_discovery_away_the_mesh_networks_are_never_reached_in_plaintext() {
    weft_tests::init();
    let ns = NetNs::create();
    for ip in [MESHED_IP, OUTSIDE_IP] {
        ns.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    ns.run(|| async {
        let mut cp = ControlPlane::start_with("24h", &["--mesh-networks", "10.10.0.0/16"]).await;
        // Plaintext servers at both addresses: whoever reaches the one inside the mesh's
        // networks without discovery's word has leaked what the mesh must encrypt.
        let meshed_http = start_echo_app_on(&format!("{MESHED_IP}:{HTTP_PORT}")).await;
        let outside_http = start_echo_app_on(&format!("{OUTSIDE_IP}:{HTTP_PORT}")).await;
        let _meshed_tcp = start_tcp_echo(&format!("{MESHED_IP}:{TCP_PORT}")).await;
        let _outside_tcp = start_tcp_echo(&format!("{OUTSIDE_IP}:{TCP_PORT}")).await;
        let client = Proxy::start(&cp, ProxySpec::new(CLIENT_ID).uid(PROXY_UID)).await;
        weft_tests::eventually(
            "the proxy to learn the mesh's networks",
            Duration::from_secs(20),
            || {
                let client = &client;
                async move {
                    (client
                        .metric("weft_discovery_updates_total{result=\"applied\"}")
                        .await
                        >= Some(1.0))
                    .then_some(())
                }
            },
        )
        .await;
        iptables(&[
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-m",
            "owner",
            "--uid-owner",
            &PROXY_UID.to_string(),
            "-j",
            "RETURN",
        ]);
        iptables(&[
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "10.0.0.0/8",
            "-j",
            "REDIRECT",
            "--to-ports",
            &client.outbound.port().to_string(),
        ]);
        cp.kill9();

        // Inside the mesh's networks: refused, HTTP with a reason, TCP by closing.
        let app = MeshClient::http1(std::net::SocketAddr::from(([10, 10, 0, 1], HTTP_PORT)));
        let refused = app
            .send(
                "GET",
                &format!("{MESHED_IP}:{HTTP_PORT}"),
                "/",
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(refused.status(), 503);
        assert!(
            refused.headers()["weft-proxy-error"]
                .to_str()
                .unwrap()
                .contains("not sent in plaintext")
        );
        assert_eq!(greeting(MESHED_IP, TCP_PORT).await.unwrap_or_default(), b"");
        assert_eq!(
            meshed_http.request_count(),
            0,
            "plaintext reached a meshed address"
        );

        // Outside them: passed through as the app asked.
        let app = MeshClient::http1(std::net::SocketAddr::from(([10, 20, 0, 1], HTTP_PORT)));
        let passed = app
            .send(
                "GET",
                &format!("{OUTSIDE_IP}:{HTTP_PORT}"),
                "/",
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(passed.status(), 200);
        assert_eq!(outside_http.request_count(), 1);
        assert_eq!(
            greeting(OUTSIDE_IP, TCP_PORT).await.unwrap_or_default(),
            b"hello\n"
        );

        let refused = client
            .metric("weft_outbound_refused_total{reason=\"discovery_unavailable\"}")
            .await;
        assert_eq!(refused, Some(2.0));
    });
}

/// An address of the pod's, and one routed through it that is not.
const POD_IP: &str = "10.30.0.1";
const ELSEWHERE_IP: &str = "10.99.0.1";

#[test]
fn inbound_forwards_only_to_the_pods_own_addresses() {
    weft_tests::init();
    let ns = NetNs::create();
    ns.exec(&["ip", "addr", "add", &format!("{POD_IP}/32"), "dev", "lo"]);
    ns.exec(&[
        "ip",
        "route",
        "add",
        &format!("{ELSEWHERE_IP}/32"),
        "dev",
        "lo",
    ]);
    ns.run(|| async {
        let cp = ControlPlane::start("24h").await;
        let _app = start_echo_app_on(&format!("{POD_IP}:{HTTP_PORT}")).await;
        let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).uid(PROXY_UID)).await;
        // Inbound interception, as in a pod: peers' connections to the app's port go to the
        // inbound listener, which learns where they were headed from the original destination.
        for ip in [POD_IP, ELSEWHERE_IP] {
            iptables(&[
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                ip,
                "--dport",
                &HTTP_PORT.to_string(),
                "-m",
                "owner",
                "!",
                "--uid-owner",
                &PROXY_UID.to_string(),
                "-j",
                "REDIRECT",
                "--to-ports",
                &server.inbound.port().to_string(),
            ]);
        }
        let certs = cp
            .credential("spiffe://cluster.local/ns/shop/sa/mallory")
            .await;
        let ours = std::net::SocketAddr::from(([10, 30, 0, 1], HTTP_PORT));
        let mut sender = weft_tests::client::peer_h2(ours, &cp.anchors(), certs.clone(), SERVER_ID)
            .await
            .unwrap();
        assert_eq!(
            weft_tests::client::peer_get(&mut sender, "app:8080")
                .await
                .unwrap(),
            200
        );

        // A destination that is not the pod's: never relayed.
        let elsewhere = std::net::SocketAddr::from(([10, 99, 0, 1], HTTP_PORT));
        let relayed =
            match weft_tests::client::peer_h2(elsewhere, &cp.anchors(), certs, SERVER_ID).await {
                Ok(mut sender) => weft_tests::client::peer_get(&mut sender, "app:8080")
                    .await
                    .ok(),
                Err(_) => None,
            };
        assert_eq!(relayed, None);
        let refused = server
            .metric("weft_inbound_refused_total{reason=\"not_local\"}")
            .await;
        assert_eq!(refused, Some(1.0));
    });
}

/// A meshed opaque destination and an unmeshed HTTP one, both on IPv6 loopback.
const V6_OPAQUE_PORT: u16 = 9006;
const V6_HTTP_PORT: u16 = 9007;

#[test]
fn an_ipv6_intercepted_connection_finds_its_original_destination() {
    weft_tests::init();
    let ns = NetNs::create();
    ns.run(|| async {
        let cp = ControlPlane::start("24h").await;
        let echo = start_tcp_echo("127.0.0.1:0").await;
        let unmeshed = start_echo_app_on(&format!("[::1]:{V6_HTTP_PORT}")).await;
        let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(echo.port)).await;
        // The client proxy's outbound listens on both stacks, as in a dual-stack pod.
        let outbound_port = weft_tests::free_port();
        let client_spec = ProxySpec::new(CLIENT_ID)
            .opaque_route(&format!("[::1]:{V6_OPAQUE_PORT}"), &server)
            .env("WEFT_PROXY_OUTBOUND_ADDR", &format!("[::]:{outbound_port}"))
            .env("WEFT_PROXY_OPAQUE_PORTS", &format!("{}", echo.port))
            .uid(PROXY_UID);
        let _client = Proxy::start(&cp, client_spec).await;
        ip6tables(&["-A", "OUTPUT", "-p", "tcp", "-m", "owner", "--uid-owner", &PROXY_UID.to_string(), "-j", "RETURN"]);
        ip6tables(&["-A", "OUTPUT", "-p", "tcp", "-d", "::1", "--dport", &format!("{V6_OPAQUE_PORT}:{V6_HTTP_PORT}"), "-j", "REDIRECT", "--to-ports", &outbound_port.to_string()]);
        // The server's inbound must take the echo port as opaque.
        cp.apply_ok(&format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {{name: echo, namespace: shop}}\nspec: {{selector: {{app: echo}}, ports: [{{port: 9000, targetPort: {port}, appProtocol: tcp}}]}}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: Workload\nmetadata: {{name: echo-1, namespace: shop, labels: {{app: echo}}}}\nspec: {{address: 127.0.0.1, proxyPort: {proxy}, identity: \"{SERVER_ID}\"}}\n",
            port = echo.port,
            proxy = server.inbound.port(),
        ));

        // Through the mesh: the route names the IPv6 original destination.
        let mut stream = TcpStream::connect(("::1", V6_OPAQUE_PORT)).await.unwrap();
        let mut greeting = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut greeting)).await.expect("greeting").unwrap();
        assert_eq!(&greeting, b"hello\n");
        stream.write_all(b"over v6").await.unwrap();
        let mut echoed = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut echoed)).await.expect("echo").unwrap();
        assert_eq!(&echoed, b"over v6");
        let inbound = server.metric("weft_tcp_connections_total{direction=\"inbound\",protocol=\"opaque\"}").await;
        assert_eq!(inbound, Some(1.0));

        // Outside the mesh: passed through to the IPv6 destination.
        let app = MeshClient::http1(std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, V6_HTTP_PORT)));
        let response = app.send("GET", &format!("[::1]:{V6_HTTP_PORT}"), "/v6", Bytes::new()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(unmeshed.request_count(), 1);
    });
}

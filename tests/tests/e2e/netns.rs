//! Opaque TCP through real iptables interception, inside a network namespace of the test's own.

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::apps::start_tcp_echo;
use weft_tests::mesh::{ControlPlane, Proxy, ProxySpec};
use weft_tests::netns::NetNs;

use crate::{CLIENT_ID, SERVER_ID};

/// Port the app dials for a destination marked opaque.
const OPAQUE_PORT: u16 = 9000;
/// Port the app dials for a destination found opaque by detection (a server-first protocol).
const DETECTED_PORT: u16 = 9001;

fn redirect(port: u16, to: u16) {
    let status = Command::new("iptables")
        .args(["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1"])
        .args([
            "--dport",
            &port.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            &to.to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
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

const PAYLOAD_LEN: usize = 256 * 1024;

#[test]
fn opaque_tcp_is_forwarded_byte_for_byte_through_interception() {
    weft_tests::init();
    let ns = NetNs::create();
    ns.run(|| async {
        let cp = ControlPlane::start("24h").await;
        let echo = start_tcp_echo("127.0.0.1:0").await;
        let server = Proxy::start(&cp, ProxySpec::new(SERVER_ID).app_port(echo.port)).await;
        let client = Proxy::start(
            &cp,
            ProxySpec::new(CLIENT_ID)
                .opaque_route(&format!("127.0.0.1:{OPAQUE_PORT}"), &server)
                .route(&format!("127.0.0.1:{DETECTED_PORT}"), &server),
        )
        .await;
        redirect(OPAQUE_PORT, client.outbound.port());
        redirect(DETECTED_PORT, client.outbound.port());

        let payload: Vec<u8> = (0..PAYLOAD_LEN).map(|i| (i * 7 % 256) as u8).collect();
        assert!(
            exchange(OPAQUE_PORT, &payload).await == payload,
            "opaque bytes altered"
        );
        assert!(
            exchange(DETECTED_PORT, &payload).await == payload,
            "detected-opaque bytes altered"
        );

        let outbound = client
            .metric("weft_tcp_connections_total{direction=\"outbound\",protocol=\"opaque\"}")
            .await;
        assert_eq!(outbound, Some(2.0));
        let inbound = server
            .metric("weft_tcp_connections_total{direction=\"inbound\",protocol=\"opaque\"}")
            .await;
        assert_eq!(inbound, Some(2.0));
    });
}

//! Clients the tests use: plain HTTP/1 and HTTP/2 to a proxy's outbound port, gRPC with an
//! authority override, and a tiny GET for admin endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::echo::echo_client::EchoClient;

/// A response with its body read.
pub type Collected = Response<Bytes>;

/// GET `path` from `addr` over HTTP/1; `None` if unreachable.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{addr}{path}");
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Always dials the proxy, whatever the URI says, the way intercepted traffic reaches it.
type FixedConnector =
    tower::util::BoxCloneSyncService<http::Uri, TokioIo<TcpStream>, std::io::Error>;

/// An HTTP client to a proxy's outbound listener, sending requests for any authority.
#[derive(Debug, Clone)]
pub struct MeshClient {
    client: Client<FixedConnector, Full<Bytes>>,
}

impl MeshClient {
    /// HTTP/1.1 with keep-alive.
    pub fn http1(outbound: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(fixed(outbound)),
        }
    }

    /// HTTP/2 with prior knowledge.
    pub fn http2(outbound: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(fixed(outbound)),
        }
    }

    /// Sends `method path` to `authority` through the proxy, with `body`.
    pub async fn send(
        &self,
        method: &str,
        authority: &str,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<Collected> {
        self.send_with(method, authority, path, body, &[]).await
    }

    /// Like [`MeshClient::send`] with extra headers.
    pub async fn send_with(
        &self,
        method: &str,
        authority: &str,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Collected> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body))?;
        let response =
            tokio::time::timeout(Duration::from_secs(20), self.client.request(request)).await??;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

fn fixed(outbound: SocketAddr) -> FixedConnector {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: http::Uri| async move {
        Ok::<_, std::io::Error>(TokioIo::new(TcpStream::connect(outbound).await?))
    }))
}

/// A gRPC client that connects to `outbound` but addresses `authority`.
pub async fn grpc_client(
    outbound: SocketAddr,
    authority: &str,
) -> EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

/// An HTTP/2 connection to a proxy's inbound port as a peer proxy makes it (mTLS, ALPN weft/1),
/// presenting `certs` and expecting the server to prove `server`: a test playing a peer.
pub async fn peer_h2(
    inbound: SocketAddr,
    anchors: &weft_certs::TrustAnchors,
    certs: std::sync::Arc<weft_certs::CertStore>,
    server: &str,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>> {
    h2_over_mtls(inbound, anchors, certs, server, weft_certs::ALPN_WEFT).await
}

/// HTTP/2 over standard mTLS (ALPN `h2`, no Weft transport header): what a foreign SPIFFE
/// client holding a certificate of the trust domain (an Envoy, a SPIRE-enabled service) does.
pub async fn foreign_h2(
    inbound: SocketAddr,
    anchors: &weft_certs::TrustAnchors,
    certs: std::sync::Arc<weft_certs::CertStore>,
    server: &str,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>> {
    h2_over_mtls(inbound, anchors, certs, server, weft_certs::ALPN_H2).await
}

async fn h2_over_mtls(
    inbound: SocketAddr,
    anchors: &weft_certs::TrustAnchors,
    certs: std::sync::Arc<weft_certs::CertStore>,
    server: &str,
    alpn: &[u8],
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>> {
    let config = weft_certs::client_config(anchors, certs, &[alpn])?;
    let server: weft_certs::Identity = server.parse()?;
    let tcp = TcpStream::connect(inbound).await?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(server.dns_name())?,
            tcp,
        )
        .await?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A GET of `authority` on a peer connection; its status, or an error if the connection failed.
pub async fn peer_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    authority: &str,
) -> anyhow::Result<u16> {
    let request = Request::builder()
        .uri(format!("http://{authority}/"))
        .body(http_body_util::Empty::new())?;
    let response =
        tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await??;
    Ok(response.status().as_u16())
}

/// A plaintext HTTP/1 GET of `path` to `addr`, as an unmeshed client (or the kubelet) sends it:
/// the status, or `None` when the connection is closed without an answer.
pub async fn plaintext_get(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut received))
        .await
        .expect("the server answers or closes");
    let text = String::from_utf8_lossy(&received);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// An opaque stream (the transport header sent) from a raw Weft peer holding `certs`, to the
/// proxy whose inbound listener is `inbound` and whose identity is `server`.
pub async fn opaque_peer(
    inbound: SocketAddr,
    anchors: &weft_certs::TrustAnchors,
    certs: std::sync::Arc<weft_certs::CertStore>,
    server: &str,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let config = weft_certs::client_config(anchors, certs, &[weft_certs::ALPN_WEFT])?;
    let server: weft_certs::Identity = server.parse()?;
    let tcp = TcpStream::connect(inbound).await?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(server.dns_name())?,
            tcp,
        )
        .await?;
    tls.write_all(b"weft/tcp\n").await?;
    Ok(tls)
}

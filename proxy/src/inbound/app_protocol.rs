//! What an app speaks when neither policy nor the caller says: asked once per app address by
//! opening a connection and sending the HTTP/2 preface. An HTTP/2 server answers with its
//! SETTINGS frame; an HTTP/1 server answers with an error status, or closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::destination::AppProtocol;
use crate::detect::H2_PREFACE;

/// An app that says nothing for this long after the preface is taken for HTTP/1 (which waits
/// for the rest of a request line that never comes).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
/// The frame type byte of a frame header.
const SETTINGS_TYPE: u8 = 4;

/// What a probe learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// The app answered (or closed): this holds for as long as the app runs.
    Answered(AppProtocol),
    /// The app said nothing in time (busy, starting): HTTP/1 for now, to be asked again.
    Silent,
}

/// Asks the app at `addr` whether it speaks HTTP/2 with prior knowledge. An error: the app
/// could not be reached (nothing learned).
pub async fn probe(addr: SocketAddr) -> std::io::Result<Probed> {
    let mut tcp = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut hello = H2_PREFACE.to_vec();
    hello.extend_from_slice(&EMPTY_SETTINGS);
    tcp.write_all(&hello).await?;
    let mut header = [0u8; 9];
    let answered = tokio::time::timeout(PROBE_TIMEOUT, tcp.read_exact(&mut header)).await;
    Ok(match answered {
        Ok(Ok(_)) if header[3] == SETTINGS_TYPE => Probed::Answered(AppProtocol::Http2),
        Ok(_) => Probed::Answered(AppProtocol::Http1),
        Err(_) => Probed::Silent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp.write_all(answer).await;
        });
        addr
    }

    #[tokio::test]
    async fn settings_mean_http2_and_anything_else_http1() {
        let h2 = server(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]).await;
        assert_eq!(
            probe(h2).await.unwrap(),
            Probed::Answered(AppProtocol::Http2)
        );
        let h1 = server(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            probe(h1).await.unwrap(),
            Probed::Answered(AppProtocol::Http1)
        );
        let closes = server(b"").await;
        assert_eq!(
            probe(closes).await.unwrap(),
            Probed::Answered(AppProtocol::Http1)
        );
    }
}

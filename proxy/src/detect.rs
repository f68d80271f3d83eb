//! Protocol detection: what the first bytes of a connection say it speaks.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request head longer than this is not worth detecting; treat the stream as opaque.
const MAX_PEEK: usize = 16 * 1024;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x requests.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// Anything else: bytes forwarded as they are.
    Opaque,
}

/// Classifies the bytes read so far, or `None` when more are needed to tell.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let preface_len = buf.len().min(H2_PREFACE.len());
    if buf[..preface_len] == H2_PREFACE[..preface_len] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        // The request line parsed; too many headers for our empty array still means HTTP/1.
        Ok(_) if request.version.is_some() => Some(Protocol::Http1),
        Err(httparse::Error::TooManyHeaders) => Some(Protocol::Http1),
        Ok(_) if buf.len() < MAX_PEEK => None,
        _ => Some(Protocol::Opaque),
    }
}

/// Reads from `io` until the protocol is known, the app goes quiet for `timeout` (a
/// server-first protocol: opaque), or the stream ends. Returns the protocol and the bytes read,
/// which the caller must replay.
pub async fn detect<S: AsyncRead + Unpin>(
    io: &mut S,
    timeout: Duration,
) -> std::io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(0)) => {
                let protocol = classify(&buf).unwrap_or(Protocol::Opaque);
                return Ok((protocol, buf.freeze()));
            }
            Ok(Ok(_)) => {
                if let Some(protocol) = classify(&buf) {
                    return Ok((protocol, buf.freeze()));
                }
            }
            Ok(Err(error)) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(
            classify(b"POST /upload HTTP/1.0\r\nHost: x\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"GET / HT"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn a_quiet_client_is_opaque() {
        let (mut client, _server) = tokio::io::duplex(64);
        let (protocol, bytes) = detect(&mut client, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(protocol, Protocol::Opaque);
        assert!(bytes.is_empty());
    }

    #[tokio::test]
    async fn detection_waits_for_a_split_request_line() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            server.write_all(b"GET /x").await.unwrap();
            tokio::task::yield_now().await;
            server.write_all(b" HTTP/1.1\r\n").await.unwrap();
            server
        });
        let (protocol, bytes) = detect(&mut client, Duration::from_secs(5)).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(&bytes[..], b"GET /x HTTP/1.1\r\n");
        drop(writer.await.unwrap());
    }
}

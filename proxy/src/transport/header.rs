//! What the outbound proxy sends first on an mTLS connection to a peer, so the inbound side knows
//! what follows without waiting: either the HTTP/2 preface (hyper writes it) or this header for
//! opaque TCP. Sending it at once matters for server-first protocols, where the app would
//! otherwise wait for the server and the inbound proxy for the app.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::detect::H2_PREFACE;

/// Marks an opaque stream; the bytes after it are the app's.
pub const OPAQUE_HEADER: &[u8] = b"weft/tcp\n";

/// What a peer said it will send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// HTTP/2 (the preface has been consumed into the returned prefix).
    Http2,
    /// Opaque bytes (the header has been consumed).
    Opaque,
}

/// Writes the opaque header.
pub async fn write_opaque<S: AsyncWrite + Unpin>(io: &mut S) -> std::io::Result<()> {
    io.write_all(OPAQUE_HEADER).await
}

/// Reads enough to tell the two apart. For HTTP/2 the bytes read are returned so the caller can
/// replay them to the HTTP/2 server; for opaque streams nothing is left over.
pub async fn read<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<(Stream, Vec<u8>)> {
    let mut buf = vec![0u8; OPAQUE_HEADER.len()];
    io.read_exact(&mut buf).await?;
    if buf == OPAQUE_HEADER {
        return Ok((Stream::Opaque, Vec::new()));
    }
    if H2_PREFACE.starts_with(&buf) {
        return Ok((Stream::Http2, buf));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "peer sent neither the HTTP/2 preface nor the weft opaque header",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tells_opaque_from_http2() {
        let mut opaque: &[u8] = b"weft/tcp\nhello";
        assert_eq!(
            read(&mut opaque).await.unwrap(),
            (Stream::Opaque, Vec::new())
        );
        assert_eq!(opaque, b"hello");
        let mut h2: &[u8] = H2_PREFACE;
        let (stream, prefix) = read(&mut h2).await.unwrap();
        assert_eq!(stream, Stream::Http2);
        assert_eq!(prefix, &H2_PREFACE[..OPAQUE_HEADER.len()]);
        let mut junk: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(read(&mut junk).await.is_err());
    }
}

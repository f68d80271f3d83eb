//! A stream that detection called opaque on a port that takes HTTP. Its first bytes must not be
//! anything the app could take for a request: HTTP sent only after the client stayed silent past
//! the detection timeout, or a request line malformed just enough to slip past detection but not
//! past a lenient app parser, would reach the app without the identity the proxy stamps. Text
//! protocols belong on ports declared opaque; binary ones (TLS, databases) pass.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, failing its first read if that read brings a text request.
#[derive(Debug)]
pub struct NotHttp<S> {
    inner: S,
    checked: bool,
}

impl<S> NotHttp<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            checked: false,
        }
    }
}

/// Whether a stream starting with `first` could be a text request: its first byte past any
/// whitespace is a letter (every HTTP method, and every text command, starts with one).
fn could_be_a_request(first: &[u8]) -> bool {
    first
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(u8::is_ascii_alphabetic)
}

impl<S: AsyncRead + Unpin> AsyncRead for NotHttp<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if !self.checked {
            let read = &buf.filled()[before..];
            if read.iter().any(|b| !b.is_ascii_whitespace()) {
                self.checked = true;
                if could_be_a_request(read) {
                    // Nothing of it is handed on.
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "text on a port that takes HTTP, which detection did not recognize",
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NotHttp<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn first_read(sent: &'static [u8]) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        drop(client);
        let mut guarded = NotHttp::new(server);
        let mut read = Vec::new();
        guarded.read_to_end(&mut read).await.map(|_| read)
    }

    #[tokio::test]
    async fn binary_passes_and_text_requests_do_not() {
        assert!(first_read(b"\x16\x03\x01\x00\x10").await.is_ok());
        assert!(first_read(b"\x80\x81garbage").await.is_ok());
        let late_http = first_read(b"GET / HTTP/1.1\r\nweft-client-id: x\r\n\r\n").await;
        assert_eq!(
            late_http.unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let malformed = first_read(b"\r\n GET\t/ HTTP/1.1\r\n").await;
        assert!(malformed.is_err());
    }
}

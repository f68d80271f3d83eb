//! The server side of `client.rs`: a TLS connection accepted by the caller's own acceptor (so
//! the SPIFFE verifiers apply), handed to tonic with what the handshake established about the
//! peer, which tonic puts into each request's extensions.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// A handshaken server connection: its peer as `P` says, `G` held while it is open (a place
/// among bounded connections), closed when nothing was read for its idle timeout.
#[derive(Debug)]
pub struct TlsConnection<P, G> {
    stream: TlsStream<TcpStream>,
    peer: P,
    _held: G,
    idle_timeout: Duration,
    /// When it is closed for silence; pushed back by every read.
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl<P, G> TlsConnection<P, G> {
    /// `stream` from `peer`, holding `held` until closed, closed after `idle_timeout` of
    /// silence.
    pub fn new(stream: TlsStream<TcpStream>, peer: P, held: G, idle_timeout: Duration) -> Self {
        Self {
            stream,
            peer,
            _held: held,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// The TLS stream.
    pub fn stream(&self) -> &TlsStream<TcpStream> {
        &self.stream
    }
}

impl<P, G> Connected for TlsConnection<P, G>
where
    P: Clone + Send + Sync + 'static,
{
    type ConnectInfo = P;

    fn connect_info(&self) -> P {
        self.peer.clone()
    }
}

impl<P: Unpin, G: Unpin> AsyncRead for TlsConnection<P, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle_timeout;
                    self.idle.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.idle.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "nothing read for too long"),
            )),
            other => other,
        }
    }
}

impl<P: Unpin, G: Unpin> AsyncWrite for TlsConnection<P, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

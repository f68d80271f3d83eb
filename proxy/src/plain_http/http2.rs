//! HTTP/2 (prior knowledge) to one address: one multiplexed connection, dialed again when it
//! closes.

use std::net::SocketAddr;

use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;

use super::{PlainHttpError, connect};
use crate::http_util::{Body, h2_client};
use crate::transport::shared_h2::{SendError, SharedH2};

/// The connection to one address, if one is up.
#[derive(Debug)]
pub(super) struct Connection {
    addr: SocketAddr,
    shared: SharedH2,
}

impl Connection {
    pub(super) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            shared: SharedH2::default(),
        }
    }

    /// Sends `request` (absolute URI).
    pub(super) async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Body>, PlainHttpError> {
        match self.shared.send(request, |_| self.dial()).await {
            Ok(response) => Ok(response),
            Err(SendError::Dial(error)) => Err(error),
            Err(SendError::Http(error)) => Err(error.into()),
            Err(SendError::Saturated) => Err(PlainHttpError::Saturated(self.addr)),
        }
    }

    async fn dial(&self) -> Result<SendRequest<Body>, PlainHttpError> {
        let tcp = connect(self.addr).await?;
        let (sender, connection) = h2_client().handshake(TokioIo::new(tcp)).await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }
}

//! HTTP/2 (prior knowledge) to one address: one multiplexed connection, dialed again when it
//! closes.

use std::net::SocketAddr;

use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use super::{PlainHttpError, connect};
use crate::http_util::{Body, boxed, h2_client};

/// The connection to one address, if one is up.
#[derive(Debug)]
pub(super) struct Connection {
    addr: SocketAddr,
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Held while dialing, so concurrent requests share one new connection.
    dialing: tokio::sync::Mutex<()>,
}

impl Connection {
    pub(super) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `request` (absolute URI). One the connection refused before sending anything (it
    /// was closing) goes once more on a new connection.
    pub(super) async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Body>, PlainHttpError> {
        let mut sender = self.sender().await?;
        let request = match sender.try_send_request(request).await {
            Ok(response) => return Ok(response.map(boxed)),
            Err(mut error) => match error.take_message() {
                Some(request) => request,
                None => return Err(error.into_error().into()),
            },
        };
        let mut sender = self.sender().await?;
        Ok(sender.send_request(request).await?.map(boxed))
    }

    async fn sender(&self) -> Result<SendRequest<Body>, PlainHttpError> {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let _dialing = self.dialing.lock().await;
        // Another request may have dialed while we waited.
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let tcp = connect(self.addr).await?;
        let (sender, connection) = h2_client().handshake(TokioIo::new(tcp)).await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "HTTP/2 connection ended");
            }
        });
        *self.sender.lock() = Some(sender.clone());
        Ok(sender)
    }

    fn live(&self) -> Option<SendRequest<Body>> {
        let guard = self.sender.lock();
        guard.as_ref().filter(|sender| !sender.is_closed()).cloned()
    }
}

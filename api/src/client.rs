//! How a proxy or `weftctl` reaches the control plane: gRPC over TLS whose verification the
//! caller supplies (the SPIFFE verifiers of `weft-certs`), so tonic's own TLS is not used.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address or server name is unusable.
    #[error("invalid control plane address {addr:?}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// Connecting failed (eager channels only).
    #[error("cannot reach the control plane at {addr}: {source}")]
    Connect {
        /// The address given.
        addr: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Where and how to dial the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneTarget {
    /// host:port.
    pub addr: String,
    /// The TLS server name: the DNS form of the control plane's identity.
    pub server_name: String,
    /// The TLS client config, whose verifier checks the server name as an identity.
    pub tls: Arc<rustls::ClientConfig>,
}

impl ControlPlaneTarget {
    fn endpoint(&self) -> Result<(Endpoint, ServerName<'static>), ConnectError> {
        let invalid = |reason: String| ConnectError::Address {
            addr: self.addr.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let server_name =
            ServerName::try_from(self.server_name.clone()).map_err(|e| invalid(e.to_string()))?;
        Ok((endpoint, server_name))
    }

    /// A channel that connects on first use and reconnects by itself after failures.
    pub fn lazy_channel(&self) -> Result<Channel, ConnectError> {
        let (endpoint, server_name) = self.endpoint()?;
        Ok(endpoint.connect_with_connector_lazy(self.connector(server_name)))
    }

    /// A channel connected now; fails if the control plane cannot be reached.
    pub async fn channel(&self) -> Result<Channel, ConnectError> {
        let (endpoint, server_name) = self.endpoint()?;
        endpoint
            .connect_with_connector(self.connector(server_name))
            .await
            .map_err(|source| ConnectError::Connect {
                addr: self.addr.clone(),
                source,
            })
    }

    fn connector(
        &self,
        server_name: ServerName<'static>,
    ) -> impl tower::Service<
        http::Uri,
        Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
        Error = std::io::Error,
        Future = impl Future + Send,
    > + Send
    + 'static {
        let addr = self.addr.clone();
        let tls = TlsConnector::from(self.tls.clone());
        tower::service_fn(move |_: http::Uri| {
            let addr = addr.clone();
            let tls = tls.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let stream = tls.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        })
    }
}

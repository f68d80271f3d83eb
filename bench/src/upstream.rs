//! The upstream of every benchmark: a minimal HTTP/1.1 + HTTP/2 server that answers small
//! requests, 1 MiB downloads and gRPC unary echoes, doing as little as possible itself so the
//! measurements are of what sits in front of it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;
use weft_tests::echo::echo_server::{Echo, EchoServer};
use weft_tests::echo::{EchoReply, EchoRequest};

/// The size of the transfer workload's body.
pub const TRANSFER_BYTES: usize = 1024 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Serves on `listener` until the process ends.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let transfer = Bytes::from(vec![b'x'; TRANSFER_BYTES]);
    let grpc = tonic::service::Routes::new(EchoServer::new(Echoer));
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (transfer, grpc) = (transfer.clone(), grpc.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (transfer, grpc) = (transfer.clone(), grpc.clone());
                async move { Ok::<_, Infallible>(answer(req, transfer, grpc).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    transfer: Bytes,
    grpc: tonic::service::Routes,
) -> Response<Body> {
    if req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
    {
        return match grpc.oneshot(req.map(tonic::body::Body::new)).await {
            Ok(response) => response.map(|b| b.map_err(BoxError::from).boxed_unsync()),
            Err(never) => match never {},
        };
    }
    let body = if req.uri().path() == "/1mib" {
        transfer
    } else {
        Bytes::from_static(b"ok\n")
    };
    // Drain any request body, so keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
    Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

#[derive(Debug)]
struct Echoer;

#[tonic::async_trait]
impl Echo for Echoer {
    async fn unary(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let message = request.into_inner().message;
        Ok(tonic::Response::new(EchoReply {
            message,
            client_id: String::new(),
            index: 0,
        }))
    }

    type ServerStreamStream = futures_util::stream::Empty<Result<EchoReply, tonic::Status>>;

    async fn server_stream(
        &self,
        _request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Self::ServerStreamStream>, tonic::Status> {
        Ok(tonic::Response::new(futures_util::stream::empty()))
    }

    type HoldStream = futures_util::stream::Empty<Result<EchoReply, tonic::Status>>;

    async fn hold(
        &self,
        _request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Self::HoldStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the benchmark holds no streams",
        ))
    }
}

/// Binds `addr` and serves.
pub async fn run(addr: SocketAddr) -> std::io::Result<()> {
    serve(TcpListener::bind(addr).await?).await
}

//! `bench-otlp-sink --listen ADDR`: an OTLP/gRPC trace collector that accepts every export and
//! keeps nothing, so the tracing benchmark measures the proxies' side of tracing and not a
//! collector's.

use std::net::SocketAddr;

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// Accept OTLP trace exports and discard them.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(Debug)]
struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink))
            .serve(args.listen),
    )?;
    Ok(())
}

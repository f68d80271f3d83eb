//! `weft-proxy await-ready`: the classic sidecar's `postStart` hook. The kubelet starts the next
//! container only when the hook returns, so the app never runs before its proxy can carry its
//! traffic (the images have no shell or curl to do this with).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser as _;

use http_body_util::Empty;
use hyper::body::Bytes;

use crate::EXIT_USAGE;
use crate::config::ENV_ADMIN_ADDR;

/// Waits for the proxy beside it to be ready.
#[derive(Debug, clap::Parser)]
#[command(name = "weft-proxy await-ready")]
struct AwaitArgs {
    /// The proxy's admin port [default: WEFT_PROXY_ADMIN_ADDR's, or 7191].
    #[arg(long)]
    admin_port: Option<u16>,

    /// Give up, exiting 1, after this long.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Polls `/ready` on the admin port until it answers 200: exit 0, or 1 at the timeout.
pub fn run(args: impl IntoIterator<Item = String>) -> i32 {
    let args =
        match AwaitArgs::try_parse_from(std::iter::once("await-ready".to_string()).chain(args)) {
            Ok(args) => args,
            Err(error) => {
                let _ = error.print();
                return if error.use_stderr() { EXIT_USAGE } else { 0 };
            }
        };
    let port = match args.admin_port {
        Some(port) => port,
        None => match std::env::var(ENV_ADMIN_ADDR).ok().filter(|v| !v.is_empty()) {
            Some(addr) => match addr.parse::<SocketAddr>() {
                Ok(addr) => addr.port(),
                Err(error) => {
                    eprintln!("weft-proxy await-ready: {ENV_ADMIN_ADDR}: {error}");
                    return EXIT_USAGE;
                }
            },
            None => 7191,
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-proxy await-ready: cannot start the runtime: {error}");
            return 1;
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let polled = runtime.block_on(async {
        let poll = async {
            while !ready(addr).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(args.timeout, poll).await
    });
    match polled {
        Ok(()) => 0,
        Err(_) => {
            eprintln!(
                "weft-proxy await-ready: the proxy at {addr} was not ready within {}",
                humantime::format_duration(args.timeout)
            );
            1
        }
    }
}

async fn ready(addr: SocketAddr) -> bool {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let io = hyper_util::rt::TokioIo::new(tcp);
    let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(io).await else {
        return false;
    };
    tokio::spawn(connection);
    let request = http::Request::get("/ready")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else {
        return false;
    };
    sender
        .send_request(request)
        .await
        .is_ok_and(|response| response.status() == http::StatusCode::OK)
}

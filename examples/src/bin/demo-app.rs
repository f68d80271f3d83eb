//! `demo-app frontend|backend|get`: the demo's apps (see `weft_examples::app`).
#![allow(clippy::print_stdout)] // `get` prints what it fetched.

use std::net::SocketAddr;

use clap::Parser;
use weft_examples::app::Backend;

/// A demo app.
#[derive(Debug, Parser)]
enum Args {
    /// Answers with the caller's verified identity.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Calls backend on every request.
    Frontend {
        #[arg(long)]
        listen: SocketAddr,
        /// The frontend's proxy outbound address, where nothing redirects its traffic (the
        /// local demo).
        #[arg(
            long,
            required_unless_present = "backend_url",
            conflicts_with = "backend_url"
        )]
        proxy: Option<SocketAddr>,
        /// The backend's URL, called as any program would (in a pod, the mesh intercepts it).
        #[arg(long)]
        backend_url: Option<String>,
    },
    /// Fetches a URL as an unmeshed program would and prints the answer (the client in the
    /// Kubernetes example and the pod tests).
    Get {
        url: String,
        /// Tries before giving up (exit 1); the proxy beside it may still be starting.
        #[arg(long, default_value_t = 60)]
        attempts: u32,
        /// The pause between tries.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    // As a container's first process, nothing ends it on SIGTERM unless it says so itself.
    let result = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            result = run(args) => result,
            _ = terminate.recv() => Ok(()),
        },
        Err(error) => Err(error.into()),
    };
    if let Err(error) = result {
        eprintln!("demo-app: {error:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args {
        Args::Backend { listen } => weft_examples::app::serve_backend(listen).await,
        Args::Frontend {
            listen,
            proxy,
            backend_url,
        } => {
            let backend = match (proxy, backend_url) {
                (Some(proxy), _) => Backend::Proxy(proxy),
                (None, Some(url)) => Backend::Url(url),
                (None, None) => anyhow::bail!("frontend needs --proxy or --backend-url"),
            };
            weft_examples::app::serve_frontend(listen, backend).await
        }
        Args::Get {
            url,
            attempts,
            interval,
        } => {
            let body = weft_examples::app::fetch(&url, attempts, interval).await?;
            print!("{body}");
            Ok(())
        }
    }
}

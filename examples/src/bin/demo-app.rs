//! `demo-app frontend|backend`: the demo's apps (see `weft_examples::app`).

use std::net::SocketAddr;

use clap::Parser;

/// A demo app.
#[derive(Debug, Parser)]
enum Args {
    /// Answers with the caller's verified identity.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Calls backend through its proxy on every request.
    Frontend {
        #[arg(long)]
        listen: SocketAddr,
        /// The frontend's proxy outbound address.
        #[arg(long)]
        proxy: SocketAddr,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse() {
        Args::Backend { listen } => weft_examples::app::serve_backend(listen).await,
        Args::Frontend { listen, proxy } => weft_examples::app::serve_frontend(listen, proxy).await,
    }
}

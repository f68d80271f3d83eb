//! `bench-upstream --listen ADDR`: the benchmarks' upstream (see `weft_bench::upstream`).

use std::net::SocketAddr;

use clap::Parser;

/// Serve the benchmark upstream.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One worker, like each proxy: the upstream must not take the machine from them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(weft_bench::upstream::run(args.listen))?;
    Ok(())
}

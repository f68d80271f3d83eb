//! `weftctl`: see `weft_control_plane::cli`.

use weft_control_plane::cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    weft_certs::install_default_provider();
    let cli: Cli = weft_control_plane::parse_args_or_exit("weftctl");
    let mut stdout = std::io::stdout();
    if let Err(error) = run(cli, &mut stdout).await {
        eprintln!("weftctl: {error}");
        std::process::exit(1);
    }
}

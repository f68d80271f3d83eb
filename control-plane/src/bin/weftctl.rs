//! `weftctl`: see `weft_control_plane::cli`.

use clap::Parser;
use weft_control_plane::cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    weft_certs::install_default_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version
            let _ = error.print();
            return;
        }
        Err(error) => {
            let message = error.to_string();
            eprintln!(
                "weftctl: {}",
                message
                    .lines()
                    .next()
                    .unwrap_or("invalid usage")
                    .trim_start_matches("error: ")
            );
            std::process::exit(weft_control_plane::EXIT_USAGE);
        }
    };
    let mut stdout = std::io::stdout();
    if let Err(error) = run(cli, &mut stdout).await {
        eprintln!("weftctl: {error}");
        std::process::exit(1);
    }
}

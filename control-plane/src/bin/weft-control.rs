//! `weft-control`: see `weft_control_plane::server`.

use weft_control_plane::config::Config;
use weft_control_plane::{EXIT_DATA, EXIT_USAGE, server};
use weft_telemetry::Drain;

fn main() {
    weft_certs::install_default_provider();
    let config: Config = weft_control_plane::parse_args_or_exit("weft-control");
    let logging = weft_telemetry::init_logging(weft_telemetry::LogSetup {
        env_var: "WEFT_CONTROL_LOG",
        default_filter: "info",
        format: config.log_format,
        access_log: false,
        tracer: None,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-control: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let drain = Drain::new();
        if let Err(error) = server::start(&config, &drain).await {
            eprintln!("weft-control: {error}");
            return match error {
                server::StartError::Store(_) => EXIT_DATA,
                _ => EXIT_USAGE,
            };
        }
        if let Err(error) = weft_telemetry::wait_for_signal().await {
            eprintln!("weft-control: cannot listen for signals: {error}");
            return 1;
        }
        tracing::info!("draining");
        drain.trigger();
        if tokio::time::timeout(config.shutdown_grace, drain.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed; exiting with calls in flight");
        }
        0
    });
    drop(logging);
    std::process::exit(code);
}

//! `weft-control`: see `weft_control_plane::server`.

use weft_control_plane::config::Config;
use weft_control_plane::{EXIT_DATA, EXIT_USAGE, server};
use weft_telemetry::Drain;

fn main() {
    weft_certs::install_default_provider();
    let config: Config = weft_control_plane::parse_args_or_exit("weft-control");
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
    let traces = config.trace_endpoint.as_ref().map(|endpoint| {
        let export = weft_telemetry::TraceExport {
            endpoint: endpoint.clone(),
            service_name: "weft-control",
            attributes: Vec::new(),
        };
        weft_telemetry::Traces::start_on(&runtime, &export).unwrap_or_else(|error| {
            eprintln!("weft-control: {error}");
            std::process::exit(EXIT_USAGE);
        })
    });
    let logging = weft_telemetry::init_logging(weft_telemetry::LogSetup {
        env_var: "WEFT_CONTROL_LOG",
        default_filter: "info",
        format: config.log_format,
        access_log: false,
        tracer: traces.as_ref().map(weft_telemetry::Traces::tracer),
    });
    let code = runtime.block_on(async move {
        let drain = Drain::new();
        if let Err(error) = server::start(&config, &drain, traces.as_ref()).await {
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
        if let Some(traces) = traces {
            traces.finish().await;
        }
        0
    });
    drop(logging);
    std::process::exit(code);
}

//! Structured logs through `tracing`.

use tracing_subscriber::EnvFilter;

/// Installs the process's log subscriber. The filter comes from `env_var` (e.g. `WEFT_PROXY_LOG`)
/// in `tracing` directive syntax, falling back to `default_filter`. Logs go to stderr, so stdout
/// stays free for the CLI's output.
pub fn init_logging(env_var: &str, default_filter: &str) {
    let filter = std::env::var(env_var)
        .ok()
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

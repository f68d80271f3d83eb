//! Structured logs through `tracing`.

use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the process's log subscriber. The filter comes from `env_var` (e.g. `WEFT_PROXY_LOG`)
/// as comma-separated `level` or `target=level` directives (`info,weft_proxy=debug`), falling
/// back to `default_filter`. Logs go to stderr, so stdout stays free for the CLI's output.
///
/// `Targets` rather than `EnvFilter`: it needs no regex engine, which would otherwise be paged
/// into every sidecar's memory just to read this one variable.
pub fn init_logging(env_var: &str, default_filter: &str) {
    let filter = std::env::var(env_var)
        .ok()
        .and_then(|value| Targets::from_str(&value).ok())
        .or_else(|| Targets::from_str(default_filter).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_parse() {
        assert!(Targets::from_str("info,weft_proxy=debug").is_ok());
        assert!(Targets::from_str("warn").is_ok());
    }
}

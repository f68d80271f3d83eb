//! Structured logs through `tracing`.

use std::str::FromStr;
use std::sync::OnceLock;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// Installs the process's log subscriber. The filter comes from `env_var` (e.g. `WEFT_PROXY_LOG`)
/// as comma-separated `level` or `target=level` directives (`info,weft_proxy=debug`), falling
/// back to `default_filter`. Logs go to stderr, so stdout stays free for the CLI's output. The
/// filter can be changed while the process runs (`PUT /log-level` on the admin server).
///
/// `Targets` rather than `EnvFilter`: it needs no regex engine, which would otherwise be paged
/// into every sidecar's memory just to read this one variable.
pub fn init_logging(env_var: &str, default_filter: &str) {
    let filter = std::env::var(env_var)
        .ok()
        .and_then(|value| Targets::from_str(&value).ok())
        .or_else(|| Targets::from_str(default_filter).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let (filter, handle) = reload::Layer::new(filter);
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
        .is_ok();
    // Another subscriber already installed (a test's): changing this filter would change nothing.
    if installed {
        let _ = FILTER.set(handle);
    }
}

/// The installed subscriber's filter: the log subscriber is the process's, and so is this.
static FILTER: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// The filter in force, as directives.
pub(crate) fn current_filter() -> Result<String, String> {
    let handle = FILTER.get().ok_or_else(not_installed)?;
    handle
        .with_current(ToString::to_string)
        .map_err(|e| e.to_string())
}

/// Replaces the filter with `directives` (as the log variable takes them): the filter now in
/// force, or why `directives` are not a filter.
pub(crate) fn set_filter(directives: &str) -> Result<String, String> {
    let directives = directives.trim();
    if directives.is_empty() {
        return Err("empty: give directives such as `info` or `info,weft_proxy=debug`".into());
    }
    let targets = Targets::from_str(directives)
        .map_err(|e| format!("{directives:?} is not a log filter: {e}"))?;
    let handle = FILTER.get().ok_or_else(not_installed)?;
    handle.reload(targets).map_err(|e| e.to_string())?;
    tracing::info!(filter = %directives, "log filter changed");
    current_filter()
}

fn not_installed() -> String {
    "this process logs through a subscriber of its own".to_string()
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

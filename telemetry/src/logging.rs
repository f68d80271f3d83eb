//! Structured logs through `tracing`.

use std::str::FromStr;
use std::sync::OnceLock;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Plain,
    /// One JSON object per event (timestamp, level, fields, span), for log pipelines.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            _ => Err("not a log format: plain or json".to_string()),
        }
    }
}

/// Installs the process's log subscriber. The filter comes from `env_var` (e.g. `WEFT_PROXY_LOG`)
/// as comma-separated `level` or `target=level` directives (`info,weft_proxy=debug`), falling
/// back to `default_filter`. Logs go to stderr in `format`, so stdout stays free for the CLI's
/// output. The filter can be changed while the process runs (`PUT /log-level` on the admin
/// server).
///
/// `Targets` rather than `EnvFilter`: it needs no regex engine, which would otherwise be paged
/// into every sidecar's memory just to read this one variable.
pub fn init_logging(env_var: &str, default_filter: &str, format: LogFormat) {
    let filter = std::env::var(env_var)
        .ok()
        .and_then(|value| Targets::from_str(&value).ok())
        .or_else(|| Targets::from_str(default_filter).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let (filter, handle) = reload::Layer::new(filter);
    let plain = (format == LogFormat::Plain).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(json)
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
    // Said under the filter being replaced, so a quieter one cannot hide that it was changed.
    tracing::info!(filter = %directives, "changing the log filter");
    handle.reload(targets).map_err(|e| e.to_string())?;
    current_filter()
}

fn not_installed() -> String {
    "this process logs through a subscriber of its own".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse_and_others_are_named() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" plain".parse::<LogFormat>(), Ok(LogFormat::Plain));
        assert_eq!(
            "yaml".parse::<LogFormat>(),
            Err("not a log format: plain or json".to_string())
        );
    }

    #[test]
    fn directives_parse() {
        assert!(Targets::from_str("info,weft_proxy=debug").is_ok());
        assert!(Targets::from_str("warn").is_ok());
    }
}

//! Structured logs through `tracing`.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
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

/// The `tracing` target of access-log events: they go to stdout as JSON, never into the logs.
pub const ACCESS_LOG_TARGET: &str = "weft_access";
/// The `tracing` target of spans exported as traces: only these reach the exporter, so the
/// process's own diagnostic spans never become traces.
pub const TRACE_TARGET: &str = "weft_trace";

/// Access-log lines waiting for stdout, at most; past that they are dropped rather than make
/// a request wait on a slow log reader.
const ACCESS_LOG_BUFFER_LINES: usize = 16 * 1024;

/// What the process's subscriber writes, and where.
#[derive(Debug)]
pub struct LogSetup<'a> {
    /// The variable holding the log filter (e.g. `WEFT_PROXY_LOG`).
    pub env_var: &'a str,
    /// The filter when the variable is unset or unreadable.
    pub default_filter: &'a str,
    /// How log lines look.
    pub format: LogFormat,
    /// Access-log events ([`ACCESS_LOG_TARGET`]) may be written (to stdout): the proxy's
    /// own setting, or a Service's policy, decides which are.
    pub access_log: bool,
    /// Export spans of [`TRACE_TARGET`] with this tracer.
    pub tracer: Option<opentelemetry_sdk::trace::Tracer>,
}

/// Holds what the subscriber writes through; dropping it flushes the access log.
#[derive(Debug)]
#[must_use = "dropping it loses the access log's last lines"]
pub struct LoggingGuard(Option<AccessLogWriter>);

impl Drop for LoggingGuard {
    fn drop(&mut self) {
        if let Some(writer) = &self.0 {
            // Dropping the worker's guard waits for the lines already queued.
            drop(writer.0.guard.lock().take());
        }
    }
}

/// Stdout through a thread of its own, started by the first access-log line: a proxy that
/// never writes one (the access log off, and no Service asking for it) pays no thread.
#[derive(Debug, Clone, Default)]
struct AccessLogWriter(Arc<AccessLogState>);

#[derive(Debug, Default)]
struct AccessLogState {
    writer: OnceLock<NonBlocking>,
    guard: Mutex<Option<WorkerGuard>>,
}

impl<'a> MakeWriter<'a> for AccessLogWriter {
    type Writer = NonBlocking;

    fn make_writer(&'a self) -> NonBlocking {
        self.0
            .writer
            .get_or_init(|| {
                let (writer, guard) = NonBlockingBuilder::default()
                    .lossy(true)
                    .buffered_lines_limit(ACCESS_LOG_BUFFER_LINES)
                    .thread_name("weft-access-log")
                    .finish(std::io::stdout());
                *self.0.guard.lock() = Some(guard);
                writer
            })
            .clone()
    }
}

type LogLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the process's log subscriber. The filter comes from `env_var` (e.g. `WEFT_PROXY_LOG`)
/// as comma-separated `level` or `target=level` directives (`info,weft_proxy=debug`), falling
/// back to `default_filter`. Logs go to stderr in `format`, so stdout stays free for the CLI's
/// output and the access log. The filter can be changed while the process runs (`PUT
/// /log-level` on the admin server); it never silences the access log or traces, which are
/// switched on their own.
///
/// `Targets` rather than `EnvFilter`: it needs no regex engine, which would otherwise be paged
/// into every sidecar's memory just to read this one variable.
pub fn init_logging(setup: LogSetup<'_>) -> LoggingGuard {
    let filter = std::env::var(setup.env_var)
        .ok()
        .and_then(|value| Targets::from_str(&value).ok())
        .or_else(|| Targets::from_str(setup.default_filter).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let (subscriber, filter, access_log) = build(filter, &setup);
    let installed = subscriber.try_init().is_ok();
    // Another subscriber already installed (a test's): changing this filter would change nothing.
    if installed {
        let _ = FILTER.set(filter);
    }
    LoggingGuard(access_log)
}

/// The subscriber `init_logging` installs, the handle that changes its log filter, and the
/// access log's writer when it has one.
fn build(
    filter: Targets,
    setup: &LogSetup<'_>,
) -> (
    impl tracing::Subscriber + Send + Sync + 'static,
    reload::Handle<Targets, Registry>,
    Option<AccessLogWriter>,
) {
    let (filter, handle) = reload::Layer::new(filter);
    let logs: LogLayer = match setup.format {
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .boxed(),
    };
    // Each layer has one filter, and only the layers in use are installed: a callsite no layer
    // wants is then never interesting, and h2's span per frame costs a branch. A filter nested
    // around another, or a `None` layer (which wants everything), makes every callsite
    // "sometimes": each such span would be created in the registry and only then dropped.
    // Excluding our own targets with `Targets` rather than a closure keeps a level hint, so the
    // process's maximum level stays the filter's.
    let not_own_targets = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target(ACCESS_LOG_TARGET, LevelFilter::OFF)
        .with_target(TRACE_TARGET, LevelFilter::OFF);
    let mut layers: Vec<LogLayer> = vec![logs.with_filter(filter.and(not_own_targets)).boxed()];
    let writer = setup.access_log.then(AccessLogWriter::default);
    if let Some(writer) = writer.clone() {
        layers.push(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_target(false)
                .with_level(false)
                .with_writer(writer)
                .with_filter(Targets::new().with_target(ACCESS_LOG_TARGET, tracing::Level::INFO))
                .boxed(),
        );
    }
    if let Some(tracer) = setup.tracer.clone() {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // A span is one request, whose attributes say all there is to know of it; the
                // layer's extras would add eight more to every span, the same in all of them
                // (our source file and line, the worker thread, our target) or measuring
                // polls rather than the request (busy and idle time). We never enter these
                // spans, so there is no context to activate on entry.
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_filter(Targets::new().with_target(TRACE_TARGET, tracing::Level::TRACE))
                .boxed(),
        );
    }
    let subscriber = tracing_subscriber::registry().with(layers);
    (subscriber, handle, writer)
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

    /// Plain logs, no traces; `build` is given its filter rather than reading a variable.
    fn plain_logs(access_log: bool) -> LogSetup<'static> {
        LogSetup {
            env_var: "WEFT_TEST_UNSET",
            default_filter: "warn",
            format: LogFormat::Plain,
            access_log,
            tracer: None,
        }
    }

    /// h2 and hyper open a span per frame and log at TRACE: under a quieter filter those must
    /// not be created at all (the registry allocating, entering and closing each one cost the
    /// proxy CPU on every request), while what the filter lets through still is.
    #[test]
    fn what_no_layer_wants_is_never_created() {
        for access_log in [false, true] {
            let filter = Targets::from_str("warn,weft_proxy=debug").expect("directives");
            let (subscriber, _filter, _access_log) = build(filter, &plain_logs(access_log));
            tracing::subscriber::with_default(subscriber, || {
                let frame = tracing::trace_span!(target: "h2::proto::connection", "poll");
                assert!(frame.is_disabled(), "access log {access_log}");
                assert!(!tracing::event_enabled!(target: "h2::codec", tracing::Level::TRACE));
                assert!(!tracing::event_enabled!(target: "hyper::proto", tracing::Level::DEBUG));

                let own = tracing::debug_span!(target: "weft_proxy::inbound", "connection");
                assert!(!own.is_disabled());
                assert!(tracing::event_enabled!(target: "h2::codec", tracing::Level::WARN));
                assert_eq!(
                    tracing::event_enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO),
                    access_log
                );
            });
        }
    }

    /// `PUT /log-level` swaps the filter inside the log layer's combined filter: what it turns
    /// on is created from then on, and what it turns off again is not.
    #[test]
    fn a_reloaded_filter_changes_what_is_created() {
        let (subscriber, filter, _access_log) = build(
            Targets::new().with_default(LevelFilter::WARN),
            &plain_logs(false),
        );
        tracing::subscriber::with_default(subscriber, || {
            let frame = || tracing::trace_span!(target: "h2::proto::connection", "poll");
            assert!(frame().is_disabled());
            filter
                .reload(Targets::from_str("warn,h2=trace").expect("directives"))
                .expect("reload");
            assert!(!frame().is_disabled());
            assert!(!tracing::event_enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO));
            filter
                .reload(Targets::new().with_default(LevelFilter::WARN))
                .expect("reload");
            assert!(frame().is_disabled());
        });
    }

    #[test]
    fn directives_parse() {
        assert!(Targets::from_str("info,weft_proxy=debug").is_ok());
        assert!(Targets::from_str("warn").is_ok());
    }
}

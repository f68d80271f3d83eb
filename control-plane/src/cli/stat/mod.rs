//! `weftctl stat [svc|route|pod]`: success rate, request rate and latency percentiles of the
//! mesh's traffic, read from the Prometheus that scrapes the proxies, or without one from the
//! proxies themselves through the control plane.

mod proxies;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use super::{AdminClient, CliError};

/// The largest query answer read.
const MAX_ANSWER: usize = 16 << 20;

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// What to show: Services as their callers' proxies saw them (svc), routes (route), or each
    /// proxy's inbound traffic to its own app (pod).
    #[arg(value_enum, default_value = "svc")]
    pub resource: StatResource,
    /// Only this namespace's Services and routes.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The Prometheus that scrapes the proxies, e.g. http://127.0.0.1:9090 (after `kubectl
    /// port-forward svc/prometheus 9090`). Without one, the proxies connected to the control
    /// plane are read twice, the window apart.
    #[arg(long, env = "WEFT_PROMETHEUS_URL")]
    pub prometheus: Option<String>,
    /// The window rates and percentiles are taken over (a Prometheus duration: 30s, 1m, 1h;
    /// default 1m from a Prometheus, 10s from the proxies, which weftctl waits out).
    #[arg(long, value_parser = prometheus_duration)]
    pub window: Option<String>,
    /// table, or json (one object per row).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: StatOutput,
}

/// What `weftctl stat` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatResource {
    /// Destination Services, from their callers' outbound proxies.
    #[value(alias = "service", alias = "services")]
    Svc,
    /// Routes of Services, from their callers' outbound proxies.
    #[value(alias = "routes")]
    Route,
    /// Each proxy's inbound side: what its app served, by Prometheus instance.
    #[value(alias = "pods", alias = "deploy", alias = "workload")]
    Pod,
}

/// How rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatOutput {
    Table,
    Json,
}

/// One row: a name, and what Prometheus said of it (absent where it had no data).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
struct Row {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    success_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p95_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_seconds: Option<f64>,
}

/// Writes one column of a row.
type SetColumn = fn(&mut Row, f64);

/// What a row is made of: the PromQL of each column, and the labels naming a row.
struct Queries {
    by: &'static str,
    requests: String,
    success: Option<String>,
    retries: Option<String>,
    latency: Option<(String, String)>,
}

/// From the proxies: how long to watch them when no window is given.
const PROXIES_WINDOW: Duration = Duration::from_secs(10);

pub(super) async fn run(
    args: &StatArgs,
    client: Option<AdminClient>,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let (rows, unread) = match (&args.prometheus, client) {
        (Some(url), _) => (from_prometheus(args, url).await?, Vec::new()),
        (None, Some(mut client)) => {
            let window = match &args.window {
                Some(window) => humantime::parse_duration(window)
                    .ok()
                    .filter(|window| !window.is_zero())
                    .ok_or_else(|| {
                        CliError(format!("--window {window:?}: must be a positive duration"))
                    })?,
                None => PROXIES_WINDOW,
            };
            let namespace = args.namespace.as_deref();
            proxies::rows(&mut client, args.resource, namespace, window).await?
        }
        (None, None) => {
            return Err(CliError(
                "no --prometheus and no control plane to read the proxies from".into(),
            ));
        }
    };
    let mut text = match args.output {
        StatOutput::Table => table(args.resource, &rows),
        StatOutput::Json => rows
            .iter()
            .filter_map(|row| serde_json::to_string(row).ok())
            .map(|line| line + "\n")
            .collect(),
    };
    if !unread.is_empty() {
        let unread = format!("(not read: {})", unread.join("; "));
        match args.output {
            StatOutput::Table => {
                let _ = writeln!(text, "{unread}");
            }
            // stdout stays one object per row.
            StatOutput::Json => eprintln!("weftctl: {unread}"),
        }
    }
    let _ = out.write_all(text.as_bytes());
    Ok(())
}

async fn from_prometheus(args: &StatArgs, url: &str) -> Result<Vec<Row>, CliError> {
    let prometheus = Prometheus::parse(url)?;
    let window = args.window.as_deref().unwrap_or("1m");
    let queries = queries(args.resource, args.namespace.as_deref(), window);
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut fill = |samples: Vec<(String, f64)>, set: SetColumn| {
        for (name, value) in samples {
            let row = rows.entry(name.clone()).or_insert_with(|| Row {
                name,
                ..Row::default()
            });
            if value.is_finite() {
                set(row, value);
            }
        }
    };
    fill(
        prometheus.query(&queries.requests, queries.by).await?,
        |r, v| r.requests_per_second = Some(v),
    );
    if let Some(success) = &queries.success {
        fill(prometheus.query(success, queries.by).await?, |r, v| {
            r.success_rate = Some(v);
        });
    }
    if let Some(retries) = &queries.retries {
        fill(prometheus.query(retries, queries.by).await?, |r, v| {
            r.retries_per_second = Some(v);
        });
    }
    if let Some((selector, by)) = &queries.latency {
        let setters: [(f64, SetColumn); 3] = [
            (0.5, |r, v| r.p50_seconds = Some(v)),
            (0.95, |r, v| r.p95_seconds = Some(v)),
            (0.99, |r, v| r.p99_seconds = Some(v)),
        ];
        for (quantile, set) in setters {
            let promql = format!(
                "histogram_quantile({quantile}, sum by ({by}, le) (rate(weft_http_request_duration_seconds_bucket{{{selector}}}[{window}])))",
            );
            fill(prometheus.query(&promql, queries.by).await?, set);
        }
    }
    Ok(rows.into_values().collect())
}

fn queries(resource: StatResource, namespace: Option<&str>, window: &str) -> Queries {
    // A destination is `<namespace>/<name>:<port>`.
    let in_namespace = namespace
        .map(|ns| format!(", destination=~\"{}/.*\"", escape(ns)))
        .unwrap_or_default();
    match resource {
        StatResource::Svc => {
            let selector = format!("direction=\"outbound\"{in_namespace}");
            Queries {
                by: "destination",
                requests: format!(
                    "sum by (destination) (rate(weft_http_requests_total{{{selector}}}[{window}]))"
                ),
                success: Some(success_rate("destination", &selector, window)),
                retries: None,
                latency: Some((selector, "destination".into())),
            }
        }
        StatResource::Route => {
            let selector = format!("direction=\"outbound\", route!=\"\"{in_namespace}");
            let retried = in_namespace.trim_start_matches(", ");
            Queries {
                by: "route",
                requests: format!(
                    "sum by (destination, route) (rate(weft_http_requests_total{{{selector}}}[{window}]))"
                ),
                success: Some(success_rate("destination, route", &selector, window)),
                retries: Some(format!(
                    "sum by (destination, route) (rate(weft_route_retries_total{{{retried}}}[{window}]))"
                )),
                latency: Some((selector, "destination, route".into())),
            }
        }
        StatResource::Pod => {
            let selector = "direction=\"inbound\"".to_string();
            Queries {
                by: "instance",
                requests: format!(
                    "sum by (instance) (rate(weft_http_requests_total{{{selector}}}[{window}]))"
                ),
                success: Some(success_rate("instance", &selector, window)),
                retries: None,
                latency: Some((selector, "instance".into())),
            }
        }
    }
}

fn success_rate(by: &str, selector: &str, window: &str) -> String {
    format!(
        "sum by ({by}) (rate(weft_http_requests_total{{{selector}, status_class!=\"5xx\"}}[{window}])) / sum by ({by}) (rate(weft_http_requests_total{{{selector}}}[{window}]))"
    )
}

fn table(resource: StatResource, rows: &[Row]) -> String {
    let title = match resource {
        StatResource::Svc => "SERVICE",
        StatResource::Route => "ROUTE",
        StatResource::Pod => "PROXY",
    };
    let width = rows
        .iter()
        .map(|r| r.name.len())
        .chain([title.len()])
        .max()
        .unwrap_or(0);
    let mut text = format!(
        "{title:<width$}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}\n",
        "SUCCESS", "RPS", "RETRIES/S", "P50", "P95", "P99"
    );
    for row in rows {
        let percent = row
            .success_rate
            .map_or("-".to_string(), |rate| format!("{:.2}%", rate * 100.0));
        let rate = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.1}"));
        let ms =
            |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{:.2}ms", v * 1e3));
        let _ = writeln!(
            text,
            "{:<width$}  {percent:>8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
            row.name,
            rate(row.requests_per_second),
            rate(row.retries_per_second),
            ms(row.p50_seconds),
            ms(row.p95_seconds),
            ms(row.p99_seconds),
        );
    }
    if rows.is_empty() {
        text.push_str("(no traffic in the window)\n");
    }
    text
}

/// A label value inside a PromQL regular expression in double quotes.
fn escape(value: &str) -> String {
    value
        .chars()
        .flat_map(|c| match c {
            '\\' | '"' => vec!['\\', c],
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                vec!['\\', '\\', c]
            }
            c => vec![c],
        })
        .collect()
}

fn prometheus_duration(text: &str) -> Result<String, String> {
    let invalid = || format!("{text:?} is not a Prometheus duration such as 30s, 1m or 1h");
    let mut rest = text;
    if rest.is_empty() {
        return Err(invalid());
    }
    // Numbers, each followed by its unit: 1h30m.
    while !rest.is_empty() {
        let number = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let after = &rest[number..];
        let unit = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        if number == 0 || !matches!(&after[..unit], "ms" | "s" | "m" | "h" | "d" | "w" | "y") {
            return Err(invalid());
        }
        rest = &after[unit..];
    }
    Ok(text.to_string())
}

/// A Prometheus HTTP API at `host:port` and a path prefix.
struct Prometheus {
    host: String,
    prefix: String,
}

impl Prometheus {
    fn parse(url: &str) -> Result<Self, CliError> {
        let bad = |why: &str| CliError(format!("--prometheus {url:?}: {why}"));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "only http:// is supported (port-forward to the Prometheus service)",
            ));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = match authority.port_u16() {
            Some(_) => authority.as_str().to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Self {
            host,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// An instant query: each sample's `label` value (or, for routes, `destination route`) and
    /// its value.
    async fn query(&self, promql: &str, label: &str) -> Result<Vec<(String, f64)>, CliError> {
        let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let path = format!("{}/api/v1/query?query={encoded}", self.prefix);
        let (status, body) = super::http_get::get(&self.host, &path, MAX_ANSWER).await?;
        let answer: Value = serde_json::from_slice(&body).map_err(|_| {
            CliError(format!(
                "{}: {status}: not a Prometheus API answer",
                self.host
            ))
        })?;
        if answer["status"] != "success" {
            let error = answer["error"].as_str().unwrap_or("query failed");
            return Err(CliError(format!("{}: {error}", self.host)));
        }
        let samples = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(samples
            .iter()
            .filter_map(|sample| {
                let metric = &sample["metric"];
                let name = if label == "route" {
                    format!(
                        "{} {}",
                        metric["destination"].as_str()?,
                        metric["route"].as_str()?
                    )
                } else {
                    metric[label].as_str()?.to_string()
                };
                let value = sample["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((name, value))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_prometheus_durations() {
        for good in ["30s", "1m", "1h30m", "500ms", "2d"] {
            assert!(prometheus_duration(good).is_ok(), "{good}");
        }
        for bad in ["", "1", "m", "1 m", "1x", "-1m", "1m)"] {
            assert!(prometheus_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces_are_quoted_for_a_regular_expression() {
        assert_eq!(escape("shop"), "shop");
        assert_eq!(escape("a.b"), "a\\\\.b");
        assert_eq!(escape("x\"y"), "x\\\"y");
    }

    #[test]
    fn prometheus_urls_are_http_with_an_optional_prefix() {
        let p = Prometheus::parse("http://127.0.0.1:9090/prom/").unwrap();
        assert_eq!(
            (p.host.as_str(), p.prefix.as_str()),
            ("127.0.0.1:9090", "/prom")
        );
        assert_eq!(
            Prometheus::parse("http://prometheus").unwrap().host,
            "prometheus:80"
        );
        assert!(Prometheus::parse("https://prometheus").is_err());
        assert!(Prometheus::parse("prometheus:9090").is_err());
    }

    #[test]
    fn the_table_shows_what_is_known_and_dashes_for_the_rest() {
        let rows = [Row {
            name: "shop/api:8080".into(),
            success_rate: Some(0.9),
            requests_per_second: Some(99.84),
            p99_seconds: Some(0.0042),
            ..Row::default()
        }];
        let text = table(StatResource::Svc, &rows);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("SERVICE"));
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["shop/api:8080", "90.00%", "99.8", "-", "-", "-", "4.20ms"]
        );
    }
}

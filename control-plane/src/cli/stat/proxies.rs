//! `weftctl stat` without a Prometheus: the proxies' counters read twice through the control
//! plane, a window apart, and the rows computed from what changed — as a Prometheus `rate()`
//! and `histogram_quantile()` over that window would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weft_api::admin::{ProxyMetricsRequest, ProxySamples, ProxySelector};
use weft_api::tap::{MetricsRequest, Sample};

use super::{Row, StatResource};
use crate::cli::{AdminClient, CliError};

const REQUESTS: &str = "weft_http_requests_total";
const LATENCY: &str = "weft_http_request_duration_seconds";
const RETRIES: &str = "weft_route_retries_total";

/// One series: its name and labels, sorted.
type SeriesKey = (String, Vec<(String, String)>);

/// What one read returned, by proxy; and which proxies could not be read.
struct Read {
    by_proxy: BTreeMap<String, BTreeMap<SeriesKey, f64>>,
    failed: Vec<String>,
}

/// Reads the proxies `resource` needs, `window` apart, and makes the rows.
pub(super) async fn rows(
    client: &mut AdminClient,
    resource: StatResource,
    namespace: Option<&str>,
    window: Duration,
) -> Result<(Vec<Row>, Vec<String>), CliError> {
    // A Service's callers can be anywhere; a pod's inbound side is its own.
    let selector = match (resource, namespace) {
        (StatResource::Pod, Some(namespace)) => ProxySelector {
            kind: "ns".into(),
            name: namespace.into(),
            namespace: String::new(),
        },
        _ => ProxySelector {
            kind: "all".into(),
            ..ProxySelector::default()
        },
    };
    let families = match resource {
        StatResource::Route => &[REQUESTS, LATENCY, RETRIES][..],
        StatResource::Svc | StatResource::Pod => &[REQUESTS, LATENCY][..],
    };
    // Each proxy is read somewhere within a read: the window is taken between their middles.
    let started = Instant::now();
    let before = read(client, &selector, families).await?;
    let first_middle = started + started.elapsed() / 2;
    tokio::time::sleep_until((started + window).into()).await;
    let second_start = Instant::now();
    let after = read(client, &selector, families).await?;
    let second_middle = second_start + second_start.elapsed() / 2;
    let seconds = second_middle.duration_since(first_middle).as_secs_f64();
    let changes = changes(&before, &after);
    let mut failed = before.failed;
    for failure in after.failed {
        if !failed.contains(&failure) {
            failed.push(failure);
        }
    }
    Ok((tally(&changes, resource, namespace, seconds), failed))
}

async fn read(
    client: &mut AdminClient,
    selector: &ProxySelector,
    families: &[&str],
) -> Result<Read, CliError> {
    let request = ProxyMetricsRequest {
        selector: Some(selector.clone()),
        metrics: Some(MetricsRequest {
            families: families.iter().map(|f| f.to_string()).collect(),
        }),
    };
    let proxies = client
        .admin
        .proxy_metrics(request)
        .await?
        .into_inner()
        .proxies;
    let mut read = Read {
        by_proxy: BTreeMap::new(),
        failed: Vec::new(),
    };
    for ProxySamples {
        proxy,
        samples,
        error,
    } in proxies
    {
        if !error.is_empty() {
            read.failed.push(format!("{proxy}: {error}"));
            continue;
        }
        let series = samples
            .into_iter()
            .map(|sample| (key(&sample), sample.value));
        read.by_proxy.insert(proxy, series.collect());
    }
    Ok(read)
}

fn key(sample: &Sample) -> SeriesKey {
    let mut labels: Vec<(String, String)> = sample
        .labels
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    labels.sort();
    (sample.name.clone(), labels)
}

/// Each series' increase between the reads, with the proxy it came from. A proxy whose
/// counters went down (any of them, or one that vanished) restarted: all its series count from
/// zero, as `rate()` takes a reset, and a histogram's buckets stay consistent with each other.
/// A proxy read only once is left out: what it counted before the window is not known.
fn changes(before: &Read, after: &Read) -> Vec<(String, SeriesKey, f64)> {
    let mut changes = Vec::new();
    for (proxy, series) in &after.by_proxy {
        let Some(earlier) = before.by_proxy.get(proxy) else {
            continue;
        };
        // Zeros are not sent: a series missing now was zero, one missing before too.
        let restarted = earlier
            .iter()
            .any(|(key, then)| series.get(key).copied().unwrap_or(0.0) < *then);
        for (key, now) in series {
            let then = if restarted {
                0.0
            } else {
                earlier.get(key).copied().unwrap_or(0.0)
            };
            changes.push((proxy.clone(), key.clone(), now - then));
        }
    }
    changes
}

fn label<'a>(key: &'a SeriesKey, name: &str) -> &'a str {
    key.1
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, value)| value.as_str())
}

/// The rows of `resource` from the increases over `seconds`.
fn tally(
    changes: &[(String, SeriesKey, f64)],
    resource: StatResource,
    namespace: Option<&str>,
    seconds: f64,
) -> Vec<Row> {
    // Which row a series belongs to, if any.
    let row_of = |proxy: &str, key: &SeriesKey| -> Option<String> {
        let direction = label(key, "direction");
        let destination = label(key, "destination");
        let in_namespace = namespace.is_none_or(|ns| {
            destination
                .split_once('/')
                .is_some_and(|(namespace, _)| namespace == ns)
        });
        match resource {
            StatResource::Svc => {
                (direction == "outbound" && in_namespace).then(|| destination.to_string())
            }
            StatResource::Route => {
                let route = label(key, "route");
                (direction == "outbound" && !route.is_empty() && in_namespace)
                    .then(|| format!("{destination} {route}"))
            }
            StatResource::Pod => (direction == "inbound").then(|| proxy.to_string()),
        }
    };
    #[derive(Default)]
    struct Sums {
        requests: f64,
        failures: f64,
        retries: f64,
        buckets: BTreeMap<String, f64>,
    }
    let mut sums: BTreeMap<String, Sums> = BTreeMap::new();
    for (proxy, key, increase) in changes {
        if key.0 == RETRIES {
            // Retries have no direction: they are the outbound side's.
            if resource == StatResource::Route {
                let name = format!("{} {}", label(key, "destination"), label(key, "route"));
                if let Some(sums) = sums.get_mut(&name) {
                    sums.retries += increase;
                }
            }
            continue;
        }
        let Some(row) = row_of(proxy, key) else {
            continue;
        };
        let sums = sums.entry(row).or_default();
        if key.0 == REQUESTS {
            sums.requests += increase;
            if label(key, "status_class") == "5xx" {
                sums.failures += increase;
            }
        } else if key.0 == format!("{LATENCY}_bucket") {
            *sums
                .buckets
                .entry(label(key, "le").to_string())
                .or_default() += increase;
        }
    }
    sums.into_iter()
        .filter(|(_, sums)| sums.requests > 0.0)
        .map(|(name, sums)| {
            let mut buckets: Vec<(f64, f64)> = sums
                .buckets
                .iter()
                .filter_map(|(le, count)| Some((le.parse::<f64>().ok()?, *count)))
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            Row {
                name,
                success_rate: Some(1.0 - sums.failures / sums.requests),
                requests_per_second: Some(sums.requests / seconds),
                retries_per_second: (resource == StatResource::Route)
                    .then_some(sums.retries / seconds),
                p50_seconds: quantile(0.5, &buckets),
                p95_seconds: quantile(0.95, &buckets),
                p99_seconds: quantile(0.99, &buckets),
            }
        })
        .collect()
}

/// The `q` quantile of cumulative `buckets` (upper bound, count; the last +Inf), interpolated
/// linearly within its bucket as Prometheus's `histogram_quantile` does.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            if inside <= 0.0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below) / inside);
        }
        (lower, below) = (upper, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        labels.sort();
        (name.to_string(), labels)
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let buckets = [
            (0.001, 50.0),
            (0.01, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(0.5, &buckets), Some(0.001));
        let p95 = quantile(0.95, &buckets).unwrap();
        assert!((p95 - 0.055).abs() < 1e-9, "{p95}");
        assert_eq!(quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        // Past the last finite bound: that bound, as Prometheus answers.
        assert_eq!(
            quantile(0.99, &[(0.1, 1.0), (f64::INFINITY, 10.0)]),
            Some(0.1)
        );
    }

    #[test]
    fn increases_make_rates_success_and_restarts_count_from_zero() {
        let ok = series(
            REQUESTS,
            &[
                ("direction", "outbound"),
                ("destination", "shop/api:8080"),
                ("route", "default"),
                ("status_class", "2xx"),
            ],
        );
        let failed = series(
            REQUESTS,
            &[
                ("direction", "outbound"),
                ("destination", "shop/api:8080"),
                ("route", "default"),
                ("status_class", "5xx"),
            ],
        );
        let elsewhere = series(
            REQUESTS,
            &[
                ("direction", "outbound"),
                ("destination", "other/db:5432"),
                ("route", "default"),
                ("status_class", "2xx"),
            ],
        );
        let read = |values: &[(&SeriesKey, f64)]| Read {
            by_proxy: BTreeMap::from([(
                "shop/web".to_string(),
                values.iter().map(|(k, v)| ((*k).clone(), *v)).collect(),
            )]),
            failed: Vec::new(),
        };
        let before = read(&[(&ok, 100.0), (&failed, 50.0), (&elsewhere, 0.0)]);
        let after = read(&[(&ok, 190.0), (&failed, 60.0), (&elsewhere, 7.0)]);
        let rows = tally(
            &changes(&before, &after),
            StatResource::Svc,
            Some("shop"),
            10.0,
        );
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].name, "shop/api:8080");
        assert_eq!(rows[0].requests_per_second, Some(10.0));
        assert!(
            (rows[0].success_rate.unwrap() - 0.9).abs() < 1e-9,
            "{rows:?}"
        );
        // The 5xx counter went down: the proxy restarted, and all its counts are since then.
        let restarted = read(&[(&ok, 30.0), (&failed, 10.0)]);
        let since = tally(&changes(&before, &restarted), StatResource::Svc, None, 10.0);
        assert_eq!(since[0].requests_per_second, Some(4.0), "{since:?}");
        assert!(
            (since[0].success_rate.unwrap() - 0.75).abs() < 1e-9,
            "{since:?}"
        );
        let routes = tally(&changes(&before, &after), StatResource::Route, None, 10.0);
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["other/db:5432 default", "shop/api:8080 default"]);
        assert!(tally(&changes(&before, &after), StatResource::Pod, None, 10.0).is_empty());
    }
}

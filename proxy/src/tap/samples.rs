//! The proxy's metric families as tap API samples: the series Prometheus's text format would
//! show, for `weftctl stat` to read without a Prometheus.

use prometheus::proto::{Metric, MetricFamily, MetricType};
use weft_api::tap::Sample;

/// Families one call may name at most.
pub const MAX_FAMILIES: usize = 16;

/// The samples of `wanted` among `families`, zeros left out (a reader takes a series it does
/// not see as zero, and most label sets' classes and buckets are). A family with no series yet
/// is not gathered at all, so one not found simply has none.
pub fn samples(families: &[MetricFamily], wanted: &[String]) -> Vec<Sample> {
    let mut samples = Vec::new();
    for family in families
        .iter()
        .filter(|f| wanted.iter().any(|w| w == f.name()))
    {
        for metric in family.get_metric() {
            push_series(&mut samples, family.name(), family.get_field_type(), metric);
        }
    }
    samples
}

fn push_series(out: &mut Vec<Sample>, name: &str, kind: MetricType, metric: &Metric) {
    let labels = || {
        metric
            .get_label()
            .iter()
            .map(|label| (label.name().to_string(), label.value().to_string()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let sample = |name: String, labels, value| Sample {
        name,
        labels,
        value,
    };
    match kind {
        MetricType::COUNTER | MetricType::GAUGE => {
            let value = if kind == MetricType::COUNTER {
                metric.get_counter().get_value()
            } else {
                metric.get_gauge().get_value()
            };
            if value != 0.0 {
                out.push(sample(name.to_string(), labels(), value));
            }
        }
        MetricType::HISTOGRAM => {
            let histogram = metric.get_histogram();
            if histogram.get_sample_count() == 0 {
                return;
            }
            for bucket in histogram
                .get_bucket()
                .iter()
                .filter(|b| b.cumulative_count() > 0)
            {
                let mut with_le = labels();
                with_le.insert("le".into(), bucket.upper_bound().to_string());
                out.push(sample(
                    format!("{name}_bucket"),
                    with_le,
                    bucket.cumulative_count() as f64,
                ));
            }
            let mut infinity = labels();
            infinity.insert("le".into(), "+Inf".into());
            let count = histogram.get_sample_count() as f64;
            out.push(sample(format!("{name}_bucket"), infinity, count));
            out.push(sample(format!("{name}_count"), labels(), count));
            out.push(sample(
                format!("{name}_sum"),
                labels(),
                histogram.get_sample_sum(),
            ));
        }
        // The proxy has none of these.
        MetricType::SUMMARY | MetricType::UNTYPED => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_become_the_series_the_text_format_shows() {
        let registry = prometheus::Registry::new();
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new("requests_total", "r"),
            &["route"],
        )
        .unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.with_label_values(&["a"]).inc_by(3);
        let histogram = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("latency_seconds", "l").buckets(vec![0.1, 1.0]),
        )
        .unwrap();
        registry.register(Box::new(histogram.clone())).unwrap();
        histogram.observe(0.5);

        let families = registry.gather();
        let wanted = ["requests_total".to_string(), "latency_seconds".to_string()];
        let samples = samples(&families, &wanted);
        let value = |name: &str, label: (&str, &str)| {
            samples
                .iter()
                .find(|s| {
                    s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1)
                })
                .map(|s| s.value)
        };
        assert_eq!(value("requests_total", ("route", "a")), Some(3.0));
        // Zeros are left out: the empty bucket, and series nothing was counted in.
        assert_eq!(value("latency_seconds_bucket", ("le", "0.1")), None);
        assert_eq!(value("latency_seconds_bucket", ("le", "1")), Some(1.0));
        assert_eq!(value("latency_seconds_bucket", ("le", "+Inf")), Some(1.0));
        assert!(
            samples
                .iter()
                .any(|s| s.name == "latency_seconds_count" && s.value == 1.0)
        );
        counter.with_label_values(&["idle"]);
        let again = super::samples(&registry.gather(), &wanted);
        assert!(
            again
                .iter()
                .all(|s| s.labels.get("route").map(String::as_str) != Some("idle"))
        );

        assert!(super::samples(&families, &["nope".to_string()]).is_empty());
    }
}

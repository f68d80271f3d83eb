//! Medians over rounds, Markdown tables, the targets checked, and the latency plot.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::run::{Sample, Startup, Workload};
use crate::topology::Mode;

/// The percentiles reported.
const QUANTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The samples of one mode and workload.
fn of(samples: &[Sample], mode: Mode, workload: Workload, workers: usize) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| s.mode == mode && s.workload == workload && s.workers == workers)
        .collect()
}

/// Median latency at `q`, in ms.
fn latency(samples: &[&Sample], q: f64) -> f64 {
    median(samples.iter().map(|s| ms(s.result.percentile(q))).collect())
}

/// Median sidecar CPU seconds per 1 000 successful requests.
fn cpu_per_1000(samples: &[&Sample]) -> f64 {
    median(
        samples
            .iter()
            .map(|s| s.cpu.as_secs_f64() / (s.result.ok.max(1) as f64 / 1000.0))
            .collect(),
    )
}

fn throughput(samples: &[&Sample]) -> f64 {
    median(samples.iter().map(|s| s.result.throughput()).collect())
}

fn with_spread(values: &[f64], unit: &str, digits: usize) -> String {
    let m = median(values.to_vec());
    if values.len() < 2 {
        return format!("{m:.digits$}{unit}");
    }
    let (lo, hi) = spread(values);
    format!("{m:.digits$}{unit} ({lo:.digits$}–{hi:.digits$})")
}

/// The data-path section of BENCHMARKS.md.
pub fn markdown(
    samples: &[Sample],
    startups: &[Startup],
    two_workers: &[Sample],
    rounds: usize,
    workloads: &[Workload],
) -> String {
    let mut out = String::new();
    let modes = [
        Mode::Direct,
        Mode::Weft,
        Mode::WeftAuthz,
        Mode::WeftAuthzOff,
        Mode::WeftTraced,
        Mode::WeftTracedOff,
        Mode::Envoy,
    ];
    let _ = writeln!(out, "{}", targets(samples, startups));
    for &workload in workloads {
        let _ = writeln!(out, "\n#### {}\n", workload.label());
        let _ = writeln!(
            out,
            "| mode | p50 | p90 | p99 | p99.9 | added p50 | added p99 | req/s | sidecar CPU s / 1k req | largest sidecar RSS | errors |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let direct = of(samples, Mode::Direct, workload, 1);
        for mode in modes {
            let these = of(samples, mode, workload, 1);
            if these.is_empty() {
                continue;
            }
            let p = |q: f64| {
                with_spread(
                    &these
                        .iter()
                        .map(|s| ms(s.result.percentile(q)))
                        .collect::<Vec<_>>(),
                    " ms",
                    2,
                )
            };
            let added = |q: f64| {
                if mode == Mode::Direct {
                    "—".to_string()
                } else {
                    format!("{:+.2} ms", latency(&these, q) - latency(&direct, q))
                }
            };
            let rate = with_spread(
                &these
                    .iter()
                    .map(|s| s.result.throughput())
                    .collect::<Vec<_>>(),
                "",
                0,
            );
            let cpu = if mode == Mode::Direct {
                "—".to_string()
            } else {
                format!("{:.3}", cpu_per_1000(&these))
            };
            let rss = if mode == Mode::Direct {
                "—".to_string()
            } else {
                format!(
                    "{:.1} MiB",
                    median(these.iter().map(|s| s.rss_kib as f64 / 1024.0).collect())
                )
            };
            let errors: u64 = these.iter().map(|s| s.result.errors).sum();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                mode.name(),
                p(0.5),
                p(0.9),
                p(0.99),
                p(0.999),
                added(0.5),
                added(0.99),
                rate,
                cpu,
                rss,
                errors
            );
        }
    }
    let _ = writeln!(out, "\n#### A fresh sidecar pair\n");
    let _ = writeln!(
        out,
        "| mode | first request (new connections all the way) | largest sidecar RSS, idle | TLS between the sidecars |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|");
    for mode in modes {
        let these: Vec<&Startup> = startups.iter().filter(|s| s.mode == mode).collect();
        if these.is_empty() {
            continue;
        }
        let first: Vec<f64> = these
            .iter()
            .filter_map(|s| s.first_request.map(ms))
            .collect();
        let rss = if mode == Mode::Direct {
            "—".to_string()
        } else {
            format!(
                "{:.1} MiB",
                median(
                    these
                        .iter()
                        .map(|s| s.idle_rss_kib as f64 / 1024.0)
                        .collect()
                )
            )
        };
        let tls = these.first().map_or("", |s| s.tls.as_str());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {tls} |",
            mode.name(),
            with_spread(&first, " ms", 2),
            rss
        );
    }
    if !two_workers.is_empty() {
        let _ = writeln!(out, "\n#### Two worker threads per sidecar (one round)\n");
        let _ = writeln!(
            out,
            "| mode | workload | p50 | p99 | req/s | sidecar CPU s / 1k req |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
        for sample in two_workers {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} ms | {:.2} ms | {:.0} | {:.3} |",
                sample.mode.name(),
                sample.workload.label(),
                ms(sample.result.percentile(0.5)),
                ms(sample.result.percentile(0.99)),
                sample.result.throughput(),
                sample.cpu.as_secs_f64() / (sample.result.ok.max(1) as f64 / 1000.0),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nMedians over {rounds} round(s), the spread (min–max) in parentheses."
    );
    out
}

/// Whether Weft's added latency `weft` is at most half of Envoy's `envoy`. `None` when Envoy's
/// is not above zero: direct, the floor, had a worse figure than Envoy in this run (a stall of
/// the shared machine during direct's turn), and half of a negative number says nothing.
fn at_most_half_of_added(weft: f64, envoy: f64) -> Option<bool> {
    (envoy > 0.0).then_some(weft <= envoy / 2.0)
}

/// The design targets, checked against this run.
fn targets(samples: &[Sample], startups: &[Startup]) -> String {
    let at_1000 = Workload::Rate(1000);
    let (direct, weft, envoy) = (
        of(samples, Mode::Direct, at_1000, 1),
        of(samples, Mode::Weft, at_1000, 1),
        of(samples, Mode::Envoy, at_1000, 1),
    );
    let mut out = String::from(
        "| target | Weft | Envoy | Weft ÷ Envoy | met |\n|---|---:|---:|---:|:---:|\n",
    );
    let mut row = |name: &str, w: f64, e: f64, unit: &str, met: Option<bool>, ratio: bool| {
        let r = if ratio && e.is_finite() && e != 0.0 {
            format!("{:.2}", w / e)
        } else {
            "—".to_string()
        };
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured: direct was slower than Envoy here this run, rerun",
        };
        let e = if e.is_finite() {
            format!("{e:.3}{unit}")
        } else {
            "—".to_string()
        };
        let _ = writeln!(out, "| {name} | {w:.3}{unit} | {e} | {r} | {met} |");
    };
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        let w = latency(&weft, q) - latency(&direct, q);
        let e = latency(&envoy, q) - latency(&direct, q);
        row(
            &format!("added {label} at 1 000 req/s ≤ ½ Envoy's"),
            w,
            e,
            " ms",
            at_most_half_of_added(w, e),
            true,
        );
    }
    let (w, e) = (cpu_per_1000(&weft), cpu_per_1000(&envoy));
    row(
        "sidecar CPU per 1 000 requests ≤ ½ Envoy's",
        w,
        e,
        " s",
        Some(w <= e / 2.0),
        true,
    );
    let max = samples
        .iter()
        .find_map(|s| matches!(s.workload, Workload::MaxThroughput(_)).then_some(s.workload));
    if let Some(max) = max {
        let (w, e) = (
            throughput(&of(samples, Mode::Weft, max, 1)),
            throughput(&of(samples, Mode::Envoy, max, 1)),
        );
        row(
            "max throughput ≥ 2× Envoy's (req/s)",
            w,
            e,
            "",
            Some(w >= 2.0 * e),
            true,
        );
    }
    let idle = |mode: Mode| {
        median(
            startups
                .iter()
                .filter(|s| s.mode == mode)
                .map(|s| s.idle_rss_kib as f64 / 1024.0)
                .collect(),
        )
    };
    let (w, e) = (idle(Mode::Weft), idle(Mode::Envoy));
    row("idle RSS < 10 MiB", w, e, " MiB", Some(w < 10.0), false);
    let rss = |these: &[&Sample]| median(these.iter().map(|s| s.rss_kib as f64 / 1024.0).collect());
    let (w, e) = (rss(&weft), rss(&envoy));
    row(
        "RSS at 1 000 req/s < 20 MiB",
        w,
        e,
        " MiB",
        Some(w < 20.0),
        false,
    );
    // Where the CPU goes: the kernel's share (loopback TCP, wakeups) is a floor both meshes
    // pay per request; user space is what each proxy's own code costs.
    let user = |these: &[&Sample]| {
        median(
            these
                .iter()
                .map(|s| s.user_cpu.as_secs_f64() / (s.result.ok.max(1) as f64 / 1000.0))
                .collect(),
        )
    };
    let (wu, eu) = (user(&weft), user(&envoy));
    let shown = |v: f64, unit: &str| {
        if v.is_finite() {
            format!("{v:.3}{unit}")
        } else {
            "—".to_string()
        }
    };
    let _ = writeln!(
        out,
        "| (CPU at 1 000 req/s in user space only; the rest is the kernel) | {} | {} | {} | |",
        shown(wu, " s"),
        shown(eu, " s"),
        shown(wu / eu, ""),
    );
    // Each cost measured on one pair, against the slices around it with the toggle off.
    let paired = [
        (
            Mode::WeftAuthz,
            Mode::WeftAuthzOff,
            "authorization, 10 rules: sidecar CPU per 1 000 requests ≤ 105 % of the same pair without",
            5.0,
        ),
        (
            Mode::WeftTraced,
            Mode::WeftTracedOff,
            "tracing every request (spans exported over OTLP): sidecar CPU per 1 000 requests ≤ 115 % of the same pair sampling none",
            15.0,
        ),
    ];
    for (on, off, target, allowed) in paired {
        let (with, without) = (of(samples, on, at_1000, 1), of(samples, off, at_1000, 1));
        if with.is_empty() || without.is_empty() {
            continue;
        }
        let (plain, with) = (cpu_per_1000(&without), cpu_per_1000(&with));
        let extra = 100.0 * (with - plain) / plain;
        let _ = writeln!(
            out,
            "| {target} | {with:.3} s vs {plain:.3} s: {extra:+.1} % | — | — | {} |",
            if extra <= allowed { "yes" } else { "**no**" }
        );
    }
    out
}

/// Draws the latency percentiles of `workload` for each mode into an SVG at `path`.
pub fn plot(samples: &[Sample], workload: Workload, path: &Path) -> anyhow::Result<()> {
    let modes = [
        (Mode::Direct, BLACK),
        (Mode::Weft, BLUE),
        (Mode::Envoy, RED),
    ];
    let series: Vec<(Mode, RGBColor, Vec<f64>)> = modes
        .iter()
        .filter_map(|(mode, color)| {
            let these = of(samples, *mode, workload, 1);
            (!these.is_empty()).then(|| {
                (
                    *mode,
                    *color,
                    QUANTILES.iter().map(|(q, _)| latency(&these, *q)).collect(),
                )
            })
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|(_, _, values)| values.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(0.1)
        * 1.15;
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency by percentile — {}", workload.label()),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0usize..(QUANTILES.len() - 1), 0.0..top)?;
    chart
        .configure_mesh()
        .x_labels(QUANTILES.len())
        .x_label_formatter(&|i| {
            QUANTILES
                .get(*i)
                .map_or(String::new(), |(_, l)| (*l).to_string())
        })
        .y_desc("milliseconds")
        .draw()?;
    for (mode, color, values) in series {
        chart
            .draw_series(LineSeries::new(
                values.iter().copied().enumerate(),
                color.stroke_width(2),
            ))?
            .label(mode.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| Circle::new((i, *v), 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Plain sentences: for every workload and figure, whether Weft is ahead of Envoy or behind.
pub fn verdict(samples: &[Sample], startups: &[Startup], workloads: &[Workload]) -> String {
    let mut ahead = Vec::new();
    let mut behind = Vec::new();
    for &workload in workloads {
        let (direct, weft, envoy) = (
            of(samples, Mode::Direct, workload, 1),
            of(samples, Mode::Weft, workload, 1),
            of(samples, Mode::Envoy, workload, 1),
        );
        if weft.is_empty() || envoy.is_empty() {
            continue;
        }
        let label = workload.label();
        let mut compare = |what: &str, w: f64, e: f64, lower_is_better: bool, unit: &str| {
            if !(w.is_finite() && e.is_finite()) {
                return;
            }
            let better = if lower_is_better { w <= e } else { w >= e };
            let line = format!("{label}: {what} {w:.2}{unit} vs Envoy's {e:.2}{unit}");
            if better {
                ahead.push(line)
            } else {
                behind.push(line)
            }
        };
        for (q, name) in [(0.5, "added p50"), (0.99, "added p99")] {
            let (w, e) = (
                latency(&weft, q) - latency(&direct, q),
                latency(&envoy, q) - latency(&direct, q),
            );
            compare(name, w, e, true, " ms");
        }
        if !matches!(workload, Workload::Rate(_)) {
            compare(
                "throughput",
                throughput(&weft),
                throughput(&envoy),
                false,
                " req/s",
            );
        }
        compare(
            "sidecar CPU per 1 000 requests",
            cpu_per_1000(&weft),
            cpu_per_1000(&envoy),
            true,
            " s",
        );
    }
    let first = |mode: Mode| {
        median(
            startups
                .iter()
                .filter(|s| s.mode == mode)
                .filter_map(|s| s.first_request.map(ms))
                .collect(),
        )
    };
    let (w, e) = (first(Mode::Weft), first(Mode::Envoy));
    if w.is_finite() && e.is_finite() {
        let line = format!(
            "first request through a fresh pair: {w:.2} ms vs Envoy's {e:.2} ms (Weft's includes opening the discovery watch)"
        );
        if w <= e {
            ahead.push(line)
        } else {
            behind.push(line)
        }
    }
    let mut out = String::from("Ahead of Envoy in this run:\n\n");
    for line in &ahead {
        let _ = writeln!(out, "- {line}");
    }
    out.push_str("\nBehind Envoy in this run:\n\n");
    if behind.is_empty() {
        out.push_str("- nothing measured\n");
    }
    for line in &behind {
        let _ = writeln!(out, "- {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::at_most_half_of_added;

    #[test]
    fn an_added_latency_target_needs_a_positive_floor_to_compare_with() {
        assert_eq!(at_most_half_of_added(0.2, 0.5), Some(true));
        assert_eq!(at_most_half_of_added(0.3, 0.5), Some(false));
        assert_eq!(at_most_half_of_added(-3.99, -4.02), None);
        assert_eq!(at_most_half_of_added(0.1, 0.0), None);
    }
}

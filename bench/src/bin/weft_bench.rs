#![allow(clippy::print_stdout)] // A benchmark reports on stdout.

//! `weft-bench`: the data-path benchmark. Run it through `./scripts/bench`, which builds the
//! release binaries and installs Envoy first.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use weft_bench::placement::{Layout, Placement, pin};
use weft_bench::run::{self, Plan, Workload};
use weft_bench::topology::{Fixture, Mode};
use weft_bench::{measure, report};

/// Measure Weft's data path against a direct connection and Envoy.
#[derive(Debug, Parser)]
struct Args {
    /// The Envoy binary (without it, only direct and weft run).
    #[arg(long, env = "WEFT_BENCH_ENVOY")]
    envoy: Option<PathBuf>,
    /// Rounds of every mode and workload.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// A few seconds in all: checks the benchmark works, measures nothing worth reading.
    #[arg(long)]
    smoke: bool,
    /// Replace the data-path section of this Markdown file.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Write the latency plot here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Only these workloads (rate500, rate1000, rate2000, max, grpc, transfer), for profiling.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Leave Envoy out even when one is given.
    #[arg(long)]
    no_envoy: bool,
    /// Skip the "weft + authz" mode (to compare with binaries that predate authorization,
    /// through `WEFT_BIN_DIR`).
    #[arg(long)]
    no_authz: bool,
    /// Skip the "weft + traces" mode (for binaries that predate tracing).
    #[arg(long)]
    no_traces: bool,
    /// Skip the two-worker run.
    #[arg(long)]
    one_worker_only: bool,
    /// Where the processes run: as two pods (each sidecar on its app's CPU), both sidecars on
    /// one CPU and the apps on the other, or wherever the kernel puts them.
    #[arg(long, value_enum, default_value_t = Layout::Pods)]
    placement: Layout,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let placement = Placement::detect(args.placement);
    // Pinned, the load generator has one CPU: a second runtime thread there would only take
    // turns with the first (and with the client sidecar), each switch paid for by every mode.
    let runtime = match placement {
        Some(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    runtime.block_on(bench(args, placement))
}

async fn bench(args: Args, placement: Option<Placement>) -> anyhow::Result<()> {
    weft_certs::install_default_provider();
    let mut modes = vec![Mode::Direct, Mode::Weft];
    if !args.no_authz {
        modes.push(Mode::WeftAuthz);
    }
    if !args.no_traces {
        modes.push(Mode::WeftTraced);
    }
    if args.envoy.is_some() && !args.no_envoy {
        modes.push(Mode::Envoy);
    }
    let all = [
        ("rate500", Workload::Rate(500)),
        ("rate1000", Workload::Rate(1000)),
        ("rate2000", Workload::Rate(2000)),
        ("max", Workload::MaxThroughput(16)),
        ("max256", Workload::MaxThroughput(256)),
        ("grpc", Workload::Grpc(16)),
        ("transfer", Workload::Transfer(4)),
    ];
    let workloads: Vec<Workload> = all
        .iter()
        .filter(|(name, _)| args.only.is_empty() || args.only.iter().any(|o| o == name))
        .map(|(_, w)| *w)
        .collect();
    let (rounds, duration) = if args.smoke {
        (1, Duration::from_secs(1))
    } else {
        (args.rounds.max(1), Duration::from_secs(args.seconds.max(1)))
    };
    if let Some(placement) = placement {
        // The load generator is this process: every thread of its runtime, and any it starts.
        pin(std::process::id(), placement.load_generator())?;
    }
    let fixture = Fixture::start(args.envoy.clone(), placement).await?;
    let plan = Plan {
        modes: modes.clone(),
        workloads: workloads.clone(),
        rounds,
        duration,
        workers: 1,
    };
    let ticks_at_start = measure::machine_ticks();
    let (samples, startups) = run::run(&fixture, &plan).await?;
    let modes_include_envoy = modes.contains(&Mode::Envoy);
    let sidecars: Vec<Mode> = modes.into_iter().filter(|m| *m != Mode::Direct).collect();
    let two = Plan {
        modes: sidecars,
        workloads: vec![Workload::Rate(1000), Workload::MaxThroughput(16)],
        rounds: 1,
        duration,
        workers: 2,
    };
    let (two_workers, _) = if args.one_worker_only {
        (Vec::new(), Vec::new())
    } else {
        run::run(&fixture, &two).await?
    };

    let steal = measure::steal_percent(ticks_at_start, measure::machine_ticks());
    let errors: u64 = samples
        .iter()
        .chain(&two_workers)
        .map(|s| s.result.errors)
        .sum();
    let table = report::markdown(&samples, &startups, &two_workers, rounds, &workloads);
    println!("{table}");
    if let Some(steal) = steal {
        println!("CPU time stolen by the hypervisor during the run: {steal:.1} %");
    }
    if let Some(path) = &args.write {
        let steal = steal.map_or(String::new(), |steal| {
            format!(
                " CPU time stolen by the hypervisor during the run: {steal:.1} % (above a few \
                 percent, every mode's latency tails and CPU figures are noisier than usual)."
            )
        });
        let placed = placement.map_or(String::new(), |p| format!(" {}", p.describe()));
        let header = format!(
            "Run {} with `{}`; {}.{placed}{steal}\n\n",
            chrono_free_date(),
            if args.smoke {
                "weft-bench --smoke"
            } else {
                "./scripts/bench"
            },
            machine()
        );
        weft_bench::write_section(path, "data-path", &format!("{header}{table}"))?;
        if modes_include_envoy {
            let verdict = report::verdict(&samples, &startups, &workloads);
            weft_bench::write_section(path, "verdict", &verdict)?;
        }
    }
    if let Some(path) = &args.plot {
        report::plot(&samples, Workload::Rate(1000), path)?;
    }
    if errors > 0 {
        eprintln!("warning: {errors} requests failed during the run");
    }
    Ok(())
}

/// Today's date from the system clock (UTC), without a date crate.
fn chrono_free_date() -> String {
    let output = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output();
    output
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The CPU model and count.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!("{cores} × {model}")
}

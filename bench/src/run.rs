//! One benchmark run: every mode, every workload, several rounds with the modes in a different
//! order each round, and what the sidecars used while they ran.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use crate::load::{self, LoadResult};
use crate::measure;
use crate::topology::{AUTHORITY, Fixture, Mode, Running};

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Open loop, requests per second.
    Rate(u32),
    /// HTTP/1.1 GETs as fast as `n` connections go.
    MaxThroughput(usize),
    /// gRPC unary calls, `n` at a time.
    Grpc(usize),
    /// 1 MiB downloads over `n` connections.
    Transfer(usize),
}

impl Workload {
    /// The label in the report.
    pub fn label(self) -> String {
        match self {
            Workload::Rate(rate) => format!("HTTP/1.1, {rate} req/s (open loop)"),
            Workload::MaxThroughput(n) => format!("HTTP/1.1, max throughput ({n} connections)"),
            Workload::Grpc(n) => format!("gRPC unary, {n} concurrent (closed loop)"),
            Workload::Transfer(n) => format!("1 MiB responses, {n} connections"),
        }
    }

    async fn run(
        self,
        fixture: &Fixture,
        entry: std::net::SocketAddr,
        duration: Duration,
    ) -> LoadResult {
        let _ = fixture;
        match self {
            Workload::Rate(rate) => load::constant_rate(entry, AUTHORITY, rate, duration).await,
            Workload::MaxThroughput(n) => {
                load::closed_loop(entry, AUTHORITY, "/", n, duration).await
            }
            Workload::Grpc(n) => load::grpc_closed_loop(entry, AUTHORITY, n, duration).await,
            Workload::Transfer(n) => {
                load::closed_loop(entry, AUTHORITY, "/1mib", n, duration).await
            }
        }
    }
}

/// One workload in one mode in one round.
#[derive(Debug, Clone)]
pub struct Sample {
    pub mode: Mode,
    pub workers: usize,
    pub workload: Workload,
    pub round: usize,
    pub result: LoadResult,
    /// CPU the sidecars used during the workload.
    pub cpu: Duration,
    /// The user-space part of it.
    pub user_cpu: Duration,
    /// The largest sidecar's resident memory at the end of the workload, KiB.
    pub rss_kib: u64,
    /// The largest sidecar's peak resident memory so far, KiB.
    pub peak_kib: u64,
}

/// Per mode and round: what a fresh pair costs before any load.
#[derive(Debug, Clone)]
pub struct Startup {
    pub mode: Mode,
    pub round: usize,
    /// The cipher suite and key exchange between the sidecars.
    pub tls: String,
    /// The first request through a fresh pair.
    pub first_request: Option<Duration>,
    /// The largest sidecar's resident memory once serving, before load, KiB.
    pub idle_rss_kib: u64,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub modes: Vec<Mode>,
    pub workloads: Vec<Workload>,
    pub rounds: usize,
    pub duration: Duration,
    pub workers: usize,
}

/// Runs `plan` against `fixture`.
pub async fn run(fixture: &Fixture, plan: &Plan) -> anyhow::Result<(Vec<Sample>, Vec<Startup>)> {
    let mut samples = Vec::new();
    let mut startups = Vec::new();
    for round in 0..plan.rounds {
        // Alternate the order, so no mode always runs on a warmer (or busier) machine.
        let mut modes = plan.modes.clone();
        let len = modes.len();
        modes.rotate_left(round % len.max(1));
        for mode in modes {
            eprintln!(
                "round {} of {}: {} ({} worker{})",
                round + 1,
                plan.rounds,
                mode.name(),
                plan.workers,
                if plan.workers == 1 { "" } else { "s" }
            );
            let running = fixture.run(mode, plan.workers).await?;
            let first_request = load::first_request(running.entry, AUTHORITY).await;
            let idle_rss_kib = largest_rss(&running.proxy_pids).0;
            let tls = fixture.negotiated(&running).await;
            startups.push(Startup {
                mode,
                round,
                tls,
                first_request,
                idle_rss_kib,
            });
            // Warm up connections and caches, unmeasured.
            load::constant_rate(running.entry, AUTHORITY, 200, Duration::from_secs(1)).await;
            for &workload in &plan.workloads {
                // Authorization's cost is measured where its target is set: at 1 000 req/s.
                if let Some(toggle) = Toggle::of(mode) {
                    if workload == Workload::Rate(1000) {
                        samples.extend(
                            paired_slices(toggle, fixture, &running, workload, plan, round).await?,
                        );
                    }
                    continue;
                }
                samples.push(measured(fixture, &running, mode, workload, plan, round).await);
            }
        }
    }
    Ok((samples, startups))
}

/// `workload` on `running`, with what its sidecars used meanwhile.
async fn measured(
    fixture: &Fixture,
    running: &Running,
    mode: Mode,
    workload: Workload,
    plan: &Plan,
    round: usize,
) -> Sample {
    let cpu_before = measure::total_cpu(&running.proxy_pids);
    let user_before = measure::total_user_cpu(&running.proxy_pids);
    let result = workload.run(fixture, running.entry, plan.duration).await;
    let cpu = measure::total_cpu(&running.proxy_pids).saturating_sub(cpu_before);
    let user_cpu = measure::total_user_cpu(&running.proxy_pids).saturating_sub(user_before);
    let (rss_kib, peak_kib) = largest_rss(&running.proxy_pids);
    Sample {
        mode,
        workers: plan.workers,
        workload,
        round,
        result,
        cpu,
        user_cpu,
        rss_kib,
        peak_kib,
    }
}

/// The policy that decides each request with the ten AuthorizationPolicies selecting the
/// server (the last, allowing one), and without them (the server's default).
const AUTHZ_ON: &str = "bench/rule-9";
const AUTHZ_OFF: &str = "default:all-authenticated";
/// Long enough for a proxy's exporter to send what it recorded (it sends every 500 ms).
const EXPORT_FLUSH: Duration = Duration::from_millis(1200);

/// What a paired measurement switches on and off on one running sidecar pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toggle {
    /// Ten AuthorizationPolicies selecting the server, or none.
    Authz,
    /// The Service's policy sampling every request, or none.
    Traces,
}

impl Toggle {
    /// The toggle a mode is measured with, if it is one of a pair.
    fn of(mode: Mode) -> Option<Self> {
        match mode {
            Mode::WeftAuthz => Some(Self::Authz),
            Mode::WeftTraced => Some(Self::Traces),
            _ => None,
        }
    }

    fn mode(self, on: bool) -> Mode {
        match (self, on) {
            (Self::Authz, true) => Mode::WeftAuthz,
            (Self::Authz, false) => Mode::WeftAuthzOff,
            (Self::Traces, true) => Mode::WeftTraced,
            (Self::Traces, false) => Mode::WeftTracedOff,
        }
    }

    fn select(self, fixture: &Fixture, on: bool) {
        match self {
            Self::Authz => fixture.select_authz(on),
            Self::Traces => fixture.select_tracing(on),
        }
    }

    /// What shows the toggle at work: the server's decisions by the expected policy, or the
    /// spans the client recorded (sent or dropped), once what is queued has been sent.
    async fn count(self, fixture: &Fixture, running: &Running, on: bool) -> anyhow::Result<u64> {
        let counted = match self {
            Self::Authz => {
                let policy = if on { AUTHZ_ON } else { AUTHZ_OFF };
                fixture.authz_decisions(running, policy).await
            }
            Self::Traces => {
                tokio::time::sleep(EXPORT_FLUSH).await;
                fixture.spans_recorded(running).await
            }
        };
        counted.context("a sidecar's /metrics did not answer")
    }

    /// Whether `requests` moved the count from `before` to `after` as the toggle's state says.
    fn took_effect(self, on: bool, before: u64, after: u64, requests: u64) -> bool {
        let counted = after.saturating_sub(before);
        match (self, on) {
            (Self::Authz, _) | (Self::Traces, true) => counted >= requests,
            (Self::Traces, false) => counted == 0,
        }
    }
}

/// A cost measured in pairs on one sidecar pair: `workload` in eight slices, the toggle off,
/// on, on, off, twice (an ABBA order, so a drift over the round cancels). Separate pairs for
/// "with" and "without" differed by ±10 % in CPU per request from one pair to the next — more
/// than the targets — while what is toggled costs a few microseconds at most.
async fn paired_slices(
    toggle: Toggle,
    fixture: &Fixture,
    running: &Running,
    workload: Workload,
    plan: &Plan,
    round: usize,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for on in [false, true, true, false, false, true, true, false] {
        let mode = toggle.mode(on);
        toggle.select(fixture, on);
        settle(toggle, fixture, running, on).await?;
        let before = toggle.count(fixture, running, on).await?;
        let sample = measured(fixture, running, mode, workload, plan, round).await;
        let after = toggle.count(fixture, running, on).await?;
        ensure!(
            toggle.took_effect(on, before, after, sample.result.ok),
            "{}: {} requests moved the count from {before} to {after}; the slice measured something else",
            mode.name(),
            sample.result.ok
        );
        samples.push(sample);
    }
    Ok(samples)
}

/// Waits until one request shows the toggle in its new state: a policy change reaches the
/// sidecars through discovery, a moment after `weftctl apply`.
async fn settle(
    toggle: Toggle,
    fixture: &Fixture,
    running: &Running,
    on: bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let before = toggle.count(fixture, running, on).await.unwrap_or(0);
        load::first_request(running.entry, AUTHORITY).await;
        let after = toggle.count(fixture, running, on).await.unwrap_or(0);
        if toggle.took_effect(on, before, after, 1) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} did not take effect within 20 s", toggle.mode(on).name())
}

fn largest_rss(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|pid| measure::memory_kib(*pid))
        .fold((0, 0), |(rss, peak), (r, p)| (rss.max(r), peak.max(p)))
}

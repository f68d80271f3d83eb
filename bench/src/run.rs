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
                if mode == Mode::WeftAuthz {
                    if workload == Workload::Rate(1000) {
                        samples
                            .extend(authz_slices(fixture, &running, workload, plan, round).await?);
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

/// Authorization's cost, paired on one sidecar pair: `workload` in eight slices, the policies
/// off, on, on, off, twice (an ABBA order, so a drift over the round cancels). Separate pairs for
/// "with" and "without" differed by ±10 % in CPU per request from one pair to the next — more
/// than the 5 % target — while the evaluation itself costs well under a microsecond.
async fn authz_slices(
    fixture: &Fixture,
    running: &Running,
    workload: Workload,
    plan: &Plan,
    round: usize,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for on in [false, true, true, false, false, true, true, false] {
        let (mode, policy) = if on {
            (Mode::WeftAuthz, AUTHZ_ON)
        } else {
            (Mode::WeftAuthzOff, AUTHZ_OFF)
        };
        fixture.select_authz(on);
        settle(fixture, running, policy).await?;
        let decided = || async {
            (fixture.authz_decisions(running, policy).await)
                .context("the server sidecar's /metrics did not answer")
        };
        let before = decided().await?;
        let sample = measured(fixture, running, mode, workload, plan, round).await;
        let after = decided().await?;
        ensure!(
            after.saturating_sub(before) >= sample.result.ok,
            "{}: {} of {} requests were decided by {policy}; the slice measured something else",
            mode.name(),
            after.saturating_sub(before),
            sample.result.ok
        );
        samples.push(sample);
    }
    Ok(samples)
}

/// Waits until the server sidecar decides requests by `policy`: a policy change reaches it
/// through discovery, a moment after `weftctl apply`.
async fn settle(fixture: &Fixture, running: &Running, policy: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let before = fixture.authz_decisions(running, policy).await.unwrap_or(0);
        load::first_request(running.entry, AUTHORITY).await;
        if fixture.authz_decisions(running, policy).await.unwrap_or(0) > before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server sidecar did not start deciding by {policy} within 10 s")
}

fn largest_rss(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|pid| measure::memory_kib(*pid))
        .fold((0, 0), |(rss, peak), (r, p)| (rss.max(r), peak.max(p)))
}

//! How long a policy change takes to reach N watching proxies: the time from running
//! `weftctl apply` to the moment the last of N discovery watchers (each its own mTLS connection,
//! as N proxies would be) has received the new snapshot.
//!
//! `cargo run --release -p weft-bench --bin watch-fanout -- --write BENCHMARKS.md`

#![allow(clippy::print_stdout)] // A benchmark reports on stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::sync::mpsc;
use weft_api::client::ControlPlaneTarget;
use weft_api::discovery::WatchOutboundRequest;
use weft_api::discovery::discovery_client::DiscoveryClient;
use weft_tests::mesh::ControlPlane;

const DESTINATION: &str = "api.shop:8080";
const WATCHER_ID: &str = "spiffe://cluster.local/ns/bench/sa/watcher";
const BASE: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 8080}]}
---
apiVersion: policy.weft.io/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec: {address: 127.0.0.1, proxyPort: 7143, identity: "spiffe://cluster.local/ns/shop/sa/api"}
"#;

/// Measure policy propagation to N watchers.
#[derive(Debug, Parser)]
struct Args {
    /// Watcher counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    watchers: Vec<usize>,
    /// Changes measured per watcher count.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// A quick run that only checks the benchmark works (CI).
    #[arg(long)]
    smoke: bool,
    /// Replace the watch-fanout section of this Markdown file with the results.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// One round's timings, from the start of `weftctl apply`.
struct Round {
    apply_returned: Duration,
    first: Duration,
    last: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.watchers = vec![1, 10];
        args.rounds = 2;
    }
    weft_certs::install_default_provider();
    let cp = ControlPlane::start("24h").await;
    cp.apply_ok(BASE);
    let credential = cp.credential(WATCHER_ID).await;
    let tls = Arc::new(weft_certs::client_config(
        &cp.anchors(),
        credential,
        &[weft_certs::ALPN_H2],
    )?);
    let target = ControlPlaneTarget {
        addr: cp.proxy_api.to_string(),
        server_name: "weft-control.weft.serviceaccount.identity.cluster.local".to_string(),
        tls,
    };

    let mut rows = Vec::new();
    let mut weight = 1;
    for &count in &args.watchers {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(count);
        for id in 0..count {
            let channel = target.channel().await.context("connecting a watcher")?;
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = DiscoveryClient::new(channel);
                let request = WatchOutboundRequest {
                    destination: DESTINATION.to_string(),
                };
                let Ok(response) = client.watch_outbound(request).await else {
                    return;
                };
                let mut stream = response.into_inner();
                while let Ok(Some(snapshot)) = stream.message().await {
                    let version: u64 = snapshot.version.parse().unwrap_or(0);
                    if tx.send((id, version, Instant::now())).is_err() {
                        return;
                    }
                }
            }));
        }
        let mut version = wait_for(&mut rx, count, 0).await?.0;
        let mut rounds = Vec::with_capacity(args.rounds);
        for _ in 0..args.rounds {
            weight += 1;
            let started = Instant::now();
            apply(&cp, &route(weight))?;
            let apply_returned = started.elapsed();
            let (newest, first, last) = wait_for(&mut rx, count, version).await?;
            version = newest;
            rounds.push(Round {
                apply_returned,
                first: first - started,
                last: last - started,
            });
        }
        for task in tasks {
            task.abort();
        }
        rows.push((count, rounds));
    }

    let table = markdown(&rows, args.rounds);
    println!("{table}");
    if let Some(path) = args.write {
        weft_bench::write_section(&path, "watch-fanout", &table)?;
    }
    Ok(())
}

/// Waits until every watcher has a version newer than `after`; returns it with the first and
/// last arrival times.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<(usize, u64, Instant)>,
    count: usize,
    after: u64,
) -> anyhow::Result<(u64, Instant, Instant)> {
    let mut seen = vec![false; count];
    let mut remaining = count;
    let (mut first, mut last, mut newest) = (None, None, after);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while remaining > 0 {
        let Ok(Some((id, version, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            bail!(
                "only {} of {count} watchers saw a version after {after} within 60 s",
                count - remaining
            );
        };
        if version > after && !seen[id] {
            seen[id] = true;
            remaining -= 1;
            newest = newest.max(version);
            first.get_or_insert(at);
            last = Some(at);
        }
    }
    let first = first.context("no arrival")?;
    Ok((newest, first, last.unwrap_or(first)))
}

fn route(weight: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: bench, namespace: shop}}\nspec:\n  parentRefs: [{{name: api}}]\n  rules:\n  - backendRefs: [{{name: api, port: 8080, weight: {weight}}}]\n"
    )
}

/// Runs the real `weftctl apply -f -`.
fn apply(cp: &ControlPlane, yaml: &str) -> anyhow::Result<()> {
    let (status, _, stderr) = cp.apply(yaml);
    if !status.success() {
        bail!("weftctl apply failed: {stderr}");
    }
    Ok(())
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn markdown(rows: &[(usize, Vec<Round>)], rounds: usize) -> String {
    let mut out = format!(
        "| watchers | `weftctl apply` returns | first watcher has it | all watchers have it (median) | all watchers (slowest of {rounds}) |\n|---:|---:|---:|---:|---:|\n"
    );
    for (count, results) in rows {
        let apply = median(results.iter().map(|r| r.apply_returned).collect());
        let first = median(results.iter().map(|r| r.first).collect());
        let last = median(results.iter().map(|r| r.last).collect());
        let worst = results.iter().map(|r| r.last).max().unwrap_or_default();
        out.push_str(&format!(
            "| {count} | {} | {} | {} | {} |\n",
            ms(apply),
            ms(first),
            ms(last),
            ms(worst)
        ));
    }
    out
}

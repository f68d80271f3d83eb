//! `demo`: starts a whole Weft mesh on this machine and shows where to look.
//!
//! `cargo run --release -p weft-examples --bin demo` — Ctrl-C stops it.
//! `--smoke` starts it on random ports, checks that traffic flows over mTLS, and exits.

#![allow(clippy::print_stdout)] // A CLI that talks to its user.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_examples::launcher::{self, BACKEND_ID, FRONTEND_ID, Ports};

/// Run the Weft demo mesh.
#[derive(Debug, Parser)]
struct Args {
    /// Start on random ports, check traffic flows, then stop (what CI runs).
    #[arg(long)]
    smoke: bool,
    /// Start on random ports instead of the documented ones.
    #[arg(long)]
    random_ports: bool,
    /// Do not build the mesh's binaries first (they must be beside this one).
    #[arg(long)]
    no_build: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .context("demo binary has no directory")?
        .to_path_buf();
    let ports = if args.smoke || args.random_ports {
        Ports::random()?
    } else {
        let ports = Ports::fixed();
        // The documented ports taken means, nearly always, a demo already running.
        if let Err(taken) = ports.ensure_free() {
            eprintln!("demo: {taken}");
            return Ok(ExitCode::FAILURE);
        }
        ports
    };
    if !args.no_build {
        println!(
            "building weft-control, weft-proxy and weftctl (the first time takes a few minutes)…"
        );
        launcher::build_binaries(&bin_dir)?;
    }

    let work_dir = tempfile::Builder::new().prefix("weft-demo-").tempdir()?;
    let mesh = match launcher::start(&bin_dir, work_dir.path(), ports).await {
        Ok(mesh) => mesh,
        Err(error) => {
            eprintln!(
                "demo failed to start: {error:#}\nlogs are in {}",
                work_dir.path().display()
            );
            // Keep the logs for the user to read.
            let _ = work_dir.keep();
            std::process::exit(1);
        }
    };
    if args.smoke {
        println!("smoke: frontend → weft-proxy → mTLS → weft-proxy → backend works");
        let tapped = mesh.tap_backend(&bin_dir).await?;
        println!("smoke: weftctl tap pod/backend -n demo saw the frontend's calls:\n{tapped}");
        let stat = mesh.stat_services(&bin_dir).await?;
        println!("smoke: weftctl stat svc -n demo, from the proxies:\n{stat}");
        return Ok(ExitCode::SUCCESS);
    }
    print_guide(&ports, &bin_dir, &mesh.work_dir);
    let mut mesh = mesh;
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let code = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
            _ = terminate.recv() => break ExitCode::SUCCESS,
            _ = hangup.recv() => break ExitCode::SUCCESS,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(name) = mesh.exited() {
                    eprintln!(
                        "{name} exited; stopping the rest of the mesh. Its log: {}",
                        mesh.work_dir.join(format!("{}.log", name.replace(' ', "-"))).display()
                    );
                    // The logs outlive the mesh, for the user to read.
                    let _ = work_dir.keep();
                    break ExitCode::FAILURE;
                }
            }
        }
    };
    println!("\nstopping the mesh");
    // Every part is stopped (and reaped) here, whatever ended the demo.
    drop(mesh);
    Ok(code)
}

fn print_guide(ports: &Ports, bin_dir: &std::path::Path, work_dir: &std::path::Path) {
    let data = work_dir.join("control");
    println!(
        r#"
Weft demo mesh is up: weft-control, and two apps each behind its own weft-proxy.

  frontend ({FRONTEND_ID})
      └─ weft-proxy {fo} ══ mTLS ══► weft-proxy {bi} ─► backend ({BACKEND_ID})

Try it:
  curl http://{fa}/
      frontend calls backend through the mesh; backend answers with the caller identity it was given
  curl -H 'Host: {backend}' http://{fo}/
      call backend yourself, through the frontend's proxy
  curl http://{fadm}/metrics    (and http://{badm}/metrics)
      the proxies' metrics: weft_http_requests_total, weft_identity_cert_expiry_timestamp_seconds, …
  curl http://{cm}/metrics
      the control plane's metrics: certificates signed, join tokens issued
  export WEFT_ADMIN_ADDR={ca} WEFT_DATA_DIR={data}
  {weftctl} get services -n demo -o yaml; {weftctl} get workloads -n demo
      the policy the mesh runs on (applied from {logs}/policy.yaml)
  {weftctl} proxy-status
      which proxy watches what, and the config version each applied
  {weftctl} tap pod/frontend -n demo      (and: {weftctl} top sa/backend -n demo)
      the frontend proxy's requests live; the backend's busiest paths (curl the frontend meanwhile)
  {weftctl} stat svc -n demo              (and: stat route, stat pod)
      success rate, requests per second and latency over 10 s, read from the proxies
  {weftctl} proxy-config pod/backend -n demo
      the backend proxy's configuration and what discovery told it
  {weftctl} apply -f my-route.yaml
      change it live: an HTTPRoute with timeouts or retries for backend.demo (see README)

Logs: {logs}/*.log    Ctrl-C stops everything.
"#,
        fo = ports.frontend_outbound,
        bi = ports.backend_inbound,
        fa = ports.frontend_app,
        fadm = ports.frontend_admin,
        badm = ports.backend_admin,
        cm = ports.control_metrics,
        ca = ports.control_admin,
        backend = weft_examples::app::BACKEND_AUTHORITY,
        data = data.display(),
        weftctl = bin_dir.join("weftctl").display(),
        logs = work_dir.display(),
    );
}

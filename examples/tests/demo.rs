//! The demo as a user runs it: one command, and nothing left behind when any part stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The processes whose parent is `pid`, with their command lines.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // After the command name in parentheses: state, then the parent's pid.
        let parent = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent == Some(pid) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            found.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

#[test]
fn when_one_part_exits_the_demo_stops_every_part() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--no-build", "--random-ports"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = demo.id();
    let stdout = demo.stdout.take().unwrap();
    let (up_tx, up) = std::sync::mpsc::channel();
    // Reads to the end, so the demo never writes into a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ctrl-C stops everything") {
                let _ = up_tx.send(());
            }
        }
    });
    if up.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = demo.kill();
        panic!("the demo did not come up within 60 s");
    }

    let parts = children(pid);
    assert_eq!(parts.len(), 5, "{parts:?}");
    let (backend, _) = parts
        .iter()
        .find(|(_, cmdline)| cmdline.contains("demo-app backend"))
        .expect("the backend app runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(*backend as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo kept running without its backend"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut demo.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("backend app exited"), "{stderr}");
    for (part, cmdline) in &parts {
        assert!(!is_alive(*part), "{cmdline} ({part}) was left running");
    }
}

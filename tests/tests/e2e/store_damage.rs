//! A damaged store makes weft-control exit at once with one line naming the file: no panic, no
//! serving from garbage.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weft_tests::mesh::ControlPlane;
use weft_tests::process::{Proc, bin};

/// A control plane's data dir with a join token stored, then the control plane gone.
async fn stopped_with_data() -> ControlPlane {
    weft_tests::init();
    let mut cp = ControlPlane::start("24h").await;
    cp.token_file("spiffe://cluster.local/ns/shop/sa/web");
    cp.proc.kill9();
    cp
}

/// Starts weft-control on `data_dir`; returns its exit code and what it printed.
async fn start_on(data_dir: &Path) -> (Option<i32>, String) {
    let mut command = Command::new(bin("weft-control"));
    command.arg("--data-dir").arg(data_dir);
    for flag in ["--proxy-api-addr", "--admin-addr", "--metrics-addr"] {
        command.arg(flag).arg("127.0.0.1:0");
    }
    let log = data_dir.with_file_name(format!("restart-{}.log", weft_tests::free_port()));
    let mut proc = Proc::spawn("weft-control", command, log);
    let status = proc.wait(Duration::from_secs(30)).await;
    (status.code(), proc.log())
}

fn assert_refused_naming_the_store(code: Option<i32>, log: &str, store: &Path) {
    assert_eq!(code, Some(65), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let line = log
        .lines()
        .find(|line| line.starts_with("weft-control: "))
        .unwrap_or_else(|| panic!("no error line in {log:?}"));
    assert!(line.contains(&store.display().to_string()), "{line}");
    assert!(line.contains("damaged"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_store_is_refused_naming_the_file() {
    let cp = stopped_with_data().await;
    let store = cp.data_dir().join("store.redb");
    let bytes = std::fs::read(&store).unwrap();
    std::fs::write(&store, &bytes[..bytes.len() / 2]).unwrap();
    let (code, log) = start_on(&cp.data_dir()).await;
    assert_refused_naming_the_store(code, &log, &store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_store_is_refused_naming_the_file() {
    let cp = stopped_with_data().await;
    let store = cp.data_dir().join("store.redb");
    let mut bytes = std::fs::read(&store).unwrap();
    // One bit of the stored token record (in every copy of its page: redb writes pages anew),
    // which a plain open never reads.
    let needle = b"spiffe://cluster.local/ns/shop/sa/web";
    let copies: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter_map(|(at, window)| (window == needle).then_some(at))
        .collect();
    assert!(!copies.is_empty(), "the token record is in the file");
    for at in copies {
        bytes[at + 20] ^= 0x04;
    }
    std::fs::write(&store, &bytes).unwrap();
    let (code, log) = start_on(&cp.data_dir()).await;
    assert_refused_naming_the_store(code, &log, &store);
}

//! Linux network namespaces for tests that need real iptables interception: each test makes its
//! own namespace (its own loopback and netfilter tables) and removes it when done.

use std::future::Future;
use std::process::Command;

/// Why a namespace test cannot run here.
pub fn missing_prerequisites() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespace tests must run as root".to_string());
    }
    for (tool, version_flag) in [("ip", "-V"), ("iptables", "--version")] {
        let found = Command::new(tool)
            .arg(version_flag)
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "`{tool}` is not installed; ./scripts/test installs it"
            ));
        }
    }
    None
}

/// Runs `body` on `runtime`'s threads (inside its namespace, for a [`NetNs::runtime`]),
/// returning what it returns; a panic inside is the caller's.
pub fn within<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    body: impl Future<Output = T> + Send + 'static,
) -> T {
    match runtime.block_on(runtime.spawn(body)) {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with its loopback up.
    pub fn create() -> Self {
        if let Some(reason) = missing_prerequisites() {
            panic!("{reason}");
        }
        let name = format!("weft-e2e-{}-{}", std::process::id(), crate::free_port());
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace, panicking if it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// A command that runs inside the namespace, for callers that want its output.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A runtime whose threads all live in the namespace: a task spawned on it opens its
    /// sockets and starts its processes there, and keeps running while the runtime lives.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // Worker and blocking threads are created from this one, and inherit its namespace.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(4)
                .thread_keep_alive(std::time::Duration::from_secs(3600))
                .enable_all()
                .build()
                .unwrap()
        })
        .join()
        .unwrap()
    }

    /// Runs `body` on a thread that has entered the namespace, on a current-thread runtime, so
    /// every socket it opens and every process it spawns lives in the namespace.
    pub fn run<F, Fut>(&self, body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let path = format!("/var/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(body());
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

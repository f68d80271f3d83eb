//! Where the benchmark's processes run. Left to itself, the kernel of this 2-CPU VM placed the
//! two meshes' processes differently: in Weft's turn the single-threaded sidecars mostly shared a
//! CPU with the load generator while the other CPU idled, and waited up to 8 ms to run, while
//! Envoy's threads spread out. Every mode gets the same placement. By default it is that of two
//! pods, each a CPU: the load generator (the client app) with its sidecar, the server's sidecar
//! with the upstream (the server app) — as a mesh runs, where a sidecar shares its pod's CPU with
//! its app and never with another pod's sidecar.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// How the processes are laid out on two CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Two pods: load generator and client sidecar on one CPU, server sidecar and upstream on
    /// the other.
    Pods,
    /// Load generator and upstream on one CPU, both sidecars on the other.
    Sidecars,
    /// Wherever the kernel puts them.
    Unpinned,
}

/// The CPUs of each process of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub layout: Layout,
    first: usize,
    second: usize,
}

impl Placement {
    /// `layout` on the first two CPUs this process may use; `None` when unpinned or with fewer
    /// than two.
    pub fn detect(layout: Layout) -> Option<Self> {
        if layout == Layout::Unpinned {
            return None;
        }
        let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let mut cpus = (0..CpuSet::count()).filter(|cpu| allowed.is_set(*cpu).unwrap_or(false));
        Some(Self {
            layout,
            first: cpus.next()?,
            second: cpus.next()?,
        })
    }

    pub fn load_generator(&self) -> usize {
        self.first
    }

    pub fn client_sidecar(&self) -> usize {
        match self.layout {
            Layout::Sidecars => self.second,
            Layout::Pods | Layout::Unpinned => self.first,
        }
    }

    pub fn server_sidecar(&self) -> usize {
        self.second
    }

    pub fn upstream(&self) -> usize {
        match self.layout {
            Layout::Sidecars => self.first,
            Layout::Pods | Layout::Unpinned => self.second,
        }
    }

    /// One sentence for the report.
    pub fn describe(&self) -> String {
        match self.layout {
            Layout::Pods => format!(
                "Placed as two pods, in every mode: load generator and client sidecar pinned to \
                 CPU {}, server sidecar and upstream to CPU {}.",
                self.first, self.second
            ),
            Layout::Sidecars | Layout::Unpinned => format!(
                "Load generator and upstream pinned to CPU {}, both sidecars to CPU {}, in every \
                 mode.",
                self.first, self.second
            ),
        }
    }
}

/// Pins every thread of `pid` to `cpu`; threads it starts later inherit the pin.
pub fn pin(pid: u32, cpu: usize) -> std::io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(std::io::Error::from)?;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the pin: nothing to pin then.
        let _ = sched_setaffinity(Pid::from_raw(tid), &set);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_a_process_and_its_threads() {
        let Some(placement) = Placement::detect(Layout::Sidecars) else {
            return; // One CPU: nothing to place.
        };
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        pin(child.id(), placement.server_sidecar()).unwrap();
        let set = sched_getaffinity(Pid::from_raw(child.id() as i32)).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(set.is_set(placement.server_sidecar()).unwrap());
        assert!(!set.is_set(placement.load_generator()).unwrap());
    }

    #[test]
    fn pods_put_each_sidecar_with_its_app_and_the_sidecars_apart() {
        let Some(pods) = Placement::detect(Layout::Pods) else {
            return;
        };
        assert_eq!(pods.client_sidecar(), pods.load_generator());
        assert_eq!(pods.server_sidecar(), pods.upstream());
        assert_ne!(pods.client_sidecar(), pods.server_sidecar());
        let sidecars = Placement::detect(Layout::Sidecars).unwrap();
        assert_eq!(sidecars.client_sidecar(), sidecars.server_sidecar());
        assert_eq!(sidecars.load_generator(), sidecars.upstream());
        assert!(Placement::detect(Layout::Unpinned).is_none());
    }
}

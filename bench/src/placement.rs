//! Where the benchmark's processes run. Left to itself, the kernel of this 2-CPU VM placed the
//! two meshes' processes differently: in Weft's turn the single-threaded sidecars mostly shared a
//! CPU with the load generator while the other CPU idled, and waited up to 8 ms to run, while
//! Envoy's threads spread out. Every mode now gets the same placement: the load generator and
//! the upstream on one CPU, the sidecars on another.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPU of the load generator and upstream, and the CPU of the sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub load: usize,
    pub sidecars: usize,
}

impl Placement {
    /// The first two CPUs this process may use; `None` with fewer than two.
    pub fn detect() -> Option<Self> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let mut cpus = (0..CpuSet::count()).filter(|cpu| allowed.is_set(*cpu).unwrap_or(false));
        Some(Self {
            load: cpus.next()?,
            sidecars: cpus.next()?,
        })
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
        let Some(placement) = Placement::detect() else {
            return; // One CPU: nothing to place.
        };
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        pin(child.id(), placement.sidecars).unwrap();
        let set = sched_getaffinity(Pid::from_raw(child.id() as i32)).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(set.is_set(placement.sidecars).unwrap());
        assert!(!set.is_set(placement.load).unwrap());
    }
}

//! What the kernel says a process used: CPU time and resident memory, from /proc.

use std::time::Duration;

/// Clock ticks per second in /proc/<pid>/stat (USER_HZ, 100 on Linux everywhere).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of `pid` so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    cpu_split(pid).map(|(user, system)| user + system)
}

/// User and system CPU time of `pid` so far, separately.
pub fn cpu_split(pid: u32) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((
        Duration::from_secs_f64(utime / TICKS_PER_SECOND),
        Duration::from_secs_f64(stime / TICKS_PER_SECOND),
    ))
}

/// Resident memory of `pid` now, and its peak, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The sum of `cpu_time` over `pids`.
pub fn total_cpu(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|pid| cpu_time(*pid)).sum()
}

/// The sum of user CPU time over `pids`.
pub fn total_user_cpu(pids: &[u32]) -> Duration {
    pids.iter()
        .filter_map(|pid| cpu_split(*pid))
        .map(|(user, _)| user)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(cpu_time(pid).is_some());
        let (rss, peak) = memory_kib(pid).unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}

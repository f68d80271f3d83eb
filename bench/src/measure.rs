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

/// The machine's CPU ticks so far: (stolen by the hypervisor, all), from the first line of
/// /proc/stat. On a shared VM, steal is what makes one run's tails differ from the next.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already inside user].
    let steal = *ticks.get(7)?;
    Some((steal, ticks.iter().take(8).sum()))
}

/// The share of the machine's CPU time stolen between two `machine_ticks` readings, in percent.
pub fn steal_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((steal0, all0), (steal1, all1)) = (before?, after?);
    let all = all1.checked_sub(all0).filter(|all| *all > 0)?;
    Some(steal1.saturating_sub(steal0) as f64 * 100.0 / all as f64)
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
    fn reads_the_machine_steal() {
        let before = machine_ticks();
        assert!(before.is_some());
        let share = steal_percent(before, Some((before.unwrap().0, before.unwrap().1 + 100)));
        assert_eq!(share, Some(0.0));
        assert_eq!(steal_percent(Some((0, 0)), Some((5, 100))), Some(5.0));
        assert_eq!(steal_percent(Some((0, 100)), Some((0, 100))), None);
    }

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(cpu_time(pid).is_some());
        let (rss, peak) = memory_kib(pid).unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}

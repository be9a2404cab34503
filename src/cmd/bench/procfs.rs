//! What the kernel knows about a process: CPU time and resident memory,
//! read from /proc. The benchmark needs another process's numbers (the
//! relay it started), which getrusage cannot give.

use std::fs;

/// Clock ticks per second, the unit of utime and stime in /proc/*/stat.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of a process split the way the kernel accounts it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    /// Seconds spent in user space (utime): the relay's own code.
    pub user: f64,
    /// Seconds spent in the kernel on its behalf (stime): system calls,
    /// including the copies of a loopback multicast to every receiving
    /// socket, which the sender's `sendmsg` pays.
    pub system: f64,
}

impl Cpu {
    /// User plus system seconds.
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// The CPU used between `earlier` and `self`.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// utime + stime in seconds from a `stat` file (`/proc/PID/stat` or
/// `/proc/PID/task/TID/stat`); None if it cannot be read.
fn stat_cpu(path: &str) -> Option<f64> {
    stat_split(path).map(|c| c.total())
}

/// utime and stime in seconds from a `stat` file.
fn stat_split(path: &str) -> Option<Cpu> {
    let text = fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fixed fields start after the last ')'. Field 3 (state) is index 0,
    // so utime (14) and stime (15) are indexes 11 and 12.
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let tick = ticks_per_sec();
    Some(Cpu {
        user: utime as f64 / tick,
        system: stime as f64 / tick,
    })
}

/// CPU seconds, user and system, a process has used so far.
pub fn process_cpu(pid: u32) -> Option<Cpu> {
    stat_split(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of this process.
pub fn self_cpu() -> Option<f64> {
    stat_cpu("/proc/self/stat")
}

/// CPU seconds of each thread of this process, by thread id.
pub fn self_threads_cpu() -> Vec<(u32, f64)> {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((tid, stat_cpu(&format!("/proc/self/task/{tid}/stat"))?))
        })
        .collect()
}

/// The largest CPU share (0..=1 per core) any thread had between two
/// [`self_threads_cpu`] snapshots `secs` apart: a bench thread near 1.0 is
/// saturated and may be what limits the measurement.
pub fn busiest_thread(before: &[(u32, f64)], after: &[(u32, f64)], secs: f64) -> f64 {
    after
        .iter()
        .map(|(tid, a)| {
            let b = before
                .iter()
                .find(|(t, _)| t == tid)
                .map_or(0.0, |(_, b)| *b);
            (a - b) / secs
        })
        .fold(0.0, f64::max)
}

/// CPU seconds the whole machine has spent busy (all cores; user, nice,
/// system, irq, softirq, steal), from /proc/stat: with the relay's and the
/// bench's own share taken out, what else ran during a measurement.
pub fn machine_busy() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user)
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    Some(busy as f64 / ticks_per_sec())
}

/// Resident memory of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds the calling thread has used, at nanosecond resolution (the
/// tight loops of `--limit` run for about a second; clock ticks are too coarse).
pub fn thread_cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_numbers_are_readable() {
        assert!(self_cpu().is_some());
        let me = process_cpu(std::process::id()).unwrap();
        assert!(me.user >= 0.0 && me.system >= 0.0);
        assert!((me.total() - me.user - me.system).abs() < 1e-12);
        assert!(machine_busy().unwrap() > 0.0);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(!self_threads_cpu().is_empty());
        let t = thread_cpu_now();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_now() > t);
    }

    #[test]
    fn busiest_thread_is_the_largest_delta() {
        let before = [(1, 1.0), (2, 5.0)];
        let after = [(1, 1.5), (2, 5.1), (3, 0.2)];
        assert!((busiest_thread(&before, &after, 1.0) - 0.5).abs() < 1e-9);
    }
}

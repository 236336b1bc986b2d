//! Measurements: latency percentiles and the target process's CPU time and memory, read
//! from `/proc` (Linux).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// Percentiles of `samples` (microseconds; sorted in place).
    pub fn of(samples: &mut [u32]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            u64::from(samples[i])
        };
        Latency {
            samples: samples.len() as u64,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

/// CPU time and resident memory of a process at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcSample {
    /// User + system CPU time, in clock ticks' worth of microseconds.
    pub cpu_us: u64,
    pub rss_kib: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; `None` if the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_us: ticks * 1_000_000 / clock_ticks(),
        rss_kib,
    })
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on (the value is fixed by the
/// kernel ABI for /proc on x86-64 and arm64); read from `getconf` when available.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// CPU used between two samples, as a fraction of one core over `wall`.
pub fn cores(from: ProcSample, to: ProcSample, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    to.cpu_us.saturating_sub(from.cpu_us) as f64 / wall.as_micros() as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let mut v: Vec<u32> = (1..=1000).rev().collect();
        let l = Latency::of(&mut v);
        assert_eq!(
            (l.p50_us, l.p90_us, l.p99_us, l.max_us, l.samples),
            (500, 900, 990, 1000, 1000)
        );
        assert_eq!(Latency::of(&mut []), Latency::default());
        assert_eq!(Latency::of(&mut [7]).p99_us, 7);
    }

    #[test]
    fn this_process_can_be_sampled_and_burning_cpu_shows() {
        let pid = std::process::id();
        let a = sample(pid).unwrap();
        assert!(a.rss_kib > 0);
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = sample(pid).unwrap();
        assert!(b.cpu_us >= a.cpu_us + 100_000, "{a:?} {b:?}");
        assert!(sample(u32::MAX).is_none());
    }
}

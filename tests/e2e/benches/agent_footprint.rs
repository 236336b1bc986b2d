//! Agent footprint: resident memory and CPU of `rampart-agent` at 1 and 100 readings/s,
//! side by side with a reference client doing the bare minimum of the same job —
//! `mosquitto_pub -l` (C, OpenSSL) publishing documents of the same size at the same rate,
//! at QoS 1 over mutual TLS to the same hub — and the release binary size.
//!
//! `scripts/bench` (or: `cargo build --release --workspace --bins` then
//! `cargo bench -p rampart-e2e --bench agent_footprint`). Everything runs on loopback; each
//! phase is bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: failing loudly is right

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_e2e::*;

/// CPU seconds (user + system) and resident KiB of a process, from /proc.
fn sample(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (ticks as f64 / hz, kib("VmRSS:"), kib("VmHWM:"))
}

/// A document of the simulator's size, for the reference publisher.
fn document(seq: u64) -> String {
    format!(
        "{{\"v\":1,\"seq\":{seq},\"ts\":\"2026-11-23T12:00:00.123Z\",\"pack\":{{\"voltage_v\":52.41,\"current_a\":-12.5,\"soc_pct\":81.2,\"soh_pct\":97.5,\"remaining_ah\":79.2,\"full_ah\":97.5,\"cycles\":312}},\"cells_v\":[3.276,3.281,3.279,3.277,3.281,3.279,3.276,3.281,3.279,3.276,3.281,3.279,3.276,3.281,3.279,3.28],\"temps_c\":[24.1,25.3,24.8,24.9],\"alarms\":[],\"fets\":{{\"charge\":true,\"discharge\":true}},\"source\":{{\"kind\":\"reference\"}}}}"
    )
}

struct Run {
    cpu_pct: f64,
    rss_kib: u64,
    peak_kib: u64,
    stored: usize,
}

/// Measures `pid` over `secs` after `warmup`, counting the rows `device` got stored.
fn measure(hub: &TestHub, pid: u32, device: &str, warmup: Duration, secs: Duration) -> Run {
    std::thread::sleep(warmup);
    let before = hub.telemetry(device).len();
    let (c0, _, _) = sample(pid);
    let t0 = Instant::now();
    std::thread::sleep(secs);
    let (c1, rss, peak) = sample(pid);
    let wall = t0.elapsed().as_secs_f64();
    Run {
        cpu_pct: 100.0 * (c1 - c0) / wall,
        rss_kib: rss,
        peak_kib: peak,
        stored: hub.telemetry(device).len() - before,
    }
}

/// `mosquitto_pub -l` fed one document per `period` from a thread, for `total`.
fn reference(
    hub: &TestHub,
    dev: &Bundle,
    period: Duration,
    total: Duration,
) -> (Child, std::thread::JoinHandle<()>) {
    let mut child = Command::new("mosquitto_pub")
        .args(hub.mosquitto_args(dev))
        .args([
            "-t",
            &format!("devices/{}/telemetry", dev.id),
            "-q",
            "1",
            "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub (scripts/setup installs mosquitto-clients)");
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let start = Instant::now();
        let mut seq = 0u64;
        while start.elapsed() < total {
            seq += 1;
            if writeln!(stdin, "{}", document(seq)).is_err() {
                return;
            }
            let next = start + period * u32::try_from(seq).unwrap_or(u32::MAX);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
    (child, feeder)
}

fn file_size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    let agent_bin = bin("rampart-agent");
    assert!(
        agent_bin.to_string_lossy().contains("release"),
        "run with release binaries: scripts/bench"
    );
    let hub = TestHub::start_new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();
    println!(
        "agent footprint, {} CPUs ({cpu}); hub and both clients on this machine, loopback",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "| rate | process | CPU (% of a core) | RSS (KiB) | peak RSS (KiB) | documents stored in the window |"
    );
    println!("|---|---|---|---|---|---|");
    for (rate, interval, warmup, window) in [
        (1u32, "1s", Duration::from_secs(5), Duration::from_secs(30)),
        (100, "10ms", Duration::from_secs(5), Duration::from_secs(20)),
    ] {
        let agent_dev = hub.add_device(&format!("gw-bench-{rate}"));
        let ref_dev = hub.add_device(&format!("gw-ref-{rate}"));
        let mut agent = Agent::start(&agent_dev, interval);
        let period = Duration::from_secs(1) / rate;
        let (mut reference_child, feeder) = reference(
            &hub,
            &ref_dev,
            period,
            warmup + window + Duration::from_secs(3),
        );
        // Both measured over the same window, in parallel threads.
        let (a, r) = std::thread::scope(|s| {
            let a = s.spawn(|| measure(&hub, agent.pid(), &agent_dev.id, warmup, window));
            let r = s.spawn(|| measure(&hub, reference_child.id(), &ref_dev.id, warmup, window));
            (a.join().unwrap(), r.join().unwrap())
        });
        feeder.join().unwrap();
        let _ = reference_child.wait();
        agent.terminate();
        for (name, run) in [("rampart-agent", &a), ("mosquitto_pub -l (reference)", &r)] {
            println!(
                "| {rate}/s | {name} | {:.2} | {} | {} | {} |",
                run.cpu_pct, run.rss_kib, run.peak_kib, run.stored
            );
        }
        println!(
            "| {rate}/s | ratio agent ÷ reference | {:.2} | {:.2} | {:.2} | |",
            a.cpu_pct / r.cpu_pct.max(0.01),
            a.rss_kib as f64 / r.rss_kib.max(1) as f64,
            a.peak_kib as f64 / r.peak_kib.max(1) as f64,
        );
    }
    // Binary size: the agent (static Rust: TLS, MQTT, tokio, serial, Modbus) beside the
    // reference's binary and the shared libraries it needs for the same job.
    let agent_size = file_size(&agent_bin);
    let stripped =
        std::env::temp_dir().join(format!("rampart-agent-stripped-{}", std::process::id()));
    let stripped_size = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&agent_bin)
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| file_size(&stripped))
        .unwrap_or(0);
    let _ = std::fs::remove_file(&stripped);
    let which = Command::new("sh")
        .args(["-c", "command -v mosquitto_pub"])
        .output()
        .unwrap();
    let mp = String::from_utf8_lossy(&which.stdout).trim().to_string();
    let ldd = Command::new("ldd").arg(&mp).output().unwrap();
    let mut libs = 0u64;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(path) = line
            .split("=>")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            && (path.contains("mosquitto") || path.contains("libssl") || path.contains("libcrypto"))
        {
            libs += file_size(std::path::Path::new(path));
        }
    }
    println!();
    println!("| binary | bytes |");
    println!("|---|---|");
    println!("| rampart-agent (release) | {agent_size} |");
    println!("| rampart-agent (release, stripped) | {stripped_size} |");
    println!(
        "| mosquitto_pub | {} |",
        file_size(std::path::Path::new(&mp))
    );
    println!(
        "| mosquitto_pub + libmosquitto + libssl + libcrypto | {} |",
        file_size(std::path::Path::new(&mp)) + libs
    );
}

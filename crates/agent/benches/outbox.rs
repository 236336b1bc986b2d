//! Outbox throughput against a raw file, side by side in one run (docs/benchmarks.md).
//!
//! `cargo bench -p rampart-agent --bench outbox`
//!
//! For each fsync policy: records/s appended (seal with ChaCha20-Poly1305, frame, write,
//! sync per policy) ÷ the same bytes appended raw to a plain file with the same syncing; and
//! records/s drained (read, check, open, acknowledge, in batches of 50) ÷ reading the raw
//! file back. Loops are bounded in count and time. Files live in a temporary directory on the
//! system temporary directory (the same file system for both).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_agent::outbox::{FsyncPolicy, Outbox, OutboxOptions, RecordKind, WhenFull};
use rampart_agent::vault::{KeySource, Vault};

/// A telemetry document of the size the simulator produces (16 cells, 4 temperatures).
fn document(seq: u64) -> Vec<u8> {
    format!(
        "{{\"v\":1,\"seq\":{seq},\"ts\":\"2026-11-23T12:00:00.123Z\",\"pack\":{{\"voltage_v\":52.41,\"current_a\":-12.5,\"soc_pct\":81.2,\"soh_pct\":97.5,\"remaining_ah\":79.2,\"full_ah\":97.5,\"cycles\":312}},\"cells_v\":[3.276,3.281,3.279,3.277,3.281,3.279,3.276,3.281,3.279,3.276,3.281,3.279,3.276,3.281,3.279,3.28],\"temps_c\":[24.1,25.3,24.8,24.9],\"alarms\":[],\"warnings\":[],\"fets\":{{\"charge\":true,\"discharge\":true}},\"balancing\":[],\"source\":{{\"kind\":\"simulator\",\"model\":\"LFP 16S 100 Ah\"}}}}"
    )
    .into_bytes()
}

struct Result {
    records: u64,
    secs: f64,
}

impl Result {
    fn rate(&self) -> f64 {
        self.records as f64 / self.secs
    }
}

fn outbox(dir: &std::path::Path, vault: &Arc<Vault>, fsync: FsyncPolicy) -> Outbox {
    Outbox::open(
        OutboxOptions {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(86_400),
            segment_bytes: 8 << 20,
            fsync,
            when_full: WhenFull::DropOldest,
        },
        vault.clone(),
    )
    .expect("outbox")
}

fn append_outbox(ob: &mut Outbox, max: u64, budget: Duration) -> Result {
    let start = Instant::now();
    let mut n = 0;
    while n < max && start.elapsed() < budget {
        n += 1;
        ob.append(RecordKind::Telemetry, n, &document(n))
            .expect("append");
    }
    ob.sync().expect("sync");
    Result {
        records: n,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// The same bytes (40-byte header + sealed size) written to a plain file.
fn append_raw(path: &std::path::Path, sync_each: bool, max: u64, budget: Duration) -> Result {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("raw file");
    let start = Instant::now();
    let mut n = 0;
    while n < max && start.elapsed() < budget {
        n += 1;
        let doc = document(n);
        let mut rec = vec![0u8; 40 + doc.len() + 28];
        rec[40..40 + doc.len()].copy_from_slice(&doc);
        f.write_all(&rec).expect("write");
        if sync_each {
            f.sync_data().expect("sync");
        }
    }
    f.sync_data().expect("sync");
    Result {
        records: n,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn drain_outbox(ob: &mut Outbox) -> Result {
    let start = Instant::now();
    let mut n = 0;
    loop {
        let batch = ob.next_batch(50, 128 << 10).expect("batch");
        if batch.is_empty() {
            break;
        }
        n += batch.len() as u64;
        let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
        ob.ack(&ids);
    }
    ob.maintain().expect("maintain");
    Result {
        records: n,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn drain_raw(path: &std::path::Path, records: u64) -> Result {
    let start = Instant::now();
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .expect("raw")
        .read_to_end(&mut buf)
        .expect("read");
    // Walk the records as the outbox does, without checking or opening them.
    let mut off = 0usize;
    let mut n = 0;
    let mut sum = 0u64;
    while n < records && off < buf.len() {
        let len = 40 + document(n + 1).len() + 28;
        sum += u64::from(buf[off + 40]);
        off += len;
        n += 1;
    }
    std::hint::black_box(sum);
    Result {
        records: n,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("rampart-outbox-bench")
        .tempdir()
        .expect("temporary directory");
    let vault =
        Arc::new(Vault::open(&KeySource::File(dir.path().join("storage.key"))).expect("key"));
    println!(
        "outbox benchmark: {}-byte documents, in {}",
        document(1).len(),
        dir.path().display()
    );
    println!(
        "| fsync | append (records/s) | raw append (records/s) | ratio | drain (records/s) | raw read (records/s) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    let cases = [
        (
            "always",
            FsyncPolicy::Always,
            true,
            10_000u64,
            Duration::from_secs(10),
        ),
        (
            "interval (1 s)",
            FsyncPolicy::Interval(Duration::from_secs(1)),
            false,
            200_000,
            Duration::from_secs(5),
        ),
        (
            "never",
            FsyncPolicy::Never,
            false,
            200_000,
            Duration::from_secs(5),
        ),
    ];
    for (name, policy, sync_each, max, budget) in cases {
        let ob_dir = dir
            .path()
            .join(format!("ob-{}", name.split(' ').next().unwrap_or(name)));
        let raw = dir
            .path()
            .join(format!("raw-{}", name.split(' ').next().unwrap_or(name)));
        // Side by side: raw first, then the outbox, on the same file system, same count.
        let r_raw = append_raw(&raw, sync_each, max, budget);
        let mut ob = outbox(&ob_dir, &vault, policy);
        let r_ob = append_outbox(&mut ob, r_raw.records, budget * 3);
        let d_ob = drain_outbox(&mut ob);
        let d_raw = drain_raw(&raw, r_ob.records);
        println!(
            "| {name} | {:.0} ({} in {:.2} s) | {:.0} | {:.2} | {:.0} | {:.0} | {:.3} |",
            r_ob.rate(),
            r_ob.records,
            r_ob.secs,
            r_raw.rate(),
            r_ob.rate() / r_raw.rate(),
            d_ob.rate(),
            d_raw.rate(),
            d_ob.rate() / d_raw.rate(),
        );
        assert_eq!(d_ob.records, r_ob.records, "every appended record drained");
    }
}

//! Update verification cost (docs/benchmarks.md, BENCHMARKS.md comparison 5).
//!
//! The agent's verification of a 100 MB image — the streamed length and hash check of the
//! downloaded file on disk (`client::verify_target_file`) plus the signature check of the
//! targets metadata that lists it — against its floor measured in the same run: 100 MB ÷
//! the SHA-256 rate of the same implementation on an in-memory buffer, plus one Ed25519
//! signature verification. Rounds alternate reference and measured; medians are compared.
//! Target: ratio ≤ 1.1.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rampart_update::client::verify_target_file;
use rampart_update::keys::SigningKey;
use rampart_update::metadata::{RoleKeys, TargetFile};
use rampart_update::repository;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

const SIZE: usize = 100 * 1000 * 1000;
const ROUNDS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; SIZE];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let path = dir.path().join("image.img");
    std::fs::write(&path, &data).unwrap();

    // Targets metadata listing the image, signed by one key.
    let key = SigningKey::generate().unwrap();
    let file = TargetFile::of(&data, None);
    let mut targets =
        repository::targets(1, OffsetDateTime::now_utc() + time::Duration::days(1), None);
    targets.targets.insert("image.img".into(), file.clone());
    let env = repository::signed(&targets, &[&key]).unwrap();
    let keys = [(key.public().key_id(), key.public())].into();
    let role = RoleKeys {
        keyids: vec![key.public().key_id()],
        threshold: 1,
    };

    // One signature verification, averaged over many.
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        env.verify("targets", &keys, &role).unwrap();
    }
    let sig = t.elapsed() / n;

    // Warm the page cache once, as a just-downloaded file is.
    verify_target_file("image.img", &file, &path).unwrap();

    let mut reference = Vec::new();
    let mut measured = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let h = Sha256::digest(&data);
        let hash_time = t.elapsed();
        assert_eq!(hex::encode(h), file.hashes["sha256"]);
        reference.push(hash_time + sig);

        let t = Instant::now();
        env.verify("targets", &keys, &role).unwrap();
        verify_target_file("image.img", &file, &path).unwrap();
        measured.push(t.elapsed());
    }
    let (r, m) = (median(reference), median(measured));
    let rate = SIZE as f64 / (r - sig).as_secs_f64() / 1e9;
    println!(
        "update verification of a {} MB image, {ROUNDS} rounds (medians)",
        SIZE / 1_000_000
    );
    println!("  SHA-256 rate (same implementation, in memory): {rate:.2} GB/s");
    println!(
        "  one Ed25519 signature verification:            {:.1} µs",
        sig.as_secs_f64() * 1e6
    );
    println!(
        "  floor = size / rate + one signature:           {:.1} ms",
        r.as_secs_f64() * 1e3
    );
    println!(
        "  agent verify (file on disk + targets metadata): {:.1} ms",
        m.as_secs_f64() * 1e3
    );
    println!(
        "  ratio: {:.3} (target <= 1.1)",
        m.as_secs_f64() / r.as_secs_f64()
    );
}

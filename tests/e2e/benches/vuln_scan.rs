//! Vulnerability matching at scale: `rampart vuln scan` of a lockfile with 1,000+ packages,
//! and of a CycloneDX SBOM of the same components, against the whole RustSec OSV export
//! (every crates.io advisory), side by side with `cargo audit` on the same lockfile and the
//! same database. Wall time, CPU time and peak resident memory of each process come from
//! `/usr/bin/time`; the finding sets must be equal before any figure is printed.
//!
//! The lockfile is made for the run: every package of the workspace's own Cargo.lock and of
//! the legacy gateway lockfile in `tests/e2e/data`, plus one version of every crate the
//! database names (the first version its first range says is affected), so that the scan both
//! finds many advisories and walks many packages no advisory names.
//!
//! `scripts/bench vuln` (or: `cargo build --release --workspace --bins` then
//! `cargo bench -p rampart-e2e --bench vuln_scan`). Needs `cargo-audit` (scripts/setup
//! installs it). Runs on local files only; each phase is bounded (5 rounds).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: failing loudly is right

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use rampart_e2e::*;
use serde_json::{Value, json};

const ROUNDS: usize = 5;
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// Wall time of one process, and what `/usr/bin/time` says about its CPU and memory.
#[derive(Clone, Copy)]
struct Usage {
    wall_s: f64,
    cpu_s: f64,
    peak_kib: u64,
}

/// Runs `cmd` under `/usr/bin/time`, returning its usage, stdout and exit code.
fn timed(program: &Path, args: &[&str], scratch: &Path) -> (Usage, Vec<u8>, Option<i32>) {
    let report = scratch.join("time.out");
    let started = std::time::Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&report)
        .arg(program)
        .args(args)
        .output()
        .expect("/usr/bin/time (Debian package `time`; scripts/setup installs it)");
    // Measured here: /usr/bin/time rounds to 10 ms.
    let wall_s = started.elapsed().as_secs_f64();
    let t = std::fs::read_to_string(&report).unwrap();
    let f: Vec<&str> = t.lines().last().unwrap().split_whitespace().collect();
    let n = |i: usize| f[i].parse::<f64>().unwrap();
    (
        Usage {
            wall_s,
            cpu_s: n(1) + n(2),
            peak_kib: f[3].parse().unwrap(),
        },
        out.stdout,
        out.status.code(),
    )
}

/// Median wall and CPU time; the largest peak.
fn summary(runs: &[Usage]) -> Usage {
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    Usage {
        wall_s: median(runs.iter().map(|u| u.wall_s).collect()),
        cpu_s: median(runs.iter().map(|u| u.cpu_s).collect()),
        peak_kib: runs.iter().map(|u| u.peak_kib).max().unwrap(),
    }
}

/// (name, version) of the crates.io packages of a lockfile, read by the compliance crate's
/// parser.
fn lock_packages(path: &Path) -> Vec<(String, String)> {
    rampart_compliance::sbom::cargo::read_lockfile(path)
        .unwrap()
        .into_iter()
        .filter(|p| p.source.as_deref() == Some(CRATES_IO))
        .map(|p| (p.name, p.version))
        .collect()
}

/// One version of every crate the OSV export names: the first version its first range says
/// is affected ("0" means "from the beginning": 0.1.0).
fn database_packages(osv: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(osv.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for a in v["affected"].as_array().into_iter().flatten() {
            let name = a["package"]["name"].as_str().unwrap().to_owned();
            let introduced = a["ranges"][0]["events"][0]["introduced"]
                .as_str()
                .unwrap_or("0");
            let version = match introduced {
                "0" | "0.0.0-0" => "0.1.0",
                v => v,
            };
            out.push((name, version.to_owned()));
        }
    }
    out
}

/// A version-3 Cargo.lock of independent crates.io packages.
fn write_lockfile(path: &Path, packages: &BTreeSet<(String, String)>) {
    let mut s = String::from("version = 3\n");
    for (name, version) in packages {
        s.push_str(&format!(
            "\n[[package]]\nname = \"{name}\"\nversion = \"{version}\"\nsource = \"{CRATES_IO}\"\n"
        ));
    }
    std::fs::write(path, s).unwrap();
}

/// A CycloneDX 1.6 SBOM of the same packages, as another tool would write it.
fn write_sbom(path: &Path, packages: &BTreeSet<(String, String)>) {
    let components: Vec<Value> = packages
        .iter()
        .map(|(n, v)| {
            let purl = format!("pkg:cargo/{n}@{v}");
            json!({"type": "library", "bom-ref": purl, "name": n, "version": v, "purl": purl})
        })
        .collect();
    let bom = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "version": 1,
        "metadata": {"component": {"type": "application", "bom-ref": "root", "name": "bench", "version": "1.0.0"}},
        "components": components,
    });
    std::fs::write(path, serde_json::to_vec(&bom).unwrap()).unwrap();
}

/// Every finding, vulnerabilities and informational warnings alike, as "ID name@version".
fn rampart_findings(stdout: &[u8]) -> BTreeSet<String> {
    let v: Value = serde_json::from_slice(stdout).unwrap();
    assert!(v["not_evaluated"].as_array().unwrap().is_empty());
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {}@{}",
                f["advisory"].as_str().unwrap(),
                f["package"].as_str().unwrap(),
                f["version"].as_str().unwrap()
            )
        })
        .collect()
}

fn audit_findings(stdout: &[u8]) -> BTreeSet<String> {
    let v: Value = serde_json::from_slice(stdout).expect("cargo audit's JSON");
    let key = |x: &Value| {
        format!(
            "{} {}@{}",
            x["advisory"]["id"].as_str().unwrap(),
            x["package"]["name"].as_str().unwrap(),
            x["package"]["version"].as_str().unwrap()
        )
    };
    let mut out: BTreeSet<String> = v["vulnerabilities"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(key)
        .collect();
    for kind in ["unmaintained", "unsound", "notice"] {
        for w in v["warnings"][kind].as_array().into_iter().flatten() {
            out.insert(key(w));
        }
    }
    out
}

/// The advisory IDs of the native database (one Markdown file per advisory).
fn native_ids(db: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![db.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with(".git") {
                    dirs.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "md")
                && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                && stem.starts_with("RUSTSEC-")
            {
                out.insert(stem.to_owned());
            }
        }
    }
    out
}

/// `cargo-audit` from PATH, else from Cargo's bin directory.
fn cargo_audit_binary() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([cargo_home.join("bin")])
        .map(|d| d.join("cargo-audit"))
        .find(|p| p.exists())
        .expect("cargo-audit is not installed: `cargo install --locked cargo-audit` (scripts/setup does)")
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path();
    let osv = shared_data().join("rustsec-osv");
    let db = rustsec_db_snapshot(scratch);
    let advisories = std::fs::read_dir(osv.join("crates")).unwrap().count();

    let mut packages: BTreeSet<(String, String)> = BTreeSet::new();
    packages.extend(lock_packages(&workspace().join("Cargo.lock")));
    packages.extend(lock_packages(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/legacy-gateway.Cargo.lock"),
    ));
    packages.extend(database_packages(&osv));
    let lock = scratch.join("Cargo.lock");
    let sbom = scratch.join("bench.cdx.json");
    write_lockfile(&lock, &packages);
    write_sbom(&sbom, &packages);
    let distinct_names: BTreeSet<&String> = packages.iter().map(|(n, _)| n).collect();
    println!(
        "input: {} packages ({} distinct crates), {} OSV advisories",
        packages.len(),
        distinct_names.len(),
        advisories
    );

    let data = scratch.join("hub");
    run_ok(
        Command::new(bin("rampart"))
            .args(["init", "--data-dir"])
            .arg(&data),
    );
    let (import, _, code) = timed(
        &bin("rampart"),
        &[
            "vuln",
            "import",
            osv.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        scratch,
    );
    assert_eq!(code, Some(0), "rampart vuln import failed");

    let native = native_ids(&db);
    let ctx = Ctx {
        audit: cargo_audit_binary(),
        db,
        data,
        scratch: scratch.to_path_buf(),
        native,
    };
    println!();
    println!(
        "| input | process | wall (s) | CPU (s) | peak RSS (KiB) | wall ÷ cargo audit | peak RSS ÷ cargo audit |"
    );
    println!("|---|---|---|---|---|---|---|");
    ctx.case(
        &format!("synthetic, {} packages", packages.len()),
        &lock,
        Some(&sbom),
    );
    let own = workspace().join("Cargo.lock");
    ctx.case(
        &format!(
            "Rampart's Cargo.lock, {} packages",
            lock_packages(&own).len()
        ),
        &own,
        None,
    );
    println!(
        "| whole export | rampart vuln import (once) | {:.3} | {:.3} | {} | | |",
        import.wall_s, import.cpu_s, import.peak_kib
    );
    println!();
    println!("median of {ROUNDS} rounds; peak = the largest of the rounds");
}

/// What every case needs.
struct Ctx {
    audit: PathBuf,
    db: PathBuf,
    data: PathBuf,
    scratch: PathBuf,
    native: BTreeSet<String>,
}

impl Ctx {
    /// Scans `lock` (and `sbom`, the same packages) with both tools, `ROUNDS` times each,
    /// checks that the findings are equal and prints a table row per process.
    fn case(&self, input: &str, lock: &Path, sbom: Option<&Path>) {
        let (db, data) = (self.db.to_str().unwrap(), self.data.to_str().unwrap());
        let lock_s = lock.to_str().unwrap();
        let mut inputs = vec![("rampart vuln scan (lockfile)", lock_s)];
        if let Some(s) = sbom {
            inputs.push(("rampart vuln scan (CycloneDX SBOM)", s.to_str().unwrap()));
        }
        let reference_label = "cargo audit (lockfile)";
        let mut runs: BTreeMap<&str, Vec<Usage>> = BTreeMap::new();
        let mut findings: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for _ in 0..ROUNDS {
            let (u, out, _) = timed(
                &self.audit,
                &[
                    "audit",
                    "--no-fetch",
                    "--no-yanked",
                    "--json",
                    "--db",
                    db,
                    "-f",
                    lock_s,
                ],
                &self.scratch,
            );
            runs.entry(reference_label).or_default().push(u);
            findings.insert(reference_label, audit_findings(&out));
            for &(label, file) in &inputs {
                let (u, out, _) = timed(
                    &bin("rampart"),
                    &["vuln", "scan", file, "--json", "--data-dir", data],
                    &self.scratch,
                );
                runs.entry(label).or_default().push(u);
                findings.insert(label, rampart_findings(&out));
            }
        }
        // The OSV export holds a few records the native database does not (a placeholder ID
        // later renumbered: RUSTSEC-2025-0000 is RUSTSEC-2025-0065): their findings cannot
        // appear in cargo audit's output; they are left out of the comparison and shown.
        let reference = findings[reference_label].clone();
        let mut osv_only = BTreeSet::new();
        for (label, f) in findings.iter_mut() {
            let (kept, extra): (BTreeSet<String>, BTreeSet<String>) = f
                .iter()
                .cloned()
                .partition(|k| self.native.contains(k.split(' ').next().unwrap()));
            osv_only.extend(extra);
            *f = kept;
            let only_here: Vec<_> = f.difference(&reference).take(10).collect();
            let only_audit: Vec<_> = reference.difference(f).take(10).collect();
            assert!(
                only_here.is_empty() && only_audit.is_empty(),
                "{input}: {label} differs from cargo audit: only in {label}: {only_here:?}; only in cargo audit: {only_audit:?}"
            );
        }
        eprintln!(
            "{input}: {} findings, identical in every process; left out (OSV records absent from the native database): {osv_only:?}",
            reference.len()
        );
        let base = summary(&runs[reference_label]);
        let mut labels = vec![reference_label];
        labels.extend(inputs.iter().map(|(l, _)| *l));
        for label in labels {
            let s = summary(&runs[label]);
            println!(
                "| {input}, {} findings | {label} | {:.3} | {:.3} | {} | {:.2} | {:.2} |",
                reference.len(),
                s.wall_s,
                s.cpu_s,
                s.peak_kib,
                s.wall_s / base.wall_s,
                s.peak_kib as f64 / base.peak_kib as f64
            );
        }
    }
}

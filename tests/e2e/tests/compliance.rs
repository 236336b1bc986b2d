//! The CRA compliance engine end to end: SBOMs checked by the official validators, OSV matching
//! checked against `cargo audit` on real lockfiles and the real RustSec database, the fleet
//! view from releases that real agents report, VEX, CSAF advisories checked by the BSI's CSAF
//! validator, Article 14 clocks through the CLI, the Annex V/VII documents, and bad input.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rampart_e2e::*;
use serde_json::Value;

fn validators() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("validators")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs an independent validator; returns (valid, output).
fn validate(kind: &str, file: &Path) -> (bool, String) {
    let out = if kind == "csaf" {
        Command::new("node")
            .current_dir(validators())
            .arg("csaf.mjs")
            .arg(file)
            .output()
            .unwrap()
    } else {
        Command::new("python3")
            .arg(validators().join("validate.py"))
            .arg(kind)
            .arg(file)
            .output()
            .unwrap()
    };
    (out.status.success(), text(&out))
}

fn import_rustsec(hub: &TestHub) {
    let osv = shared_data().join("rustsec-osv");
    let out = hub.rampart(&["vuln", "import", osv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn the_agents_sbom_validates_against_cyclonedx_1_6_spdx_2_3_and_spdx_3_0_1() {
    let dir = tempfile::tempdir().unwrap();
    let binary = bin("rampart-agent");
    let mut files = Vec::new();
    for format in ["cyclonedx", "spdx", "spdx3"] {
        let out_file = dir.path().join(format!("agent.{format}.json"));
        let out = Command::new(bin("rampart"))
            .args([
                "sbom",
                "cargo",
                "--package",
                "rampart-agent-bin",
                "--format",
                format,
            ])
            .arg("--manifest-path")
            .arg(workspace().join("Cargo.toml"))
            .arg("--binary")
            .arg(&binary)
            .args(["--manufacturer", "Rampart project"])
            .arg("--out")
            .arg(&out_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let (ok, report) = validate(format, &out_file);
        assert!(ok, "{format} SBOM rejected by the validator:\n{report}");
        files.push(out_file);
    }
    let cdx: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(cdx["specVersion"], "1.6");
    // The root is the deployable: its SHA-512 is the binary's.
    let root = &cdx["metadata"]["component"];
    assert_eq!(root["name"], "rampart-agent-bin");
    let sha512 = Command::new("sha512sum").arg(&binary).output().unwrap();
    let sha512 = String::from_utf8_lossy(&sha512.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(root["hashes"][0]["alg"], "SHA-512");
    assert_eq!(root["hashes"][0]["content"], sha512);
    // Per component: name, version, purl, licence, SHA-256 of the .crate, supplier or authors.
    let comps = cdx["components"].as_array().unwrap();
    assert!(comps.len() > 50, "the agent has many dependencies");
    for c in comps {
        let name = c["name"].as_str().unwrap();
        assert!(c["version"].is_string(), "{name}");
        assert!(
            c["purl"].as_str().unwrap().starts_with("pkg:cargo/"),
            "{name}"
        );
        // Registry crates carry the Cargo.lock checksum; workspace crates have no .crate file.
        if c["externalReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["type"] == "distribution")
        {
            assert!(
                c["hashes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["alg"] == "SHA-256"),
                "{name} has the Cargo.lock checksum"
            );
        } else {
            assert!(name.starts_with("rampart-"), "{name} is a workspace crate");
        }
        assert!(c["licenses"].is_array(), "{name} declares a licence");
    }
    // Dev-dependencies do not ship: tempfile is only a dev-dependency of the agent crates.
    assert!(!comps.iter().any(|c| c["name"] == "tempfile"));
    // The dependency graph is marked complete.
    assert_eq!(cdx["compositions"][0]["aggregate"], "complete");
    // The validators are not rubber stamps: a broken document fails.
    let broken = dir.path().join("broken.cdx.json");
    let mut bad = cdx.clone();
    let hashed = comps.iter().position(|c| c["hashes"].is_array()).unwrap();
    bad["components"][hashed]["hashes"][0]["content"] = "not-hex".into();
    std::fs::write(&broken, bad.to_string()).unwrap();
    assert!(!validate("cyclonedx", &broken).0);
    let broken = dir.path().join("broken.spdx.json");
    let mut bad: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[1]).unwrap()).unwrap();
    bad["packages"][0]["SPDXID"] = "no spaces allowed".into();
    std::fs::write(&broken, bad.to_string()).unwrap();
    assert!(!validate("spdx", &broken).0);

    // SPDX 3.0.1: the same packages, dependencies with SPDX 3's completeness marker, and the
    // deployable's SHA-512.
    let spdx3: Value = serde_json::from_str(&std::fs::read_to_string(&files[2]).unwrap()).unwrap();
    let graph = spdx3["@graph"].as_array().unwrap();
    let packages: Vec<&Value> = graph
        .iter()
        .filter(|e| e["type"] == "software_Package")
        .collect();
    assert_eq!(packages.len(), comps.len() + 1);
    let root3 = packages
        .iter()
        .find(|p| p["name"] == "rampart-agent-bin")
        .unwrap();
    assert!(
        root3["verifiedUsing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["algorithm"] == "sha512" && h["hashValue"] == sha512.as_str())
    );
    let depends: Vec<&Value> = graph
        .iter()
        .filter(|e| e["type"] == "Relationship" && e["relationshipType"] == "dependsOn")
        .collect();
    assert_eq!(depends.len(), packages.len(), "one per package");
    assert!(depends.iter().all(|r| r["completeness"] == "complete"));
    // Broken SPDX 3 documents fail: a required property gone, a reference to nothing.
    for (case, edit) in [("no-creation-info", 0usize), ("dangling-reference", 1)] {
        let broken = dir.path().join(format!("broken-{case}.spdx3.json"));
        let mut bad = spdx3.clone();
        let graph = bad["@graph"].as_array_mut().unwrap();
        if edit == 0 {
            let p = graph
                .iter_mut()
                .find(|e| e["type"] == "software_Package")
                .unwrap();
            p.as_object_mut().unwrap().remove("creationInfo");
        } else {
            let r = graph
                .iter_mut()
                .find(|e| e["type"] == "Relationship")
                .unwrap();
            r["to"] = serde_json::json!(["https://example.com/no-such-element"]);
        }
        std::fs::write(&broken, bad.to_string()).unwrap();
        let (ok, report) = validate("spdx3", &broken);
        assert!(!ok, "{case} passed the SPDX 3 validator: {report}");
    }
}

/// (advisory, package, version) of cargo audit's vulnerabilities, and of its warnings.
fn cargo_audit(db: &Path, lockfile: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new("cargo")
        .args(["audit", "--no-fetch", "--no-yanked", "--json", "--db"])
        .arg(db)
        .arg("-f")
        .arg(lockfile)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "cargo audit failed (install it with `cargo install --locked cargo-audit`; scripts/setup does): {}",
            text(&out)
        )
    });
    let key = |x: &Value| {
        format!(
            "{} {}@{}",
            x["advisory"]["id"].as_str().unwrap_or(""),
            x["package"]["name"].as_str().unwrap(),
            x["package"]["version"].as_str().unwrap()
        )
    };
    let vulns = v["vulnerabilities"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(key)
        .collect();
    let mut warnings = BTreeSet::new();
    for kind in ["unmaintained", "unsound", "notice"] {
        for w in v["warnings"][kind].as_array().into_iter().flatten() {
            warnings.insert(key(w));
        }
    }
    (vulns, warnings)
}

#[test]
fn scans_equal_cargo_audit_on_real_lockfiles_and_the_real_rustsec_database() {
    let hub = TestHub::init();
    import_rustsec(&hub);
    let db = rustsec_db_snapshot(hub.tmp.path());
    let lockfiles = [
        workspace().join("Cargo.lock"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/legacy-gateway.Cargo.lock"),
    ];
    for lock in &lockfiles {
        let out = hub.rampart(&["vuln", "scan", lock.to_str().unwrap(), "--json"]);
        let report = json(&out);
        let mut vulns = BTreeSet::new();
        let mut warnings = BTreeSet::new();
        for f in report["findings"].as_array().unwrap() {
            let k = format!(
                "{} {}@{}",
                f["advisory"].as_str().unwrap(),
                f["package"].as_str().unwrap(),
                f["version"].as_str().unwrap()
            );
            if f["informational"].is_null() {
                vulns.insert(k);
            } else {
                warnings.insert(k);
            }
        }
        assert!(report["not_evaluated"].as_array().unwrap().is_empty());
        let (audit_vulns, audit_warnings) = cargo_audit(&db, lock);
        assert_eq!(vulns, audit_vulns, "vulnerabilities of {}", lock.display());
        assert_eq!(warnings, audit_warnings, "warnings of {}", lock.display());
        // Exit status: 1 when open vulnerabilities exist.
        assert_eq!(
            out.status.code(),
            Some(if vulns.is_empty() { 0 } else { 1 })
        );
    }
    // The legacy lockfile is a real test: many findings.
    let (legacy, _) = cargo_audit(&db, &lockfiles[1]);
    assert!(legacy.len() >= 20, "{legacy:?}");
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn crafted_osv_ranges_of_every_type_match_exactly() {
    let hub = TestHub::init();
    let osv = hub.tmp.path().join("osv");
    let rec = |id: &str, affected: &str| {
        format!(
            r#"{{"id":"{id}","modified":"2026-01-01T00:00:00Z","summary":"{id}","affected":[{affected}]}}"#
        )
    };
    write(
        &osv,
        "semver.json",
        &rec(
            "T-SEMVER",
            r#"{"package":{"ecosystem":"crates.io","name":"alpha"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.2.0"},{"introduced":"2.0.0"},{"last_affected":"2.3.1"}]}]}"#,
        ),
    );
    write(
        &osv,
        "eco.json",
        &rec(
            "T-ECO",
            r#"{"package":{"ecosystem":"PyPI","name":"beta"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"1.0"},{"fixed":"1.10"}]}]}"#,
        ),
    );
    write(
        &osv,
        "deb.json",
        &rec(
            "T-DEB",
            r#"{"package":{"ecosystem":"Debian:12","name":"gamma"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"1.2-3+deb12u1"}]}]}"#,
        ),
    );
    write(
        &osv,
        "git.json",
        &rec(
            "T-GIT",
            r#"{"package":{"ecosystem":"npm","name":"delta"},"ranges":[{"type":"GIT","repo":"https://example.org/delta.git","events":[{"introduced":"0"},{"fixed":"abc123"}]}],"versions":["4.0.0","4.0.1"]}"#,
        ),
    );
    write(
        &osv,
        "withdrawn.json",
        r#"{"id":"T-WITHDRAWN","modified":"2026-01-01T00:00:00Z","withdrawn":"2026-02-01T00:00:00Z","affected":[{"package":{"ecosystem":"crates.io","name":"alpha"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}]}]}"#,
    );
    let out = hub.rampart(&["vuln", "import", osv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let components: Vec<(&str, bool)> = vec![
        ("pkg:cargo/alpha@1.1.9", true),
        ("pkg:cargo/alpha@1.2.0", false),
        ("pkg:cargo/alpha@2.3.1", true),
        ("pkg:cargo/alpha@2.3.2", false),
        ("pkg:pypi/beta@1.9", true),
        ("pkg:pypi/beta@1.10", false),
        ("pkg:pypi/beta@0.9", false),
        ("pkg:deb/debian/gamma@1.2-3?distro=bookworm", true),
        ("pkg:deb/debian/gamma@1.2-3+deb12u1", false),
        ("pkg:npm/delta@4.0.1", true),
        ("pkg:npm/delta@4.1.0", false),
    ];
    // Debian:12 advisories match the Debian:12 ecosystem; the purl maps to "Debian".
    // The test's SBOM therefore names the ecosystem the way OSV does for this record.
    let comps: Vec<Value> = components
        .iter()
        .enumerate()
        .map(|(i, (purl, _))| {
            let p = purl.split('?').next().unwrap();
            let version = p.rsplit_once('@').unwrap().1;
            serde_json::json!({"type":"library","bom-ref":format!("c{i}"),"name":format!("c{i}"),"version":version,"purl":purl})
        })
        .collect();
    let sbom = serde_json::json!({"bomFormat":"CycloneDX","specVersion":"1.5","version":1,"metadata":{"component":{"type":"application","name":"crafted","version":"1"}},"components":comps});
    let sbom_file = write(hub.tmp.path(), "crafted.cdx.json", &sbom.to_string());
    let out = hub.rampart(&["vuln", "scan", sbom_file.to_str().unwrap(), "--json"]);
    let report = json(&out);
    let hits: BTreeSet<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["purl"].as_str().unwrap().to_owned())
        .collect();
    for (purl, affected) in &components {
        // Debian records name "Debian:12"; purls map to "Debian" (documented): not matched.
        if purl.starts_with("pkg:deb") {
            continue;
        }
        assert_eq!(hits.contains(*purl), *affected, "{purl}");
    }
    assert!(
        !report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["advisory"] == "T-WITHDRAWN"),
        "withdrawn advisories are not reported"
    );
}

#[test]
fn bad_input_names_the_file_and_place_and_stores_nothing() {
    let hub = TestHub::init();
    import_rustsec(&hub);
    let count = |h: &TestHub| -> u64 {
        let out = h.query("SELECT COUNT(*) FROM osv_advisories");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let before = count(&hub);
    let osv = hub.tmp.path().join("bad-osv");
    write(
        &osv,
        "a-good.json",
        r#"{"id":"T-GOOD","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}]}]}"#,
    );
    let bad = write(
        &osv,
        "b-bad.json",
        r#"{"id":"T-BAD","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"one.two"}]}]}]}"#,
    );
    let out = hub.rampart(&["vuln", "import", osv.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(
        err.contains(&format!(
            "{}: affected[0].ranges[0].events[1].fixed",
            bad.display()
        )),
        "{err}"
    );
    assert!(err.contains("nothing was stored"), "{err}");
    assert_eq!(count(&hub), before, "a refused import stores nothing");
    // With --skip-invalid the good record goes in and the bad one is listed.
    let out = hub.rampart(&["vuln", "import", osv.to_str().unwrap(), "--skip-invalid"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("skipped: "), "{}", text(&out));
    assert_eq!(count(&hub), before + 1);
    // A malformed SBOM, an unknown format, a SPDX document with a broken relationship.
    let cases = [
        (
            "torn.cdx.json",
            "{\"bomFormat\": \"CycloneDX\", \"specVersion\": \"1.6\", ",
            "torn.cdx.json: line 1 column",
        ),
        (
            "bom.xml",
            "<?xml version=\"1.0\"?><bom/>",
            "unknown format: XML",
        ),
        ("other.json", "{\"hello\": 1}", "unknown format: neither"),
        (
            "old.cdx.json",
            "{\"bomFormat\": \"CycloneDX\", \"specVersion\": \"1.2\"}",
            "specVersion \"1.2\"",
        ),
        (
            "nameless.cdx.json",
            "{\"bomFormat\": \"CycloneDX\", \"specVersion\": \"1.6\", \"components\": [{\"type\": \"library\", \"version\": \"1\"}]}",
            "components[0].name: missing",
        ),
        (
            "rel.spdx.json",
            "{\"spdxVersion\": \"SPDX-2.3\", \"packages\": [{\"SPDXID\": \"SPDXRef-a\", \"name\": \"a\"}], \"relationships\": [{\"spdxElementId\": \"SPDXRef-a\"}]}",
            "relationships[0]",
        ),
    ];
    let out = hub.rampart(&["product", "add", product_toml(&hub).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for (name, content, expect) in cases {
        let f = write(hub.tmp.path(), name, content);
        let out = hub.rampart(&[
            "sbom",
            "ingest",
            f.to_str().unwrap(),
            "--product",
            "BMS Gateway",
            "--release",
            "9.9.9",
        ]);
        assert!(!out.status.success(), "{name} accepted");
        assert!(text(&out).contains(expect), "{name}: {}", text(&out));
        assert!(
            text(&out).contains(name),
            "{name}: the error names the file"
        );
    }
    let out = hub.rampart(&["product", "show", "BMS Gateway"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("9.9.9"),
        "a refused SBOM leaves no release behind"
    );
    // A product record with a bad field.
    let bad_product = write(
        hub.tmp.path(),
        "bad-product.toml",
        &std::fs::read_to_string(product_toml(&hub))
            .unwrap()
            .replace("\"FR\"", "\"XX\""),
    );
    let out = hub.rampart(&["product", "add", bad_product.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("member_states[1]"), "{}", text(&out));
}

fn product_toml(hub: &TestHub) -> PathBuf {
    write(
        hub.tmp.path(),
        "product.toml",
        r#"
name = "BMS Gateway"
type = "battery monitoring gateway"
intended_purpose = "Reads a battery's BMS and sends its data to the operator's cloud"
hardware_versions = ["rev-B"]
releases = []
member_states = ["DE", "FR", "AT"]

[manufacturer]
name = "Example Energy GmbH"
address = "Musterstrasse 1, 10115 Berlin, Germany"

[support]
start = "2026-01"
end = "2033-12"
rationale = "Batteries in the field last ten years; the gateway is supported as long as the battery warranty"

[cvd]
contact = "mailto:security@example.com"
policy_url = "https://example.com/security/cvd"
advisories_url = "https://example.com"
"#,
    )
}

fn agent_with_release(hub: &TestHub, id: &str, release: &str, state: &str) -> Agent {
    let b = hub.add_device(id);
    let mut cfg = std::fs::read_to_string(b.agent_toml()).unwrap();
    cfg.push_str(&format!(
        "\n[release]\nproduct = \"BMS Gateway\"\nversion = \"{release}\"\n"
    ));
    std::fs::write(b.agent_toml(), cfg).unwrap();
    let out = hub.rampart(&[
        "device",
        "set",
        id,
        "--attr",
        &format!("member_state={state}"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    Agent::start(&b, "1s")
}

#[test]
fn fleet_view_vex_csaf_advisories_and_documents_from_real_agents() {
    let mut hub = TestHub::init();
    hub.start();
    import_rustsec(&hub);
    let out = hub.rampart(&["product", "add", product_toml(&hub).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // The gateway's firmware is Rampart's agent: its SBOM is attached to two releases.
    let sbom = hub.tmp.path().join("agent.cdx.json");
    let out = Command::new(bin("rampart"))
        .args(["sbom", "cargo", "--package", "rampart-agent-bin", "--out"])
        .arg(&sbom)
        .arg("--manifest-path")
        .arg(workspace().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for release in ["2.0.0", "2.1.0"] {
        let out = hub.rampart(&[
            "sbom",
            "ingest",
            sbom.to_str().unwrap(),
            "--product",
            "BMS Gateway",
            "--release",
            release,
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // Three real agents report their release on connect.
    let _a = agent_with_release(&hub, "gw-de-1", "2.0.0", "DE");
    let _b = agent_with_release(&hub, "gw-fr-1", "2.0.0", "FR");
    let _c = agent_with_release(&hub, "gw-de-2", "2.1.0", "DE");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = hub.query("SELECT COUNT(*) FROM device_releases");
            String::from_utf8_lossy(&out.stdout).trim() == "3"
        }),
        "every agent reported its release; hub: {}\nagent: {}",
        hub.logs.text(),
        _a.logs.text()
    );
    // The agent's own dependency tree has a vulnerable rustls-webpki in this database:
    // VEX says 2.1.0 fixed it, 2.0.0 is affected, and one advisory does not apply at all.
    let vulnerable = "RUSTSEC-2026-0049";
    let not_applicable = "RUSTSEC-2026-0104";
    for args in [
        vec![
            "vex",
            "set",
            "BMS Gateway@2.1.0",
            vulnerable,
            "--status",
            "fixed",
        ],
        vec![
            "vex",
            "set",
            "BMS Gateway@2.0.0",
            vulnerable,
            "--status",
            "affected",
            "--action",
            "Update to 2.1.0",
        ],
        vec![
            "vex",
            "set",
            "BMS Gateway",
            not_applicable,
            "--status",
            "not_affected",
            "--justification",
            "vulnerable_code_not_in_execute_path",
        ],
    ] {
        let out = hub.rampart(&args);
        assert!(out.status.success(), "{}", text(&out));
    }
    // An affected statement without an action is refused.
    let out = hub.rampart(&[
        "vex",
        "set",
        "BMS Gateway",
        "RUSTSEC-2026-0098",
        "--status",
        "affected",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--action"), "{}", text(&out));
    let out = hub.rampart(&["vuln", "fleet", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let fleet = json(&out);
    let row = |id: &str| {
        fleet
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["advisory"] == id)
            .unwrap_or_else(|| panic!("{id} in {fleet}"))
            .clone()
    };
    let r = row(vulnerable);
    assert_eq!(r["releases"], serde_json::json!(["BMS Gateway@2.0.0"]));
    assert_eq!(r["devices"], 2);
    assert_eq!(
        r["devices_by_member_state"],
        serde_json::json!({"DE": 1, "FR": 1})
    );
    assert_eq!(r["suppressed"][0][0], "BMS Gateway@2.1.0");
    assert_eq!(r["suppressed"][0][1]["status"], "fixed");
    let r = row(not_applicable);
    assert_eq!(r["releases"], serde_json::json!([]));
    assert_eq!(r["devices"], 0);
    assert_eq!(r["suppressed"].as_array().unwrap().len(), 2);
    // A scan with the product's VEX shows the reason.
    let out = hub.rampart(&[
        "vuln",
        "scan",
        sbom.to_str().unwrap(),
        "--vex",
        "BMS Gateway@2.1.0",
    ]);
    let t = text(&out);
    assert!(t.contains("[VEX fixed"), "{t}");
    assert!(
        t.contains("[VEX not_affected: vulnerable_code_not_in_execute_path]"),
        "{t}"
    );
    // VEX exports validate.
    for (format, validator) in [("openvex", "openvex"), ("cyclonedx", "cyclonedx")] {
        let f = hub.tmp.path().join(format!("vex.{format}.json"));
        let out = hub.rampart(&[
            "vex",
            "export",
            "BMS Gateway",
            "--format",
            format,
            "--out",
            f.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let (ok, report) = validate(validator, &f);
        assert!(ok, "{format} VEX:\n{report}");
    }
    // CSAF advisories and the publication set.
    let site = hub.tmp.path().join("site");
    let out = hub.rampart(&[
        "cra",
        "advisory",
        "BMS Gateway",
        "--out",
        site.to_str().unwrap(),
        "--remediation",
        "Update to 2.1.0; it installs automatically.",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let mut docs: Vec<PathBuf> = Vec::new();
    let mut stack = vec![site.join(".well-known/csaf/white")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "json") {
                docs.push(e.path());
            }
        }
    }
    assert_eq!(
        docs.len(),
        3,
        "one advisory for the fixed vulnerability, two VEX documents: {docs:?}"
    );
    for d in &docs {
        let (ok, report) = validate("csaf", d);
        assert!(ok, "CSAF {}:\n{report}", d.display());
    }
    let advisory: Value = serde_json::from_str(
        &std::fs::read_to_string(
            docs.iter()
                .find(|d| !d.to_string_lossy().contains("-vex"))
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(advisory["document"]["category"], "csaf_security_advisory");
    let status = &advisory["vulnerabilities"][0]["product_status"];
    assert_eq!(status["fixed"], serde_json::json!(["BMS-Gateway-2.1.0"]));
    assert_eq!(
        status["known_affected"],
        serde_json::json!(["BMS-Gateway-2.0.0"])
    );
    let pm: Value = serde_json::from_str(
        &std::fs::read_to_string(site.join(".well-known/csaf/provider-metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        pm["canonical_url"],
        "https://example.com/.well-known/csaf/provider-metadata.json"
    );
    let sec = std::fs::read_to_string(site.join(".well-known/security.txt")).unwrap();
    for line in [
        "Contact: mailto:security@example.com",
        "Expires: ",
        "Policy: https://example.com/security/cvd",
        "CSAF: https://example.com/.well-known/csaf/provider-metadata.json",
    ] {
        assert!(sec.contains(line), "{line} in {sec}");
    }
    // Classification (the guided questionnaire on standard input) and the documents.
    let mut answers = "n\n".repeat(26);
    answers.push_str(
        "The gateway reads a BMS and forwards data; none of its core functions is listed\n",
    );
    let mut child = Command::new(bin("rampart"))
        .args(["cra", "classify", "BMS Gateway", "--data-dir"])
        .arg(&hub.data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answers.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("default (not listed in Annex III or IV)"),
        "{}",
        text(&out)
    );
    let report_file = write(hub.tmp.path(), "pentest.pdf", "penetration test report");
    let out = hub.rampart(&[
        "cra",
        "attach",
        "BMS Gateway",
        report_file.to_str().unwrap(),
        "--kind",
        "test-report",
        "--title",
        "Penetration test 2026-10",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let docs_dir = hub.tmp.path().join("docs");
    let out = hub.rampart(&[
        "cra",
        "docs",
        "BMS Gateway",
        "--out",
        docs_dir.to_str().unwrap(),
        "--signatory",
        "Erika Mustermann",
        "--function",
        "CEO",
        "--place",
        "Berlin",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let tech = std::fs::read_to_string(docs_dir.join("technical-documentation.md")).unwrap();
    assert!(tech.contains("SBOM of 2.0.0 (CycloneDX 1.6,"), "{tech}");
    assert!(
        tech.contains(&format!(
            "open vulnerabilities: {vulnerable} (rustls-webpki@0.102.8) in 2.0.0"
        )),
        "{tech}"
    );
    assert!(tech.contains("Penetration test 2026-10"), "{tech}");
    assert!(
        tech.contains("**GAP:** no risk assessment attached"),
        "gaps are visible"
    );
    assert!(tech.contains("96 months"), "support period");
    let html = std::fs::read_to_string(docs_dir.join("technical-documentation.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<table>"));
    let doc = std::fs::read_to_string(docs_dir.join("declaration-of-conformity.md")).unwrap();
    assert!(
        doc.contains("Example Energy GmbH, Musterstrasse 1"),
        "{doc}"
    );
    assert!(doc.contains("sole responsibility"), "{doc}");
    assert!(
        doc.contains("Berlin") && doc.contains("Erika Mustermann, CEO"),
        "{doc}"
    );
    hub.stop();
}

#[test]
fn article_14_clocks_submissions_warnings_and_drafts_through_the_cli() {
    let hub = TestHub::init();
    let out = hub.rampart(&["product", "add", product_toml(&hub).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = hub.rampart(&[
        "cra",
        "report",
        "new",
        "--kind",
        "exploited-vulnerability",
        "--product",
        "BMS Gateway",
        "--title",
        "Exploited auth bypass",
        "--aware-at",
        "2026-11-20T09:00:00+01:00",
        "--vulnerability",
        "CVE-2026-12345",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id = "CRA-2026-0001";
    let show = |hub: &TestHub| json(&hub.rampart(&["cra", "report", "show", id, "--json"]));
    let s = show(&hub);
    let due = |s: &Value, i: usize| s["deadlines"][i]["due"].as_str().map(str::to_owned);
    assert_eq!(due(&s, 0).as_deref(), Some("2026-11-21T08:00:00Z"));
    assert_eq!(due(&s, 1).as_deref(), Some("2026-11-23T08:00:00Z"));
    assert_eq!(due(&s, 2), None, "no final deadline before a measure");
    // Checks: before the window nothing; inside it a warning (recorded once); past it overdue.
    let check = |at: &str| hub.rampart(&["cra", "report", "check", "--at", at, "--warn", "6h"]);
    assert_eq!(check("2026-11-20T12:00:00Z").status.code(), Some(0));
    let out = check("2026-11-21T03:00:00Z");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("early-warning due soon"),
        "{}",
        text(&out)
    );
    check("2026-11-21T03:30:00Z");
    let out = check("2026-11-21T08:00:01Z");
    assert!(
        text(&out).contains("early-warning OVERDUE"),
        "{}",
        text(&out)
    );
    // Submissions in order; a measure starts the 14 days.
    let out = hub.rampart(&[
        "cra",
        "report",
        "submit",
        id,
        "notification",
        "--at",
        "2026-11-21T07:00:00Z",
    ]);
    assert!(
        !out.status.success(),
        "notification before early warning is refused"
    );
    for (stage, at) in [
        ("early-warning", "2026-11-21T07:00:00Z"),
        ("notification", "2026-11-22T10:00:00Z"),
    ] {
        let out = hub.rampart(&["cra", "report", "submit", id, stage, "--at", at]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = hub.rampart(&[
        "cra",
        "report",
        "submit",
        id,
        "final-report",
        "--at",
        "2026-11-23T10:00:00Z",
    ]);
    assert!(
        !out.status.success(),
        "no final report before the corrective measure"
    );
    let out = hub.rampart(&[
        "cra",
        "report",
        "measure",
        id,
        "--at",
        "2026-11-30T16:30:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let s = show(&hub);
    assert_eq!(due(&s, 2).as_deref(), Some("2026-12-14T16:30:00Z"));
    assert_eq!(s["deadlines"][0]["state"], "submitted");
    // The history is append-only and holds everything, each warning once.
    let actions: Vec<String> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{} {}",
                h["action"].as_str().unwrap(),
                h["detail"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.contains("early-warning due soon"))
            .count(),
        1,
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a.contains("early-warning overdue")),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a.starts_with("submitted notification at 2026-11-22T10:00:00Z")),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a.starts_with("measure available")),
        "{actions:?}"
    );
    hub.sql("SELECT 1"); // the database is readable by another client
    let out = hub.query("DELETE FROM compliance_history");
    assert!(!out.status.success());
    assert!(text(&out).contains("append-only"), "{}", text(&out));
    // The draft for the single reporting platform.
    let out = hub.rampart(&["cra", "report", "draft", id, "notification", "--json"]);
    let d = json(&out);
    assert_eq!(d["CVE ID"], "CVE-2026-12345");
    assert_eq!(
        d["Manufacturer"],
        "Example Energy GmbH, Musterstrasse 1, 10115 Berlin, Germany"
    );
    assert_eq!(d["Awareness time"], "2026-11-20T08:00:00Z");
    assert!(
        d["Product type"].as_str().unwrap().starts_with("TO FILL"),
        "not classified yet"
    );
    // A severe incident: the final report is a month after the notification.
    let out = hub.rampart(&[
        "cra",
        "report",
        "new",
        "--kind",
        "severe-incident",
        "--product",
        "BMS Gateway",
        "--title",
        "Ransomware on the update server",
        "--aware-at",
        "2027-01-27T10:00:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id2 = "CRA-2027-0001";
    let s = json(&hub.rampart(&["cra", "report", "show", id2, "--json"]));
    assert_eq!(s["deadlines"][2]["due"], "2027-02-28T10:00:00Z");
    assert_eq!(s["deadlines"][2]["provisional"], true);
    for (stage, at) in [
        ("early-warning", "2027-01-27T20:00:00Z"),
        ("notification", "2027-01-29T08:15:00Z"),
    ] {
        let out = hub.rampart(&["cra", "report", "submit", id2, stage, "--at", at]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let s = json(&hub.rampart(&["cra", "report", "show", id2, "--json"]));
    assert_eq!(s["deadlines"][2]["due"], "2027-02-28T08:15:00Z");
    assert_eq!(s["deadlines"][2]["provisional"], false);
    // The Art. 14(8) user notification.
    let f = hub.tmp.path().join("notice.json");
    let out = hub.rampart(&[
        "cra",
        "report",
        "notify",
        id,
        "--action",
        "Install 2.1.0",
        "--out",
        f.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let n: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    assert_eq!(n["type"], "cra-user-notification");
    assert_eq!(n["user_action"], "Install 2.1.0");
    // Bad times and kinds are refused clearly.
    let out = hub.rampart(&[
        "cra",
        "report",
        "new",
        "--kind",
        "outage",
        "--product",
        "BMS Gateway",
        "--title",
        "x",
        "--aware-at",
        "2026-11-20T09:00:00Z",
    ]);
    assert!(text(&out).contains("unknown report kind"), "{}", text(&out));
    let out = hub.rampart(&[
        "cra",
        "report",
        "new",
        "--kind",
        "severe-incident",
        "--product",
        "BMS Gateway",
        "--title",
        "x",
        "--aware-at",
        "yesterday",
    ]);
    assert!(text(&out).contains("RFC 3339"), "{}", text(&out));
}

#[test]
fn the_running_hub_checks_deadlines_on_a_schedule_and_exposes_them_as_gauges() {
    let mut hub = TestHub::init();
    hub.configure(
        "deadline_check_interval = \"5m\"",
        "deadline_check_interval = \"1s\"",
    );
    hub.configure("deadline_warning = \"6h\"", "deadline_warning = \"30h\"");
    let out = hub.rampart(&["product", "add", product_toml(&hub).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // Aware 48 h ago: the 24 h early warning is overdue; the 72 h notification is due in
    // 24 h, inside the 30 h warning window.
    let aware = time::OffsetDateTime::now_utc() - time::Duration::hours(48);
    let aware = aware
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = hub.rampart(&[
        "cra",
        "report",
        "new",
        "--kind",
        "severe-incident",
        "--product",
        "BMS Gateway",
        "--title",
        "Gateway fleet outage",
        "--aware-at",
        &aware,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    hub.start();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let m = hub.metrics();
            m.get("rampart_cra_deadlines_overdue") == Some(&1.0)
                && m.get("rampart_cra_deadlines_due_soon") == Some(&1.0)
        }),
        "gauges: {:?}",
        hub.metrics()
            .iter()
            .filter(|(k, _)| k.starts_with("rampart_cra"))
            .collect::<Vec<_>>()
    );
    for needle in [
        "Article 14 deadline overdue",
        "Article 14 deadline approaching",
    ] {
        assert!(
            hub.logs.wait_for(&[needle], Duration::from_secs(5)),
            "{}",
            hub.logs.text()
        );
    }
    // Several checks later, each warning is still recorded once in the history.
    std::thread::sleep(Duration::from_secs(3));
    let show = json(&hub.rampart(&["cra", "report", "show", "CRA-2026-0001", "--json"]));
    let warnings: Vec<&Value> = show["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["action"] == "deadline warning")
        .collect();
    assert_eq!(warnings.len(), 2, "{show:#}");
    // Submitting the overdue stage clears the gauge at the next check.
    let out = hub.rampart(&["cra", "report", "submit", "CRA-2026-0001", "early-warning"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        wait_until(Duration::from_secs(10), || {
            hub.metrics().get("rampart_cra_deadlines_overdue") == Some(&0.0)
        }),
        "{:?}",
        hub.metrics().get("rampart_cra_deadlines_overdue")
    );
}

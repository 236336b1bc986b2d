//! Secure updates end to end: offline keys and the `rampart release` workflow on the hub,
//! metadata and artifacts served over mutual TLS by the device API, and the agent's TUF
//! client (`rampart-agent tuf`) refreshing, downloading, resuming and refusing.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rampart_e2e::release::{Keys, ok, refused};
use rampart_e2e::{Agent, Bundle, PLAIN_KEYS, TestHub, bin, free_port, wait_until};

/// Root (2 of 2 keys), targets and security roles, first release published.
fn first_release(hub: &TestHub, artifact: &Path) -> Keys {
    let k = Keys::new(hub);
    k.stage_root(hub);
    let added = ok(hub.rampart(&[
        "release",
        "add",
        artifact.to_str().unwrap(),
        "--version",
        "1.1.0",
        "--hardware",
        "gw-1",
    ]));
    assert!(added.contains("staged releases/1.1.0/"), "{added}");
    // One root signature is not enough: the publish is refused and nothing is served.
    ok(hub.rampart(&["release", "sign", "root", "--key", &k.private("root-1")]));
    ok(hub.rampart(&["release", "sign", "targets", "--key", &k.private("targets")]));
    ok(hub.rampart(&[
        "release",
        "sign",
        "security",
        "--key",
        &k.private("security"),
    ]));
    let e = refused(hub.rampart(&["release", "publish"]));
    assert!(e.contains("root has 1 of the 2 signatures"), "{e}");
    // A key of another role is refused by name.
    let e = refused(hub.rampart(&["release", "sign", "root", "--key", &k.private("targets")]));
    assert!(e.contains("is not a root key"), "{e}");
    let signed = ok(hub.rampart(&["release", "sign", "root", "--key", &k.private("root-2")]));
    assert!(
        signed.contains("ready: run `rampart release publish`"),
        "{signed}"
    );
    let published = ok(hub.rampart(&["release", "publish"]));
    assert!(published.contains("root v1"), "{published}");
    assert!(published.contains("timestamp v1"), "{published}");
    k
}

/// Starts the device's agent and waits for its session token. `plain` keeps the keys
/// unsealed so curl can use them too.
fn device_with_token(hub: &TestHub, id: &str, plain: bool) -> (Bundle, Agent) {
    let dev = hub.add_device(id);
    let edits: &[(&str, &str)] = if plain { &[PLAIN_KEYS] } else { &[] };
    let agent = Agent::start_with(&dev, "1s", edits);
    let state = dev.dir.join("state/token");
    assert!(
        wait_until(Duration::from_secs(20), || state.exists()),
        "no token:\n{}",
        agent.logs.text()
    );
    (dev, agent)
}

fn tuf(dev: &Bundle, meta: &Path, args: &[&str]) -> Output {
    Command::new(bin("rampart-agent"))
        .args(["tuf", "--metadata-dir"])
        .arg(meta)
        .arg("--config")
        .arg(dev.agent_toml())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn api(hub: &TestHub, what: &str) -> String {
    format!("https://localhost:{}/v1/updates/{what}", hub.api_port)
}

#[test]
fn releases_signed_offline_reach_devices_over_mutual_tls_and_tampering_is_refused() {
    let mut hub = TestHub::init();
    hub.start();
    let artifact = hub.tmp.path().join("app-1.1.0.tar");
    std::fs::write(&artifact, b"the application, version 1.1.0\n".repeat(1000)).unwrap();
    let _keys = first_release(&hub, &artifact);
    let status = ok(hub.rampart(&["release", "status"]));
    assert!(
        status.contains("target releases/1.1.0/app-1.1.0.tar"),
        "{status}"
    );
    assert!(status.contains("nothing staged"), "{status}");

    let (dev, _agent) = device_with_token(&hub, "gw-upd-1", true);
    let meta = dev.dir.join("tuf");
    let root = hub.data.join("updates/repository/metadata/1.root.json");
    ok(tuf(&dev, &meta, &["init", root.to_str().unwrap()]));
    let out = ok(tuf(
        &dev,
        &meta,
        &["--metadata-url", &api(&hub, "metadata"), "refresh"],
    ));
    assert!(out.contains("root v1, timestamp v1, 1 target(s)"), "{out}");
    for f in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        assert!(meta.join(f).exists(), "{f} is stored");
    }
    let dest = dev.dir.join("downloads");
    let name = "releases/1.1.0/app-1.1.0.tar";
    let download = |dest: &Path| {
        tuf(
            &dev,
            &meta,
            &[
                "--metadata-url",
                &api(&hub, "metadata"),
                "--target-base-url",
                &api(&hub, "targets"),
                "--target-name",
                name,
                "--target-dir",
                dest.to_str().unwrap(),
                "download",
            ],
        )
    };
    ok(download(&dest));
    let got = std::fs::read(dest.join("releases%2F1.1.0%2Fapp-1.1.0.tar")).unwrap();
    assert_eq!(got, std::fs::read(&artifact).unwrap());
    assert!(hub.metric("rampart_update_files_served_total") >= 5.0);

    // Without a token the hub refuses; with one, a name outside the repository is refused.
    let (code, _) = hub.api_get(&dev, "/v1/updates/metadata/timestamp.json", None);
    assert_eq!(code, 401);
    let token = std::fs::read_to_string(dev.dir.join("state/token")).unwrap();
    let (code, _) = hub.api_get(
        &dev,
        "/v1/updates/metadata/timestamp.json",
        Some(token.trim()),
    );
    assert_eq!(code, 200);
    let (code, body) = hub.api_get(
        &dev,
        "/v1/updates/targets/..%2F..%2Frampart.toml",
        Some(token.trim()),
    );
    assert!(code == 400 || code == 404, "{code} {body}");
    assert!(!body.contains("[mqtt]"));

    // A tampered artifact on the server is refused and nothing reaches the target dir.
    let served = walk(&hub.data.join("updates/repository/targets"));
    assert_eq!(served.len(), 1);
    let mut bytes = std::fs::read(&served[0]).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&served[0], &bytes).unwrap();
    let bad = dev.dir.join("downloads-2");
    let e = refused(download(&bad));
    assert!(
        e.contains("sha256") && e.contains("the signed metadata says"),
        "{e}"
    );
    assert!(!bad.join("releases%2F1.1.0%2Fapp-1.1.0.tar").exists());
    // Wrong length: the server appends data past the signed length.
    bytes[10] ^= 1;
    bytes.extend_from_slice(b"trailing");
    std::fs::write(&served[0], &bytes).unwrap();
    let e = refused(download(&bad));
    assert!(e.contains("more than the signed length"), "{e}");
    hub.stop();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request_after_the_agent_is_killed() {
    let mut hub = TestHub::init();
    hub.start();
    let artifact = hub.tmp.path().join("image-2.0.0.img");
    // 96 MiB of non-repeating data.
    let mut data = Vec::with_capacity(96 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 96 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&artifact, &data).unwrap();
    first_release(&hub, &artifact);
    let (dev, _agent) = device_with_token(&hub, "gw-upd-2", false);
    let meta = dev.dir.join("tuf");
    let root = hub.data.join("updates/repository/metadata/1.root.json");
    ok(tuf(&dev, &meta, &["init", root.to_str().unwrap()]));
    let dest = dev.dir.join("downloads");
    let args = [
        "--metadata-url".to_owned(),
        api(&hub, "metadata"),
        "--target-base-url".to_owned(),
        api(&hub, "targets"),
        "--target-name".to_owned(),
        "releases/1.1.0/image-2.0.0.img".to_owned(),
        "--target-dir".to_owned(),
        dest.display().to_string(),
        "download".to_owned(),
    ];
    let mut child = Command::new(bin("rampart-agent"))
        .args(["tuf", "--metadata-dir"])
        .arg(&meta)
        .arg("--config")
        .arg(dev.agent_toml())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the journal says some megabytes are safely on disk.
    let staging = dest.join(".rampart-downloads");
    let committed = || -> u64 {
        std::fs::read_dir(&staging)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".journal.json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter_map(|j| j["committed"].as_u64())
            .max()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || committed() >= 4 << 20),
        "the download never committed 4 MiB"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = committed();
    assert!(at_kill < data.len() as u64, "killed before the end");
    let before = hub.metric("rampart_update_ranges_served_total");
    let out = Command::new(bin("rampart-agent"))
        .args(["tuf", "--metadata-dir"])
        .arg(&meta)
        .arg("--config")
        .arg(dev.agent_toml())
        .args(&args)
        .output()
        .unwrap();
    ok(out);
    assert_eq!(
        hub.metric("rampart_update_ranges_served_total"),
        before + 1.0,
        "the second attempt asked for the rest only"
    );
    let got = std::fs::read(dest.join("releases%2F1.1.0%2Fimage-2.0.0.img")).unwrap();
    assert!(
        got == data,
        "the resumed file is byte for byte the artifact"
    );
    hub.stop();
}

#[test]
fn the_tuf_command_follows_the_conformance_protocol_over_plain_http() {
    let mut hub = TestHub::init();
    hub.start();
    let artifact = hub.tmp.path().join("notes.txt");
    std::fs::write(&artifact, b"release notes\n").unwrap();
    first_release(&hub, &artifact);
    hub.stop();
    // Any static web server will do for TUF: the security is in the metadata.
    let repo = hub.data.join("updates/repository");
    let port = free_port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&repo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let meta = hub.tmp.path().join("conformance-meta");
    let targets = hub.tmp.path().join("conformance-targets");
    std::fs::create_dir_all(&meta).unwrap();
    std::fs::create_dir_all(&targets).unwrap();
    let cli = |args: &[&str]| {
        Command::new(bin("rampart-agent"))
            .arg("tuf")
            .args(args)
            .output()
            .unwrap()
    };
    let meta_s = meta.display().to_string();
    let root = repo.join("metadata/1.root.json");
    ok(cli(&[
        "--metadata-dir",
        &meta_s,
        "init",
        root.to_str().unwrap(),
    ]));
    let murl = format!("http://127.0.0.1:{port}/metadata");
    let turl = format!("http://127.0.0.1:{port}/targets");
    let refresh = || {
        cli(&[
            "--metadata-dir",
            &meta_s,
            "--metadata-url",
            &murl,
            "refresh",
        ])
    };
    ok(refresh());
    ok(cli(&[
        "--metadata-dir",
        &meta_s,
        "--metadata-url",
        &murl,
        "--target-name",
        "releases/1.1.0/notes.txt",
        "--target-base-url",
        &turl,
        "--target-dir",
        targets.to_str().unwrap(),
        "download",
    ]));
    assert_eq!(
        std::fs::read(targets.join("releases%2F1.1.0%2Fnotes.txt")).unwrap(),
        b"release notes\n"
    );
    // A target the metadata does not list is an error (exit 1), not a download.
    let out = cli(&[
        "--metadata-dir",
        &meta_s,
        "--metadata-url",
        &murl,
        "--target-name",
        "releases/9.9.9/other.txt",
        "--target-base-url",
        &turl,
        "--target-dir",
        targets.to_str().unwrap(),
        "download",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the signed targets"));
    // A rolled-back timestamp on the server (version 1 again after version 2) is refused.
    let old_ts = std::fs::read(repo.join("metadata/timestamp.json")).unwrap();
    ok(hub.rampart(&["release", "renew", "targets"]));
    ok(hub.rampart(&[
        "release",
        "sign",
        "targets",
        "--key",
        &hub.tmp
            .path()
            .join("offline-keys/targets.pem")
            .display()
            .to_string(),
    ]));
    ok(hub.rampart(&["release", "publish"]));
    ok(refresh());
    std::fs::write(repo.join("metadata/timestamp.json"), old_ts).unwrap();
    let e = refused(refresh());
    assert!(e.contains("rollback refused"), "{e}");
    // An uninitialised directory says what to do.
    let e = refused(cli(&[
        "--metadata-dir",
        "/nonexistent",
        "--metadata-url",
        &murl,
        "refresh",
    ]));
    assert!(e.contains("init ROOT"), "{e}");
    let _ = server.kill();
    let _ = server.wait();
}

//! Interoperability with the TUF reference implementation: python-tuf's client refreshes a
//! repository this crate built and signed (root rotation, delegated `security` role,
//! consistent snapshots), served over HTTP on loopback, downloads and verifies its targets,
//! and refuses a tampered one. Needs `pip install tuf` (scripts/setup installs it).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_update::keys::SigningKey;
use support::*;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -m http.server` on a free loopback port, serving `dir`.
fn serve(dir: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "http.server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server(child), port)
}

fn python_client(dir: &Path, port: u16, root: &[u8], names: &[&str]) -> (bool, String) {
    let meta = dir.join("client-metadata");
    let targets = dir.join("client-targets");
    std::fs::create_dir_all(&meta).unwrap();
    std::fs::create_dir_all(&targets).unwrap();
    std::fs::write(meta.join("root.json"), root).unwrap();
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tuf_client.py"))
        .arg(&meta)
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(&targets)
        .args(names)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named 'tuf'"),
        "python-tuf is missing: `pip install tuf` (scripts/setup does)"
    );
    (out.status.success(), text)
}

#[test]
fn python_tuf_verifies_what_rampart_signs_and_refuses_a_tampered_target() {
    let mut repo = Repo::new();
    repo.add("gateway-pkg-1.0.0.tar", b"package one");
    repo.add("security/gateway-fix-1.0.1.tar", b"security fix");
    repo.publish();
    // A root key rotation: root v2 is signed by the old and the new keys.
    let old = std::mem::replace(&mut repo.keys.root[0], SigningKey::generate().unwrap());
    repo.publish_root(&[&old]);
    let first_root = repo.root_bytes(1);

    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("repo");
    repo.write_to(&served);
    let (_server, port) = serve(&served);

    let (ok, text) = python_client(
        &dir.path().join("good"),
        port,
        &first_root,
        &["gateway-pkg-1.0.0.tar", "security/gateway-fix-1.0.1.tar"],
    );
    assert!(ok, "{text}");
    assert!(text.contains("root version 2"), "{text}");
    assert!(text.contains("OK security/gateway-fix-1.0.1.tar"), "{text}");
    let got = std::fs::read(dir.path().join("good/client-targets/gateway-pkg-1.0.0.tar"));
    assert_eq!(got.unwrap(), b"package one");

    // The artifact changed on the server after signing: refused by hash.
    let f = rampart_update::metadata::TargetFile::of(b"package one", None);
    let path = rampart_update::client::consistent_target_path("gateway-pkg-1.0.0.tar", &f).unwrap();
    std::fs::write(served.join("targets").join(path), b"package 0ne").unwrap();
    let (ok, text) = python_client(
        &dir.path().join("tampered"),
        port,
        &first_root,
        &["gateway-pkg-1.0.0.tar"],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("REFUSED"), "{text}");
    assert!(text.to_lowercase().contains("hash"), "{text}");
}

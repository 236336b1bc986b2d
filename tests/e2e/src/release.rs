//! The hub's update repository in tests: offline keys from `rampart release keygen`, the
//! first publish, and releasing artifacts the way an operator would (add, sign, publish),
//! plus the `[updates]` section that points a device's agent at it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{Bundle, TestHub, bin};

/// Asserts success and returns stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts failure and returns stderr.
pub fn refused(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Offline keys made with `rampart release keygen`, kept outside the hub's directory:
/// root-1, root-2, targets, security.
pub struct Keys {
    pub dir: PathBuf,
}

impl Keys {
    pub fn new(hub: &TestHub) -> Keys {
        let dir = hub.tmp.path().join("offline-keys");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["root-1", "root-2", "targets", "security"] {
            let text = ok(Command::new(bin("rampart"))
                .args(["release", "keygen", "--out"])
                .arg(dir.join(format!("{name}.pem")))
                .output()
                .unwrap());
            assert!(text.contains("key id:"), "{text}");
        }
        Keys { dir }
    }

    pub fn private(&self, name: &str) -> String {
        self.dir.join(format!("{name}.pem")).display().to_string()
    }

    pub fn public(&self, name: &str) -> String {
        self.dir
            .join(format!("{name}.pub.json"))
            .display()
            .to_string()
    }

    /// Stages root v1 (root 2 of 2, targets, security).
    pub fn stage_root(&self, hub: &TestHub) {
        ok(hub.rampart(&[
            "release",
            "root",
            "--root-key",
            &self.public("root-1"),
            "--root-key",
            &self.public("root-2"),
            "--root-threshold",
            "2",
            "--targets-key",
            &self.public("targets"),
            "--security-key",
            &self.public("security"),
        ]));
    }

    /// A repository with no targets yet, published.
    pub fn publish_empty(&self, hub: &TestHub) {
        self.stage_root(hub);
        for (role, key) in [
            ("root", "root-1"),
            ("root", "root-2"),
            ("targets", "targets"),
            ("security", "security"),
        ] {
            ok(hub.rampart(&["release", "sign", role, "--key", &self.private(key)]));
        }
        ok(hub.rampart(&["release", "publish"]));
    }

    /// Adds `artifact` as `version` for hardware gw-1 (`extra`: --security, --kind image),
    /// signs it with the right offline key and publishes. Returns the target name.
    pub fn release(&self, hub: &TestHub, artifact: &Path, version: &str, extra: &[&str]) -> String {
        self.release_for(hub, artifact, version, "gw-1", extra)
    }

    /// Like [`Keys::release`], for `hardware`.
    pub fn release_for(
        &self,
        hub: &TestHub,
        artifact: &Path,
        version: &str,
        hardware: &str,
        extra: &[&str],
    ) -> String {
        let mut args = vec![
            "release",
            "add",
            artifact.to_str().unwrap(),
            "--version",
            version,
            "--hardware",
            hardware,
        ];
        args.extend_from_slice(extra);
        let out = ok(hub.rampart(&args));
        let name = out
            .split_whitespace()
            .nth(1)
            .expect("`staged NAME ...`")
            .to_owned();
        let (role, key) = if extra.contains(&"--security") {
            ("security", "security")
        } else {
            ("targets", "targets")
        };
        ok(hub.rampart(&["release", "sign", role, "--key", &self.private(key)]));
        ok(hub.rampart(&["release", "publish"]));
        name
    }
}

/// Appends an `[updates]` section to the device's agent.toml (hardware gw-1, version 1.0.0
/// installed, checks every second) with `extra` lines, and gives the device the hub's
/// current root as its initial trust.
pub fn enable_updates(hub: &TestHub, dev: &Bundle, extra: &str) {
    std::fs::copy(
        hub.data.join("updates/repository/metadata/1.root.json"),
        dev.dir.join("update-root.json"),
    )
    .unwrap();
    let mut cfg = std::fs::read_to_string(dev.agent_toml()).unwrap();
    cfg.push_str(&format!(
        "\n[updates]\nurl = \"https://localhost:{}/v1/updates\"\nhardware = \"gw-1\"\ninstalled_version = \"1.0.0\"\ncheck_interval = \"1s\"\nhealth_timeout = \"10s\"\n{extra}\n",
        hub.api_port
    ));
    std::fs::write(dev.agent_toml(), cfg).unwrap();
}

/// A tar archive of `files` (name, contents), built with the system's tar.
pub fn package(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&src).unwrap();
    for (f, data) in files {
        let p = src.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let out = dir.join(format!("{name}.tar"));
    ok(Command::new("tar")
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .unwrap());
    out
}

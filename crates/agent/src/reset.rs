//! Factory reset (CRA Annex I (2)(b) secure default state and (2)(m) removal of data):
//! `rampart-agent reset --factory`.
//!
//! Removes everything the device accumulated or was given after leaving the factory:
//!
//! - the state directory: the outbox (readings not yet sent), sequence counters, session
//!   token, status file, and the storage key;
//! - the device certificate and private key, and the pending and previous pairs.
//!
//! Files holding data or secrets are overwritten with random bytes and synced before they are
//! unlinked. On flash (wear levelling, copy-on-write file systems) an overwrite may land in
//! other blocks than the original, so the real guarantee is cryptographic: the outbox and the
//! keys are sealed with the storage key, and the key is destroyed — overwritten here, or by
//! `storage.erase_command` where a TPM holds it. What remains in stale blocks cannot be opened.
//!
//! Kept: agent.toml, the hub's CA bundle, and the factory claim certificate and key. A device
//! with a `[provisioning]` section provisions itself again at the next start, as when it left
//! the factory; one installed from a `rampart device add` bundle needs a new bundle.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

use crate::config::AgentConfig;
use crate::credentials::Pair;
use crate::error::AgentError;

/// What a reset did.
#[derive(Debug, Default)]
pub struct ResetReport {
    /// Files overwritten and removed.
    pub erased: Vec<PathBuf>,
    /// Directories removed.
    pub removed_dirs: Vec<PathBuf>,
    /// The erase command run, if any.
    pub erase_command: Option<String>,
}

fn io(path: &Path, source: std::io::Error) -> AgentError {
    AgentError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Overwrites a file with random bytes, syncs, and unlinks it.
fn erase_file(path: &Path, rng: &SystemRandom) -> Result<(), AgentError> {
    let len = fs::symlink_metadata(path).map_err(|e| io(path, e))?.len();
    let meta = fs::symlink_metadata(path).map_err(|e| io(path, e))?;
    if meta.file_type().is_file() && len > 0 {
        let mut f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        let mut chunk = vec![0u8; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            rng.fill(&mut chunk[..n])
                .map_err(|_| io(path, std::io::Error::other("random source failed")))?;
            f.write_all(&chunk[..n]).map_err(|e| io(path, e))?;
            left -= n as u64;
        }
        f.sync_all().map_err(|e| io(path, e))?;
    }
    fs::remove_file(path).map_err(|e| io(path, e))
}

/// Erases every file under `dir`, then removes the directories.
fn erase_tree(dir: &Path, rng: &SystemRandom, report: &mut ResetReport) -> Result<(), AgentError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| io(&path, e))?;
        if ft.is_dir() {
            erase_tree(&path, rng, report)?;
        } else {
            erase_file(&path, rng)?;
            report.erased.push(path);
        }
    }
    fs::remove_dir(dir).map_err(|e| io(dir, e))?;
    report.removed_dirs.push(dir.to_path_buf());
    Ok(())
}

/// Returns the agent to its factory state. The agent must not be running.
pub fn factory_reset(cfg: &AgentConfig) -> Result<ResetReport, AgentError> {
    let rng = SystemRandom::new();
    let mut report = ResetReport::default();
    let current = Pair {
        cert: cfg.resolve(&cfg.hub.cert),
        key: cfg.resolve(&cfg.hub.key),
    };
    let with = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let mut files = Vec::new();
    for suffix in ["", ".new", ".old", ".tmp", ".new.tmp"] {
        files.push(with(&current.key, suffix));
        files.push(with(&current.cert, suffix));
    }
    for f in files {
        if fs::symlink_metadata(&f).is_ok() {
            erase_file(&f, &rng)?;
            report.erased.push(f);
        }
    }
    // The state directory last but one: it holds the storage key.
    erase_tree(&cfg.state_dir(), &rng, &mut report)?;
    if let crate::vault::KeySource::File(key) = cfg.key_source()
        && fs::symlink_metadata(&key).is_ok()
    {
        erase_file(&key, &rng)?;
        report.erased.push(key);
    }
    if let Some(cmd) = &cfg.storage.erase_command {
        let shown = cmd.join(" ");
        if let Some((program, args)) = cmd.split_first() {
            let status = std::process::Command::new(program)
                .args(args)
                .status()
                .map_err(|e| io(Path::new(program), e))?;
            if !status.success() {
                return Err(io(
                    Path::new(program),
                    std::io::Error::other(format!("erase_command {shown:?} failed: {status}")),
                ));
            }
        }
        report.erase_command = Some(shown);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_erases_state_and_credentials_and_keeps_factory_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let hook = d.join("erased-by-hook");
        let cfg_text = AgentConfig::provisioning_template("localhost:8883").replace(
            "encrypt_credentials = true",
            &format!(
                "encrypt_credentials = true\nerase_command = [\"touch\", \"{}\"]",
                hook.display()
            ),
        );
        assert!(cfg_text.contains("erase_command"));
        fs::write(d.join("agent.toml"), &cfg_text).unwrap();
        let cfg =
            AgentConfig::load(&d.join("agent.toml")).unwrap_or_else(|e| panic!("{e}\n{cfg_text}"));
        for f in [
            "device.crt",
            "device.key",
            "device.key.old",
            "ca-chain.crt",
            "claim.crt",
            "claim.key",
        ] {
            fs::write(d.join(f), f).unwrap();
        }
        fs::create_dir_all(d.join("state/outbox")).unwrap();
        fs::write(
            d.join("state/outbox/seg-00000000000000000001.log"),
            vec![7u8; 100_000],
        )
        .unwrap();
        fs::write(d.join("state/storage.key"), "00".repeat(32)).unwrap();
        fs::write(d.join("state/token"), "t").unwrap();
        let report = factory_reset(&cfg).unwrap();
        assert!(!d.join("state").exists());
        for gone in ["device.crt", "device.key", "device.key.old"] {
            assert!(!d.join(gone).exists(), "{gone}");
        }
        for kept in ["agent.toml", "ca-chain.crt", "claim.crt", "claim.key"] {
            assert!(d.join(kept).exists(), "{kept}");
        }
        assert!(report.erased.iter().any(|p| p.ends_with("storage.key")));
        assert!(
            report
                .erased
                .iter()
                .any(|p| p.ends_with("seg-00000000000000000001.log"))
        );
        assert!(report.erase_command.is_some());
        assert!(hook.exists(), "the erase hook ran");
        // Idempotent: a second reset finds nothing and succeeds.
        factory_reset(&cfg).unwrap();
    }
}

//! `rampart release`: keys, staging, offline signing and publishing of software updates.
//!
//! The work is `rampart_update::release`; this module parses arguments, reads key files and
//! prints what happened and what to do next.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use rampart_hub::{DataDir, HubConfig};
use rampart_update::keys::{PublicKey, SigningKey};
use rampart_update::release::{Expiries, ReleaseDir, RootPlan};
use rampart_update::selection::{ArtifactKind, ReleaseInfo};
use time::OffsetDateTime;

use crate::{CliError, DataDirArg};

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Create an Ed25519 signing key for an offline role (root, targets, security).
    ///
    /// Writes the private key (PKCS#8 PEM, mode 0600) to --out and its public half (TUF
    /// key JSON) next to it as NAME.pub.json. Keep private keys of offline roles off the
    /// hub: on an air-gapped machine or a hardware token (docs/updates.md, key ceremony).
    Keygen {
        /// Where to write the private key, e.g. root-1.pem.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Stage a new root: version 1 on a new repository, the next version otherwise (key
    /// rotation). The previous root's threshold and the new one's must both sign it.
    Root {
        #[command(flatten)]
        dir: DataDirArg,
        /// A root key (NAME.pub.json, or a private key file). Repeatable.
        #[arg(long = "root-key", value_name = "FILE", required = true)]
        root_keys: Vec<PathBuf>,
        /// How many root keys must sign.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// A targets key (NAME.pub.json, or a private key file). Repeatable.
        #[arg(long = "targets-key", value_name = "FILE", required = true)]
        targets_keys: Vec<PathBuf>,
        /// How many targets keys must sign.
        #[arg(long, default_value_t = 1)]
        targets_threshold: u32,
        /// A key of the delegated `security` role, which alone signs security fixes
        /// (targets named security/VERSION/FILE). Repeatable; omit to keep the current ones.
        #[arg(long = "security-key", value_name = "FILE")]
        security_keys: Vec<PathBuf>,
        /// How many security keys must sign.
        #[arg(long, default_value_t = 1)]
        security_threshold: u32,
        /// Replace the hub's online timestamp key (after a compromise).
        #[arg(long)]
        rotate_timestamp_key: bool,
        /// Replace the hub's online snapshot key.
        #[arg(long)]
        rotate_snapshot_key: bool,
    },
    /// Stage an artifact: it is stored under its content hash and listed in the staged
    /// targets (or, with --security, in the security role's metadata).
    Add {
        /// The artifact: a package archive (tar) or a full image.
        artifact: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
        /// The release version (MAJOR.MINOR.PATCH[-PRE]); devices install only newer ones.
        #[arg(long)]
        version: String,
        /// Hardware model it is built for (devices of other hardware refuse it). Repeatable.
        #[arg(long = "hardware", value_name = "MODEL", required = true)]
        hardware: Vec<String>,
        /// A security fix: signed by the security role, installed automatically by default.
        #[arg(long)]
        security: bool,
        /// Release channel devices follow (agent `[updates] channel`).
        #[arg(long, default_value = "stable")]
        channel: String,
        /// How devices install it: package (versioned directory + symlink) or image (A/B).
        #[arg(long, default_value = "package", value_name = "package|image")]
        kind: String,
    },
    /// Sign a staged role with an offline key. Run once per key (on the machine holding it).
    Sign {
        /// root, targets or security.
        role: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// The private key file. Repeatable.
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Stage targets or security again with a new version and expiry (offline metadata
    /// must be re-signed before it expires; also after a targets key rotation).
    Renew {
        /// targets or security.
        role: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Publish every staged role whose signatures meet its threshold, with a new snapshot
    /// and timestamp signed by the hub's online keys. Nothing is published if one falls short.
    Publish {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Staged roles with their signatures, published versions, expiries and targets.
    Status {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
}

impl From<rampart_update::UpdateError> for CliError {
    fn from(e: rampart_update::UpdateError) -> Self {
        CliError::new(e.to_string(), None)
    }
}

fn workspace(dir: &DataDirArg) -> Result<(ReleaseDir, Expiries), CliError> {
    let d = DataDir::new(&dir.data_dir);
    let cfg: HubConfig = d.load_config()?;
    let exp = cfg
        .update_expiries()
        .map_err(|e| CliError::new(e, Some("fix [updates] in rampart.toml")))?;
    Ok((ReleaseDir::new(&d.resolve(&cfg.updates.repository)), exp))
}

/// A public key from NAME.pub.json, or derived from a private key file.
fn public_key(path: &Path) -> Result<PublicKey, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display()), None))?;
    if text.trim_start().starts_with('{') {
        let k: PublicKey = serde_json::from_str(&text).map_err(|e| {
            CliError::new(
                format!("{}: not a TUF public key: {e}", path.display()),
                Some("use the NAME.pub.json that `rampart release keygen` wrote"),
            )
        })?;
        if k.keytype != "ed25519" || k.scheme != "ed25519" {
            return Err(CliError::new(
                format!("{}: only ed25519 keys are supported", path.display()),
                None,
            ));
        }
        return Ok(k);
    }
    Ok(SigningKey::from_pem(&text)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display()), None))?
        .public())
}

fn public_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>, CliError> {
    paths.iter().map(|p| public_key(p)).collect()
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

pub fn run(cmd: ReleaseCommand) -> Result<(), CliError> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        ReleaseCommand::Keygen { out } => {
            let key = SigningKey::generate()?;
            rampart_pki::files::write_secret(&out, key.to_pem().as_bytes(), false).map_err(
                |e| {
                    CliError::new(
                        e.to_string(),
                        Some("choose another --out; an existing key is never overwritten"),
                    )
                },
            )?;
            let public = out.with_extension("pub.json");
            let json = serde_json::to_string_pretty(&key.public())
                .map_err(|e| CliError::new(e.to_string(), None))?;
            rampart_pki::files::write_public(&public, json.as_bytes(), false)
                .map_err(|e| CliError::new(e.to_string(), None))?;
            println!("key id:      {}", key.public().key_id());
            println!("private key: {} (0600; keep it offline)", out.display());
            println!("public key:  {}", public.display());
        }
        ReleaseCommand::Root {
            dir,
            root_keys,
            root_threshold,
            targets_keys,
            targets_threshold,
            security_keys,
            security_threshold,
            rotate_timestamp_key,
            rotate_snapshot_key,
        } => {
            let (ws, exp) = workspace(&dir)?;
            let plan = RootPlan {
                root_keys: public_keys(&root_keys)?,
                root_threshold,
                targets_keys: public_keys(&targets_keys)?,
                targets_threshold,
                security_keys: public_keys(&security_keys)?,
                security_threshold,
                rotate_timestamp: rotate_timestamp_key,
                rotate_snapshot: rotate_snapshot_key,
            };
            let v = ws.stage_root(&plan, now, &exp)?;
            println!("staged root version {v}");
            print_next(&ws)?;
        }
        ReleaseCommand::Add {
            artifact,
            dir,
            version,
            hardware,
            security,
            channel,
            kind,
        } => {
            let (ws, exp) = workspace(&dir)?;
            let kind = match kind.as_str() {
                "package" => ArtifactKind::Package,
                "image" => ArtifactKind::Image,
                other => {
                    return Err(CliError::new(
                        format!("--kind {other:?}"),
                        Some("use package or image"),
                    ));
                }
            };
            let info = ReleaseInfo {
                version: version.clone(),
                hardware,
                kind,
                channel,
                security,
            };
            let file_name = artifact
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| CliError::new("the artifact path has no file name", None))?;
            let prefix = if security { "security" } else { "releases" };
            let name = format!("{prefix}/{version}/{file_name}");
            // Checked here too so a bad version fails before the artifact is copied.
            let probe = rampart_update::metadata::TargetFile::of(b"", Some(info.to_value()));
            ReleaseInfo::of(&name, &probe)?;
            let data = std::fs::read(&artifact)
                .map_err(|e| CliError::new(format!("{}: {e}", artifact.display()), None))?;
            let (role, file) = ws.stage_target(&name, &data, Some(info.to_value()), now, &exp)?;
            println!(
                "staged {name} ({} bytes, sha256 {}) in {role}",
                file.length,
                file.hashes.get("sha256").map(String::as_str).unwrap_or("-")
            );
            print_next(&ws)?;
        }
        ReleaseCommand::Sign { role, dir, keys } => {
            let (ws, _) = workspace(&dir)?;
            for path in keys {
                let key = SigningKey::load(&path)?;
                let st = ws.sign(&role, &key)?;
                println!(
                    "{role} v{} signed with {} ({})",
                    st.version,
                    short(&key.public().key_id()),
                    path.display()
                );
            }
            print_next(&ws)?;
        }
        ReleaseCommand::Renew { role, dir } => {
            let (ws, exp) = workspace(&dir)?;
            let v = ws.stage_renewal(&role, now, &exp)?;
            println!("staged {role} version {v}");
            print_next(&ws)?;
        }
        ReleaseCommand::Publish { dir } => {
            let (ws, exp) = workspace(&dir)?;
            let s = ws.publish(now, &exp)?;
            let list: Vec<String> = s.written.iter().map(|(r, v)| format!("{r} v{v}")).collect();
            println!("published {}", list.join(", "));
            println!(
                "devices fetch it from the device API: /v1/updates/metadata/ and /v1/updates/targets/"
            );
        }
        ReleaseCommand::Status { dir, json } => {
            let (ws, _) = workspace(&dir)?;
            status(&ws, json)?;
        }
    }
    Ok(())
}

/// What the staged roles still need.
fn print_next(ws: &ReleaseDir) -> Result<(), CliError> {
    let st = ws.status()?;
    let mut ready = true;
    for s in &st {
        for r in &s.needs {
            if !r.met() {
                ready = false;
                let ids: Vec<&str> = r.keyids.iter().map(|k| short(k)).collect();
                println!(
                    "  {} v{}: {} of {} signatures by the {} keys [{}]: run `rampart release sign {} --key FILE`",
                    s.role,
                    s.version,
                    r.valid,
                    r.threshold,
                    r.by,
                    ids.join(", "),
                    s.role
                );
            }
        }
    }
    if ready && !st.is_empty() {
        println!("  ready: run `rampart release publish`");
    }
    Ok(())
}

fn status(ws: &ReleaseDir, json: bool) -> Result<(), CliError> {
    let staged = ws.status()?;
    let mut published = Vec::new();
    for role in ["root", "targets", "security", "snapshot"] {
        if let Some((v, env)) = ws.latest(role)? {
            published.push(serde_json::json!({
                "role": role,
                "version": v,
                "expires": env.signed.get("expires"),
            }));
        }
    }
    let mut targets = Vec::new();
    for role in ["targets", "security"] {
        if let Some((_, env)) = ws.latest(role)?
            && let Some(map) = env.signed.get("targets").and_then(|t| t.as_object())
        {
            for (name, t) in map {
                targets.push(serde_json::json!({
                    "name": name,
                    "role": role,
                    "length": t.get("length"),
                    "custom": t.get("custom"),
                }));
            }
        }
    }
    if json {
        let v = serde_json::json!({"staged": staged, "published": published, "targets": targets});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    if published.is_empty() {
        println!("nothing published yet");
    }
    for p in &published {
        println!(
            "published {:<9} v{:<4} expires {}",
            p["role"].as_str().unwrap_or(""),
            p["version"],
            p["expires"].as_str().unwrap_or("-")
        );
    }
    for t in &targets {
        let c = &t["custom"];
        println!(
            "target {} ({} bytes, version {}, hardware {}, {})",
            t["name"].as_str().unwrap_or(""),
            t["length"],
            c["version"].as_str().unwrap_or("-"),
            c["hardware"],
            t["role"].as_str().unwrap_or("")
        );
    }
    if staged.is_empty() {
        println!("nothing staged");
    } else {
        print_next(ws)?;
    }
    Ok(())
}

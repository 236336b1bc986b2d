//! Which target a device installs.
//!
//! Rampart puts its release fields in each target's signed `custom` object, so they are as
//! trustworthy as the hashes:
//!
//! ```json
//! {"version": "1.4.2", "hardware": ["gw-1"], "kind": "package", "channel": "stable",
//!  "security": true}
//! ```
//!
//! A device only considers targets for its hardware and channel, and only versions newer
//! than the one it runs (a signed but older target is a downgrade, refused like a
//! rollback). Security fixes are the targets the delegated `security` role signs; a target
//! claiming `security: true` elsewhere is not treated as one.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::UpdateError;
use crate::metadata::TargetFile;

/// How a target is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A file set unpacked into a versioned directory, switched by a symlink.
    Package,
    /// A full image written to the inactive slot of an A/B pair.
    Image,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Package => "package",
            ArtifactKind::Image => "image",
        }
    }
}

/// Rampart's fields of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub version: String,
    pub hardware: Vec<String>,
    pub kind: ArtifactKind,
    #[serde(default = "default_channel")]
    pub channel: String,
    #[serde(default)]
    pub security: bool,
}

fn default_channel() -> String {
    "stable".into()
}

impl ReleaseInfo {
    /// Reads the fields of `file`, failing closed when they are missing or malformed.
    pub fn of(name: &str, file: &TargetFile) -> Result<ReleaseInfo, UpdateError> {
        let bad = |message: String| UpdateError::BadReleaseInfo {
            target: name.to_owned(),
            message,
        };
        let custom = file
            .custom
            .clone()
            .ok_or_else(|| bad("no custom fields".into()))?;
        let info: ReleaseInfo = serde_json::from_value(custom).map_err(|e| bad(e.to_string()))?;
        if parse_version(&info.version).is_none() {
            return Err(bad(format!(
                "version {:?} is not MAJOR.MINOR.PATCH[-PRE]",
                info.version
            )));
        }
        Ok(info)
    }

    pub fn to_value(&self) -> serde_json::Value {
        // A struct of strings, a list and a bool always serialises.
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A dotted numeric version with an optional pre-release (`1.4.2`, `2.0.0-rc.1`).
fn parse_version(v: &str) -> Option<(Vec<u64>, Option<&str>)> {
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) if !p.is_empty() => (c, Some(p)),
        Some(_) => return None,
        None => (v, None),
    };
    let nums: Option<Vec<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    let nums = nums?;
    (!nums.is_empty() && nums.len() <= 4).then_some((nums, pre))
}

/// Orders versions numerically; a pre-release sorts before its release. Unparsable
/// versions sort lowest, so they are never chosen over a real one.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (parse_version(a), parse_version(b)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some((an, ap)), Some((bn, bp))) => {
            let len = an.len().max(bn.len());
            for i in 0..len {
                let x = an.get(i).copied().unwrap_or(0);
                let y = bn.get(i).copied().unwrap_or(0);
                match x.cmp(&y) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            match (ap, bp) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(x), Some(y)) => x.cmp(y),
            }
        }
    }
}

/// Refuses a target for other hardware or not newer than `installed`.
pub fn check_applicable(
    name: &str,
    info: &ReleaseInfo,
    hardware: &str,
    installed: &str,
) -> Result<(), UpdateError> {
    if !info.hardware.iter().any(|h| h == hardware) {
        return Err(UpdateError::WrongHardware {
            target: name.to_owned(),
            allowed: info.hardware.clone(),
            device: hardware.to_owned(),
        });
    }
    if compare_versions(&info.version, installed) != Ordering::Greater {
        return Err(UpdateError::Downgrade {
            target: name.to_owned(),
            version: info.version.clone(),
            installed: installed.to_owned(),
        });
    }
    Ok(())
}

/// One installable update.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub file: TargetFile,
    pub info: ReleaseInfo,
    /// Signed by the delegated security role.
    pub security: bool,
}

/// The newest target for `hardware` on `channel` that is newer than `installed`, from the
/// trusted targets `(name, file, signing role)`. Targets with malformed fields are skipped.
pub fn newest(
    targets: &[(String, TargetFile, String)],
    hardware: &str,
    channel: &str,
    installed: &str,
) -> Option<Candidate> {
    targets
        .iter()
        .filter_map(|(name, file, role)| {
            let info = ReleaseInfo::of(name, file).ok()?;
            (info.channel == channel && check_applicable(name, &info, hardware, installed).is_ok())
                .then(|| Candidate {
                    name: name.clone(),
                    file: file.clone(),
                    security: role == crate::release::SECURITY_ROLE,
                    info,
                })
        })
        .max_by(|a, b| compare_versions(&a.info.version, &b.info.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically_with_pre_releases_first() {
        assert_eq!(compare_versions("1.10.0", "1.9.9"), Ordering::Greater);
        assert_eq!(compare_versions("2.0.0-rc.1", "2.0.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "1.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("garbage", "0.0.1"), Ordering::Less);
    }

    fn info(v: &str, hw: &str) -> ReleaseInfo {
        ReleaseInfo {
            version: v.into(),
            hardware: vec![hw.into()],
            kind: ArtifactKind::Package,
            channel: "stable".into(),
            security: false,
        }
    }

    #[test]
    fn other_hardware_and_downgrades_are_refused() {
        let e = check_applicable("t", &info("2.0.0", "gw-2"), "gw-1", "1.0.0").unwrap_err();
        assert!(matches!(e, UpdateError::WrongHardware { .. }), "{e}");
        let e = check_applicable("t", &info("0.9.0", "gw-1"), "gw-1", "1.0.0").unwrap_err();
        assert!(e.to_string().contains("downgrade refused"), "{e}");
        let e = check_applicable("t", &info("1.0.0", "gw-1"), "gw-1", "1.0.0").unwrap_err();
        assert!(matches!(e, UpdateError::Downgrade { .. }), "{e}");
        check_applicable("t", &info("1.0.1", "gw-1"), "gw-1", "1.0.0").unwrap();
    }

    #[test]
    fn newest_picks_the_highest_applicable_version() {
        let t = |name: &str, v: &str, hw: &str, role: &str| {
            (
                name.to_owned(),
                TargetFile::of(name.as_bytes(), Some(info(v, hw).to_value())),
                role.to_owned(),
            )
        };
        let all = vec![
            t("a", "1.1.0", "gw-1", "targets"),
            t("b", "1.3.0", "gw-2", "targets"),
            t("security/c", "1.2.0", "gw-1", "security"),
            t("d", "0.5.0", "gw-1", "targets"),
        ];
        let c = newest(&all, "gw-1", "stable", "1.0.0").unwrap();
        assert_eq!(c.name, "security/c");
        assert!(c.security);
        assert!(newest(&all, "gw-1", "stable", "1.2.0").is_none());
        assert!(newest(&all, "gw-1", "beta", "0.0.1").is_none());
    }
}

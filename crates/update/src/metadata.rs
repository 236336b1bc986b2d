//! TUF metadata: the signed envelope and the roles it carries.
//!
//! An envelope is `{"signatures": [{"keyid", "sig"}], "signed": {...}}`. Signatures are
//! checked over the canonical JSON of `signed` exactly as received (a `serde_json::Value`,
//! so fields this version does not know are still covered), and only then is `signed` read
//! into a typed role. A role is trusted when at least `threshold` distinct keys listed for
//! it have valid signatures.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::keys::{PublicKey, SigningKey};
use crate::{UpdateError, canonical};

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

/// A signed metadata document as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub signatures: Vec<Signature>,
    pub signed: Value,
}

impl Envelope {
    /// An unsigned envelope around a role.
    pub fn new<T: Serialize>(signed: &T) -> Result<Envelope, UpdateError> {
        Ok(Envelope {
            signatures: Vec::new(),
            signed: serde_json::to_value(signed)
                .map_err(|e| UpdateError::malformed("metadata", e))?,
        })
    }

    /// Parses an envelope; `role` names it in errors.
    pub fn parse(role: &str, bytes: &[u8]) -> Result<Envelope, UpdateError> {
        serde_json::from_slice(bytes).map_err(|e| UpdateError::malformed(role, e))
    }

    /// The JSON file as published (pretty-printed; signatures do not depend on layout).
    pub fn to_bytes(&self) -> Result<Vec<u8>, UpdateError> {
        serde_json::to_vec_pretty(self).map_err(|e| UpdateError::malformed("metadata", e))
    }

    /// Adds (or replaces) `key`'s signature.
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), UpdateError> {
        let msg = canonical::to_vec(&self.signed)?;
        let keyid = key.public().key_id();
        self.signatures.retain(|s| s.keyid != keyid);
        self.signatures.push(Signature {
            keyid,
            sig: hex::encode(key.sign(&msg)),
        });
        Ok(())
    }

    /// Counts distinct keys of `role_keys` (looked up in `keys`) with a valid signature and
    /// fails unless there are at least `threshold`.
    pub fn verify(
        &self,
        role: &str,
        keys: &BTreeMap<String, PublicKey>,
        role_keys: &RoleKeys,
    ) -> Result<(), UpdateError> {
        if role_keys.threshold == 0 {
            return Err(UpdateError::malformed(role, "threshold 0"));
        }
        let valid = self.valid_signers(keys, role_keys)?;
        if valid < role_keys.threshold as usize {
            return Err(UpdateError::Threshold {
                role: role.to_owned(),
                valid,
                threshold: role_keys.threshold,
            });
        }
        Ok(())
    }

    /// How many distinct keys of `role_keys` signed: listed for the role, found in `keys`
    /// under their own key id, with a signature that verifies.
    pub fn valid_signers(
        &self,
        keys: &BTreeMap<String, PublicKey>,
        role_keys: &RoleKeys,
    ) -> Result<usize, UpdateError> {
        let msg = canonical::to_vec(&self.signed)?;
        let allowed: BTreeSet<&str> = role_keys.keyids.iter().map(String::as_str).collect();
        let mut good: BTreeSet<&str> = BTreeSet::new();
        for s in &self.signatures {
            if !allowed.contains(s.keyid.as_str()) || good.contains(s.keyid.as_str()) {
                continue;
            }
            let Some(key) = keys.get(&s.keyid) else {
                continue;
            };
            // A key listed under an id that is not its own does not count.
            if key.key_id() != s.keyid {
                continue;
            }
            if let Ok(sig) = hex::decode(&s.sig)
                && key.verify(&msg, &sig)
            {
                good.insert(&s.keyid);
            }
        }
        Ok(good.len())
    }

    /// Reads `signed` as a role of `expected_type`.
    pub fn role<T: DeserializeOwned + Role>(&self, name: &str) -> Result<T, UpdateError> {
        let t = self.signed.get("_type").and_then(Value::as_str);
        if t != Some(T::TYPE) {
            return Err(UpdateError::malformed(
                name,
                format!("_type is {t:?}, expected {:?}", T::TYPE),
            ));
        }
        let role: T = serde_json::from_value(self.signed.clone())
            .map_err(|e| UpdateError::malformed(name, e))?;
        let spec = role.common().spec_version.split('.').next();
        if spec != Some("1") {
            return Err(UpdateError::malformed(
                name,
                format!(
                    "spec_version {:?} (this client implements TUF 1.x)",
                    role.common().spec_version
                ),
            ));
        }
        role.common().expires_at(name)?;
        Ok(role)
    }
}

/// Fields every role has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Common {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub expires: String,
}

impl Common {
    pub fn new(kind: &str, version: u64, expires: OffsetDateTime) -> Common {
        Common {
            kind: kind.into(),
            spec_version: crate::SPEC_VERSION.into(),
            version,
            expires: expiry_string(expires),
        }
    }

    pub fn expires_at(&self, role: &str) -> Result<OffsetDateTime, UpdateError> {
        OffsetDateTime::parse(&self.expires, &Rfc3339)
            .map_err(|e| UpdateError::malformed(role, format!("expires {:?}: {e}", self.expires)))
    }

    /// Fails when the role has expired at `now`.
    pub fn check_expiry(&self, role: &str, now: OffsetDateTime) -> Result<(), UpdateError> {
        if self.expires_at(role)? <= now {
            return Err(UpdateError::Expired {
                role: role.to_owned(),
                expires: self.expires.clone(),
                now: expiry_string(now),
            });
        }
        Ok(())
    }
}

/// TUF's expiry format: UTC, whole seconds, `Z`.
pub fn expiry_string(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A typed role.
pub trait Role {
    const TYPE: &'static str;
    fn common(&self) -> &Common;
}

/// The keys and threshold of one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    #[serde(flatten)]
    pub common: Common,
    pub consistent_snapshot: bool,
    pub keys: BTreeMap<String, PublicKey>,
    pub roles: BTreeMap<String, RoleKeys>,
}

impl Role for Root {
    const TYPE: &'static str = "root";
    fn common(&self) -> &Common {
        &self.common
    }
}

impl Root {
    /// The keys and threshold of a top-level role.
    pub fn role_keys(&self, role: &str) -> Result<&RoleKeys, UpdateError> {
        self.roles
            .get(role)
            .ok_or_else(|| UpdateError::malformed("root", format!("no {role} role")))
    }
}

/// What snapshot and timestamp say about another metadata file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timestamp {
    #[serde(flatten)]
    pub common: Common,
    pub meta: BTreeMap<String, MetaFile>,
}

impl Role for Timestamp {
    const TYPE: &'static str = "timestamp";
    fn common(&self) -> &Common {
        &self.common
    }
}

impl Timestamp {
    pub fn snapshot_meta(&self) -> Result<&MetaFile, UpdateError> {
        self.meta
            .get("snapshot.json")
            .ok_or_else(|| UpdateError::malformed("timestamp", "no snapshot.json in meta"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub common: Common,
    pub meta: BTreeMap<String, MetaFile>,
}

impl Role for Snapshot {
    const TYPE: &'static str = "snapshot";
    fn common(&self) -> &Common {
        &self.common
    }
}

/// One target file: its length, hashes, and Rampart's custom fields (version, hardware,
/// kind, security).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
}

impl TargetFile {
    /// Describes `data` with its SHA-256. One hash, because a client checks every hash
    /// listed: a second one would double the time a device spends verifying a large image
    /// without adding security beyond SHA-256's collision resistance.
    pub fn of(data: &[u8], custom: Option<Value>) -> TargetFile {
        let mut hashes = BTreeMap::new();
        hashes.insert("sha256".into(), hex::encode(Sha256::digest(data)));
        TargetFile {
            length: data.len() as u64,
            hashes,
            custom,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegatedRole {
    pub name: String,
    pub keyids: Vec<String>,
    pub threshold: u32,
    pub terminating: bool,
    /// Shell-style patterns (`*` within one path segment) of the targets it may sign.
    pub paths: Vec<String>,
}

impl DelegatedRole {
    pub fn role_keys(&self) -> RoleKeys {
        RoleKeys {
            keyids: self.keyids.clone(),
            threshold: self.threshold,
        }
    }

    /// Whether this role is trusted for `target` (TUF's path patterns: `*` matches within
    /// one path segment).
    pub fn covers(&self, target: &str) -> bool {
        self.paths.iter().any(|p| path_matches(p, target))
    }
}

fn path_matches(pattern: &str, target: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = target.split('/').collect();
    p.len() == t.len()
        && p.iter()
            .zip(&t)
            .all(|(p, t)| glob(p.as_bytes(), t.as_bytes()))
}

/// `*` (any run), `?` (one character), everything else literal.
fn glob(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], t) || (!t.is_empty() && glob(p, &t[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &t[1..]),
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delegations {
    pub keys: BTreeMap<String, PublicKey>,
    pub roles: Vec<DelegatedRole>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(flatten)]
    pub common: Common,
    pub targets: BTreeMap<String, TargetFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
}

impl Role for Targets {
    const TYPE: &'static str = "targets";
    fn common(&self) -> &Common {
        &self.common
    }
}

/// Checks `data` against the length and every supported hash `meta` lists.
pub fn check_file(
    what: &str,
    data: &[u8],
    length: u64,
    hashes: &BTreeMap<String, String>,
) -> Result<(), UpdateError> {
    if data.len() as u64 != length {
        return Err(UpdateError::LengthMismatch {
            what: what.to_owned(),
            expected: length,
            got: data.len() as u64,
        });
    }
    check_hashes(what, data, hashes)
}

/// Checks every supported hash in `hashes`; at least one must be supported.
pub fn check_hashes(
    what: &str,
    data: &[u8],
    hashes: &BTreeMap<String, String>,
) -> Result<(), UpdateError> {
    let mut h = Hasher::new(what, hashes)?;
    h.update(data);
    h.finish()
}

/// Streams a file through [`check_file`]'s checks: at most `length + 1` bytes are read,
/// so a longer file fails without being read whole.
///
/// Reading and hashing overlap: a reader thread fills buffers while this thread hashes the
/// previous one, so on a device with two cores verification costs about the hash alone
/// (docs/benchmarks.md).
pub fn check_reader(
    what: &str,
    mut reader: impl std::io::Read + Send,
    length: u64,
    hashes: &BTreeMap<String, String>,
) -> Result<(), UpdateError> {
    const BUF: usize = 1 << 20;
    let mut h = Hasher::new(what, hashes)?;
    let limit = length.saturating_add(1);
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        // Three buffers circulate: one being read into, one queued, one being hashed.
        let _ = empty_tx.send(vec![0u8; BUF]);
    }
    let total = std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut read = 0u64;
            while read < limit {
                let Ok(mut buf) = empty_rx.recv() else {
                    return;
                };
                buf.resize(BUF, 0);
                let want = (limit - read).min(BUF as u64) as usize;
                match reader.read(&mut buf[..want]) {
                    Ok(0) => return,
                    Ok(n) => {
                        read += n as u64;
                        buf.truncate(n);
                        if full_tx.send(Ok(buf)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        let mut total = 0u64;
        for buf in full_rx.iter() {
            let buf = buf.map_err(|e| UpdateError::io(std::path::Path::new(what), e))?;
            total += buf.len() as u64;
            if total <= length {
                h.update(&buf);
            }
            // The reader may already have stopped; then the buffer is simply dropped.
            let _ = empty_tx.send(buf);
        }
        Ok::<u64, UpdateError>(total)
    })?;
    if total != length {
        return Err(UpdateError::LengthMismatch {
            what: what.to_owned(),
            expected: length,
            got: total,
        });
    }
    h.finish()
}

/// The supported hashes a description lists, computed incrementally.
struct Hasher<'a> {
    what: &'a str,
    sha256: Option<(Sha256, &'a str)>,
    sha512: Option<(Sha512, &'a str)>,
}

impl<'a> Hasher<'a> {
    fn new(what: &'a str, hashes: &'a BTreeMap<String, String>) -> Result<Self, UpdateError> {
        let h = Hasher {
            what,
            sha256: hashes.get("sha256").map(|e| (Sha256::new(), e.as_str())),
            sha512: hashes.get("sha512").map(|e| (Sha512::new(), e.as_str())),
        };
        if h.sha256.is_none() && h.sha512.is_none() {
            return Err(UpdateError::NoSupportedHash {
                what: what.to_owned(),
            });
        }
        Ok(h)
    }

    fn update(&mut self, data: &[u8]) {
        if let Some((h, _)) = &mut self.sha256 {
            h.update(data);
        }
        if let Some((h, _)) = &mut self.sha512 {
            h.update(data);
        }
    }

    fn finish(self) -> Result<(), UpdateError> {
        let results = [
            self.sha256
                .map(|(h, e)| ("sha256", hex::encode(h.finalize()), e)),
            self.sha512
                .map(|(h, e)| ("sha512", hex::encode(h.finalize()), e)),
        ];
        for (alg, got, expected) in results.into_iter().flatten() {
            if !got.eq_ignore_ascii_case(expected) {
                return Err(UpdateError::HashMismatch {
                    what: self.what.to_owned(),
                    algorithm: alg.to_owned(),
                    expected: expected.to_owned(),
                    got,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_counts_distinct_valid_keys_of_the_role() {
        let (a, b, outsider) = (
            SigningKey::generate().expect("key"),
            SigningKey::generate().expect("key"),
            SigningKey::generate().expect("key"),
        );
        let keys: BTreeMap<String, PublicKey> = [&a, &b, &outsider]
            .iter()
            .map(|k| (k.public().key_id(), k.public()))
            .collect();
        let role = RoleKeys {
            keyids: vec![a.public().key_id(), b.public().key_id()],
            threshold: 2,
        };
        let mut env = Envelope {
            signatures: vec![],
            signed: serde_json::json!({"_type": "x", "n": 1}),
        };
        env.sign(&a).expect("sign");
        // The same key twice is one signature.
        let dup = env.signatures[0].clone();
        env.signatures.push(dup);
        env.sign(&outsider).expect("sign");
        let err = env.verify("x", &keys, &role).expect_err("one of two");
        assert!(
            matches!(err, UpdateError::Threshold { valid: 1, .. }),
            "{err}"
        );
        env.sign(&b).expect("sign");
        env.verify("x", &keys, &role).expect("two of two");
        // Changing the signed content breaks every signature.
        env.signed["n"] = 2.into();
        assert!(env.verify("x", &keys, &role).is_err());
    }

    #[test]
    fn paths_match_within_segments() {
        assert!(path_matches("security/*", "security/fw-2.1.bin"));
        assert!(!path_matches("security/*", "security/a/b"));
        assert!(!path_matches("security/*", "feature/fw.bin"));
        assert!(path_matches("*.tar", "pkg.tar"));
        assert!(path_matches("fw-?.bin", "fw-1.bin"));
    }

    #[test]
    fn files_are_checked_by_length_and_every_supported_hash() {
        let f = TargetFile::of(b"image", None);
        check_file("t", b"image", f.length, &f.hashes).expect("good");
        assert!(matches!(
            check_file("t", b"imagE", f.length, &f.hashes),
            Err(UpdateError::HashMismatch { .. })
        ));
        assert!(matches!(
            check_file("t", b"image!", f.length, &f.hashes),
            Err(UpdateError::LengthMismatch { .. })
        ));
        let md5_only: BTreeMap<String, String> = [("md5".into(), "00".into())].into();
        assert!(matches!(
            check_hashes("t", b"image", &md5_only),
            Err(UpdateError::NoSupportedHash { .. })
        ));
    }

    #[test]
    fn streamed_files_get_the_same_checks_including_a_listed_sha512() {
        let mut f = TargetFile::of(b"image", None);
        f.hashes
            .insert("sha512".into(), hex::encode(Sha512::digest(b"image")));
        check_reader("t", &b"image"[..], f.length, &f.hashes).expect("good");
        for (data, short) in [(&b"imag"[..], true), (&b"image and more"[..], true)] {
            let e = check_reader("t", data, f.length, &f.hashes).unwrap_err();
            assert_eq!(
                matches!(e, UpdateError::LengthMismatch { .. }),
                short,
                "{e}"
            );
        }
        f.hashes.insert("sha512".into(), "00".repeat(64));
        let e = check_reader("t", &b"image"[..], f.length, &f.hashes).unwrap_err();
        assert!(
            matches!(&e, UpdateError::HashMismatch { algorithm, .. } if algorithm == "sha512"),
            "{e}"
        );
    }
}

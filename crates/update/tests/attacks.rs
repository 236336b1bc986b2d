//! The TUF attacks the client must refuse, each with the error it names, and the state left
//! trusting what it trusted before. Key rotations that must keep clients updating.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod support;

use rampart_update::UpdateError;
use rampart_update::client::{Limits, TrustedState, refresh, verify_target};
use rampart_update::keys::SigningKey;
use rampart_update::repository;
use support::*;
use time::Duration;

fn client(repo: &Repo) -> TrustedState {
    TrustedState::new(&repo.root_bytes(1), &Limits::default()).unwrap()
}

fn fetch(repo: &Repo) -> MemFetch {
    MemFetch(repo.files.clone())
}

fn refreshed(repo: &Repo) -> TrustedState {
    let mut c = client(repo);
    refresh(&mut c, &mut fetch(repo), now(), &Limits::default()).unwrap();
    c
}

fn good_repo() -> Repo {
    let mut r = Repo::new();
    r.add("gateway-pkg-1.0.0.tar", b"package one");
    r.add("security/gateway-fix-1.0.1.tar", b"security fix");
    r.publish();
    r
}

#[test]
fn a_good_repository_refreshes_and_targets_verify_including_delegated_ones() {
    let r = good_repo();
    let c = refreshed(&r);
    let (f, by) = c.find_target("gateway-pkg-1.0.0.tar").unwrap();
    assert_eq!(by, "targets");
    verify_target("gateway-pkg-1.0.0.tar", &f, b"package one").unwrap();
    let (f, by) = c.find_target("security/gateway-fix-1.0.1.tar").unwrap();
    assert_eq!(by, "security");
    verify_target("security/gateway-fix-1.0.1.tar", &f, b"security fix").unwrap();
    assert!(matches!(
        c.find_target("nothing.tar"),
        Err(UpdateError::TargetNotFound(_))
    ));
    assert_eq!(c.all_targets().len(), 2);
}

#[test]
fn tampered_artifact_and_wrong_length_are_refused() {
    let r = good_repo();
    let c = refreshed(&r);
    let (f, _) = c.find_target("gateway-pkg-1.0.0.tar").unwrap();
    let e = verify_target("gateway-pkg-1.0.0.tar", &f, b"package 0ne").unwrap_err();
    assert!(matches!(e, UpdateError::HashMismatch { .. }), "{e}");
    let e = verify_target("gateway-pkg-1.0.0.tar", &f, b"package one plus").unwrap_err();
    assert!(matches!(e, UpdateError::LengthMismatch { .. }), "{e}");
    assert!(e.to_string().contains("the signed metadata says 11"), "{e}");
}

#[test]
fn metadata_signed_by_too_few_keys_is_refused() {
    let mut r = good_repo();
    // The published targets version re-signed by one of its two keys.
    let t = repository::signed(&r.targets, &[&r.keys.targets[0]]).unwrap();
    r.put_versioned("targets", &t);
    let mut c = client(&r);
    let e = refresh(&mut c, &mut fetch(&r), now(), &Limits::default()).unwrap_err();
    assert!(
        matches!(e, UpdateError::Threshold { ref role, valid: 1, threshold: 2 } if role == "targets"),
        "{e}"
    );
    // A signature by a key that is not the role's does not count either.
    let outsider = SigningKey::generate().unwrap();
    let t = repository::signed(&r.targets, &[&r.keys.targets[0], &outsider]).unwrap();
    r.put_versioned("targets", &t);
    let mut c = client(&r);
    let e = refresh(&mut c, &mut fetch(&r), now(), &Limits::default()).unwrap_err();
    assert!(matches!(e, UpdateError::Threshold { valid: 1, .. }), "{e}");
    // The delegated role signed by the wrong key.
    let s = repository::signed(&r.security, &[&outsider]).unwrap();
    r.put_versioned("security", &s);
    let t = repository::signed(&r.targets, &[&r.keys.targets[0], &r.keys.targets[1]]).unwrap();
    r.put_versioned("targets", &t);
    let mut c = client(&r);
    let e = refresh(&mut c, &mut fetch(&r), now(), &Limits::default()).unwrap_err();
    assert!(
        matches!(e, UpdateError::Threshold { ref role, .. } if role == "security"),
        "{e}"
    );
    assert!(c.find_target("security/gateway-fix-1.0.1.tar").is_err());
}

#[test]
fn an_expired_timestamp_is_a_freeze_attack() {
    let r = good_repo();
    let mut c = client(&r);
    // The same repository seen 31 days later: everything expired.
    let later = now() + Duration::days(31);
    let e = refresh(&mut c, &mut fetch(&r), later, &Limits::default()).unwrap_err();
    // Root is checked first (spec 5.3.10).
    assert!(
        matches!(e, UpdateError::Expired { ref role, .. } if role == "root"),
        "{e}"
    );
    // Only the timestamp expired.
    let mut r = good_repo();
    let ts = repository::timestamp(
        r.timestamp_version + 1,
        now() - Duration::hours(1),
        r.snapshot_version,
        &r.files[&format!("{}.snapshot.json", r.snapshot_version)],
    );
    r.files.insert(
        "timestamp.json".into(),
        repository::signed(&ts, &[&r.keys.timestamp])
            .unwrap()
            .to_bytes()
            .unwrap(),
    );
    let mut c = client(&r);
    let e = refresh(&mut c, &mut fetch(&r), now(), &Limits::default()).unwrap_err();
    assert!(
        matches!(e, UpdateError::Expired { ref role, .. } if role == "timestamp"),
        "{e}"
    );
    assert!(e.to_string().contains("freeze"), "{e}");
    assert!(c.timestamp().is_none(), "nothing expired is trusted");
}

#[test]
fn older_versions_of_every_role_are_rollbacks() {
    let mut r = good_repo();
    let old = r.files.clone();
    r.add("gateway-pkg-1.1.0.tar", b"package two");
    r.publish();
    let c = refreshed(&r);
    // Timestamp: the old timestamp.json served again.
    let mut c1 = c.clone();
    let e = c1
        .update_timestamp(&old["timestamp.json"], now(), &Limits::default())
        .unwrap_err();
    assert!(
        matches!(e, UpdateError::Rollback { ref role, trusted: 2, new: 1 } if role == "timestamp"),
        "{e}"
    );
    // Snapshot: a new timestamp pointing at the old snapshot version.
    let ts = repository::timestamp(
        r.timestamp_version + 1,
        r.expires,
        1,
        &old["1.snapshot.json"],
    );
    let bytes = repository::signed(&ts, &[&r.keys.timestamp])
        .unwrap()
        .to_bytes()
        .unwrap();
    let mut c2 = c.clone();
    let e = c2
        .update_timestamp(&bytes, now(), &Limits::default())
        .unwrap_err();
    assert!(
        matches!(
            e,
            UpdateError::Rollback {
                trusted: 2,
                new: 1,
                ..
            }
        ),
        "{e}"
    );
    // Targets: a new snapshot listing an older targets version.
    let mut r3 = Repo { ..good_repo() };
    r3.add("a.tar", b"a");
    r3.publish();
    r3.publish();
    let mut c3 = refreshed(&r3);
    let t_old = r3.files["3.targets.json"].clone();
    let s_now = r3.files["4.security.json"].clone();
    let snap = repository::snapshot(
        r3.snapshot_version + 1,
        r3.expires,
        &[
            (
                "targets",
                &rampart_update::metadata::Envelope::parse("t", &t_old).unwrap(),
            ),
            (
                "security",
                &rampart_update::metadata::Envelope::parse("s", &s_now).unwrap(),
            ),
        ],
    )
    .unwrap();
    let snap_bytes = repository::signed(&snap, &[&r3.keys.snapshot])
        .unwrap()
        .to_bytes()
        .unwrap();
    let ts = repository::timestamp(
        r3.timestamp_version + 1,
        r3.expires,
        r3.snapshot_version + 1,
        &snap_bytes,
    );
    let ts_bytes = repository::signed(&ts, &[&r3.keys.timestamp])
        .unwrap()
        .to_bytes()
        .unwrap();
    c3.update_timestamp(&ts_bytes, now(), &Limits::default())
        .unwrap();
    let e = c3
        .update_snapshot(&snap_bytes, now(), &Limits::default())
        .unwrap_err();
    assert!(
        matches!(e, UpdateError::Rollback { ref role, trusted: 4, new: 3 } if role == "targets.json"),
        "{e}"
    );
    // The trusted targets are still the newest.
    assert_eq!(c3.targets().unwrap().common.version, 4);
}

#[test]
fn a_snapshot_that_does_not_match_the_targets_is_mix_and_match() {
    let mut r = good_repo();
    let v1 = r.files["2.targets.json"].clone();
    r.add("gateway-pkg-1.1.0.tar", b"package two");
    r.publish();
    // The repository serves the old targets file under the new version's name.
    r.files.insert("3.targets.json".into(), v1);
    let mut c = client(&r);
    let e = refresh(&mut c, &mut fetch(&r), now(), &Limits::default()).unwrap_err();
    assert!(
        matches!(e, UpdateError::VersionMismatch { ref role, expected: 3, got: 2, .. } if role == "targets"),
        "{e}"
    );
    // A snapshot whose bytes differ from what timestamp pins.
    let mut r = good_repo();
    let key = format!("{}.snapshot.json", r.snapshot_version);
    let mut bytes = r.files[&key].clone();
    bytes.push(b'\n');
    r.files.insert(key, bytes);
    let mut c = client(&r);
    let e = refresh(&mut c, &mut fetch(&r), now(), &Limits::default()).unwrap_err();
    assert!(matches!(e, UpdateError::LengthMismatch { .. }), "{e}");
}

#[test]
fn oversized_metadata_is_an_endless_data_attack() {
    let mut r = good_repo();
    let mut big = r.files["timestamp.json"].clone();
    big.extend(std::iter::repeat_n(b' ', 64 * 1024));
    r.files.insert("timestamp.json".into(), big);
    let mut c = client(&r);
    let e = refresh(&mut c, &mut fetch(&r), now(), &Limits::default()).unwrap_err();
    assert!(
        matches!(e, UpdateError::TooLarge { ref what, .. } if what == "timestamp"),
        "{e}"
    );
    // An endless root chain stops at the rotation limit.
    let mut r = good_repo();
    for _ in 0..5 {
        r.publish_root(&[]);
    }
    let limits = Limits {
        max_root_rotations: 3,
        ..Limits::default()
    };
    let mut c = client(&r);
    let _ = refresh(&mut c, &mut fetch(&r), now(), &limits);
    assert_eq!(c.root().common.version, 4);
}

#[test]
fn root_and_compromised_timestamp_key_rotations_keep_clients_updating() {
    let mut r = good_repo();
    let mut c = refreshed(&r);
    // Root key rotation: one of the two root keys is replaced; the new root is signed by a
    // threshold of the old keys and of the new ones.
    let old_root_key = std::mem::replace(&mut r.keys.root[1], SigningKey::generate().unwrap());
    r.publish_root(&[&old_root_key]);
    // Compromised timestamp key: replaced in root v3; the attacker's fast-forwarded
    // timestamp (signed by the stolen key) stops counting.
    let stolen = std::mem::replace(&mut r.keys.timestamp, SigningKey::generate().unwrap());
    r.publish_root(&[]);
    r.add("gateway-pkg-1.2.0.tar", b"package three");
    r.publish();
    refresh(&mut c, &mut fetch(&r), now(), &Limits::default()).unwrap();
    assert_eq!(c.root().common.version, 3);
    assert!(c.find_target("gateway-pkg-1.2.0.tar").is_ok());
    // A timestamp signed by the stolen key is refused now.
    let ts = repository::timestamp(
        r.timestamp_version + 100,
        r.expires,
        r.snapshot_version,
        &r.files[&format!("{}.snapshot.json", r.snapshot_version)],
    );
    let forged = repository::signed(&ts, &[&stolen])
        .unwrap()
        .to_bytes()
        .unwrap();
    let e = c
        .update_timestamp(&forged, now(), &Limits::default())
        .unwrap_err();
    assert!(
        matches!(e, UpdateError::Threshold { ref role, .. } if role == "timestamp"),
        "{e}"
    );
    // A root rotation signed only by the new keys (not a threshold of the old) is refused.
    let mut r2 = good_repo();
    let mut c2 = refreshed(&r2);
    r2.keys.root = vec![
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    ];
    r2.publish_root(&[]);
    let e = refresh(&mut c2, &mut fetch(&r2), now(), &Limits::default()).unwrap_err();
    assert!(
        matches!(e, UpdateError::Threshold { ref role, .. } if role == "root"),
        "{e}"
    );
    assert_eq!(c2.root().common.version, 1);
}

#[test]
fn trusted_files_restore_and_remain_the_rollback_reference() {
    let r = good_repo();
    let c = refreshed(&r);
    let files = c.files().clone();
    let limits = Limits::default();
    let mut again = TrustedState::new(&files["root.json"], &limits).unwrap();
    for name in ["timestamp.json", "snapshot.json", "targets.json"] {
        again.load_local(name, &files[name], &limits).unwrap();
    }
    assert_eq!(again.targets().unwrap().common.version, 2);
    // A damaged stored file fails closed.
    let mut bad = files["snapshot.json"].clone();
    bad[10] ^= 0x20;
    let mut third = TrustedState::new(&files["root.json"], &limits).unwrap();
    third
        .load_local("timestamp.json", &files["timestamp.json"], &limits)
        .unwrap();
    assert!(third.load_local("snapshot.json", &bad, &limits).is_err());
    assert!(third.snapshot().is_none());
}

//! The staged release workflow end to end on disk: offline keys sign role by role, publish
//! checks thresholds, the online keys sign snapshot and timestamp, and the real client
//! state machine accepts what was published — including after root and online-key
//! rotations and the hub's scheduled timestamp re-signing.

#![allow(clippy::unwrap_used)]

use rampart_update::UpdateError;
use rampart_update::client::{DirFetch, Limits, TrustedState, refresh, verify_target};
use rampart_update::keys::SigningKey;
use rampart_update::release::{Expiries, ReleaseDir, RootPlan};
use rampart_update::selection::{ArtifactKind, ReleaseInfo};
use time::{Duration, OffsetDateTime};

struct Offline {
    root: Vec<SigningKey>,
    targets: SigningKey,
    security: SigningKey,
}

fn plan(k: &Offline) -> RootPlan {
    RootPlan {
        root_keys: k.root.iter().map(SigningKey::public).collect(),
        root_threshold: 2,
        targets_keys: vec![k.targets.public()],
        targets_threshold: 1,
        security_keys: vec![k.security.public()],
        security_threshold: 1,
        rotate_timestamp: false,
        rotate_snapshot: false,
    }
}

fn info(v: &str) -> serde_json::Value {
    ReleaseInfo {
        version: v.into(),
        hardware: vec!["gw-1".into()],
        kind: ArtifactKind::Package,
        channel: "stable".into(),
        security: false,
    }
    .to_value()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A first release: root 2-of-3, targets, security; published and checked by a client.
fn first_release(dir: &std::path::Path) -> (ReleaseDir, Offline) {
    let k = Offline {
        root: (0..3).map(|_| SigningKey::generate().unwrap()).collect(),
        targets: SigningKey::generate().unwrap(),
        security: SigningKey::generate().unwrap(),
    };
    let r = ReleaseDir::new(dir);
    let exp = Expiries::default();
    assert_eq!(r.stage_root(&plan(&k), now(), &exp).unwrap(), 1);
    r.stage_target(
        "app/1.0.0/app.tar",
        b"app one",
        Some(info("1.0.0")),
        now(),
        &exp,
    )
    .unwrap();
    r.sign("root", &k.root[0]).unwrap();
    r.sign("root", &k.root[1]).unwrap();
    r.sign("targets", &k.targets).unwrap();
    r.sign("security", &k.security).unwrap();
    let s = r.publish(now(), &exp).unwrap();
    assert_eq!(s.written["root"], 1);
    assert_eq!(s.written["timestamp"], 1);
    assert!(r.status().unwrap().is_empty(), "nothing stays staged");
    (r, k)
}

fn client_of(r: &ReleaseDir) -> TrustedState {
    let root = std::fs::read(r.published().metadata_dir().join("1.root.json")).unwrap();
    TrustedState::new(&root, &Limits::default()).unwrap()
}

fn refresh_from(r: &ReleaseDir, c: &mut TrustedState) -> Result<(), UpdateError> {
    let mut f = DirFetch {
        metadata_dir: r.published().metadata_dir(),
    };
    refresh(c, &mut f, now(), &Limits::default())
}

#[test]
fn a_release_signed_by_the_threshold_publishes_and_clients_verify_it() {
    let d = tempfile::tempdir().unwrap();
    let (r, k) = first_release(d.path());
    let mut c = client_of(&r);
    refresh_from(&r, &mut c).unwrap();
    let (file, by) = c.find_target("app/1.0.0/app.tar").unwrap();
    assert_eq!(by, "targets");
    let path = rampart_update::client::consistent_target_path("app/1.0.0/app.tar", &file).unwrap();
    let data = std::fs::read(r.published().targets_dir().join(path)).unwrap();
    verify_target("app/1.0.0/app.tar", &file, &data).unwrap();

    // A security fix goes through the delegated role, not targets.
    let exp = Expiries::default();
    let (role, _) = r
        .stage_target(
            "security/1.0.1/app.tar",
            b"fix",
            Some(info("1.0.1")),
            now(),
            &exp,
        )
        .unwrap();
    assert_eq!(role, "security");
    let e = r.sign("security", &k.targets).unwrap_err();
    assert!(e.to_string().contains("is not a security key"), "{e}");
    r.sign("security", &k.security).unwrap();
    r.publish(now(), &exp).unwrap();
    refresh_from(&r, &mut c).unwrap();
    assert_eq!(
        c.find_target("security/1.0.1/app.tar").unwrap().1,
        "security"
    );
}

#[test]
fn publishing_without_the_threshold_is_refused_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let k = Offline {
        root: (0..3).map(|_| SigningKey::generate().unwrap()).collect(),
        targets: SigningKey::generate().unwrap(),
        security: SigningKey::generate().unwrap(),
    };
    let r = ReleaseDir::new(d.path());
    let exp = Expiries::default();
    r.stage_root(&plan(&k), now(), &exp).unwrap();
    r.sign("root", &k.root[0]).unwrap();
    r.sign("targets", &k.targets).unwrap();
    r.sign("security", &k.security).unwrap();
    let e = r.publish(now(), &exp).unwrap_err();
    assert!(
        e.to_string().contains("root has 1 of the 2 signatures"),
        "{e}"
    );
    assert!(!r.is_initialised());
    // Signing twice with the same key still counts once.
    r.sign("root", &k.root[0]).unwrap();
    assert!(r.publish(now(), &exp).is_err());
    let status = r.status().unwrap();
    let root = status.iter().find(|s| s.role == "root").unwrap();
    assert_eq!(root.needs[0].valid, 1);
    // A key of another role is refused outright.
    let e = r.sign("root", &k.targets).unwrap_err();
    assert!(e.to_string().contains("is not a root key"), "{e}");
    // Changing a staged role drops its signatures.
    r.stage_target("a/b", b"x", Some(info("1.0.0")), now(), &exp)
        .unwrap();
    let t = r
        .status()
        .unwrap()
        .into_iter()
        .find(|s| s.role == "targets")
        .unwrap();
    assert!(t.signed_by.is_empty());
    let e = r.sign("x", &k.targets).unwrap_err();
    assert!(e.to_string().contains("offline roles"), "{e}");
}

#[test]
fn root_and_timestamp_key_rotations_keep_clients_updating() {
    let d = tempfile::tempdir().unwrap();
    let (r, k) = first_release(d.path());
    let exp = Expiries::default();
    let mut c = client_of(&r);
    refresh_from(&r, &mut c).unwrap();

    // Rotate two of three root keys and the (compromised) online timestamp key.
    let new_root: Vec<SigningKey> = (0..2).map(|_| SigningKey::generate().unwrap()).collect();
    let mut p = plan(&k);
    p.root_keys = vec![
        k.root[0].public(),
        new_root[0].public(),
        new_root[1].public(),
    ];
    p.rotate_timestamp = true;
    assert_eq!(r.stage_root(&p, now(), &exp).unwrap(), 2);
    // The new keys alone are not enough: the previous root's threshold must sign too.
    r.sign("root", &new_root[0]).unwrap();
    r.sign("root", &new_root[1]).unwrap();
    let e = r.publish(now(), &exp).unwrap_err();
    assert!(e.to_string().contains("previous root"), "{e}");
    r.sign("root", &k.root[1]).unwrap();
    r.sign("root", &k.root[2]).unwrap();
    r.publish(now(), &exp).unwrap();

    refresh_from(&r, &mut c).unwrap();
    assert_eq!(c.root().common.version, 2);
    // The next release is signed with the new timestamp key and accepted.
    r.stage_target(
        "app/2.0.0/app.tar",
        b"two",
        Some(info("2.0.0")),
        now(),
        &exp,
    )
    .unwrap();
    r.sign("targets", &k.targets).unwrap();
    r.publish(now(), &exp).unwrap();
    refresh_from(&r, &mut c).unwrap();
    c.find_target("app/2.0.0/app.tar").unwrap();
}

#[test]
fn the_hub_re_signs_timestamp_and_snapshot_before_they_expire() {
    let d = tempfile::tempdir().unwrap();
    let (r, _) = first_release(d.path());
    let exp = Expiries::default();
    let mut c = client_of(&r);
    refresh_from(&r, &mut c).unwrap();
    // Fresh metadata: nothing to do.
    assert_eq!(r.refresh_online(now(), &exp).unwrap(), None);
    // 13 hours later, the one-day timestamp is past half its life.
    let later = now() + Duration::hours(13);
    assert_eq!(r.refresh_online(later, &exp).unwrap(), Some(2));
    assert_eq!(r.latest("snapshot").unwrap().unwrap().0, 1);
    // Four days later the seven-day snapshot is re-signed too.
    let much_later = now() + Duration::days(4);
    assert_eq!(r.refresh_online(much_later, &exp).unwrap(), Some(3));
    assert_eq!(r.latest("snapshot").unwrap().unwrap().0, 2);
    let mut f = DirFetch {
        metadata_dir: r.published().metadata_dir(),
    };
    refresh(&mut c, &mut f, much_later, &Limits::default()).unwrap();
    assert_eq!(c.timestamp().unwrap().common.version, 3);
}

#[test]
fn a_new_root_that_would_orphan_published_targets_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (r, k) = first_release(d.path());
    let exp = Expiries::default();
    let new_targets = SigningKey::generate().unwrap();
    let mut p = plan(&k);
    p.targets_keys = vec![new_targets.public()];
    r.stage_root(&p, now(), &exp).unwrap();
    r.sign("root", &k.root[0]).unwrap();
    r.sign("root", &k.root[1]).unwrap();
    let e = r.publish(now(), &exp).unwrap_err();
    assert!(
        e.to_string()
            .contains("would not verify under the new root"),
        "{e}"
    );
    r.stage_renewal("targets", now(), &exp).unwrap();
    r.sign("targets", &new_targets).unwrap();
    r.publish(now(), &exp).unwrap();
    let mut c = client_of(&r);
    refresh_from(&r, &mut c).unwrap();
    assert_eq!(c.root().common.version, 2);
}

//! The SQLite store against a real database file.

use std::sync::Arc;

use rampart_store::*;
use time::{Duration, OffsetDateTime};

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&SqliteOptions::new(dir.path().join("rampart.db")))
        .await
        .expect("open")
}

fn cert(serial: &str) -> NewCertificate {
    let now = OffsetDateTime::now_utc();
    NewCertificate {
        serial: serial.into(),
        fingerprint: format!("fp-{serial}"),
        not_before: now,
        not_after: now + Duration::days(90),
        key_algorithm: "ecdsa-p256".into(),
    }
}

fn row(device: &str, seq: i64) -> TelemetryRow {
    let now = OffsetDateTime::now_utc();
    TelemetryRow {
        device_id: device.into(),
        seq,
        ts: now - Duration::seconds(100 - seq),
        received_at: now,
        voltage_v: Some(52.0 + seq as f64 / 10.0),
        current_a: Some(-3.5),
        soc_pct: Some(80.0),
        soh_pct: Some(97.5),
        temp_min_c: Some(21.0),
        temp_max_c: Some(24.5),
        cell_min_v: Some(3.25),
        cell_max_v: Some(3.27),
        alarms: vec!["over_temperature".into()],
        body: format!("{{\"seq\":{seq}}}"),
    }
}

#[tokio::test]
async fn registry_lifecycle() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir).await;
    s.add_device("gw-1", &cert("01")).await.expect("add");
    let e = s
        .add_device("gw-1", &cert("02"))
        .await
        .expect_err("duplicate id");
    assert!(
        matches!(e, StoreError::AlreadyExists { what: "device", .. }),
        "{e}"
    );
    let e = s
        .add_device("gw-2", &cert("01"))
        .await
        .expect_err("duplicate serial");
    assert!(
        matches!(
            e,
            StoreError::AlreadyExists {
                what: "certificate",
                ..
            }
        ),
        "{e}"
    );
    // The failed add left nothing behind.
    assert!(s.device("gw-2").await.expect("query").is_none());

    let d = s.device("gw-1").await.expect("get").expect("exists");
    assert_eq!(d.status, DeviceStatus::Active);
    s.set_device_status("gw-1", DeviceStatus::Disabled)
        .await
        .expect("disable");
    assert_eq!(
        s.device("gw-1").await.unwrap().unwrap().status,
        DeviceStatus::Disabled
    );
    let e = s
        .set_device_status("nope", DeviceStatus::Disabled)
        .await
        .expect_err("missing");
    assert!(matches!(e, StoreError::NotFound { .. }));

    s.add_certificate("gw-1", &cert("03"))
        .await
        .expect("second cert");
    let certs = s.certificates("gw-1").await.expect("certs");
    assert_eq!(certs.len(), 2);
    let c = s
        .certificate_by_fingerprint("fp-03")
        .await
        .unwrap()
        .expect("by fp");
    assert_eq!(c.device_id, "gw-1");
    assert_eq!(c.status, CertificateStatus::Valid);

    let at = OffsetDateTime::now_utc();
    s.record_seen("gw-1", at, "127.0.0.1:5000")
        .await
        .expect("seen");
    let d = s.device("gw-1").await.unwrap().unwrap();
    assert_eq!(d.last_address.as_deref(), Some("127.0.0.1:5000"));
    assert_eq!(s.devices().await.unwrap().len(), 1);
}

#[tokio::test]
async fn telemetry_is_deduplicated_and_queried_by_time() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir).await;
    let rows: Vec<_> = (1..=10).map(|i| row("gw-1", i)).collect();
    assert_eq!(s.insert_telemetry(&rows).await.expect("insert"), 10);
    // A resend of the same readings is stored once.
    assert_eq!(s.insert_telemetry(&rows[5..]).await.expect("resend"), 0);
    let all = s
        .telemetry("gw-1", OffsetDateTime::UNIX_EPOCH, 100)
        .await
        .expect("query");
    assert_eq!(all.len(), 10);
    assert_eq!(all.first().unwrap().seq, 1);
    assert_eq!(all[3], rows[3].clone_with_ms_precision());
    let newest = s
        .telemetry("gw-1", OffsetDateTime::UNIX_EPOCH, 3)
        .await
        .expect("limit");
    assert_eq!(
        newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert!(
        s.telemetry("gw-2", OffsetDateTime::UNIX_EPOCH, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

trait MsPrecision {
    fn clone_with_ms_precision(&self) -> Self;
}

impl MsPrecision for TelemetryRow {
    fn clone_with_ms_precision(&self) -> Self {
        let trunc = |t: OffsetDateTime| {
            OffsetDateTime::from_unix_timestamp_nanos(
                t.unix_timestamp_nanos() / 1_000_000 * 1_000_000,
            )
            .expect("valid")
        };
        let mut r = self.clone();
        r.ts = trunc(r.ts);
        r.received_at = trunc(r.received_at);
        r
    }
}

#[tokio::test]
async fn retained_messages_roundtrip() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir).await;
    s.put_retained("devices/a/status", Some(b"online"))
        .await
        .unwrap();
    s.put_retained("devices/a/status", Some(b"offline"))
        .await
        .unwrap();
    s.put_retained("devices/b/status", Some(b"x"))
        .await
        .unwrap();
    s.put_retained("devices/b/status", None).await.unwrap();
    assert_eq!(
        s.retained().await.unwrap(),
        vec![("devices/a/status".to_string(), b"offline".to_vec())]
    );
}

#[tokio::test]
async fn group_commit_resolves_every_ticket_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Arc::new(open(&dir).await);
    let q = IngestQueue::spawn(s.clone(), 1024, 256);
    let mut tickets = Vec::new();
    for i in 1..=1000 {
        tickets.push(
            q.submit(row(&format!("gw-{}", i % 7), i))
                .await
                .expect("submit"),
        );
    }
    for t in tickets {
        t.await.expect("committed");
    }
    let stats = q.stats();
    assert_eq!(
        stats.committed.load(std::sync::atomic::Ordering::Relaxed),
        1000
    );
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    assert!(batches < 1000, "rows were batched ({batches} transactions)");
    s.close().await;
    drop(s);
    let reopened = open(&dir).await;
    let mut total = 0;
    for d in 0..7 {
        total += reopened
            .telemetry(&format!("gw-{d}"), OffsetDateTime::UNIX_EPOCH, 10_000)
            .await
            .unwrap()
            .len();
    }
    assert_eq!(total, 1000);
}

#[tokio::test]
async fn audit_log_is_append_only_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir).await;
    for i in 0..3 {
        s.audit(&AuditEntry {
            at: OffsetDateTime::now_utc(),
            actor: "cli".into(),
            action: "device.add".into(),
            subject: format!("gw-{i}"),
            detail: String::new(),
        })
        .await
        .unwrap();
    }
    let log = s.audit_log(2).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(),
        vec!["gw-2", "gw-1"]
    );
}

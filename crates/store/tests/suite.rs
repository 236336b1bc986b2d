//! The storage contract, run against both backends: each test runs once on a fresh SQLite
//! file and once on a fresh schema of the PostgreSQL server named by
//! `RAMPART_TEST_POSTGRES_URL` (`.ci/run` sets it; without it the PostgreSQL runs say they
//! are skipped and pass).

// Every function here is a test body, called from the #[tokio::test]s the macro at the end
// generates; clippy only recognises the generated ones as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rampart_store::*;
use sqlx::Row;
use time::{Duration, OffsetDateTime};

/// One test's database.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, schema: String },
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().expect("tmp"))
    }

    /// A fresh schema, or `None` (and a note) when no server is configured.
    fn postgres(test: &str) -> Option<Db> {
        let Ok(url) = std::env::var("RAMPART_TEST_POSTGRES_URL") else {
            eprintln!("skipped {test} on PostgreSQL: RAMPART_TEST_POSTGRES_URL is not set");
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        Some(Db::Postgres {
            url,
            schema: format!(
                "t_{}_{}_{nanos}",
                &test[..test.len().min(30)],
                std::process::id()
            ),
        })
    }

    /// Opens (or reopens) the store.
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite(dir) => Arc::new(
                SqliteStore::open(&SqliteOptions::new(dir.path().join("rampart.db")))
                    .await
                    .expect("open sqlite"),
            ),
            Db::Postgres { url, schema } => {
                let mut o = PgOptions::new(url.clone());
                o.schema = schema.clone();
                o.max_connections = 4;
                Arc::new(PgStore::open(&o).await.expect("open postgres"))
            }
        }
    }

    /// Drops a PostgreSQL test schema (a failed test leaves its schema for inspection).
    async fn finish(self) {
        if let Db::Postgres { url, schema } = self {
            let mut o = PgOptions::new(url);
            o.schema = schema.clone();
            let s = PgStore::open(&o).await.expect("reopen postgres");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{schema}\" CASCADE"
            )))
            .execute(s.pool())
            .await
            .expect("drop schema");
            s.close().await;
        }
    }
}

/// For a test only PostgreSQL has: its database, with the server's URL and the schema, or
/// `None` (and a note) when no server is configured.
fn postgres_only(test: &str) -> Option<(Db, String, String)> {
    let db = Db::postgres(test)?;
    let Db::Postgres { url, schema } = &db else {
        unreachable!("Db::postgres makes a PostgreSQL database")
    };
    let (url, schema) = (url.clone(), schema.clone());
    Some((db, url, schema))
}

/// Runs each named test on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::sqlite();
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::Db::postgres(stringify!($name)) else { return };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

on_both_backends!(
    telemetry_fields_round_trip_exactly,
    registry_lifecycle,
    telemetry_is_deduplicated_and_queried_by_time,
    a_reading_resent_while_its_first_commit_is_pending_is_stored_once,
    retained_messages_roundtrip,
    group_commit_resolves_every_ticket_and_survives_reopen,
    rows_nobody_waits_for_linger_until_a_waited_row_the_linger_or_close,
    audit_log_is_append_only_in_order,
    identity_kinds_groups_quarantine_and_approval,
    revocation_retirement_and_crl_numbers,
    policies_are_versioned_and_attached,
    claims_are_limited_in_uses_and_lifetime,
    trusted_cas_and_certificate_usage,
    read_then_write_transactions_survive_a_busy_writer,
    events_are_deduplicated_per_device_and_listed_oldest_first,
    rollouts_keep_their_devices_and_apply_each_report_once_in_order,
    seen_times_are_batched_and_never_go_back,
    a_connect_reads_certificate_and_identity_in_one_query_as_in_two,
);

fn cert(serial: &str) -> NewCertificate {
    let now = OffsetDateTime::now_utc();
    NewCertificate {
        serial: serial.into(),
        fingerprint: format!("fp-{serial}"),
        not_before: now,
        not_after: now + Duration::days(90),
        key_algorithm: "ecdsa-p256".into(),
        issuer: "ca-fp".into(),
    }
}

fn device(id: &str, serial: &str) -> NewIdentity {
    NewIdentity::device(id, cert(serial), "cli")
}

/// A reading: `seq` and when it was taken are one-to-one, so a reading built again from the
/// same seq is the same reading re-sent (the key is device, ts and seq).
fn row(device: &str, seq: i64) -> TelemetryRow {
    TelemetryRow {
        device_id: device.into(),
        seq,
        ts: OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_790_000_000 + seq),
        received_at: OffsetDateTime::now_utc(),
        voltage_v: Some(52.0 + seq as f64 / 10.0),
        current_a: Some(-3.5),
        soc_pct: Some(80.0),
        soh_pct: Some(97.5),
        temp_min_c: Some(21.0),
        temp_max_c: Some(24.5),
        cell_min_v: Some(3.25),
        cell_max_v: Some(3.27),
        alarms: vec!["over_temperature".into()],
        body: format!("{{\"seq\":{seq}}}").into(),
    }
}

/// The seqs of a device's readings as the store reads them back (oldest first), up to `limit`.
async fn stored_seqs(s: &dyn Store, device: &str, limit: u32) -> Vec<i64> {
    s.telemetry(device, OffsetDateTime::UNIX_EPOCH, limit)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

/// What a CONNECT reads in one query is what the two separate reads return: for a known
/// certificate and the device it names, for a certificate naming another device, for an
/// identity that does not exist, after a revocation and after a disable.
async fn a_connect_reads_certificate_and_identity_in_one_query_as_in_two(db: &Db) {
    let s = db.open().await;
    s.add_identity(&device("gw-1", "11"))
        .await
        .expect("add gw-1");
    s.add_identity(&device("gw-2", "12"))
        .await
        .expect("add gw-2");
    let two = |fp: &'static str, id: &'static str| {
        let s = &s;
        async move {
            match s.certificate_by_fingerprint(fp).await.expect("certificate") {
                Some(c) => Some((c, s.device(id).await.expect("device"))),
                None => None,
            }
        }
    };
    let check = |fp: &'static str, id: &'static str| {
        let s = &s;
        async move {
            let one = s.certificate_and_identity(fp, id).await.expect("one query");
            assert_eq!(one, two(fp, id).await, "{fp} {id}");
            one
        }
    };
    let (c, d) = check("fp-11", "gw-1").await.expect("registered");
    assert_eq!(
        (c.device_id.as_str(), c.status),
        ("gw-1", CertificateStatus::Valid)
    );
    assert_eq!(d.expect("device").id, "gw-1");
    // A certificate presented under another device's name: both come back, apart.
    let (c, d) = check("fp-11", "gw-2").await.expect("registered");
    assert_eq!(
        (c.device_id.as_str(), d.expect("device").id.as_str()),
        ("gw-1", "gw-2")
    );
    assert!(
        check("fp-11", "gw-9")
            .await
            .expect("registered")
            .1
            .is_none()
    );
    assert!(check("fp-99", "gw-1").await.is_none());
    s.revoke_certificates("gw-1", "key compromise")
        .await
        .expect("revoke");
    let (c, _) = check("fp-11", "gw-1").await.expect("registered");
    assert_eq!(c.status, CertificateStatus::Revoked);
    assert_eq!(c.revocation_reason.as_deref(), Some("key compromise"));
    s.set_device_status("gw-2", DeviceStatus::Disabled)
        .await
        .expect("disable");
    let (_, d) = check("fp-12", "gw-2").await.expect("registered");
    assert_eq!(d.expect("device").status, DeviceStatus::Disabled);
}

async fn registry_lifecycle(db: &Db) {
    let s = db.open().await;
    s.add_identity(&device("gw-1", "01")).await.expect("add");
    let e = s
        .add_identity(&device("gw-1", "02"))
        .await
        .expect_err("duplicate id");
    assert!(
        matches!(
            e,
            StoreError::AlreadyExists {
                what: "identity",
                ..
            }
        ),
        "{e}"
    );
    let e = s
        .add_identity(&device("gw-2", "01"))
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

async fn telemetry_is_deduplicated_and_queried_by_time(db: &Db) {
    let s = db.open().await;
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
    // A reading is its device, when it was taken and its seq: a device whose seq started
    // over (its agent's state lost) sends seq 3 again, taken later. That is a new reading,
    // stored and read in time order, not a re-send dropped as a duplicate.
    let mut again = row("gw-1", 3);
    again.ts = rows[9].ts + Duration::seconds(60);
    assert_eq!(
        s.insert_telemetry(&[again.clone()])
            .await
            .expect("seq again"),
        1
    );
    assert_eq!(s.insert_telemetry(&[again]).await.expect("re-sent"), 0);
    let newest = s
        .telemetry("gw-1", OffsetDateTime::UNIX_EPOCH, 2)
        .await
        .expect("limit");
    assert_eq!(
        newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![10, 3]
    );
    assert!(
        s.telemetry("gw-2", OffsetDateTime::UNIX_EPOCH, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The ingest writer writes its next batch while the previous one's commit is pending
/// (`commit_telemetry`'s future). A reading in both — re-sent before its PUBACK, say — must
/// be stored once, and neither batch may be lost or fail.
async fn a_reading_resent_while_its_first_commit_is_pending_is_stored_once(db: &Db) {
    let s = db.open().await;
    let first: Vec<_> = (1..=10).map(|i| row("gw-1", i)).collect();
    let (n, durable) = s.commit_telemetry(first).await.expect("first batch");
    assert_eq!(n, 10);
    // Readings 6-10 again, and 11-15 new.
    let second: Vec<_> = (6..=15).map(|i| row("gw-1", i)).collect();
    let writer = Arc::clone(&s);
    let pending = tokio::spawn(async move {
        let (n, durable) = writer.commit_telemetry(second).await?;
        durable.await?;
        Ok::<_, StoreError>(n)
    });
    if matches!(db, Db::Postgres { .. }) {
        // PostgreSQL's first batch is uncommitted until its future runs: the second batch
        // waits on its rows, however long, instead of storing them twice.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !pending.is_finished(),
            "the second batch went ahead of an uncommitted first one"
        );
    }
    durable.await.expect("first batch durable");
    assert_eq!(pending.await.unwrap().expect("second batch"), 5);
    assert_eq!(
        stored_seqs(&*s, "gw-1", 100).await,
        (1..=15).collect::<Vec<_>>()
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

async fn retained_messages_roundtrip(db: &Db) {
    let s = db.open().await;
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

async fn group_commit_resolves_every_ticket_and_survives_reopen(db: &Db) {
    let s = db.open().await;
    let q = IngestQueue::spawn(s.clone(), 1024, Batching::immediate(256));
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
    let reopened = db.open().await;
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

/// QoS 0 rows (nobody waits) wait for company up to the linger; a row somebody waits for
/// takes them along at once; the linger's end commits them alone; closing the queue commits
/// what it holds.
async fn rows_nobody_waits_for_linger_until_a_waited_row_the_linger_or_close(db: &Db) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration as Wait;
    let lingering = |linger: Wait| Batching {
        linger,
        ..Batching::immediate(256)
    };
    let s = db.open().await;
    let committed_within = |stats: Arc<IngestStats>, n: u64, within: Wait| async move {
        let deadline = tokio::time::Instant::now() + within;
        while stats.committed.load(Relaxed) < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Wait::from_millis(10)).await;
        }
        stats.committed.load(Relaxed)
    };

    // A long linger: ten rows nobody waits for stay queued...
    let q = IngestQueue::spawn(s.clone(), 1024, lingering(Wait::from_secs(600)));
    for i in 1..=10 {
        q.submit_unacknowledged(row("gw-q0", i)).await.unwrap();
    }
    tokio::time::sleep(Wait::from_millis(300)).await;
    assert_eq!(
        q.stats().committed.load(Relaxed),
        0,
        "nobody waits: still lingering"
    );
    // ...until a row somebody waits for arrives: one commit holds all eleven.
    let ticket = q.submit(row("gw-q1", 1)).await.unwrap();
    tokio::time::timeout(Wait::from_secs(10), ticket)
        .await
        .expect("a waited row is committed without waiting for the linger")
        .expect("committed");
    assert_eq!(q.stats().committed.load(Relaxed), 11);
    assert_eq!(q.stats().batches.load(Relaxed), 1);

    // A short linger commits rows nobody waits for on its own.
    let q = IngestQueue::spawn(s.clone(), 1024, lingering(Wait::from_millis(50)));
    for i in 11..=15 {
        q.submit_unacknowledged(row("gw-q0", i)).await.unwrap();
    }
    assert_eq!(
        committed_within(q.stats().clone(), 5, Wait::from_secs(10)).await,
        5
    );

    // Closing the queue (the hub stopping) commits what lingers.
    let q = IngestQueue::spawn(s.clone(), 1024, lingering(Wait::from_secs(600)));
    for i in 16..=18 {
        q.submit_unacknowledged(row("gw-q0", i)).await.unwrap();
    }
    let stats = q.stats().clone();
    drop(q);
    assert_eq!(committed_within(stats, 3, Wait::from_secs(10)).await, 3);

    assert_eq!(
        stored_seqs(&*s, "gw-q0", 100).await,
        (1..=18).collect::<Vec<_>>()
    );
}

async fn audit_log_is_append_only_in_order(db: &Db) {
    let s = db.open().await;
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

async fn identity_kinds_groups_quarantine_and_approval(db: &Db) {
    let s = db.open().await;
    let mut n = device("gw-j", "11");
    n.pending = true;
    n.group = Some("berlin".into());
    n.attributes.insert("site".into(), "plant-7".into());
    n.registered_via = "jit:abc".into();
    s.add_identity(&n).await.unwrap();
    let mut svc = device("pipeline", "12");
    svc.kind = IdentityKind::Service;
    s.add_identity(&svc).await.unwrap();
    let d = s.device("gw-j").await.unwrap().unwrap();
    assert!(d.pending && !d.quarantined);
    assert_eq!(d.group.as_deref(), Some("berlin"));
    assert_eq!(
        d.attributes.get("site").map(String::as_str),
        Some("plant-7")
    );
    assert_eq!(d.registered_via, "jit:abc");
    assert_eq!(
        s.devices().await.unwrap().len(),
        1,
        "services are not devices"
    );
    assert_eq!(s.identities(None).await.unwrap().len(), 2);
    s.update_device(
        "gw-j",
        &DeviceUpdate {
            pending: Some(false),
            quarantined: Some(true),
            group: Some(None),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let d = s.device("gw-j").await.unwrap().unwrap();
    assert!(!d.pending && d.quarantined && d.group.is_none());
    assert_eq!(d.attributes.len(), 1, "untouched fields stay");
    assert!(matches!(
        s.update_device("nope", &DeviceUpdate::default()).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn revocation_retirement_and_crl_numbers(db: &Db) {
    let s = db.open().await;
    s.add_identity(&device("gw-1", "01")).await.unwrap();
    s.add_certificate("gw-1", &cert("02")).await.unwrap();
    // Rotation: the old certificate retires when its overlap window ends.
    let now = OffsetDateTime::now_utc();
    s.schedule_retirement("01", now + Duration::seconds(60))
        .await
        .unwrap();
    assert!(s.retire_due(now).await.unwrap().is_empty());
    let retired = s.retire_due(now + Duration::seconds(61)).await.unwrap();
    assert_eq!(
        retired
            .iter()
            .map(|c| c.serial.as_str())
            .collect::<Vec<_>>(),
        vec!["01"]
    );
    assert_eq!(
        s.certificate_by_fingerprint("fp-01")
            .await
            .unwrap()
            .unwrap()
            .status,
        CertificateStatus::Retired
    );
    // Revocation takes what is still valid.
    let revoked = s
        .revoke_certificates("gw-1", "key compromise")
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].serial, "02");
    let crl = s.revoked_certificates("ca-fp").await.unwrap();
    assert_eq!(crl.len(), 1);
    assert_eq!(crl[0].revocation_reason.as_deref(), Some("key compromise"));
    assert!(crl[0].revoked_at.is_some());
    assert_eq!(s.next_crl_number("ca-fp").await.unwrap(), 1);
    assert_eq!(s.next_crl_number("ca-fp").await.unwrap(), 2);
    assert_eq!(s.next_crl_number("other").await.unwrap(), 1);
}

async fn policies_are_versioned_and_attached(db: &Db) {
    let s = db.open().await;
    assert_eq!(s.put_policy("p", "v1").await.unwrap(), 1);
    assert_eq!(s.put_policy("p", "v2").await.unwrap(), 2);
    assert_eq!(s.policy("p").await.unwrap().unwrap().document, "v2");
    assert_eq!(
        s.policy_version("p", 1).await.unwrap().unwrap().document,
        "v1"
    );
    s.attach_policy("p", "fleet").await.unwrap();
    s.attach_policy("p", "fleet").await.unwrap();
    s.attach_policy("p", "group:berlin").await.unwrap();
    assert!(matches!(
        s.attach_policy("nope", "fleet").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.attachments().await.unwrap().len(), 2);
    s.detach_policy("p", "fleet").await.unwrap();
    assert!(s.detach_policy("p", "fleet").await.is_err());
    s.delete_policy("p").await.unwrap();
    assert!(
        s.attachments().await.unwrap().is_empty(),
        "attachments go with the policy"
    );
}

async fn claims_are_limited_in_uses_and_lifetime(db: &Db) {
    let s = db.open().await;
    let mut c = device("factory", "21");
    c.kind = IdentityKind::Claim;
    s.add_identity(&c).await.unwrap();
    let now = OffsetDateTime::now_utc();
    s.set_claim_limits("factory", Some(2), Some(now + Duration::hours(1)))
        .await
        .unwrap();
    assert_eq!(s.consume_claim("factory", now).await.unwrap().uses, 1);
    assert_eq!(s.consume_claim("factory", now).await.unwrap().uses, 2);
    let e = s.consume_claim("factory", now).await.unwrap_err();
    assert!(e.to_string().contains("all 2 uses are spent"), "{e}");
    s.set_claim_limits("factory", None, Some(now - Duration::seconds(1)))
        .await
        .unwrap();
    let e = s.consume_claim("factory", now).await.unwrap_err();
    assert!(e.to_string().contains("lifetime has ended"), "{e}");
    // Allow-list entries are used once.
    s.allow_serial(&AllowEntry {
        serial_number: "SN-1".into(),
        device_id: Some("gw-sn1".into()),
        group: None,
        attributes: Default::default(),
    })
    .await
    .unwrap();
    assert!(s.take_allowed_serial("SN-2", "x").await.unwrap().is_none());
    let e = s
        .take_allowed_serial("SN-1", "gw-sn1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.device_id.as_deref(), Some("gw-sn1"));
    assert!(
        s.take_allowed_serial("SN-1", "gw-sn1")
            .await
            .unwrap()
            .is_none()
    );
}

async fn trusted_cas_and_certificate_usage(db: &Db) {
    let s = db.open().await;
    let ca = TrustedCa {
        fingerprint: "cafp".into(),
        subject: "CN=Vendor CA".into(),
        certificate: "PEM".into(),
        auto_activate: false,
        template: CaTemplate {
            group: Some("vendor".into()),
            ..Default::default()
        },
        added_at: OffsetDateTime::now_utc(),
    };
    s.add_trusted_ca(&ca).await.unwrap();
    assert!(matches!(
        s.add_trusted_ca(&ca).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let back = s.trusted_cas().await.unwrap();
    assert_eq!(back[0].template.group.as_deref(), Some("vendor"));
    let now = OffsetDateTime::now_utc();
    let u = |c: &str| CertificateUsage {
        fingerprint: "f".into(),
        client_id: c.into(),
        first_seen: now,
        last_seen: now,
    };
    s.record_certificate_usage(&[u("a"), u("b"), u("a")])
        .await
        .unwrap();
    assert_eq!(s.certificate_usage().await.unwrap().len(), 2);
    s.remove_trusted_ca("cafp").await.unwrap();
    assert!(s.trusted_cas().await.unwrap().is_empty());
}

async fn read_then_write_transactions_survive_a_busy_writer(db: &Db) {
    let s = db.open().await;
    s.add_identity(&device("gw-1", "01")).await.unwrap();
    // A writer committing as fast as it can, like the telemetry group commit under load.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                s.insert_telemetry(&[row("gw-1", i + 1)]).await.unwrap();
            }
        })
    };
    // Meanwhile, transactions that read before they write.
    for i in 0..100 {
        s.update_device(
            "gw-1",
            &DeviceUpdate {
                quarantined: Some(i % 2 == 0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        s.add_certificate("gw-1", &cert(&format!("c{i}")))
            .await
            .unwrap();
        s.put_policy("p", &format!("v{i}")).await.unwrap();
    }
    writer.await.unwrap();
    assert_eq!(s.certificates("gw-1").await.unwrap().len(), 101);
}

async fn events_are_deduplicated_per_device_and_listed_oldest_first(db: &Db) {
    let s = db.open().await;
    let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("ts");
    let ev = |device: &str, seq: i64, kind: &str| EventRow {
        device_id: device.into(),
        seq,
        ts: at + Duration::seconds(seq),
        received_at: at + Duration::seconds(seq + 1),
        kind: kind.into(),
        body: format!("{{\"seq\":{seq}}}"),
    };
    let batch = vec![
        ev("gw-1", 1, "bms_unreachable"),
        ev("gw-1", 2, "bms_recovered"),
        ev("gw-2", 1, "data_dropped"),
    ];
    assert_eq!(s.insert_events(&batch).await.expect("insert"), 3);
    // Re-sent after a lost PUBACK: stored once.
    assert_eq!(s.insert_events(&batch[1..2]).await.expect("resend"), 0);
    let gw1 = s.events("gw-1", 10).await.expect("list");
    assert_eq!(gw1, vec![batch[0].clone(), batch[1].clone()]);
    let newest = s.events("gw-1", 1).await.expect("list");
    assert_eq!(newest, vec![batch[1].clone()]);
    assert!(s.events("gw-3", 10).await.expect("list").is_empty());
}

async fn rollouts_keep_their_devices_and_apply_each_report_once_in_order(db: &Db) {
    let s = db.open().await;
    let now = OffsetDateTime::now_utc();
    let mut r = RolloutRow {
        id: "r1".into(),
        target: "releases/1.1.0/app.tar".into(),
        version: "1.1.0".into(),
        plan: "{}".into(),
        state: "running".into(),
        wave: 0,
        accepted_failures: 0,
        reason: None,
        created_at: now,
        updated_at: now,
    };
    let dev = |id: &str, wave: i64| RolloutDeviceRow {
        device_id: id.into(),
        wave,
        state: "pending".into(),
        command: None,
        detail: None,
        last_seq: -1,
        updated_at: now,
    };
    s.create_rollout(&r, &[dev("b", 1), dev("a", 0)])
        .await
        .unwrap();
    assert!(matches!(
        s.create_rollout(&r, &[]).await,
        Err(StoreError::AlreadyExists {
            what: "rollout",
            ..
        })
    ));
    let ids: Vec<String> = s
        .rollout_devices("r1")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(ids, ["a", "b"], "by wave");

    s.set_rollout_device("r1", "a", "queued", Some("install"), -1)
        .await
        .unwrap();
    assert!(
        s.rollout_report("r1", "a", 5, "downloading", None)
            .await
            .unwrap()
    );
    assert!(
        s.rollout_report("r1", "a", 7, "succeeded", None)
            .await
            .unwrap()
    );
    // A re-sent older report, a repeat, a device outside the rollout: not applied.
    assert!(
        !s.rollout_report("r1", "a", 6, "installing", None)
            .await
            .unwrap()
    );
    assert!(
        !s.rollout_report("r1", "a", 7, "succeeded", None)
            .await
            .unwrap()
    );
    assert!(
        !s.rollout_report("r1", "zz", 9, "failed", None)
            .await
            .unwrap()
    );
    let a = &s.rollout_devices("r1").await.unwrap()[0];
    assert_eq!(
        (a.state.as_str(), a.command.as_deref(), a.last_seq),
        ("succeeded", Some("install"), 7)
    );

    // The hub read "b" before it reported (last_seq -1), sent the command, and the device's
    // answer was applied before the hub wrote the row: the hub's write keeps the answer.
    assert!(
        s.rollout_report("r1", "b", 3, "downloading", None)
            .await
            .unwrap()
    );
    s.set_rollout_device("r1", "b", "queued", Some("install"), -1)
        .await
        .unwrap();
    // After an abort, the command changes but the device's state stays what it reported.
    assert!(
        s.rollout_report("r1", "a", 8, "rolled_back", None)
            .await
            .unwrap()
    );
    s.set_rollout_device("r1", "a", "succeeded", Some("rollback"), 7)
        .await
        .unwrap();
    let rows = s.rollout_devices("r1").await.unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|d| (d.state.as_str(), d.command.as_deref(), d.last_seq))
        .collect();
    assert_eq!(
        got,
        [
            ("rolled_back", Some("rollback"), 8),
            ("downloading", Some("install"), 3)
        ]
    );
    // With no report in between, the hub's state is written.
    s.set_rollout_device("r1", "b", "cancelled", None, 3)
        .await
        .unwrap();
    assert_eq!(s.rollout_devices("r1").await.unwrap()[1].state, "cancelled");

    r.state = "paused".into();
    r.reason = Some("why".into());
    r.accepted_failures = 2;
    s.set_rollout_state(&r).await.unwrap();
    let back = s.rollout("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            back.state.as_str(),
            back.accepted_failures,
            back.reason.as_deref()
        ),
        ("paused", 2, Some("why"))
    );
    r.id = "nope".into();
    assert!(matches!(
        s.set_rollout_state(&r).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_rollout_device("r1", "zz", "queued", None, -1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.rollouts().await.unwrap().len(), 1);
}

async fn telemetry_fields_round_trip_exactly(db: &Db) {
    let s = db.open().await;
    let mut r = row("gw-\\odd\tid", 1);
    r.body =
        "{\"note\":\"back\\\\slash \\\"quoted\\\" tab\\t nl\\n\",\"raw\":\"\t\n\r\",\"u\":\"é🔋\"}"
            .into();
    r.voltage_v = Some(0.1);
    r.current_a = Some(-1e-7);
    r.soc_pct = Some(f64::MAX);
    r.soh_pct = None;
    r.alarms = vec!["cell\tover\\voltage".into(), "é".into()];
    let mut next = row("gw-\\odd\tid", 2);
    next.temp_min_c = Some(-0.0);
    assert_eq!(
        s.insert_telemetry(&[r.clone(), next.clone()])
            .await
            .unwrap(),
        2
    );
    // The same batch again (re-sent after a lost PUBACK), and one mixing old and new.
    assert_eq!(
        s.insert_telemetry(&[r.clone(), next.clone()])
            .await
            .unwrap(),
        0
    );
    let third = row("gw-\\odd\tid", 3);
    assert_eq!(
        s.insert_telemetry(&[next.clone(), third.clone()])
            .await
            .unwrap(),
        1
    );
    let back = s
        .telemetry("gw-\\odd\tid", OffsetDateTime::UNIX_EPOCH, 10)
        .await
        .unwrap();
    assert_eq!(back.len(), 3);
    let ms = |t: OffsetDateTime| t.unix_timestamp_nanos() / 1_000_000;
    for (got, want) in back.iter().zip([&r, &next, &third]) {
        assert_eq!(got.body, want.body);
        assert_eq!(got.alarms, want.alarms);
        assert_eq!(got.device_id, want.device_id);
        assert_eq!(ms(got.ts), ms(want.ts));
        for (a, b) in [
            (got.voltage_v, want.voltage_v),
            (got.current_a, want.current_a),
            (got.soc_pct, want.soc_pct),
            (got.soh_pct, want.soh_pct),
            (got.temp_min_c, want.temp_min_c),
        ] {
            assert_eq!(a, b);
        }
    }
}

/// PostgreSQL only: a server (or a URL) that would acknowledge commits a crash can lose is
/// refused, and so are a bad URL, an unsafe schema name and an unreachable server.
#[tokio::test]
async fn postgres_refuses_unsafe_or_broken_settings() {
    let Some(Db::Postgres { url, schema }) = Db::postgres("refusals") else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    for level in ["off", "local"] {
        let mut o = PgOptions::new(format!(
            "{url}{sep}options=-c%20synchronous_commit%3D{level}"
        ));
        o.schema = schema.clone();
        let e = PgStore::open(&o).await.expect_err(level).to_string();
        assert!(e.contains(&format!("synchronous_commit = {level}")), "{e}");
    }
    let mut o = PgOptions::new("mysql://nope");
    o.schema = schema.clone();
    let e = PgStore::open(&o).await.expect_err("bad url").to_string();
    assert!(e.contains("postgres url"), "{e}");
    let mut o = PgOptions::new(url.clone());
    o.schema = "x; DROP SCHEMA public".into();
    let e = PgStore::open(&o).await.expect_err("bad schema").to_string();
    assert!(e.contains("only lower-case letters"), "{e}");
    // Nothing listens on port 1 of loopback.
    let mut o = PgOptions::new("postgres://postgres@127.0.0.1:1/test");
    o.schema = schema.clone();
    let e = PgStore::open(&o)
        .await
        .expect_err("unreachable")
        .to_string();
    assert!(e.contains("database error"), "{e}");
    Db::Postgres { url, schema }.finish().await;
}

async fn seen_times_are_batched_and_never_go_back(db: &Db) {
    let s = db.open().await;
    // More devices than one multi-row statement holds.
    for i in 0..250 {
        s.add_identity(&device(&format!("gw-{i:03}"), &format!("{i:04x}")))
            .await
            .unwrap();
    }
    let t0 = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let seen = |id: &str, at: OffsetDateTime, address: &str| Seen {
        device_id: id.into(),
        at,
        address: address.into(),
    };
    let mut batch: Vec<Seen> = (0..250)
        .map(|i| seen(&format!("gw-{i:03}"), t0, &format!("127.0.0.{}:1", i % 200)))
        .collect();
    // An identity that is not registered is skipped, not an error.
    batch.push(seen("nobody", t0, "127.0.0.9:9"));
    s.record_seen_many(&batch).await.unwrap();
    for i in [0, 99, 100, 249] {
        let d = s.device(&format!("gw-{i:03}")).await.unwrap().unwrap();
        assert_eq!(d.last_seen_at, Some(t0), "gw-{i:03}");
        assert_eq!(
            d.last_address.as_deref(),
            Some(format!("127.0.0.{}:1", i % 200).as_str())
        );
    }
    // An older time (a batch flushed late) does not overwrite a newer one; a newer one does.
    s.record_seen_many(&[
        seen("gw-000", t0 - Duration::seconds(5), "10.0.0.1:1"),
        seen("gw-001", t0 + Duration::seconds(5), "10.0.0.2:2"),
    ])
    .await
    .unwrap();
    let d0 = s.device("gw-000").await.unwrap().unwrap();
    assert_eq!(
        (d0.last_seen_at, d0.last_address.as_deref()),
        (Some(t0), Some("127.0.0.0:1"))
    );
    let d1 = s.device("gw-001").await.unwrap().unwrap();
    assert_eq!(
        (d1.last_seen_at, d1.last_address.as_deref()),
        (Some(t0 + Duration::seconds(5)), Some("10.0.0.2:2"))
    );
    s.record_seen_many(&[]).await.unwrap();
}

/// SQLite commits telemetry to an append-only log and moves it out in steps, one per commit:
/// a device's many readings into chunks, a device's few into `telemetry`. Before, during and
/// after a move, and across a reopen in the middle of one (which resumes it where it was),
/// every reading is stored once, reads see each once in order, and so does the
/// `telemetry_readings` view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_telemetry_log_moves_in_steps_and_keeps_every_reading_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("rampart.db");
    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    let devices = ["gw-a", "gw-b", "gw-c"];
    // Five commits past the log's bound.
    let per_device = (TELEMETRY_LOG_ROWS / devices.len() + 60) as i64;
    // Interleaved as a hub receives them from many devices, a few rows of each per commit:
    // 30 rows per commit, 10 of each device, so that commits go to the log (a device with
    // 16 rows or more in a commit has them stored as one chunk). A fourth device sends one
    // reading: too few for a chunk when it is moved, so it is copied into the table.
    let mut all: Vec<TelemetryRow> = (1..=per_device)
        .flat_map(|seq| devices.map(|d| row(d, seq)))
        .collect();
    all.insert(100, row("gw-z", 1));
    let mut new = 0;
    const { assert!(10 < DIRECT_ROWS_PER_DEVICE && MOVE_CHUNK_MIN_READINGS == 2) };
    for batch in all.chunks(30) {
        new += s.insert_telemetry(batch).await.unwrap();
    }
    assert_eq!(new, all.len() as u64);
    let count = |sql: &'static str| {
        let path = path.clone();
        async move {
            let pool = side_pool(&path).await;
            let n = count_rows(pool.clone(), sql).await;
            pool.close().await;
            n
        }
    };
    let table = || count("FROM telemetry");
    let log = || count("FROM telemetry_log");
    // Readings in chunks, each counted (a chunk holds what a move puts in one: at least two
    // readings, at most 1,024).
    let chunked = || {
        count(
            "FROM telemetry_chunks AS c, json_each(c.readings) \
             WHERE c.n_readings <= 1024 AND c.n_readings >= 2",
        )
    };
    const { assert!(CHUNK_READINGS == 1_024 && MOVE_CHUNK_MIN_READINGS == 2) };
    let view = || count("FROM telemetry_readings");
    let check = |rows: Vec<TelemetryRow>, from: i64, to: i64| {
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (from..=to).collect::<Vec<_>>()
        );
    };
    let reads_whole = |s: SqliteStore, to: i64| async move {
        for d in devices {
            let to = if d == "gw-a" { to } else { per_device };
            let rows = s
                .telemetry(d, OffsetDateTime::UNIX_EPOCH, 100_000)
                .await
                .unwrap();
            check(rows, 1, to);
            // The newest rows alone: the limit applies to the merged, ordered rows.
            let rows = s
                .telemetry(d, OffsetDateTime::UNIX_EPOCH, 300)
                .await
                .unwrap();
            check(rows, to - 299, to);
        }
        let rows = s
            .telemetry("gw-z", OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .unwrap();
        check(rows, 1, 1);
    };

    // The log passed its bound five commits before the end: a move began, and each commit
    // since wrote a step of its rows into chunks. None is deleted from the log yet, so those
    // rows are in two places, and reads and the view still see every reading once.
    let copied = chunked().await;
    assert!(
        (4 * CHUNK_READINGS..TELEMETRY_LOG_ROWS).contains(&copied),
        "{copied} rows moved by the steps so far"
    );
    assert_eq!(table().await, 0);
    assert_eq!(log().await, all.len());
    assert_eq!(view().await, all.len());
    reads_whole(s.clone(), per_device).await;

    // Re-sent readings — one moved, one of the last device the move copies (in key order,
    // device by device: not copied yet), one appended since the move began, one twice in a
    // batch — are not new.
    let in_move = all
        .iter()
        .find(|r| &*r.device_id == "gw-c" && r.seq == per_device - 60)
        .cloned()
        .expect("gw-c's reading");
    let resend = vec![
        all[0].clone(),
        in_move,
        all[all.len() - 1].clone(),
        all[all.len() - 1].clone(),
    ];
    assert_eq!(s.insert_telemetry(&resend).await.unwrap(), 0);
    s.close().await;

    // Reopened in the middle of the move: re-sent readings are still not new, and the next
    // commits take the move up where it was, writing none of its rows twice.
    let mut s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    assert_eq!(s.insert_telemetry(&resend).await.unwrap(), 0);
    assert_eq!(chunked().await, copied);
    let mut seq = per_device;
    let mut commits = 0;
    // Each one-row commit is one step: up to CHUNK_READINGS rows moved (the rest of a
    // device's rows, at most), then eight times MOVE_STEP_ROWS deleted. The move holds the
    // log as it was when the move began, fewer rows than `all`.
    let steps = (all.len() - copied).div_ceil(CHUNK_READINGS)
        + devices.len()
        + 1
        + all.len().div_ceil(8 * MOVE_STEP_ROWS);
    let mut reopened = false;
    while count("FROM telemetry_move").await > 0 {
        seq += 1;
        commits += 1;
        assert_eq!(s.insert_telemetry(&[row("gw-a", seq)]).await.unwrap(), 1);
        assert!(
            commits <= steps,
            "the move had not ended after {commits} commits"
        );
        if commits % 10 == 0 {
            assert_eq!(view().await, all.len() + commits);
            reads_whole(s.clone(), seq).await;
        }
        // Reopened once more when every row is written out and the log's copies are being
        // deleted (gw-z's rows come last in key order): the deleting goes on.
        if !reopened && count("FROM telemetry_move WHERE device_id = 'gw-z'").await == 1 {
            reopened = true;
            s.close().await;
            s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
            assert_eq!(s.insert_telemetry(&resend).await.unwrap(), 0);
            assert_eq!(view().await, all.len() + commits);
            reads_whole(s.clone(), seq).await;
        }
    }
    assert!(reopened, "the move was not seen deleting");
    // Moved: the log as it was when the move began is in chunks or the table, once; the
    // rows since, from before the reopen and after it, are in the log.
    let moved = chunked().await + table().await;
    assert!(
        (TELEMETRY_LOG_ROWS..all.len()).contains(&moved),
        "{moved} rows moved"
    );
    assert_eq!(table().await, 1, "gw-z's one reading, a row");
    let logged = log().await;
    assert_eq!(moved + logged, all.len() + commits);
    assert_eq!(view().await, all.len() + commits);
    assert_eq!(s.insert_telemetry(&resend).await.unwrap(), 0);

    // An explicit move takes the rest.
    assert_eq!(s.compact_telemetry().await.unwrap() as usize, logged);
    assert_eq!(s.compact_telemetry().await.unwrap(), 0);
    assert_eq!(log().await, 0);
    assert_eq!(chunked().await + table().await, all.len() + commits);
    assert_eq!(view().await, all.len() + commits);
    reads_whole(s.clone(), seq).await;
    assert_eq!(s.insert_telemetry(&resend).await.unwrap(), 0);
    s.close().await;
}

/// The writer skips the lookup for re-sent readings when a reading's seq is above the
/// highest its device may have in `telemetry`, a bound kept in memory: moves must raise it,
/// or a reading re-sent after its move would be stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_reading_resent_after_its_move_is_stored_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = SqliteStore::open(&SqliteOptions::new(dir.path().join("rampart.db")))
        .await
        .unwrap();
    // The device's bound is read at its first write: nothing in `telemetry` yet.
    assert_eq!(s.insert_telemetry(&[row("gw-a", 1)]).await.unwrap(), 1);
    assert_eq!(s.insert_telemetry(&[row("gw-a", 2)]).await.unwrap(), 1);
    // Both leave the log for the table.
    assert_eq!(s.compact_telemetry().await.unwrap(), 2);
    // Re-sent, each alone and both together: not new; the next seq is.
    assert_eq!(s.insert_telemetry(&[row("gw-a", 2)]).await.unwrap(), 0);
    assert_eq!(s.insert_telemetry(&[row("gw-a", 1)]).await.unwrap(), 0);
    assert_eq!(
        s.insert_telemetry(&[row("gw-a", 1), row("gw-a", 3), row("gw-a", 2)])
            .await
            .unwrap(),
        1
    );
    // A device first written after its readings were moved (here: after a reopen) reads
    // its bound from the table.
    s.compact_telemetry().await.unwrap();
    s.close().await;
    let s = SqliteStore::open(&SqliteOptions::new(dir.path().join("rampart.db")))
        .await
        .unwrap();
    assert_eq!(s.insert_telemetry(&[row("gw-a", 3)]).await.unwrap(), 0);
    assert_eq!(s.insert_telemetry(&[row("gw-a", 4)]).await.unwrap(), 1);
    let since = OffsetDateTime::UNIX_EPOCH;
    assert_eq!(s.telemetry("gw-a", since, 100).await.unwrap().len(), 4);
    s.close().await;
}

/// Closing the store closes the telemetry writer's connection for good, as it closes the
/// pool; the store opened again reads the log's keys back, so re-sent readings are still
/// recognised, and a batch larger than one multi-row statement keeps every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_closed_store_refuses_telemetry_and_its_successor_knows_the_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("rampart.db");
    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    // Twenty devices, so that no commit holds enough rows per device to skip the log.
    let device = |seq: i64| format!("gw-{:02}", seq % 20);
    let first: Vec<TelemetryRow> = (1..=100).map(|seq| row(&device(seq), seq)).collect();
    assert_eq!(s.insert_telemetry(&first).await.unwrap(), 100);
    s.close().await;
    let refused = s.insert_telemetry(&[row("gw-00", 101)]).await;
    assert!(matches!(refused, Err(StoreError::Closed)), "{refused:?}");
    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    // 50..=100 are in the log; 101..=250 are new: 150 rows, three statements (64, 64, 22).
    let next: Vec<TelemetryRow> = (50..=250).map(|seq| row(&device(seq), seq)).collect();
    assert_eq!(s.insert_telemetry(&next).await.unwrap(), 150);
    assert_eq!(s.insert_telemetry(&next).await.unwrap(), 0);
    // The rowids the writer recorded are the rows': the move takes exactly these 250.
    assert_eq!(s.compact_telemetry().await.unwrap(), 250);
    for d in 0..20 {
        assert_eq!(
            stored_seqs(&s, &device(d), 1_000).await,
            (1..=250).filter(|q| q % 20 == d).collect::<Vec<_>>()
        );
    }
    assert_eq!(s.insert_telemetry(&first).await.unwrap(), 0);
    s.close().await;
}

/// The lookup every CONNECT makes runs on the caller's thread on SQLite (not through the
/// pool): many at once each get the answer, a revocation committed through the pool is seen
/// by the next one, and a closed store refuses it as it refuses every other query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_connect_lookups_run_side_by_side_see_each_commit_and_stop_at_close() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = SqliteStore::open(&SqliteOptions::new(dir.path().join("rampart.db")))
        .await
        .unwrap();
    for i in 0..8 {
        s.add_identity(&device(&format!("gw-{i}"), &format!("{}", 100 + i)))
            .await
            .unwrap();
    }
    let lookups: Vec<_> = (0..32)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    let i = (t + n) % 8;
                    let (c, d) = s
                        .certificate_and_identity(&format!("fp-{}", 100 + i), &format!("gw-{i}"))
                        .await
                        .unwrap()
                        .expect("registered");
                    assert_eq!(c.device_id, format!("gw-{i}"));
                    assert_eq!(d.expect("device").id, c.device_id);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for l in lookups {
        l.await.unwrap();
    }
    s.revoke_certificates("gw-3", "key compromise")
        .await
        .unwrap();
    let (c, _) = s
        .certificate_and_identity("fp-103", "gw-3")
        .await
        .unwrap()
        .expect("still registered");
    assert_eq!(c.status, CertificateStatus::Revoked);
    assert_eq!(
        s.certificate_and_identity("fp-999", "gw-3").await.unwrap(),
        None
    );
    s.close().await;
    let refused = s.certificate_and_identity("fp-100", "gw-0").await;
    assert!(matches!(refused, Err(StoreError::Closed)), "{refused:?}");
}

/// A pool of the test's own on the store's database file, beside the store's connections.
async fn side_pool(path: &std::path::Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

/// A new SQLite store in a directory of its own (kept while the returned `TempDir` lives), the
/// database's path, and a connection of the test's own beside the store's.
async fn sqlite_with_side() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    SqliteStore,
    sqlx::SqlitePool,
) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("rampart.db");
    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    let side = side_pool(&path).await;
    (dir, path, s, side)
}

/// `SELECT count(*) {from}` on a connection of the test's own, beside the store's.
async fn count_rows(side: sqlx::SqlitePool, from: &'static str) -> usize {
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) {from}")))
        .fetch_one(&side)
        .await
        .unwrap();
    n as usize
}

/// Readings `seqs` of two devices, interleaved as a hub receives them: 20 or more of each
/// make a commit dense enough to skip the log.
fn dense(seqs: std::ops::RangeInclusive<i64>) -> Vec<TelemetryRow> {
    seqs.flat_map(|seq| ["gw-a", "gw-b"].map(|d| row(d, seq)))
        .collect()
}

/// A fleet of many devices sending slowly: each commit holds a reading of some of them, so
/// every reading goes to the log, and a move finds a few of each device's there. Those are
/// written as a chunk per device (two readings or more), not copied a row each; each reading
/// is read once, through the store and the view, before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_move_writes_a_slow_fleets_few_readings_per_device_as_chunks() {
    let (_dir, _, s, side) = sqlite_with_side().await;
    let count = |sql: &'static str| count_rows(side.clone(), sql);
    // 4,100 devices, 4 readings each: the log's bound, in commits of 400 readings from 400
    // devices (one each, far below a direct chunk's 16).
    let (devices, per_device) = (4_100_usize, 4_i64);
    const { assert!(MOVE_CHUNK_MIN_READINGS <= 2 && TELEMETRY_LOG_ROWS <= 4_100 * 4) };
    let name = |d: usize| format!("gw-{d:05}");
    let all: Vec<TelemetryRow> = (1..=per_device)
        .flat_map(|seq| (0..devices).map(move |d| (d, seq)))
        .map(|(d, seq)| row(&name(d), seq))
        .collect();
    for batch in all.chunks(400) {
        assert_eq!(s.insert_telemetry(batch).await.unwrap(), 400);
    }
    assert_eq!(count("FROM telemetry_log").await, all.len());
    // The next commit begins the move and does its first step; a device new to it sends one
    // reading, which stays in the log for the next move.
    assert_eq!(s.insert_telemetry(&[row("gw-new", 1)]).await.unwrap(), 1);
    assert!(count("FROM telemetry_chunks").await > 0);
    assert_eq!(count("FROM telemetry_move").await, 1);
    assert_eq!(count("FROM telemetry_readings").await, all.len() + 1);
    // The rest of the move, and of the log, now.
    s.compact_telemetry().await.unwrap();
    assert_eq!(count("FROM telemetry_log").await, 0);
    assert_eq!(count("FROM telemetry_move").await, 0);
    assert_eq!(
        count("FROM telemetry").await,
        1,
        "gw-new's one reading, a row"
    );
    assert_eq!(
        count("FROM telemetry_chunks WHERE n_readings <> 4").await,
        0,
        "a chunk per device and move, of its few readings"
    );
    assert_eq!(count("FROM telemetry_chunks").await, devices);
    assert_eq!(
        count("FROM telemetry_chunks AS c, json_each(c.readings)").await,
        all.len()
    );
    assert_eq!(count("FROM telemetry_readings").await, all.len() + 1);
    assert_eq!(
        count("FROM (SELECT DISTINCT device_id, seq FROM telemetry_readings)").await,
        all.len() + 1
    );
    for d in [0, 1_999, devices - 1] {
        let rows = s
            .telemetry(&name(d), OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=per_device).collect::<Vec<_>>()
        );
        let want = row(&name(d), 1);
        assert_eq!(
            (
                rows[0].ts,
                rows[0].voltage_v,
                &rows[0].alarms,
                &rows[0].body
            ),
            (want.ts, want.voltage_v, &want.alarms, &want.body)
        );
    }
    // Re-sent readings are not new, whichever chunk holds them.
    let resend = vec![
        all[0].clone(),
        all[all.len() / 2].clone(),
        all[all.len() - 1].clone(),
    ];
    assert_eq!(s.insert_telemetry(&resend).await.unwrap(), 0);
    side.close().await;
    s.close().await;
}

/// A step of a move that fails does not take its commit's readings with it: they are stored
/// and acknowledged, the move waits in the log, and the next commit after the cause is gone
/// moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failing_move_step_loses_no_reading() {
    let (_dir, _, s, side) = sqlite_with_side().await;
    let count = |sql: &'static str| count_rows(side.clone(), sql);
    // Every write of a chunk fails, as a full disk or a corrupt page would make it.
    sqlx::query(
        "CREATE TRIGGER refuse_copy BEFORE INSERT ON telemetry_chunks \
         BEGIN SELECT RAISE(ABORT, 'chunk refused by the test'); END",
    )
    .execute(&side)
    .await
    .unwrap();
    let all: Vec<TelemetryRow> = (1..=(TELEMETRY_LOG_ROWS as i64 + 1_000))
        .map(|seq| row("gw-a", seq))
        .collect();
    // Commits of one device's rows, too few to go straight to the table: to the log.
    let chunk = DIRECT_ROWS_PER_DEVICE - 1;
    for batch in all.chunks(chunk) {
        // Past the bound every commit tries a step, and each fails; the batch is stored.
        assert_eq!(s.insert_telemetry(batch).await.unwrap(), batch.len() as u64);
    }
    assert_eq!(count("FROM telemetry").await, 0);
    assert_eq!(count("FROM telemetry_chunks").await, 0);
    assert_eq!(count("FROM telemetry_move").await, 0, "no step recorded");
    assert_eq!(count("FROM telemetry_log").await, all.len());
    // Each commit past the bound tried a step, and each failure is counted for the metrics.
    let failures = s.telemetry_upkeep_failures();
    // (Commits that start with fewer rows in the log than the bound try none.)
    let past_bound = all.len().div_ceil(chunk) - TELEMETRY_LOG_ROWS.div_ceil(chunk);
    assert_eq!(failures, past_bound as u64);
    assert_eq!(count("FROM telemetry_readings").await, all.len());
    let read = s
        .telemetry("gw-a", OffsetDateTime::UNIX_EPOCH, 100_000)
        .await
        .unwrap();
    assert_eq!(read.len(), all.len());
    // Re-sent readings are still recognised.
    assert_eq!(s.insert_telemetry(&all[..10]).await.unwrap(), 0);

    // The cause gone, the next commit's step moves rows into a chunk and records it.
    sqlx::query("DROP TRIGGER refuse_copy")
        .execute(&side)
        .await
        .unwrap();
    let next = all.len() as i64 + 1;
    assert_eq!(s.insert_telemetry(&[row("gw-a", next)]).await.unwrap(), 1);
    assert!(count("FROM telemetry_chunks").await > 0);
    assert_eq!(count("FROM telemetry_move").await, 1);
    assert_eq!(s.telemetry_upkeep_failures(), failures);
    assert_eq!(count("FROM telemetry_readings").await, all.len() + 1);
    assert_eq!(s.compact_telemetry().await.unwrap() as usize, all.len() + 1);
    // Into chunks, and a single row a step may end a device's run with into the table.
    let chunked = count("FROM telemetry_chunks AS c, json_each(c.readings)").await;
    assert_eq!(chunked + count("FROM telemetry").await, all.len() + 1);
    assert_eq!(count("FROM telemetry_move").await, 0);
    assert_eq!(count("FROM telemetry_log").await, 0);
    side.close().await;
    s.close().await;
}

/// SQLite copies the WAL into the database once it holds 40 MiB, not at its default of
/// 1,000 pages (4 MiB): a page that several commits change in between is copied once
/// (docs/storage.md). The WAL file keeps the largest size it reached, so it shows where the
/// checkpoints happened. `page_size` is the database's: a new one gets 8 KiB pages, and a
/// database made with 4 KiB pages before keeps them and the same 40 MiB bound.
async fn wal_is_checkpointed_at_40_mib(dir: &std::path::Path, page_size: u64) {
    const MIB: u64 = 1024 * 1024;
    let path = dir.join("rampart.db");
    let mut options = SqliteOptions::new(&path);
    // No fsync per commit: only the WAL's size is looked at.
    options.synchronous = Synchronous::Normal;
    let s = SqliteStore::open(&options).await.unwrap();
    let side = rusqlite::Connection::open(&path).unwrap();
    let pages: i64 = side
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    assert_eq!(pages as u64, page_size, "the database's page size");
    drop(side);
    let wal_bytes = || std::fs::metadata(dir.join("rampart.db-wal")).map_or(0, |m| m.len());
    let mut seq = 0;
    let mut write = async |n: u64| {
        for _ in 0..n {
            let batch: Vec<TelemetryRow> = (0..2_000)
                .map(|i| row(&format!("gw-{}", i % 100), seq + i / 100))
                .collect();
            seq += 20;
            s.insert_telemetry(&batch).await.unwrap();
        }
    };
    // Past SQLite's default, within a bound on the rows written.
    let mut written = 0;
    while wal_bytes() < 8 * MIB && written < 100 {
        write(1).await;
        written += 1;
    }
    let bytes = wal_bytes();
    assert!(
        bytes >= 8 * MIB,
        "the WAL stayed at {bytes} bytes after {written} commits of 2,000 readings: checkpointed early"
    );
    // Then as many commits again as write 60 MiB in all: the WAL grew to 40 MiB, was copied
    // and started over on the way, and never grew far past 40 MiB (a commit's frames, plus
    // each frame's 24-byte header).
    let per_commit = bytes.div_ceil(written).max(1);
    write((60 * MIB).div_ceil(per_commit).saturating_sub(written)).await;
    let bytes = wal_bytes();
    assert!(
        (36 * MIB..44 * MIB).contains(&bytes),
        "the WAL reached {bytes} bytes at most: not checkpointed at 40 MiB"
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_new_database_has_8_kib_pages_and_its_wal_is_checkpointed_at_40_mib() {
    let dir = tempfile::tempdir().expect("tmp");
    wal_is_checkpointed_at_40_mib(dir.path(), 8192).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_database_made_with_4_kib_pages_keeps_them_and_its_wal_is_checkpointed_at_40_mib()
{
    let dir = tempfile::tempdir().expect("tmp");
    // A database whose first table was written with SQLite's default page size, as every
    // database made before 8 KiB pages was.
    let old = rusqlite::Connection::open(dir.path().join("rampart.db")).unwrap();
    old.execute_batch("PRAGMA page_size = 4096; CREATE TABLE first (a); DROP TABLE first;")
        .unwrap();
    drop(old);
    wal_is_checkpointed_at_40_mib(dir.path(), 4096).await;
}

/// A device's rows of the `telemetry_readings` view, oldest first, as the store's rows.
async fn viewed(side: &sqlx::SqlitePool, device: &str) -> Vec<TelemetryRow> {
    sqlx::query("SELECT * FROM telemetry_readings WHERE device_id = ?1 ORDER BY ts, seq")
        .bind(device)
        .fetch_all(side)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let ms = |c: &str| {
                OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(r.get::<i64, _>(c)) * 1_000_000,
                )
                .unwrap()
            };
            TelemetryRow {
                device_id: r.get::<String, _>("device_id").into(),
                seq: r.get("seq"),
                ts: ms("ts"),
                received_at: ms("received_at"),
                voltage_v: r.get("voltage_v"),
                current_a: r.get("current_a"),
                soc_pct: r.get("soc_pct"),
                soh_pct: r.get("soh_pct"),
                temp_min_c: r.get("temp_min_c"),
                temp_max_c: r.get("temp_max_c"),
                cell_min_v: r.get("cell_min_v"),
                cell_max_v: r.get("cell_max_v"),
                alarms: serde_json::from_str(r.get("alarms")).unwrap(),
                body: r.get::<String, _>("body").into(),
            }
        })
        .collect()
}

/// Chunks are written as SQLite's binary JSON; those written as JSON text before that read
/// alike, through the store and the view, beside new ones. Bodies and alarms holding what
/// JSON escapes (quotes, backslashes, control characters, non-ASCII) come back as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_chunks_of_binary_json_and_of_json_text_read_alike() {
    let (_dir, _, s, side) = sqlite_with_side().await;
    let awkward = |mut r: TelemetryRow| {
        r.body = format!(
            "{{\"seq\":{},\"note\":\"a \\\"quote\\\", a \\\\ and ünïcode\"}}\n\t",
            r.seq
        )
        .into();
        r.alarms = vec!["cell_\"over\"_voltage".into(), "tab\there".into()];
        r.soh_pct = None;
        r
    };
    const { assert!(20 >= DIRECT_ROWS_PER_DEVICE) };
    let rows: Vec<TelemetryRow> = dense(1..=20).into_iter().map(awkward).collect();
    assert_eq!(s.insert_telemetry(&rows).await.unwrap(), 40);
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT typeof(readings) FROM telemetry_chunks")
            .fetch_all(&side)
            .await
            .unwrap();
    assert_eq!(kinds, ["blob"], "new chunks are binary JSON");
    // A chunk of gw-c as the release before wrote it: JSON text, body and alarms as JSON
    // strings.
    let old: Vec<TelemetryRow> = (1..=3).map(|q| awkward(row("gw-c", q))).collect();
    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let text = serde_json::to_string(
        &old.iter()
            .map(|r| {
                serde_json::json!([
                    r.seq,
                    ms(r.ts),
                    ms(r.received_at),
                    r.voltage_v,
                    r.current_a,
                    r.soc_pct,
                    r.soh_pct,
                    r.temp_min_c,
                    r.temp_max_c,
                    r.cell_min_v,
                    r.cell_max_v,
                    r.alarms,
                    r.body
                ])
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    sqlx::query(
        "INSERT INTO telemetry_chunks (device_id, ts_last, seq_last, ts_first, n_readings, \
         readings) VALUES ('gw-c', ?1, 3, ?2, 3, ?3)",
    )
    .bind(ms(old[2].ts))
    .bind(ms(old[0].ts))
    .bind(&text)
    .execute(&side)
    .await
    .unwrap();
    // Received times as stored: whole milliseconds.
    let stored = |r: &TelemetryRow| {
        let mut r = r.clone();
        r.received_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms(r.received_at)) * 1_000_000)
                .unwrap();
        r
    };
    for (device, sent) in [
        (
            "gw-a",
            rows.iter()
                .filter(|r| r.device_id == "gw-a")
                .cloned()
                .collect::<Vec<_>>(),
        ),
        ("gw-c", old.clone()),
    ] {
        let want: Vec<TelemetryRow> = sent.iter().map(stored).collect();
        let read = s
            .telemetry(device, OffsetDateTime::UNIX_EPOCH, 1_000)
            .await
            .unwrap();
        assert_eq!(read, want, "{device} through the store");
        assert_eq!(
            viewed(&side, device).await,
            want,
            "{device} through the view"
        );
    }
    side.close().await;
    s.close().await;
}

/// A commit holding many rows of a device writes them as one chunk, without the log's copy.
/// Re-sent readings are still recognised — in a dense commit, in a sparse one, and after a
/// reopen — readings in the log, in chunks and in both kinds of commit are each read once,
/// and the `telemetry_readings` view shows each chunk's readings as rows with their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dense_commits_skip_the_log_and_keep_every_reading_once() {
    let (_dir, path, s, side) = sqlite_with_side().await;
    let count = |sql: &'static str| count_rows(side.clone(), sql);
    // 20 rows of each of two devices: a chunk each.
    const { assert!(20 >= DIRECT_ROWS_PER_DEVICE) };
    assert_eq!(s.insert_telemetry(&dense(1..=20)).await.unwrap(), 40);
    assert_eq!(count("FROM telemetry_log").await, 0);
    assert_eq!(count("FROM telemetry").await, 0);
    assert_eq!(count("FROM telemetry_chunks").await, 2);
    // Re-sent whole, or one reading alone: not new.
    assert_eq!(s.insert_telemetry(&dense(1..=20)).await.unwrap(), 0);
    assert_eq!(s.insert_telemetry(&[row("gw-a", 20)]).await.unwrap(), 0);
    // A sparse commit goes to the log.
    assert_eq!(s.insert_telemetry(&[row("gw-a", 21)]).await.unwrap(), 1);
    assert_eq!(count("FROM telemetry_log").await, 1);
    // A dense commit holding that logged reading again stores only the others.
    let mut next = dense(22..=41);
    next.push(row("gw-a", 21));
    assert_eq!(s.insert_telemetry(&next).await.unwrap(), 40);
    assert_eq!(count("FROM telemetry_log").await, 1);
    assert_eq!(count("FROM telemetry_chunks").await, 4);
    assert_eq!(count("FROM telemetry_readings").await, 81);
    let seqs = |rows: Vec<TelemetryRow>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
    let read = |d: &'static str| {
        let s = s.clone();
        async move {
            s.telemetry(d, OffsetDateTime::UNIX_EPOCH, 1_000)
                .await
                .unwrap()
        }
    };
    assert_eq!(seqs(read("gw-a").await), (1..=41).collect::<Vec<_>>());
    let b: Vec<i64> = (1..=20).chain(22..=41).collect();
    assert_eq!(seqs(read("gw-b").await), b);
    // The view's rows are the readings as read, value for value.
    let viewed = viewed(&side, "gw-a").await;
    assert_eq!(viewed, read("gw-a").await);
    // Reads with a start and a limit: the newest at or after the start, across chunks and
    // the log.
    let since = OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_790_000_000 + 15);
    let newest = s.telemetry("gw-a", since, 10).await.unwrap();
    assert_eq!(seqs(newest), (32..=41).collect::<Vec<_>>());
    let newest = s.telemetry("gw-a", since, 30).await.unwrap();
    assert_eq!(seqs(newest), (15..=41).collect::<Vec<_>>());
    let newest = s.telemetry("gw-b", since, 8).await.unwrap();
    assert_eq!(seqs(newest), (34..=41).collect::<Vec<_>>());
    s.close().await;

    // A new writer knows neither bound: it looks them up.
    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    assert_eq!(s.insert_telemetry(&dense(22..=41)).await.unwrap(), 0);
    assert_eq!(s.insert_telemetry(&[row("gw-b", 5)]).await.unwrap(), 0);
    assert_eq!(count("FROM telemetry_readings").await, 81);
    side.close().await;
    s.close().await;
}

/// A dense commit of one device's readings past `CHUNK_READINGS` (a QoS 0 commit holds up to
/// `storage.qos0_ingest_batch`, 32,000 by default, all of one device's if it alone sends) is
/// written as several chunks of at most that many, so that a read of the device's newest
/// reading never parses more; every reading is read back once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_dense_commit_past_the_chunk_bound_is_written_as_several_chunks() {
    let (_dir, _, s, side) = sqlite_with_side().await;
    let n = 2 * CHUNK_READINGS + 452;
    let rows: Vec<TelemetryRow> = (1..=n as i64).map(|seq| row("gw-a", seq)).collect();
    assert_eq!(s.insert_telemetry(&rows).await.unwrap(), n as u64);
    assert_eq!(count_rows(side.clone(), "FROM telemetry_log").await, 0);
    let sizes: Vec<i64> =
        sqlx::query_scalar("SELECT n_readings FROM telemetry_chunks ORDER BY ts_last")
            .fetch_all(&side)
            .await
            .unwrap();
    assert_eq!(
        sizes,
        [CHUNK_READINGS as i64, CHUNK_READINGS as i64, 452],
        "chunks of one dense commit"
    );
    assert_eq!(
        stored_seqs(&s, "gw-a", 10_000).await,
        (1..=n as i64).collect::<Vec<_>>()
    );
    // The newest reading, from the last chunk; and re-sent whole, nothing is new.
    let since = OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_790_000_000 + n as i64);
    let newest = s.telemetry("gw-a", since, 1).await.unwrap();
    assert_eq!(newest.iter().map(|r| r.seq).collect::<Vec<_>>(), [n as i64]);
    assert_eq!(s.insert_telemetry(&rows).await.unwrap(), 0);
    assert_eq!(count_rows(side.clone(), "FROM telemetry_chunks").await, 3);
    s.close().await;
}

/// Readings that share a ts (taken within one millisecond, or sent with whole-second times)
/// are told apart by their seq: in chunks, in the log and across a reopen, a new seq at a
/// stored ts is stored and a re-sent one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_readings_sharing_a_ts_are_stored_once_each() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("rampart.db");
    let at = |seq: i64| {
        let mut r = row("gw-a", seq);
        r.ts = OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_790_000_000);
        r
    };
    let batch = |seqs: std::ops::RangeInclusive<i64>| seqs.map(at).collect::<Vec<_>>();
    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    const { assert!(20 >= DIRECT_ROWS_PER_DEVICE) };
    // A chunk of 20 at one ts; then more at the same ts, a chunk and a log row.
    assert_eq!(s.insert_telemetry(&batch(1..=20)).await.unwrap(), 20);
    assert_eq!(s.insert_telemetry(&batch(21..=40)).await.unwrap(), 20);
    assert_eq!(s.insert_telemetry(&[at(41)]).await.unwrap(), 1);
    // Re-sent, one at a time and together with new ones: only the new are stored.
    assert_eq!(s.insert_telemetry(&[at(5)]).await.unwrap(), 0);
    assert_eq!(s.insert_telemetry(&[at(41)]).await.unwrap(), 0);
    assert_eq!(s.insert_telemetry(&batch(30..=60)).await.unwrap(), 19);
    s.close().await;
    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    assert_eq!(s.insert_telemetry(&batch(1..=61)).await.unwrap(), 1);
    assert_eq!(
        stored_seqs(&s, "gw-a", 1_000).await,
        (1..=61).collect::<Vec<_>>()
    );
    s.close().await;
}

/// The SQLite writer's inserts ignore conflicts (no statement journal) and check instead that
/// every reading it found new was stored. A reading written into `telemetry` behind its back
/// (only the hub's writer may write telemetry) makes the commit fail whole, with an error
/// that says so, rather than be counted as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_reading_written_behind_the_writers_back_fails_the_commit_whole() {
    let (_dir, _, s, side) = sqlite_with_side().await;
    const { assert!(20 >= DIRECT_ROWS_PER_DEVICE) };
    assert_eq!(s.insert_telemetry(&dense(1..=20)).await.unwrap(), 40);
    // gw-a's readings 21-40 as a chunk, as the writer would store them, by another
    // connection.
    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    sqlx::query(
        "INSERT INTO telemetry_chunks (device_id, ts_last, seq_last, ts_first, n_readings, \
         readings) VALUES ('gw-a', ?1, 40, ?2, 20, '[]')",
    )
    .bind(ms(row("gw-a", 40).ts))
    .bind(ms(row("gw-a", 21).ts))
    .execute(&side)
    .await
    .unwrap();
    let err = s
        .insert_telemetry(&dense(21..=40))
        .await
        .expect_err("a reading the writer took for new was already there");
    assert!(
        matches!(err, StoreError::TelemetryOutOfStep { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("another process writes telemetry"),
        "{err}"
    );
    // Nothing of the batch was stored: the 2 chunks, and the one written beside.
    assert_eq!(count_rows(side.clone(), "FROM telemetry_chunks").await, 3);
    assert_eq!(count_rows(side.clone(), "FROM telemetry_log").await, 0);
    side.close().await;
    s.close().await;
}

/// Migration 0008 rebuilds SQLite's `telemetry` on the key `(device_id, ts, seq)`: a
/// database written before it (readings in the table and in the log) keeps every reading,
/// reads them in time order, and still recognises them when they are re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_readings_stored_before_migration_8_survive_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, side) = sqlite_before(dir.path(), "0008").await;
    // Readings 1-30 of two devices in the table, 31-35 in the log, as the writer left them.
    for r in &dense(1..=35) {
        let table = if r.seq <= 30 {
            "telemetry"
        } else {
            "telemetry_log"
        };
        insert_as_before(&side, table, r).await;
    }
    side.close().await;

    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    // Re-sent, from the table and from the log: not new; the next reading is.
    readings_1_to_35_survived(&s).await;
    assert_eq!(s.insert_telemetry(&[row("gw-a", 36)]).await.unwrap(), 1);
    let side = side_pool(&path).await;
    assert_eq!(
        count_rows(side.clone(), "FROM telemetry_readings").await,
        71
    );
    let key: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'telemetry'",
    )
    .fetch_one(&side)
    .await
    .unwrap();
    assert!(key.contains("PRIMARY KEY (device_id, ts, seq)"), "{key}");
    side.close().await;
    s.close().await;
}

/// Migration 0010 finishes a move of the log that the release before it left half done
/// (that release kept no record of a move's progress: its copied rows were in `telemetry`
/// and the log both): every reading is then in one place, read once, and recognised when
/// re-sent, and the writer starts with an empty log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_move_left_half_done_before_migration_10_is_finished_by_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, side) = sqlite_before(dir.path(), "0010").await;
    // Readings 1-30 of two devices copied into the table, 21-35 in the log: 21-30 in both.
    for r in &dense(1..=35) {
        let tables: &[&str] = match r.seq {
            ..=20 => &["telemetry"],
            21..=30 => &["telemetry", "telemetry_log"],
            _ => &["telemetry_log"],
        };
        for table in tables {
            insert_as_before(&side, table, r).await;
        }
    }
    assert_eq!(
        count_rows(side.clone(), "FROM telemetry_readings").await,
        70
    );
    side.close().await;

    let s = SqliteStore::open(&SqliteOptions::new(&path)).await.unwrap();
    let side = side_pool(&path).await;
    assert_eq!(count_rows(side.clone(), "FROM telemetry_log").await, 0);
    assert_eq!(count_rows(side.clone(), "FROM telemetry").await, 70);
    assert_eq!(count_rows(side.clone(), "FROM telemetry_move").await, 0);
    readings_1_to_35_survived(&s).await;
    assert_eq!(s.insert_telemetry(&[row("gw-a", 36)]).await.unwrap(), 1);
    assert_eq!(
        count_rows(side.clone(), "FROM telemetry_readings").await,
        71
    );
    side.close().await;
    s.close().await;
}

/// A SQLite database in `dir` with the migrations numbered below `first_left_out` applied, as
/// an older release left it, and a pool of the test's own on it.
async fn sqlite_before(
    dir: &std::path::Path,
    first_left_out: &str,
) -> (std::path::PathBuf, sqlx::SqlitePool) {
    let path = dir.join("rampart.db");
    let before = migrations_before(dir, "sqlite", first_left_out);
    std::fs::File::create(&path).unwrap();
    let side = side_pool(&path).await;
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap()
        .run(&side)
        .await
        .unwrap();
    (path, side)
}

/// Writes `r` into `table` (`telemetry` or `telemetry_log`) the way an older release's writer
/// did, with the columns the upgrade tests read back.
async fn insert_as_before(side: &sqlx::SqlitePool, table: &str, r: &TelemetryRow) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (device_id, seq, ts, received_at, voltage_v, body) \
         VALUES (?, ?, ?, ?, ?, ?)"
    )))
    .bind(&*r.device_id)
    .bind(r.seq)
    .bind((r.ts.unix_timestamp_nanos() / 1_000_000) as i64)
    .bind((r.received_at.unix_timestamp_nanos() / 1_000_000) as i64)
    .bind(r.voltage_v)
    .bind(&*r.body)
    .execute(side)
    .await
    .unwrap();
}

/// After an upgrade: readings 1-35 of gw-a and gw-b, written before it, read back in time
/// order with their values, and none of them is new when sent again.
async fn readings_1_to_35_survived(s: &dyn Store) {
    for d in ["gw-a", "gw-b"] {
        let back = s
            .telemetry(d, OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .unwrap();
        assert_eq!(
            back.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=35).collect::<Vec<_>>()
        );
        assert_eq!(back[9].body, row(d, 10).body);
        assert_eq!(back[9].voltage_v, row(d, 10).voltage_v);
    }
    assert_eq!(s.insert_telemetry(&dense(1..=35)).await.unwrap(), 0);
}

/// A copy of one backend's migrations numbered below `first_left_out`, to be applied by sqlx
/// as the store applies them (so the store then finds them recorded and applies only the
/// rest): a database as an older release left it.
fn migrations_before(
    dir: &std::path::Path,
    backend: &str,
    first_left_out: &str,
) -> std::path::PathBuf {
    let before = dir.join(format!("migrations-{backend}"));
    std::fs::create_dir(&before).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    for entry in std::fs::read_dir(&all).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.as_str() < first_left_out {
            std::fs::copy(entry.path(), before.join(&name)).unwrap();
        }
    }
    before
}

/// Migration 0008 changes PostgreSQL's `telemetry` key to `(device_id, ts, seq)` and drops
/// the `(device_id, ts)` index, on a table that holds readings: every reading stays, reads
/// in time order and is recognised when re-sent, and a seq sent again with a new time is a
/// new reading, as the new key means.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_readings_stored_before_migration_8_survive_it() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;
    let Some((db, url, schema)) = postgres_only("migration_8") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let before = migrations_before(dir.path(), "postgres", "0008");
    let base = PgConnectOptions::from_str(&url).unwrap();
    let side = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(base.clone())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&side)
        .await
        .unwrap();
    side.close().await;
    let side = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(base.options([("search_path", schema.as_str())]))
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap()
        .run(&side)
        .await
        .unwrap();
    let rows = dense(1..=35);
    for r in &rows {
        sqlx::query(
            "INSERT INTO telemetry (device_id, seq, ts, received_at, voltage_v, body) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&*r.device_id)
        .bind(r.seq)
        .bind((r.ts.unix_timestamp_nanos() / 1_000_000) as i64)
        .bind((r.received_at.unix_timestamp_nanos() / 1_000_000) as i64)
        .bind(r.voltage_v)
        .bind(&*r.body)
        .execute(&side)
        .await
        .unwrap();
    }

    let s = db.open().await;
    readings_1_to_35_survived(s.as_ref()).await;
    let mut again = row("gw-a", 5);
    again.ts = row("gw-a", 36).ts;
    assert_eq!(s.insert_telemetry(&[again]).await.unwrap(), 1);
    let seqs = stored_seqs(&*s, "gw-a", 100).await;
    assert_eq!(seqs.len(), 36);
    assert_eq!(seqs[35], 5, "the seq sent again, last in time: {seqs:?}");
    let key: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c \
         JOIN pg_namespace n ON n.oid = c.connamespace \
         WHERE n.nspname = $1 AND c.conname = 'telemetry_pkey'",
    )
    .bind(&schema)
    .fetch_one(&side)
    .await
    .unwrap();
    assert_eq!(key, "PRIMARY KEY (device_id, ts, seq)");
    let old_index: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = 'telemetry_device_ts'",
    )
    .bind(schema)
    .fetch_one(&side)
    .await
    .unwrap();
    assert_eq!(old_index, 0);
    side.close().await;
    s.close().await;
    db.finish().await;
}

/// PostgreSQL leaves a batch's COMMIT to the future `commit_telemetry` returns. When the
/// session holding the open transaction ends before it commits (a server restart, a dropped
/// connection), the future must report the failure, so that nobody is told the readings are
/// stored (no PUBACK: the devices send them again). None of them is stored, and sent again
/// they all are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_whose_commit_fails_is_reported_and_stored_when_sent_again() {
    use sqlx::postgres::PgPoolOptions;
    let Some((db, url, schema)) = postgres_only("commit_fails") else {
        return;
    };
    let s = db.open().await;
    let batch: Vec<_> = (1..=10).map(|i| row("gw-1", i)).collect();
    let (n, durable) = s.commit_telemetry(batch.clone()).await.expect("copied");
    assert_eq!(n, 10);
    // The session whose transaction holds the COPY: the one with a lock on this schema's
    // table (other tests may have COPYs open in their own schemas).
    let side = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE relation = to_regclass($1) AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid()",
    )
    .bind(format!("\"{schema}\".telemetry"))
    .fetch_all(&side)
    .await
    .unwrap();
    assert_eq!(
        ended,
        vec![true],
        "one session held the batch's transaction"
    );
    let failed = durable
        .await
        .expect_err("a commit on an ended session must fail");
    assert!(
        matches!(failed, StoreError::Database(_)),
        "unexpected error: {failed}"
    );
    assert!(
        s.telemetry("gw-1", OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .expect("query")
            .is_empty(),
        "readings of a batch that never committed were stored"
    );
    assert_eq!(s.insert_telemetry(&batch).await.expect("sent again"), 10);
    assert_eq!(
        s.telemetry("gw-1", OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .expect("query")
            .len(),
        10
    );
    side.close().await;
    db.finish().await;
}

//! The session bucket and queues against a real NATS server with JetStream. Needs
//! `RAMPART_TEST_NATS_URL` (`.ci/run` sets it through scripts/services); without it each test
//! says it is skipped.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test

use std::time::Duration;

use bytes::Bytes;
use rampart_cluster::{
    Holder, Routed, SessionError, SessionRecord, Sessions, SubscriptionRecord, session_key,
};

/// A connection and a cluster name of the test's own (its bucket and stream are deleted at
/// the end).
struct Fixture {
    client: async_nats::Client,
    cluster: String,
    sessions: Sessions,
}

impl Fixture {
    async fn new(test: &str, per_session: i64) -> Option<Fixture> {
        let Ok(url) = std::env::var("RAMPART_TEST_NATS_URL") else {
            eprintln!("skipped {test}: needs RAMPART_TEST_NATS_URL (eval \"$(scripts/services)\")");
            return None;
        };
        let client = async_nats::connect(url).await.unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let cluster = format!("t{}_{nanos}", std::process::id());
        let sessions = Sessions::open(
            client.clone(),
            &cluster,
            per_session,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        Some(Fixture {
            client,
            cluster,
            sessions,
        })
    }

    async fn cleanup(self) {
        let js = async_nats::jetstream::new(self.client);
        let _ = js
            .delete_stream(format!("KV_{}_sessions", self.cluster))
            .await;
        let _ = js
            .delete_stream(format!("{}_session_queues", self.cluster))
            .await;
    }
}

fn record(client_id: &str, node: &str, filter: &str) -> SessionRecord {
    SessionRecord {
        client_id: client_id.into(),
        identity: client_id.into(),
        identity_kind: "device".into(),
        cert_serial: "01".into(),
        cert_fingerprint: "ab".into(),
        protocol: 4,
        expiry_secs: 60,
        subscriptions: vec![SubscriptionRecord {
            filter: filter.into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }],
        holder: Holder::Attached { node: node.into() },
    }
}

fn message(seq: u64) -> Routed {
    Routed {
        origin: "n1".into(),
        seq,
        topic: "devices/gw-1/telemetry".into(),
        payload: Bytes::from(format!("m{seq}")),
        qos: 1,
        retain: false,
    }
}

fn payloads(messages: &[Routed]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn claims_are_compare_and_set_on_the_revision() {
    let Some(f) = Fixture::new("session claims", 10).await else {
        return;
    };
    let s = &f.sessions;
    assert!(s.get("gw-1").await.unwrap().is_none());
    let first = s.claim(&record("gw-1", "n1", "a/#"), None).await.unwrap();
    // A second node creating the same session loses.
    assert!(matches!(
        s.claim(&record("gw-1", "n2", "a/#"), None).await,
        Err(SessionError::Conflict)
    ));
    // Parked by n1; n2 claims it at that revision; n3, still at the old one, loses.
    let parked = s
        .claim(
            &Sessions::parked(record("gw-1", "n1", "a/#"), "n1"),
            Some(first),
        )
        .await
        .unwrap();
    s.claim(&record("gw-1", "n2", "b/+"), Some(parked))
        .await
        .unwrap();
    assert!(matches!(
        s.claim(&record("gw-1", "n3", "c"), Some(parked)).await,
        Err(SessionError::Conflict)
    ));
    let (now, _) = s.get("gw-1").await.unwrap().unwrap();
    assert_eq!(now, record("gw-1", "n2", "b/+"));
    // Ended only at the revision it was read at.
    assert!(s.remove("gw-1", Some(parked)).await.is_err());
    s.remove("gw-1", None).await.unwrap();
    assert!(s.get("gw-1").await.unwrap().is_none());
    f.cleanup().await;
}

#[tokio::test]
async fn a_queue_keeps_one_copy_per_message_in_order_within_its_bound() {
    let Some(f) = Fixture::new("session queues", 3).await else {
        return;
    };
    let s = &f.sessions;
    // Two nodes queue the same message (same id): one copy is kept.
    s.enqueue("gw-1", "n1.1.k", &message(1)).await.unwrap();
    s.enqueue("gw-1", "n1.1.k", &message(1)).await.unwrap();
    s.enqueue("gw-1", "n1.2.k", &message(2)).await.unwrap();
    // Another session's queue is apart.
    s.enqueue("gw-2", "n1.2.k2", &message(2)).await.unwrap();
    let (got, malformed, below) = s.drain("gw-1").await.unwrap();
    assert_eq!(
        (payloads(&got), malformed),
        (vec!["m1".into(), "m2".into()], 0)
    );
    // What was read is purged; what comes after stays.
    s.enqueue("gw-1", "n1.3.k", &message(3)).await.unwrap();
    s.purge_queue("gw-1", below).await.unwrap();
    let (got, _, _) = s.drain("gw-1").await.unwrap();
    assert_eq!(payloads(&got), vec!["m3".to_string()]);
    // Beyond the bound the oldest go.
    for seq in 4..=7 {
        s.enqueue("gw-1", &format!("n1.{seq}.k"), &message(seq))
            .await
            .unwrap();
    }
    let (got, _, _) = s.drain("gw-1").await.unwrap();
    assert_eq!(payloads(&got), vec!["m5", "m6", "m7"]);
    // An empty queue drains to nothing.
    let (got, _, below) = s.drain("nobody").await.unwrap();
    assert!(got.is_empty() && below.is_none());
    f.cleanup().await;
}

#[tokio::test]
async fn unreadable_records_and_frames_are_refused_not_misread() {
    let Some(f) = Fixture::new("session refusals", 10).await else {
        return;
    };
    let js = async_nats::jetstream::new(f.client.clone());
    let kv = js
        .get_key_value(format!("{}_sessions", f.cluster))
        .await
        .unwrap();
    kv.put(session_key("gw-1"), Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    assert!(matches!(
        f.sessions.get("gw-1").await,
        Err(SessionError::Corrupt(_))
    ));
    // A record stored under a client id's key but naming another id is not that session.
    let other = serde_json::to_vec(&record("gw-9", "n1", "a")).unwrap();
    kv.put(session_key("gw-2"), other.into()).await.unwrap();
    assert!(f.sessions.get("gw-2").await.unwrap().is_none());
    // A frame in a queue that is not one of ours is skipped and counted.
    f.sessions.enqueue("gw-3", "a", &message(1)).await.unwrap();
    js.publish(
        format!("{}.sq.{}", f.cluster, session_key("gw-3")),
        Bytes::from_static(b"\x09garbage"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    f.sessions.enqueue("gw-3", "b", &message(2)).await.unwrap();
    let (got, malformed, _) = f.sessions.drain("gw-3").await.unwrap();
    assert_eq!(
        (payloads(&got), malformed),
        (vec!["m1".into(), "m2".into()], 1)
    );
    f.cleanup().await;
}

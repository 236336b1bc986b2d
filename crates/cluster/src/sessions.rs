//! Persistent MQTT sessions that move between nodes, kept in JetStream.
//!
//! A device with a persistent session (MQTT 3.1.1 `clean session = 0`, MQTT 5 session
//! expiry > 0) may come back through the load balancer to any node. So its session cannot
//! live in one node's memory while it is away. Two JetStream objects hold it:
//!
//! - **The session record**, in the key-value bucket `{cluster}_sessions`: the client id, the
//!   identity that owns it, its subscriptions, its expiry, and who holds it — attached to a
//!   node (a connection is open there) or parked (nobody is connected). A node writes it when
//!   a persistent session starts or changes, and when it parks it at disconnect. Updates
//!   that claim a session compare the revision, so two nodes cannot both take it.
//! - **The queue of a parked session**, the subject `{cluster}.sq.{key}` in the stream
//!   `{cluster}_session_queues`: the messages that matched its subscriptions while it was
//!   parked (and what was queued or unacknowledged when it was parked). Every node watches the
//!   bucket and queues matching messages for every parked session; they may all see the same
//!   message, so each is published with a de-duplication id (origin node, origin sequence,
//!   session) and JetStream keeps one copy. Writes wait for JetStream's acknowledgement.
//!
//! The node that resumes a session claims the record, reads the queue and purges what it
//! read. If the record says another node holds it, that node is asked first (a NATS request
//! on `{cluster}.takeover.{node}`) to close its connection and park the session; a node that
//! does not answer is taken to be gone, and the record is claimed as it stands.
//!
//! Keys are a hash of the client id: client ids may hold characters that NATS subjects and
//! keys do not allow. The record carries the client id, and a record for another id (a hash
//! collision) is treated as absent.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::frame::{self, Routed};

/// Why a session operation failed. Each variant names the JetStream step.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("JetStream is not available on the NATS server ({0}); run nats-server with -js")]
    JetStream(String),
    #[error("reading session record: {0}")]
    Read(String),
    #[error("writing session record: {0}")]
    Write(String),
    #[error("another node claimed the session at the same time")]
    Conflict,
    #[error("queueing a message for a parked session: {0}")]
    Enqueue(String),
    #[error("reading the queue of a parked session: {0}")]
    Drain(String),
    #[error("session record is not readable: {0}")]
    Corrupt(String),
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default)]
    pub retain_handling: u8,
}

/// Who holds a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Holder {
    /// A connection to `node` holds it.
    Attached { node: String },
    /// Nobody is connected; it ends `expiry_secs` after `since_ms` (Unix ms).
    Parked { node: String, since_ms: u64 },
}

/// A persistent session as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub client_id: String,
    /// The identity that owns it; another identity never resumes it.
    pub identity: String,
    /// `device`, `service` or `claim`.
    pub identity_kind: String,
    /// The certificate it last connected with (serial, SHA-256 fingerprint; lowercase hex).
    #[serde(default)]
    pub cert_serial: String,
    #[serde(default)]
    pub cert_fingerprint: String,
    /// MQTT protocol level it last connected with (4: 3.1.1, 5: 5.0).
    pub protocol: u8,
    pub expiry_secs: u64,
    pub subscriptions: Vec<SubscriptionRecord>,
    pub holder: Holder,
}

impl SessionRecord {
    /// For a parked session: when it ends (Unix ms).
    pub fn parked_until_ms(&self) -> Option<u64> {
        match &self.holder {
            Holder::Parked { since_ms, .. } => {
                Some(since_ms.saturating_add(self.expiry_secs.saturating_mul(1000)))
            }
            Holder::Attached { .. } => None,
        }
    }
}

/// A change seen in the bucket.
#[derive(Debug, Clone)]
pub enum SessionChange {
    /// The record under `key` was written.
    Put {
        key: String,
        record: SessionRecord,
        revision: u64,
    },
    /// The record under `key` was removed (session ended).
    Removed { key: String },
}

/// The bucket and the queue stream of one cluster.
#[derive(Clone)]
pub struct Sessions {
    js: jetstream::Context,
    kv: kv::Store,
    queues: stream::Stream,
    queue_prefix: String,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("queues", &self.queue_prefix)
            .finish_non_exhaustive()
    }
}

/// The bucket key (and queue subject token) of a client id.
pub fn session_key(client_id: &str) -> String {
    let digest = Sha256::digest(client_id.as_bytes());
    hex::encode(&digest[..16])
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Sessions {
    /// Opens (creating if needed) the bucket and the queue stream. `per_session` bounds each
    /// parked session's queue (the oldest are dropped beyond it, as JetStream's per-subject
    /// limit does); `max_age` bounds how long a queued message is kept.
    pub async fn open(
        client: async_nats::Client,
        cluster: &str,
        per_session: i64,
        max_age: Duration,
    ) -> Result<Sessions, SessionError> {
        let js = jetstream::new(client);
        let bucket = format!("{cluster}_sessions");
        // The bucket's stream is created here with the key-value layout (ADR-8), not through
        // `create_key_value`: that asks for account details that NATS 2.9 (Debian 12's)
        // answers in a form the client cannot read.
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("Rampart persistent MQTT sessions".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| SessionError::JetStream(e.to_string()))?;
        let kv = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| SessionError::JetStream(e.to_string()))?;
        let queue_prefix = format!("{cluster}.sq");
        let queues = js
            .get_or_create_stream(stream::Config {
                name: format!("{cluster}_session_queues"),
                description: Some("Rampart: messages for parked MQTT sessions".into()),
                subjects: vec![format!("{queue_prefix}.*")],
                max_messages_per_subject: per_session.max(1),
                discard: stream::DiscardPolicy::Old,
                max_age,
                // JetStream refuses a de-duplication window longer than the messages live.
                duplicate_window: Duration::from_secs(120).min(max_age),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| SessionError::JetStream(e.to_string()))?;
        Ok(Sessions {
            js,
            kv,
            queues,
            queue_prefix,
        })
    }

    fn subject(&self, client_id: &str) -> String {
        format!("{}.{}", self.queue_prefix, session_key(client_id))
    }

    /// The record of `client_id` and its revision, if there is one.
    pub async fn get(&self, client_id: &str) -> Result<Option<(SessionRecord, u64)>, SessionError> {
        let entry = self
            .kv
            .entry(session_key(client_id))
            .await
            .map_err(|e| SessionError::Read(e.to_string()))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record: SessionRecord = serde_json::from_slice(&entry.value)
            .map_err(|e| SessionError::Corrupt(e.to_string()))?;
        Ok((record.client_id == client_id).then_some((record, entry.revision)))
    }

    /// Writes `record` unconditionally (a session this node holds changed).
    pub async fn put(&self, record: &SessionRecord) -> Result<u64, SessionError> {
        let value = serde_json::to_vec(record).map_err(|e| SessionError::Write(e.to_string()))?;
        self.kv
            .put(session_key(&record.client_id), value.into())
            .await
            .map_err(|e| SessionError::Write(e.to_string()))
    }

    /// Writes `record` if the stored one is still at `revision` (`None`: if there is none).
    /// [`SessionError::Conflict`] when another node wrote in between.
    pub async fn claim(
        &self,
        record: &SessionRecord,
        revision: Option<u64>,
    ) -> Result<u64, SessionError> {
        let key = session_key(&record.client_id);
        let value: Bytes = serde_json::to_vec(record)
            .map_err(|e| SessionError::Write(e.to_string()))?
            .into();
        match revision {
            Some(rev) => self.kv.update(&key, value, rev).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    SessionError::Conflict
                } else {
                    SessionError::Write(e.to_string())
                }
            }),
            None => self.kv.create(&key, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    SessionError::Conflict
                } else {
                    SessionError::Write(e.to_string())
                }
            }),
        }
    }

    /// Ends the session of `client_id`: removes its record (if still at `revision`, when
    /// given) and its queue.
    pub async fn remove(&self, client_id: &str, revision: Option<u64>) -> Result<(), SessionError> {
        self.kv
            .delete_expect_revision(session_key(client_id), revision)
            .await
            .map_err(|e| SessionError::Write(e.to_string()))?;
        self.purge_queue(client_id, None).await
    }

    /// Drops the queue of `client_id`, or only what is below sequence `below`.
    pub async fn purge_queue(
        &self,
        client_id: &str,
        below: Option<u64>,
    ) -> Result<(), SessionError> {
        let subject = self.subject(client_id);
        let result = match below {
            Some(seq) => self.queues.purge().filter(subject).sequence(seq).await,
            None => self.queues.purge().filter(subject).await,
        };
        result
            .map(|_| ())
            .map_err(|e| SessionError::Write(format!("purging a session queue: {e}")))
    }

    /// Queues a message for the parked session of `client_id` and waits until JetStream has
    /// stored it. `dedup` names the message across nodes (JetStream keeps one copy per id
    /// within two minutes).
    pub async fn enqueue(
        &self,
        client_id: &str,
        dedup: &str,
        m: &Routed,
    ) -> Result<(), SessionError> {
        let body = frame::encode(&m.origin, m.seq, &m.topic, &m.payload, m.qos, m.retain);
        let publish = jetstream::context::Publish::build()
            .message_id(dedup)
            .payload(body);
        let ack = self
            .js
            .send_publish(self.subject(client_id), publish)
            .await
            .map_err(|e| SessionError::Enqueue(e.to_string()))?;
        ack.await
            .map(|_| ())
            .map_err(|e| SessionError::Enqueue(e.to_string()))
    }

    /// Reads the queue of `client_id` in order. Returns the messages and the sequence after
    /// the last one read (for [`Sessions::purge_queue`]). Frames that cannot be decoded are
    /// skipped and counted in the second tuple element.
    pub async fn drain(
        &self,
        client_id: &str,
    ) -> Result<(Vec<Routed>, usize, Option<u64>), SessionError> {
        let subject = self.subject(client_id);
        let last = match self.queues.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok((Vec::new(), 0, None));
            }
            Err(e) => return Err(SessionError::Drain(e.to_string())),
        };
        let consumer = self
            .queues
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject,
                ..Default::default()
            })
            .await
            .map_err(|e| SessionError::Drain(e.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| SessionError::Drain(e.to_string()))?;
        let (mut out, mut malformed) = (Vec::new(), 0);
        let read = async {
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| SessionError::Drain(e.to_string()))?;
                let seq = m
                    .info()
                    .map_err(|e| SessionError::Drain(e.to_string()))?
                    .stream_sequence;
                match frame::decode(&m.payload) {
                    Ok(r) => out.push(r),
                    Err(_) => malformed += 1,
                }
                if seq >= last {
                    break;
                }
            }
            Ok::<(), SessionError>(())
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| SessionError::Drain("timed out after 30 s".into()))??;
        Ok((out, malformed, Some(last + 1)))
    }

    /// Every record now, then every change, as it happens.
    pub async fn watch(
        &self,
    ) -> Result<impl futures::Stream<Item = SessionChange> + Send + 'static, SessionError> {
        let watch = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| SessionError::Read(e.to_string()))?;
        Ok(watch.filter_map(|entry| async move {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "session watch error");
                    return None;
                }
            };
            match entry.operation {
                kv::Operation::Put => match serde_json::from_slice(&entry.value) {
                    Ok(record) => Some(SessionChange::Put {
                        key: entry.key,
                        record,
                        revision: entry.revision,
                    }),
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "unreadable session record ignored");
                        None
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    Some(SessionChange::Removed { key: entry.key })
                }
            }
        }))
    }

    /// The same record, parked by `node` now.
    pub fn parked(mut record: SessionRecord, node: &str) -> SessionRecord {
        record.holder = Holder::Parked {
            node: node.to_owned(),
            since_ms: now_ms(),
        };
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_subject_tokens_and_distinct() {
        let ids = ["gw-1", "gw 1", "a.b.*>", "ü🔋", ""];
        let keys: Vec<String> = ids.iter().map(|i| session_key(i)).collect();
        for k in &keys {
            assert_eq!(k.len(), 32);
            assert!(k.chars().all(|c| c.is_ascii_hexdigit()), "{k}");
        }
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
    }

    #[test]
    fn records_round_trip_and_say_when_a_parked_session_ends() {
        let r = SessionRecord {
            client_id: "gw-1".into(),
            identity: "gw-1".into(),
            identity_kind: "device".into(),
            cert_serial: "0a".into(),
            cert_fingerprint: "ff".into(),
            protocol: 5,
            expiry_secs: 60,
            subscriptions: vec![SubscriptionRecord {
                filter: "a/+".into(),
                qos: 1,
                no_local: false,
                retain_as_published: true,
                retain_handling: 2,
            }],
            holder: Holder::Attached { node: "n1".into() },
        };
        assert_eq!(r.parked_until_ms(), None);
        let p = Sessions::parked(r.clone(), "n2");
        let Holder::Parked { since_ms, .. } = p.holder else {
            panic!("not parked")
        };
        assert_eq!(p.parked_until_ms(), Some(since_ms + 60_000));
        let json = serde_json::to_vec(&p).expect("encodes");
        let back: SessionRecord = serde_json::from_slice(&json).expect("decodes");
        assert_eq!(back, p);
        assert!(
            serde_json::from_slice::<SessionRecord>(
                br#"{"client_id":"x","holder":{"state":"gone"}}"#
            )
            .is_err()
        );
    }
}

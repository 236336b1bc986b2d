//! An application message as the broker routes it: shared by every subscriber it goes to.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use rampart_mqtt::{Packet, Protocol, PublishProperties, QoS, decode_packet, encode_publish};

/// A published message.
#[derive(Debug)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties to forward (never topic alias or subscription identifiers).
    pub properties: Option<Box<PublishProperties>>,
    /// When the MQTT 5 message expiry interval runs out.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher (for the No Local option); `None` for server messages.
    pub publisher: Option<Arc<str>>,
}

impl Message {
    /// A message without properties, expiry or publisher: one the hub publishes itself, or
    /// one another node routed (its properties stay on that node).
    pub(crate) fn bare(topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload,
            qos,
            retain,
            properties: None,
            expires_at: None,
            publisher: None,
        })
    }

    /// True once the message's expiry interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// Properties to send now: the expiry interval is rewritten to the time left
    /// (MQTT 5 section 3.3.2.3.3).
    pub(crate) fn properties_at(&self, now: Instant) -> Option<PublishProperties> {
        let props = self.properties.as_deref()?;
        let mut p = props.clone();
        if let Some(t) = self.expires_at {
            let left = t.saturating_duration_since(now).as_secs().max(1);
            p.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
        }
        Some(p)
    }

    /// Serialises a retained message for storage: absolute expiry (Unix seconds, 0 = none)
    /// followed by the message as an MQTT 5 PUBLISH packet.
    pub(crate) fn to_stored(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let expiry_unix = self
            .expires_at
            .map(|t| {
                let left = t.saturating_duration_since(Instant::now());
                (SystemTime::now() + left)
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        buf.put_u64(expiry_unix);
        let props = self.properties.as_deref().map(|p| {
            let mut p = p.clone();
            p.message_expiry_interval = None;
            p
        });
        encode_publish(
            &mut buf,
            Protocol::V5,
            &self.topic,
            &self.payload,
            self.qos,
            true,
            false,
            (self.qos != QoS::AtMostOnce).then_some(1),
            props.as_ref(),
        );
        buf.to_vec()
    }

    /// Reads back a stored retained message; `None` if it is corrupt or has expired.
    pub(crate) fn from_stored(data: &[u8]) -> Option<Message> {
        let (expiry, packet) = data.split_at_checked(8)?;
        let expiry_unix = u64::from_be_bytes(expiry.try_into().ok()?);
        let mut buf = BytesMut::from(packet);
        let Ok(Some(Packet::Publish(p))) = decode_packet(&mut buf, Some(Protocol::V5), usize::MAX)
        else {
            return None;
        };
        let expires_at = if expiry_unix == 0 {
            None
        } else {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            if expiry_unix <= now {
                return None;
            }
            Some(Instant::now() + Duration::from_secs(expiry_unix - now))
        };
        Some(Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: true,
            properties: (!p.properties.is_empty()).then(|| Box::new(p.properties)),
            expires_at,
            publisher: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_roundtrips() {
        let m = Message {
            topic: "devices/a/status".into(),
            payload: Bytes::from_static(b"online"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(Box::new(PublishProperties {
                content_type: Some("text/plain".into()),
                ..Default::default()
            })),
            expires_at: Some(Instant::now() + Duration::from_secs(3600)),
            publisher: Some("a".into()),
        };
        let back = Message::from_stored(&m.to_stored()).expect("decodes");
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert_eq!(
            back.properties
                .as_ref()
                .and_then(|p| p.content_type.clone()),
            Some("text/plain".into())
        );
        assert!(back.expires_at.is_some());
        assert!(Message::from_stored(b"short").is_none());
    }
}

//! The frame a routed message travels in between nodes.
//!
//! ```text
//! version (1 byte, 2) | flags (1 byte: bits 0-1 QoS, bit 2 retain)
//! origin length (1 byte) | origin (UTF-8)
//! sequence (8 bytes, big endian: the origin's count of routed messages)
//! topic length (2 bytes, big endian) | topic (UTF-8)
//! payload (the rest)
//! ```
//!
//! Binary, not NATS headers: an MQTT topic may hold any UTF-8 and a payload any bytes, and
//! neither should be constrained by header syntax. Decoding checks every length and refuses
//! anything else.
//!
//! Origin and sequence name the message across the cluster: nodes that each queue it for a
//! parked session use them as JetStream's de-duplication id, so it is queued once.

use bytes::{BufMut, Bytes, BytesMut};

const VERSION: u8 = 2;

/// A message another node routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The node that routed it.
    pub origin: String,
    /// The origin's sequence number for it (unique per origin while the origin runs).
    pub seq: u64,
    pub topic: String,
    pub payload: Bytes,
    /// 0, 1 or 2, as published.
    pub qos: u8,
    pub retain: bool,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame too short ({0} bytes)")]
    Short(usize),
    #[error("frame version {0} (this node reads version {VERSION})")]
    Version(u8),
    #[error("QoS {0} in frame")]
    Qos(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
    #[error("empty topic")]
    EmptyTopic,
}

pub(crate) fn encode(
    origin: &str,
    seq: u64,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
) -> Bytes {
    // Node names are checked to be at most 64 bytes, MQTT topics at most 65,535.
    let origin = &origin.as_bytes()[..origin.len().min(255)];
    let topic = &topic.as_bytes()[..topic.len().min(usize::from(u16::MAX))];
    let mut b = BytesMut::with_capacity(13 + origin.len() + topic.len() + payload.len());
    b.put_u8(VERSION);
    b.put_u8((qos & 0b11) | if retain { 0b100 } else { 0 });
    b.put_u8(origin.len() as u8);
    b.put_slice(origin);
    b.put_u64(seq);
    b.put_u16(topic.len() as u16);
    b.put_slice(topic);
    b.put_slice(payload);
    b.freeze()
}

pub(crate) fn decode(frame: &Bytes) -> Result<Routed, FrameError> {
    let short = || FrameError::Short(frame.len());
    let [version, flags, origin_len, rest @ ..] = &frame[..] else {
        return Err(short());
    };
    if *version != VERSION {
        return Err(FrameError::Version(*version));
    }
    if flags & !0b111 != 0 {
        return Err(FrameError::Flags(*flags));
    }
    let qos = flags & 0b11;
    if qos > 2 {
        return Err(FrameError::Qos(qos));
    }
    let origin_len = usize::from(*origin_len);
    let (origin, rest) = rest.split_at_checked(origin_len).ok_or_else(short)?;
    let (seq, rest) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let [hi, lo, rest @ ..] = rest else {
        return Err(short());
    };
    let topic_len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let (topic, _) = rest.split_at_checked(topic_len).ok_or_else(short)?;
    if topic.is_empty() {
        return Err(FrameError::EmptyTopic);
    }
    let payload_at = 3 + origin_len + 8 + 2 + topic_len;
    Ok(Routed {
        origin: std::str::from_utf8(origin)
            .map_err(|_| FrameError::Utf8("origin"))?
            .to_owned(),
        seq: u64::from_be_bytes(*seq),
        topic: std::str::from_utf8(topic)
            .map_err(|_| FrameError::Utf8("topic"))?
            .to_owned(),
        payload: frame.slice(payload_at..),
        qos,
        retain: flags & 0b100 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for (topic, payload, qos, retain) in [
            ("devices/gw-1/telemetry", &b"{\"v\":1}"[..], 1, false),
            ("a/ü/🔋", &[0u8, 255, 10][..], 0, true),
            ("x", &[][..], 2, false),
        ] {
            let f = encode("node-1", 77, topic, payload, qos, retain);
            let r = decode(&f).expect("decodes");
            assert_eq!(r.origin, "node-1");
            assert_eq!(r.seq, 77);
            assert_eq!(r.topic, topic);
            assert_eq!(&r.payload[..], payload);
            assert_eq!((r.qos, r.retain), (qos, retain));
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let good = encode("n", 1, "t/x", b"p", 1, false);
        const S: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];
        let frame = |head: &[u8], tail: &[u8]| [head, &S[..], tail].concat();
        let mut cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![], FrameError::Short(0)),
            (vec![2, 0], FrameError::Short(2)),
            (frame(&[1, 0, 0], &[0, 1, b't']), FrameError::Version(1)),
            (frame(&[2, 3, 0], &[0, 1, b't']), FrameError::Qos(3)),
            (frame(&[2, 8, 0], &[0, 1, b't']), FrameError::Flags(8)),
            (vec![2, 0, 5, b'n'], FrameError::Short(4)),
            (vec![2, 0, 0, 0, 0, 0], FrameError::Short(6)),
            (frame(&[2, 0, 0], &[0, 9, b't']), FrameError::Short(14)),
            (frame(&[2, 0, 0], &[0, 0]), FrameError::EmptyTopic),
            (
                frame(&[2, 0, 1, 0xff], &[0, 1, b't']),
                FrameError::Utf8("origin"),
            ),
            (frame(&[2, 0, 0], &[0, 1, 0xc3]), FrameError::Utf8("topic")),
        ];
        // Every truncation of a good frame short of its topic's end is refused too.
        for n in 0..good.len() - 1 {
            cases.push((good[..n].to_vec(), FrameError::Short(n)));
        }
        for (bytes, want) in cases {
            assert_eq!(decode(&Bytes::from(bytes.clone())), Err(want), "{bytes:?}");
        }
    }
}

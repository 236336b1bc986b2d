//! MQTT 3.1.1 and 5.0 wire format for Rampart.
//!
//! This crate owns exactly one concern: turning bytes into MQTT control packets and back,
//! plus the topic name / topic filter rules of the specification (`topic`). It does no I/O
//! and keeps no session state; the broker and the load generator build on it.
//!
//! Decoding is strict: every deviation from the specification that a server must treat as a
//! "malformed packet" or "protocol error" is reported as a [`DecodeError`] that names what was
//! wrong, so the broker can log a specific reason and pick the right MQTT 5 reason code.
//! Payloads are handed out as [`bytes::Bytes`] slices of the read buffer, without copying.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
pub mod reason;
pub mod topic;
mod wire;

pub use decode::{FrameHeader, MAX_REMAINING_LENGTH, decode_packet};
pub use encode::{encode_packet, encode_publish, encoded_publish_len};
pub use error::DecodeError;
pub use packet::*;
pub use properties::{ConnAckProperties, ConnectProperties, PublishProperties, WillProperties};

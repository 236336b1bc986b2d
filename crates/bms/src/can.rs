//! Pylontech/SMA-style batteries read live from a SocketCAN interface (`can0`), built only
//! with the `socketcan` cargo feature: the agent on a gateway with a CAN transceiver enables
//! it; builds for other targets leave it out and keep the candump replay.
//!
//! The battery broadcasts; the source listens (it never writes to the bus) and returns a
//! reading once 0x355 and 0x356 have both been seen, or a timeout when the bus stays quiet.

use std::time::Duration;

use async_trait::async_trait;
use socketcan::{EmbeddedFrame, Frame};
use time::OffsetDateTime;

use crate::pylontech::{CanFrame, Conventions, Decoder};
use crate::reading::{Reading, SourceInfo};
use crate::source::{BmsError, BmsSource};

/// A battery on a CAN interface.
pub struct SocketCanSource {
    interface: String,
    socket: socketcan::tokio::CanSocket,
    decoder: Decoder,
    timeout: Duration,
}

impl std::fmt::Debug for SocketCanSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketCanSource")
            .field("interface", &self.interface)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SocketCanSource {
    /// Opens the interface (it must be up, at the battery's bit rate, usually 500 kbit/s).
    pub fn open(
        interface: &str,
        conventions: Conventions,
        timeout: Duration,
    ) -> Result<Self, BmsError> {
        let socket = socketcan::tokio::CanSocket::open(interface).map_err(|e| {
            BmsError::Io(std::io::Error::new(
                e.kind(),
                format!("CAN interface {interface}: {e} (is it up? `ip link set {interface} up type can bitrate 500000`)"),
            ))
        })?;
        Ok(SocketCanSource {
            interface: interface.to_owned(),
            socket,
            decoder: Decoder::new(conventions),
            timeout,
        })
    }
}

/// The frame in the decoder's terms; remote and error frames carry no battery data.
fn convert(frame: &socketcan::CanFrame) -> Option<CanFrame> {
    match frame {
        socketcan::CanFrame::Data(d) => Some(CanFrame {
            id: d.raw_id(),
            data: d.data().to_vec(),
        }),
        socketcan::CanFrame::Remote(_) | socketcan::CanFrame::Error(_) => None,
    }
}

#[async_trait]
impl BmsSource for SocketCanSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "pylontech-can".into(),
            model: Some(format!("socketcan {}", self.interface)),
            manufacturer: None,
            version: None,
            manufactured: None,
        }
    }

    async fn read(&mut self) -> Result<Reading, BmsError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            // Once a cycle has its values, a short silence ends it; otherwise wait for the
            // battery up to the configured timeout.
            let wait = if self.decoder.has_values() {
                deadline.min(tokio::time::Instant::now() + CYCLE_GAP)
            } else {
                deadline
            };
            let frame = match tokio::time::timeout_at(wait, self.socket.read_frame()).await {
                Ok(frame) => frame?,
                Err(_) => match self.decoder.flush() {
                    Some(r) => return Ok(r),
                    None if tokio::time::Instant::now() >= deadline => {
                        return Err(BmsError::Timeout(self.timeout));
                    }
                    None => continue,
                },
            };
            let Some(frame) = convert(&frame) else {
                continue;
            };
            match self.decoder.push(&frame, OffsetDateTime::now_utc()) {
                Err(e) => return Err(BmsError::BadFrame(format!("{}: {e}", self.interface))),
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
            }
        }
    }
}

/// Silence after which a broadcast cycle is taken as complete (cycles come about once a
/// second; the frames of one cycle within a few milliseconds).
const CYCLE_GAP: Duration = Duration::from_millis(200);

/// Needs a virtual CAN interface `vcan0` (`modprobe vcan; ip link add vcan0 type vcan; ip link
/// set vcan0 up`), so it only runs with `--features vcan-tests`.
#[cfg(all(test, feature = "vcan-tests"))]
mod tests {
    use super::*;
    use socketcan::{CanDataFrame, StandardId};

    #[tokio::test]
    async fn reads_a_broadcast_cycle_from_vcan0() {
        let mut source =
            SocketCanSource::open("vcan0", Conventions::default(), Duration::from_secs(2))
                .expect("vcan0");
        let tx = socketcan::tokio::CanSocket::open("vcan0").expect("vcan0 tx");
        let send = async {
            for (id, data) in [
                (
                    0x351u16,
                    &[0x38, 0x02, 0xF4, 0x01, 0xE8, 0x03, 0xC0, 0x01][..],
                ),
                (0x355, &[0x51, 0x00, 0x61, 0x00][..]),
                (0x356, &[0xC8, 0x14, 0x85, 0xFF, 0xEA, 0x00][..]),
            ] {
                let id = StandardId::new(id).expect("11-bit id");
                let f = CanDataFrame::new(id, data).expect("frame");
                tx.write_frame(socketcan::CanFrame::Data(f))
                    .await
                    .expect("write");
            }
        };
        let (r, ()) = tokio::join!(source.read(), send);
        let r = r.expect("reading");
        assert_eq!(r.pack.voltage.0, 53.2);
        assert_eq!(r.pack.soc.0, 81.0);
    }
}

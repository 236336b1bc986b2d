//! JBD / Xiaoxiang BMS over UART (9600 8N1).
//!
//! Request: `DD A5 <cmd> 00 <chk hi> <chk lo> 77`. Response:
//! `DD <cmd> <status> <len> <payload…> <chk hi> <chk lo> 77`, where the checksum is
//! `0x10000 − sum(status, len, payload)` (for requests: of `cmd, 0`). Command 0x03 gives the
//! basic information (big-endian: pack voltage ×10 mV, current ×10 mA with positive =
//! charging, remaining and nominal capacity ×10 mAh, cycles, production date, balance
//! bitmaps, protection bits, version, SoC %, FET status, cell count, NTC count, NTC
//! temperatures ×0.1 K); command 0x04 the cell voltages (mV).
//!
//! [`JbdSource`] talks to a BMS over any byte stream: a serial port on the gateway, a
//! pseudo-terminal in tests. Every answer is checked (start, command echo, status, length,
//! checksum, end byte); a bad or missing answer is retried, then reported.

use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::reading::{Alarm, Fets, Pack, Reading, SourceInfo};
use crate::source::{BmsError, BmsSource};
use crate::units::{AmpHours, Amps, Celsius, Percent, Volts};

/// Basic information.
pub const CMD_BASIC: u8 = 0x03;
/// Cell voltages.
pub const CMD_CELLS: u8 = 0x04;

const START: u8 = 0xDD;
const END: u8 = 0x77;
const READ: u8 = 0xA5;

/// A checked response frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub cmd: u8,
    pub status: u8,
    pub payload: Vec<u8>,
}

/// Why a frame or payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JbdError {
    #[error("answer to command {got:#04x}, expected {expected:#04x}")]
    WrongCommand { expected: u8, got: u8 },
    #[error("checksum {got:#06x}, computed {computed:#06x}")]
    Checksum { computed: u16, got: u16 },
    #[error("end byte {0:#04x} instead of 0x77")]
    BadEnd(u8),
    #[error("the BMS reports error status {0:#04x}")]
    Status(u8),
    #[error("payload of {len} bytes is too short for {what}")]
    Short { what: &'static str, len: usize },
}

fn checksum(bytes: &[u8]) -> u16 {
    let sum: u32 = bytes.iter().map(|b| u32::from(*b)).sum();
    (0x1_0000u32.wrapping_sub(sum) & 0xFFFF) as u16
}

/// The read request for a command.
pub fn request(cmd: u8) -> [u8; 7] {
    let c = checksum(&[cmd, 0]).to_be_bytes();
    [START, READ, cmd, 0x00, c[0], c[1], END]
}

/// Builds a response frame (the emulator side, and tests).
pub fn response(cmd: u8, status: u8, payload: &[u8]) -> Vec<u8> {
    let len = u8::try_from(payload.len()).unwrap_or(u8::MAX);
    let mut body = vec![status, len];
    body.extend_from_slice(&payload[..usize::from(len)]);
    let c = checksum(&body).to_be_bytes();
    let mut f = vec![START, cmd];
    f.extend_from_slice(&body);
    f.extend_from_slice(&[c[0], c[1], END]);
    f
}

/// Looks for one response frame in `buf`. Leading garbage is skipped. Returns the frame (or
/// the error of a damaged one) and the bytes consumed, or `None` if more bytes are needed.
pub fn parse(buf: &[u8], expected_cmd: u8) -> Option<(Result<Frame, JbdError>, usize)> {
    let start = buf.iter().position(|b| *b == START)?;
    let f = &buf[start..];
    if f.len() < 4 {
        return None;
    }
    let (cmd, status, len) = (f[1], f[2], usize::from(f[3]));
    let total = 4 + len + 3;
    if f.len() < total {
        return None;
    }
    let consumed = start + total;
    let payload = &f[4..4 + len];
    let got = u16::from_be_bytes([f[4 + len], f[5 + len]]);
    let computed = checksum(&f[2..4 + len]);
    let result = if cmd != expected_cmd {
        Err(JbdError::WrongCommand {
            expected: expected_cmd,
            got: cmd,
        })
    } else if got != computed {
        Err(JbdError::Checksum { computed, got })
    } else if f[6 + len] != END {
        Err(JbdError::BadEnd(f[6 + len]))
    } else if status != 0 {
        Err(JbdError::Status(status))
    } else {
        Ok(Frame {
            cmd,
            status,
            payload: payload.to_vec(),
        })
    };
    Some((result, consumed))
}

/// The decoded basic information (command 0x03).
#[derive(Debug, Clone, PartialEq)]
pub struct BasicInfo {
    pub voltage: Volts,
    /// Positive while charging.
    pub current: Amps,
    pub remaining: AmpHours,
    pub nominal: AmpHours,
    pub cycles: u16,
    /// (year, month, day).
    pub manufactured: (u16, u8, u8),
    /// Cells being balanced.
    pub balancing: Vec<u16>,
    pub protection: u16,
    pub version: u8,
    pub soc: Percent,
    pub fets: Fets,
    pub cells: u8,
    pub temperatures: Vec<Celsius>,
}

fn be16(p: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([p[i], p[i + 1]])
}

/// Decodes a basic-information payload.
pub fn decode_basic(p: &[u8]) -> Result<BasicInfo, JbdError> {
    const FIXED: usize = 23;
    if p.len() < FIXED {
        return Err(JbdError::Short {
            what: "basic information",
            len: p.len(),
        });
    }
    let ntc = usize::from(p[22]);
    if p.len() < FIXED + 2 * ntc {
        return Err(JbdError::Short {
            what: "NTC temperatures",
            len: p.len(),
        });
    }
    let date = be16(p, 10);
    let balance = u32::from(be16(p, 12)) | (u32::from(be16(p, 14)) << 16);
    let cells = p[21];
    Ok(BasicInfo {
        voltage: Volts(f64::from(be16(p, 0)) * 0.01),
        current: Amps(f64::from(be16(p, 2) as i16) * 0.01),
        remaining: AmpHours(f64::from(be16(p, 4)) * 0.01),
        nominal: AmpHours(f64::from(be16(p, 6)) * 0.01),
        cycles: be16(p, 8),
        manufactured: (
            2000 + (date >> 9),
            ((date >> 5) & 0x0F) as u8,
            (date & 0x1F) as u8,
        ),
        balancing: (0..u16::from(cells).min(32))
            .filter(|i| balance & (1 << i) != 0)
            .collect(),
        protection: be16(p, 16),
        version: p[18],
        soc: Percent(f64::from(p[19])),
        fets: Fets {
            charge: p[20] & 0x01 != 0,
            discharge: p[20] & 0x02 != 0,
        },
        cells,
        temperatures: (0..ntc)
            .map(|i| {
                let deci_kelvin = f64::from(be16(p, FIXED + 2 * i));
                Celsius(((deci_kelvin - 2731.0) * 0.1 * 10.0).round() / 10.0)
            })
            .collect(),
    })
}

/// Decodes a cell-voltage payload (command 0x04).
pub fn decode_cells(p: &[u8]) -> Result<Vec<Volts>, JbdError> {
    if !p.len().is_multiple_of(2) {
        return Err(JbdError::Short {
            what: "cell voltages (odd length)",
            len: p.len(),
        });
    }
    Ok(p.chunks_exact(2)
        .map(|c| Volts(f64::from(u16::from_be_bytes([c[0], c[1]])) * 0.001))
        .collect())
}

/// Protection bits of the basic information, as alarms.
pub fn protection_alarms(bits: u16) -> Vec<Alarm> {
    const MAP: [(u16, Alarm); 13] = [
        (0, Alarm::CellOverVoltage),
        (1, Alarm::CellUnderVoltage),
        (2, Alarm::PackOverVoltage),
        (3, Alarm::PackUnderVoltage),
        (4, Alarm::ChargeOverTemperature),
        (5, Alarm::ChargeUnderTemperature),
        (6, Alarm::DischargeOverTemperature),
        (7, Alarm::DischargeUnderTemperature),
        (8, Alarm::ChargeOverCurrent),
        (9, Alarm::DischargeOverCurrent),
        (10, Alarm::ShortCircuit),
        (11, Alarm::SystemError),
        (12, Alarm::SystemError),
    ];
    let mut out: Vec<Alarm> = MAP
        .iter()
        .filter(|(bit, _)| bits & (1 << bit) != 0)
        .map(|(_, a)| *a)
        .collect();
    out.dedup();
    out
}

/// A JBD BMS on a byte stream.
pub struct JbdSource<T> {
    io: T,
    timeout: Duration,
    retries: u32,
    buf: Vec<u8>,
    label: String,
}

impl<T> std::fmt::Debug for JbdSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JbdSource")
            .field("port", &self.label)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> JbdSource<T> {
    /// `label` names the port in messages; each command is tried `1 + retries` times.
    pub fn new(io: T, label: impl Into<String>, timeout: Duration, retries: u32) -> Self {
        JbdSource {
            io,
            timeout,
            retries,
            buf: Vec::with_capacity(128),
            label: label.into(),
        }
    }

    /// Sends a read command and returns its checked payload.
    pub async fn command(&mut self, cmd: u8) -> Result<Vec<u8>, BmsError> {
        let mut last = BmsError::Timeout(self.timeout);
        for _ in 0..=self.retries {
            self.buf.clear();
            self.io.write_all(&request(cmd)).await?;
            self.io.flush().await?;
            match self.answer(cmd).await {
                Ok(p) => return Ok(p),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn answer(&mut self, cmd: u8) -> Result<Vec<u8>, BmsError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut chunk = [0u8; 256];
        loop {
            if let Some((result, consumed)) = parse(&self.buf, cmd) {
                self.buf.drain(..consumed);
                return result
                    .map(|f| f.payload)
                    .map_err(|e| BmsError::BadFrame(e.to_string()));
            }
            if self.buf.len() > 1024 {
                // Noise without a frame in it.
                self.buf.clear();
                return Err(BmsError::BadFrame("no frame in 1 KiB of input".into()));
            }
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => {
                    return Err(if self.buf.is_empty() {
                        BmsError::Timeout(self.timeout)
                    } else {
                        BmsError::BadFrame(format!(
                            "incomplete answer ({} bytes) within {:?}",
                            self.buf.len(),
                            self.timeout
                        ))
                    });
                }
                Ok(Ok(0)) => return Err(BmsError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }
}

/// Opens a JBD BMS on a serial port (9600 8N1 is what these boards speak). Any tty works,
/// including one side of a pseudo-terminal pair.
pub fn open_serial(
    port: &str,
    baud: u32,
    timeout: Duration,
    retries: u32,
) -> Result<JbdSource<tokio_serial::SerialStream>, BmsError> {
    use tokio_serial::SerialPortBuilderExt;
    let stream = tokio_serial::new(port, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| BmsError::Io(std::io::Error::other(format!("{port}: {e}"))))?;
    Ok(JbdSource::new(stream, port, timeout, retries))
}

/// Builds the normalized reading from the two answers.
pub fn reading(basic: &BasicInfo, cells: Vec<Volts>, label: &str, ts: OffsetDateTime) -> Reading {
    let (y, m, d) = basic.manufactured;
    Reading {
        ts,
        pack: Pack {
            voltage: basic.voltage,
            current: basic.current,
            soc: basic.soc,
            // JBD does not report state of health.
            soh: None,
            remaining: Some(basic.remaining),
            full_capacity: Some(basic.nominal),
            cycles: Some(u32::from(basic.cycles)),
        },
        cells,
        temperatures: basic.temperatures.clone(),
        limits: None,
        alarms: protection_alarms(basic.protection),
        warnings: Vec::new(),
        fets: Some(basic.fets),
        balancing: basic.balancing.clone(),
        requests: None,
        source: SourceInfo {
            kind: "jbd-uart".into(),
            model: Some(format!("JBD {}S on {label}", basic.cells)),
            manufacturer: None,
            version: Some(format!("{:#04x}", basic.version)),
            manufactured: Some(format!("{y:04}-{m:02}-{d:02}")),
        },
    }
}

#[async_trait]
impl<T: AsyncRead + AsyncWrite + Unpin + Send> BmsSource for JbdSource<T> {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "jbd-uart".into(),
            model: Some(format!("JBD on {}", self.label)),
            manufacturer: None,
            version: None,
            manufactured: None,
        }
    }

    async fn read(&mut self) -> Result<Reading, BmsError> {
        let basic = decode_basic(&self.command(CMD_BASIC).await?)
            .map_err(|e| BmsError::BadFrame(e.to_string()))?;
        let cells = decode_cells(&self.command(CMD_CELLS).await?)
            .map_err(|e| BmsError::BadFrame(e.to_string()))?;
        Ok(reading(
            &basic,
            cells,
            &self.label,
            OffsetDateTime::now_utc(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// Public test vectors (checksums verified).
    const BASIC: &str = "DD 03 00 1D 06 18 00 00 01 F2 01 F4 00 00 2C 7C 00 00 00 00 00 00 80 64 03 04 03 0B 8B 0B 8A 0B 84 FA 8D 77";
    const CELLS: &str = "DD 04 00 08 0F 45 0F 3D 0F 37 0F 3D FE C6 77";

    #[test]
    fn requests_match_the_protocol() {
        assert_eq!(
            request(CMD_BASIC),
            [0xDD, 0xA5, 0x03, 0x00, 0xFF, 0xFD, 0x77]
        );
        assert_eq!(
            request(CMD_CELLS),
            [0xDD, 0xA5, 0x04, 0x00, 0xFF, 0xFC, 0x77]
        );
    }

    #[test]
    fn public_basic_information_vector() {
        let (f, n) = parse(&hex(BASIC), CMD_BASIC).unwrap();
        assert_eq!(n, 36);
        let b = decode_basic(&f.unwrap().payload).unwrap();
        assert!((b.voltage.0 - 15.60).abs() < 1e-9);
        assert_eq!(b.current.0, 0.0);
        assert!((b.remaining.0 - 4.98).abs() < 1e-9);
        assert!((b.nominal.0 - 5.00).abs() < 1e-9);
        assert_eq!(b.cycles, 0);
        assert_eq!(b.manufactured, (2022, 3, 28));
        assert_eq!(b.protection, 0);
        assert!(protection_alarms(b.protection).is_empty());
        assert_eq!(b.soc.0, 100.0);
        assert_eq!(
            b.fets,
            Fets {
                charge: true,
                discharge: true
            }
        );
        assert_eq!(b.cells, 4);
        assert_eq!(
            b.temperatures,
            vec![Celsius(22.4), Celsius(22.3), Celsius(21.7)]
        );
        // The emulator side builds the same bytes.
        assert_eq!(response(CMD_BASIC, 0, &f_payload(BASIC)), hex(BASIC));
    }

    fn f_payload(s: &str) -> Vec<u8> {
        let b = hex(s);
        b[4..b.len() - 3].to_vec()
    }

    #[test]
    fn public_cell_voltage_vector() {
        let (f, _) = parse(&hex(CELLS), CMD_CELLS).unwrap();
        let v = decode_cells(&f.unwrap().payload).unwrap();
        let mv: Vec<u32> = v.iter().map(|x| (x.0 * 1000.0).round() as u32).collect();
        assert_eq!(mv, vec![3909, 3901, 3895, 3901]);
    }

    #[test]
    fn damaged_frames_are_refused_with_the_reason() {
        let good = hex(BASIC);
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 0x01;
        assert!(matches!(
            parse(&bad_sum, CMD_BASIC).unwrap().0,
            Err(JbdError::Checksum { .. })
        ));
        let mut bad_end = good.clone();
        *bad_end.last_mut().unwrap() = 0x00;
        assert_eq!(
            parse(&bad_end, CMD_BASIC).unwrap().0,
            Err(JbdError::BadEnd(0))
        );
        assert!(matches!(
            parse(&good, CMD_CELLS).unwrap().0,
            Err(JbdError::WrongCommand { .. })
        ));
        assert_eq!(
            parse(&response(CMD_BASIC, 0x80, &[]), CMD_BASIC).unwrap().0,
            Err(JbdError::Status(0x80))
        );
        // Incomplete input waits for more; garbage before the start byte is skipped.
        assert_eq!(parse(&good[..20], CMD_BASIC), None);
        let mut noisy = vec![0x00, 0x13, 0x77];
        noisy.extend_from_slice(&good);
        let (f, n) = parse(&noisy, CMD_BASIC).unwrap();
        assert!(f.is_ok());
        assert_eq!(n, noisy.len());
        // A payload too short for its fields.
        assert!(matches!(
            decode_basic(&[0; 10]),
            Err(JbdError::Short { .. })
        ));
        assert!(decode_cells(&[0x0F]).is_err());
    }

    #[test]
    fn protection_bits_map_to_alarms() {
        assert_eq!(protection_alarms(0b1), vec![Alarm::CellOverVoltage]);
        assert_eq!(
            protection_alarms((1 << 9) | (1 << 10)),
            vec![Alarm::DischargeOverCurrent, Alarm::ShortCircuit]
        );
        assert_eq!(
            protection_alarms((1 << 11) | (1 << 12)),
            vec![Alarm::SystemError]
        );
    }

    #[tokio::test]
    async fn source_retries_after_a_bad_answer() {
        let (client, mut bms) = tokio::io::duplex(1024);
        let mut src = JbdSource::new(client, "duplex", Duration::from_millis(200), 2);
        let emulator = tokio::spawn(async move {
            let mut req = [0u8; 7];
            // First basic request: a corrupted answer; then good answers.
            bms.read_exact(&mut req).await.unwrap();
            let mut bad = hex(BASIC);
            bad[12] ^= 0xFF;
            bms.write_all(&bad).await.unwrap();
            bms.read_exact(&mut req).await.unwrap();
            bms.write_all(&hex(BASIC)).await.unwrap();
            bms.read_exact(&mut req).await.unwrap();
            assert_eq!(req, request(CMD_CELLS));
            bms.write_all(&hex(CELLS)).await.unwrap();
            bms
        });
        let r = src.read().await.unwrap();
        assert_eq!(r.cells.len(), 4);
        assert_eq!(r.source.manufactured.as_deref(), Some("2022-03-28"));
        let _bms = emulator.await.unwrap();
        // A silent BMS: every attempt times out.
        let (client, _silent) = tokio::io::duplex(64);
        let mut src = JbdSource::new(client, "silent", Duration::from_millis(50), 1);
        assert!(matches!(src.read().await, Err(BmsError::Timeout(_))));
    }
}

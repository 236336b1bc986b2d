//! candump log files (`candump -l`, one frame per line: `(1700000000.123456) can0 356#C814…`),
//! parsed strictly, and replayed as a BMS source: the way to test the CAN decoding on
//! recorded traffic where no CAN interface exists, and to reproduce a field problem.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::pylontech::{CanFrame, Conventions, Decoder};
use crate::reading::{Reading, SourceInfo};
use crate::source::{BmsError, BmsSource};

/// One logged frame.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedFrame {
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    pub interface: String,
    pub frame: CanFrame,
}

/// Why a log line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {why}")]
pub struct LogError {
    pub file: String,
    pub line: usize,
    pub why: String,
}

/// Parses one line. Blank lines and `#` comments give `Ok(None)`.
pub fn parse_line(line: &str) -> Result<Option<LoggedFrame>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let ts = parts
        .next()
        .and_then(|t| t.strip_prefix('(')?.strip_suffix(')'))
        .ok_or("expected (seconds.micros) first")?;
    let timestamp: f64 = ts.parse().map_err(|_| format!("bad timestamp {ts:?}"))?;
    let interface = parts.next().ok_or("missing interface")?.to_owned();
    let frame = parts.next().ok_or("missing ID#DATA")?;
    if parts.next().is_some() {
        return Err("unexpected text after ID#DATA".into());
    }
    let (id, data) = frame.split_once('#').ok_or("expected ID#DATA")?;
    if id.len() != 3 && id.len() != 8 {
        return Err(format!(
            "CAN id {id:?} must have 3 (standard) or 8 (extended) hex digits"
        ));
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| format!("bad CAN id {id:?}"))?;
    if data.starts_with('R') {
        return Ok(None); // remote frames carry no data
    }
    if !data.len().is_multiple_of(2) || data.len() > 16 {
        return Err(format!("bad data {data:?}: 0 to 8 bytes as hex pairs"));
    }
    let bytes = (0..data.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&data[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("bad data {data:?}"))?;
    Ok(Some(LoggedFrame {
        timestamp,
        interface,
        frame: CanFrame { id, data: bytes },
    }))
}

/// Parses a whole log; an error names the file and the line.
pub fn parse_log(text: &str, file: &str) -> Result<Vec<LoggedFrame>, LogError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => {}
            Err(why) => {
                return Err(LogError {
                    file: file.to_owned(),
                    line: i + 1,
                    why,
                });
            }
        }
    }
    Ok(out)
}

/// Replays a candump log as a BMS.
#[derive(Debug)]
pub struct CandumpSource {
    frames: Vec<LoggedFrame>,
    pos: usize,
    decoder: Decoder,
    /// Start over at the end of the log (demos) instead of reporting the BMS gone (tests).
    repeat: bool,
    label: String,
}

impl CandumpSource {
    pub fn open(path: &Path, conventions: Conventions, repeat: bool) -> Result<Self, BmsError> {
        let text = std::fs::read_to_string(path)?;
        let frames = parse_log(&text, &path.display().to_string())
            .map_err(|e| BmsError::BadFrame(e.to_string()))?;
        Ok(Self::from_frames(
            frames,
            conventions,
            repeat,
            path.display().to_string(),
        ))
    }

    pub fn from_frames(
        frames: Vec<LoggedFrame>,
        conventions: Conventions,
        repeat: bool,
        label: String,
    ) -> Self {
        CandumpSource {
            frames,
            pos: 0,
            decoder: Decoder::new(conventions),
            repeat,
            label,
        }
    }
}

#[async_trait]
impl BmsSource for CandumpSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "pylontech-can".into(),
            model: Some(format!("candump replay of {}", self.label)),
            manufacturer: None,
            version: None,
            manufactured: None,
        }
    }

    /// The next complete reading of the log, stamped with the log's time.
    async fn read(&mut self) -> Result<Reading, BmsError> {
        let mut wrapped = false;
        loop {
            if self.pos >= self.frames.len() {
                // The end of the log is a quiet bus: it ends the last cycle.
                if let Some(r) = self.decoder.flush() {
                    return Ok(r);
                }
                if !self.repeat || wrapped || self.frames.is_empty() {
                    return Err(BmsError::Timeout(Duration::ZERO));
                }
                self.pos = 0;
                wrapped = true;
            }
            let f = &self.frames[self.pos];
            self.pos += 1;
            let ts = OffsetDateTime::from_unix_timestamp_nanos((f.timestamp * 1e9) as i128)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            match self.decoder.push(&f.frame, ts) {
                Err(e) => return Err(BmsError::BadFrame(format!("{}: {e}", self.label))),
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_strictly() {
        let f = parse_line("(1700000000.500000) can0 356#C81485FFEA00")
            .unwrap()
            .unwrap();
        assert_eq!(f.interface, "can0");
        assert_eq!(f.frame.id, 0x356);
        assert_eq!(f.frame.data, vec![0xC8, 0x14, 0x85, 0xFF, 0xEA, 0x00]);
        assert!((f.timestamp - 1_700_000_000.5).abs() < 1e-6);
        assert_eq!(parse_line("  # comment"), Ok(None));
        assert_eq!(parse_line("(1.0) can0 351#R"), Ok(None));
        for bad in [
            "can0 356#00",
            "(x) can0 356#00",
            "(1.0) can0 356",
            "(1.0) can0 3566#00",
            "(1.0) can0 356#0",
            "(1.0) can0 356#GG",
            "(1.0) can0 356#00 extra",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
        let e = parse_log("(1.0) can0 356#00\n(2.0) can0 zzz#00\n", "rec.log").unwrap_err();
        assert_eq!((e.line, e.file.as_str()), (2, "rec.log"));
    }
}

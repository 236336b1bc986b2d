//! The configured BMS source, and its health.
//!
//! [`ConfiguredSource`] opens the driver named by `[bms]` lazily and opens it again after an
//! I/O error, so a USB adapter unplugged and plugged back, or a Modbus device rebooting, is a
//! period of failed readings rather than a dead agent. [`Health`] turns runs of failures into
//! `bms_unreachable` / `bms_recovered` events: a BMS that stops answering is reported, not
//! silent.

use std::path::PathBuf;
use std::time::Instant;

use async_trait::async_trait;
use rampart_bms::{BmsError, BmsSource, Event, Reading, SimulatedPack, SourceInfo};
use time::OffsetDateTime;

use crate::config::{AgentConfig, BmsSection};

/// The `[bms]` driver, (re)opened on demand.
pub struct ConfiguredSource {
    section: BmsSection,
    candump_file: Option<PathBuf>,
    inner: Option<Box<dyn BmsSource>>,
}

impl std::fmt::Debug for ConfiguredSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredSource")
            .field("kind", &self.section.kind())
            .field("open", &self.inner.is_some())
            .finish()
    }
}

impl ConfiguredSource {
    pub fn new(cfg: &AgentConfig) -> ConfiguredSource {
        let candump_file = match &cfg.bms {
            BmsSection::Candump(c) => Some(cfg.resolve(&c.file)),
            _ => None,
        };
        ConfiguredSource {
            section: cfg.bms.clone(),
            candump_file,
            inner: None,
        }
    }

    /// A short name for messages: driver and where it reads.
    pub fn label(&self) -> String {
        match &self.section {
            BmsSection::Simulator(_) => "simulator".into(),
            BmsSection::Jbd(j) => format!("jbd {}", j.port),
            BmsSection::PylontechCan(c) => format!("pylontech_can {}", c.interface),
            BmsSection::Candump(_) => format!(
                "candump {}",
                self.candump_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            BmsSection::Modbus(m) => format!(
                "modbus {}",
                m.address
                    .clone()
                    .or_else(|| m.port.clone())
                    .unwrap_or_default()
            ),
        }
    }

    fn open(&self) -> Result<Box<dyn BmsSource>, BmsError> {
        Ok(match &self.section {
            BmsSection::Simulator(sim) => Box::new(SimulatedPack::new(sim.clone())),
            BmsSection::Jbd(j) => Box::new(rampart_bms::jbd::open_serial(
                &j.port, j.baud, j.timeout, j.retries,
            )?),
            BmsSection::Candump(c) => {
                let path = self.candump_file.clone().unwrap_or_else(|| c.file.clone());
                Box::new(rampart_bms::candump::CandumpSource::open(
                    &path,
                    c.conventions.clone(),
                    c.repeat,
                )?)
            }
            BmsSection::Modbus(m) => Box::new(
                rampart_bms::modbus::ModbusSource::new(m.clone()).map_err(BmsError::BadFrame)?,
            ),
            #[cfg(feature = "socketcan")]
            BmsSection::PylontechCan(c) => Box::new(rampart_bms::can::SocketCanSource::open(
                &c.interface,
                c.conventions.clone(),
                c.timeout,
            )?),
            #[cfg(not(feature = "socketcan"))]
            BmsSection::PylontechCan(_) => {
                return Err(BmsError::BadFrame(
                    "built without SocketCAN support (cargo feature socketcan)".into(),
                ));
            }
        })
    }
}

#[async_trait]
impl BmsSource for ConfiguredSource {
    fn info(&self) -> SourceInfo {
        match &self.inner {
            Some(s) => s.info(),
            None => SourceInfo {
                kind: self.section.kind().into(),
                model: Some(self.label()),
                manufacturer: None,
                version: None,
                manufactured: None,
            },
        }
    }

    async fn read(&mut self) -> Result<Reading, BmsError> {
        if self.inner.is_none() {
            self.inner = Some(self.open()?);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Err(BmsError::BadFrame("source not open".into()));
        };
        let result = inner.read().await;
        if let Err(BmsError::Io(_)) = &result {
            // The port or connection itself failed: open it again next time.
            self.inner = None;
        }
        result
    }
}

/// Where the BMS stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BmsState {
    /// No reading attempted yet.
    Starting,
    Ok,
    /// Some readings failed, fewer than the threshold.
    Failing,
    /// The threshold of consecutive failures was reached (and reported).
    Unreachable,
}

/// Counts failures and says when to raise an event.
#[derive(Debug)]
pub struct Health {
    threshold: u64,
    failures: u64,
    first_failure: Option<(OffsetDateTime, Instant)>,
    pub state: BmsState,
    pub last_error: Option<String>,
    pub last_reading: Option<OffsetDateTime>,
}

impl Health {
    pub fn new(threshold: u32) -> Health {
        Health {
            threshold: u64::from(threshold.max(1)),
            failures: 0,
            first_failure: None,
            state: BmsState::Starting,
            last_error: None,
            last_reading: None,
        }
    }

    /// A reading succeeded; `bms_recovered` if the BMS had been reported unreachable.
    pub fn ok(&mut self, source: &str, at: OffsetDateTime) -> Option<Event> {
        let event = match (self.state, self.first_failure) {
            (BmsState::Unreachable, Some((_, since))) => Some(Event::BmsRecovered {
                source: source.to_owned(),
                failed_reads: self.failures,
                down_s: (since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            }),
            _ => None,
        };
        self.failures = 0;
        self.first_failure = None;
        self.state = BmsState::Ok;
        self.last_reading = Some(at);
        event
    }

    /// A reading failed; `bms_unreachable` when the failures reach the threshold (once per
    /// outage).
    pub fn failed(&mut self, source: &str, error: &BmsError) -> Option<Event> {
        self.failures += 1;
        let (since, _) = *self
            .first_failure
            .get_or_insert((OffsetDateTime::now_utc(), Instant::now()));
        self.last_error = Some(error.to_string());
        if self.failures >= self.threshold && self.state != BmsState::Unreachable {
            self.state = BmsState::Unreachable;
            return Some(Event::BmsUnreachable {
                source: source.to_owned(),
                error: error.to_string(),
                failed_reads: self.failures,
                since,
            });
        }
        if self.state != BmsState::Unreachable {
            self.state = BmsState::Failing;
        }
        None
    }

    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_and_its_end_too() {
        let mut h = Health::new(3);
        let timeout = BmsError::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(h.ok("jbd", OffsetDateTime::UNIX_EPOCH), None);
        assert_eq!(h.failed("jbd", &timeout), None);
        assert_eq!(h.state, BmsState::Failing);
        assert_eq!(h.failed("jbd", &timeout), None);
        let e = h.failed("jbd", &timeout).expect("third failure raises it");
        assert!(matches!(
            e,
            Event::BmsUnreachable {
                failed_reads: 3,
                ..
            }
        ));
        assert_eq!(h.failed("jbd", &timeout), None, "once per outage");
        let back = h
            .ok("jbd", OffsetDateTime::UNIX_EPOCH)
            .expect("recovery reported");
        assert!(matches!(
            back,
            Event::BmsRecovered {
                failed_reads: 4,
                ..
            }
        ));
        // A short glitch below the threshold raises nothing.
        assert_eq!(h.failed("jbd", &timeout), None);
        assert_eq!(h.ok("jbd", OffsetDateTime::UNIX_EPOCH), None);
    }
}

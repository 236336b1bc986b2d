//! Pylontech / SMA-style low-voltage battery CAN protocol (500 kbit/s, 11-bit ids,
//! little-endian). The battery broadcasts about once a second:
//!
//! | id | content |
//! |---|---|
//! | 0x351 | charge voltage limit u16 ×0.1 V, charge current limit s16 ×0.1 A, discharge current limit s16 ×0.1 A, discharge voltage limit u16 ×0.1 V (optional) |
//! | 0x355 | SoC u16 %, SoH u16 % |
//! | 0x356 | voltage s16 ×0.01 V, current s16 ×0.1 A, temperature s16 ×0.1 °C |
//! | 0x359 | protection (bytes 0–1) and warning (bytes 2–3) bits, module count (byte 4), "PN" (bytes 5–6) |
//! | 0x35C | requests: b7 charge enable, b6 discharge enable, b5/b4 force charge, b3 full charge |
//! | 0x35E | manufacturer name, ASCII |
//!
//! Implementations disagree on the sign of the current and on some scalings, so they are
//! configurable ([`Conventions`]). [`Decoder`] turns frames into readings; it is fed by a CAN
//! socket on a gateway or by a candump log ([`crate::candump`]).

use serde::Deserialize;
use time::OffsetDateTime;

use crate::reading::{Alarm, Limits, Pack, Reading, Requests, SourceInfo};
use crate::units::{Amps, Celsius, Percent, Volts};

/// A classic CAN frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanFrame {
    pub id: u32,
    pub data: Vec<u8>,
}

/// Which way positive current flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CurrentSign {
    /// Positive = charging (the normalized convention).
    #[default]
    Charging,
    /// Positive = discharging (some BMS firmwares).
    Discharging,
}

/// Scalings and sign convention of a battery's CAN messages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conventions {
    pub current_sign: CurrentSign,
    /// Volts per unit of 0x356 bytes 0–1.
    pub voltage_scale: f64,
    /// Amperes per unit of 0x356 bytes 2–3.
    pub current_scale: f64,
    /// °C per unit of 0x356 bytes 4–5.
    pub temperature_scale: f64,
    /// Volts per unit of the 0x351 voltage limits.
    pub limit_voltage_scale: f64,
    /// Amperes per unit of the 0x351 current limits.
    pub limit_current_scale: f64,
}

impl Default for Conventions {
    fn default() -> Self {
        Conventions {
            current_sign: CurrentSign::Charging,
            voltage_scale: 0.01,
            current_scale: 0.1,
            temperature_scale: 0.1,
            limit_voltage_scale: 0.1,
            limit_current_scale: 0.1,
        }
    }
}

/// Why a frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame {id:#05x} has {len} data bytes, at least {need} needed")]
    Short { id: u32, len: usize, need: usize },
}

/// A raw value times its scale, rounded to 6 decimals so that 568 × 0.1 reads as 56.8.
fn scaled(raw: f64, scale: f64) -> f64 {
    (raw * scale * 1e6).round() / 1e6
}

fn le_u16(d: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([d[i], d[i + 1]])
}

fn le_i16(d: &[u8], i: usize) -> i16 {
    i16::from_le_bytes([d[i], d[i + 1]])
}

/// Protection or warning bits (bytes `lo`, `hi` of 0x359) as alarms.
fn bits_to_alarms(lo: u8, hi: u8) -> Vec<Alarm> {
    let mut v = Vec::new();
    for (bit, alarm) in [
        (1, Alarm::PackOverVoltage),
        (2, Alarm::PackUnderVoltage),
        (3, Alarm::OverTemperature),
        (4, Alarm::UnderTemperature),
        (7, Alarm::DischargeOverCurrent),
    ] {
        if lo & (1 << bit) != 0 {
            v.push(alarm);
        }
    }
    if hi & 0x01 != 0 {
        v.push(Alarm::ChargeOverCurrent);
    }
    if hi & 0x08 != 0 {
        v.push(Alarm::SystemError);
    }
    v
}

/// The ids this decoder uses; others on the bus are ignored.
const KNOWN_IDS: [u32; 6] = [0x351, 0x355, 0x356, 0x359, 0x35C, 0x35E];

/// Accumulates frames into readings, one per broadcast cycle.
///
/// A cycle ends when an id that was already seen in it comes again (the battery started the
/// next cycle), or when the bus goes quiet ([`Decoder::flush`]). Emitting at the end of the
/// cycle rather than as soon as 0x355 and 0x356 are in means the alarms, requests and name
/// in a reading belong to the same cycle as its voltage and current.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    conv: Conventions,
    limits: Option<Limits>,
    soc_soh: Option<(u16, u16)>,
    electrical: Option<(f64, f64, f64)>,
    alarms: Vec<Alarm>,
    warnings: Vec<Alarm>,
    modules: Option<u8>,
    requests: Option<Requests>,
    manufacturer: Option<String>,
    fresh_355: bool,
    fresh_356: bool,
    /// Known ids seen in the current cycle.
    cycle: Vec<u32>,
    /// Time of the current cycle's 0x356 (the electrical values).
    ts: Option<OffsetDateTime>,
}

impl Decoder {
    pub fn new(conv: Conventions) -> Self {
        Decoder {
            conv,
            ..Default::default()
        }
    }

    /// Takes one frame received at `ts`; returns the reading of the previous cycle if this
    /// frame starts a new one. Unknown ids are ignored (other devices share the bus). A short
    /// frame is refused and leaves the state as it was.
    pub fn push(
        &mut self,
        f: &CanFrame,
        ts: OffsetDateTime,
    ) -> Result<Option<Reading>, FrameError> {
        if !KNOWN_IDS.contains(&f.id) {
            return Ok(None);
        }
        let done = if self.cycle.contains(&f.id) {
            self.flush()
        } else {
            None
        };
        self.apply(f, ts)?;
        self.cycle.push(f.id);
        Ok(done)
    }

    fn apply(&mut self, f: &CanFrame, ts: OffsetDateTime) -> Result<(), FrameError> {
        let need = |n: usize| {
            if f.data.len() < n {
                Err(FrameError::Short {
                    id: f.id,
                    len: f.data.len(),
                    need: n,
                })
            } else {
                Ok(())
            }
        };
        let d = &f.data;
        match f.id {
            0x351 => {
                need(6)?;
                let v = self.conv.limit_voltage_scale;
                let a = self.conv.limit_current_scale;
                self.limits = Some(Limits {
                    charge_voltage: Volts(scaled(f64::from(le_u16(d, 0)), v)),
                    charge_current: Amps(scaled(f64::from(le_i16(d, 2)), a)),
                    discharge_current: Amps(scaled(f64::from(le_i16(d, 4)), a)),
                    discharge_voltage: (d.len() >= 8 && le_u16(d, 6) != 0)
                        .then(|| Volts(scaled(f64::from(le_u16(d, 6)), v))),
                });
            }
            0x355 => {
                need(4)?;
                self.soc_soh = Some((le_u16(d, 0), le_u16(d, 2)));
                self.fresh_355 = true;
            }
            0x356 => {
                need(6)?;
                let sign = match self.conv.current_sign {
                    CurrentSign::Charging => 1.0,
                    CurrentSign::Discharging => -1.0,
                };
                self.electrical = Some((
                    f64::from(le_i16(d, 0)) * self.conv.voltage_scale,
                    f64::from(le_i16(d, 2)) * self.conv.current_scale * sign,
                    f64::from(le_i16(d, 4)) * self.conv.temperature_scale,
                ));
                self.fresh_356 = true;
                self.ts = Some(ts);
            }
            0x359 => {
                need(4)?;
                self.alarms = bits_to_alarms(d[0], d[1]);
                self.warnings = bits_to_alarms(d[2], d[3]);
                self.modules = d.get(4).copied();
            }
            0x35C => {
                need(1)?;
                self.requests = Some(Requests {
                    charge_enable: d[0] & 0x80 != 0,
                    discharge_enable: d[0] & 0x40 != 0,
                    force_charge: d[0] & 0x30 != 0,
                    full_charge: d[0] & 0x08 != 0,
                });
            }
            0x35E => {
                let name: String = d
                    .iter()
                    .take_while(|b| **b != 0)
                    .filter(|b| b.is_ascii_graphic() || **b == b' ')
                    .map(|b| char::from(*b))
                    .collect();
                self.manufacturer = Some(name.trim().to_owned()).filter(|n| !n.is_empty());
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the current cycle already has 0x355 and 0x356 (a reading is pending).
    pub fn has_values(&self) -> bool {
        self.fresh_355 && self.fresh_356
    }

    /// Ends the current cycle: its reading, if 0x355 and 0x356 both arrived in it.
    pub fn flush(&mut self) -> Option<Reading> {
        self.cycle.clear();
        if !(self.fresh_355 && self.fresh_356) {
            return None;
        }
        let ((soc, soh), (voltage, current, temperature)) = (self.soc_soh?, self.electrical?);
        let ts = self.ts?;
        self.fresh_355 = false;
        self.fresh_356 = false;
        let round = |x: f64, p: f64| (x * p).round() / p;
        Some(Reading {
            ts,
            pack: Pack {
                voltage: Volts(round(voltage, 100.0)),
                current: Amps(round(current, 10.0)),
                soc: Percent(f64::from(soc)),
                soh: Some(Percent(f64::from(soh))),
                remaining: None,
                full_capacity: None,
                cycles: None,
            },
            cells: Vec::new(),
            temperatures: vec![Celsius(round(temperature, 10.0))],
            limits: self.limits.clone(),
            alarms: self.alarms.clone(),
            warnings: self.warnings.clone(),
            fets: None,
            balancing: Vec::new(),
            requests: self.requests,
            source: SourceInfo {
                kind: "pylontech-can".into(),
                model: self.modules.map(|m| format!("{m} module(s)")),
                manufacturer: self.manufacturer.clone(),
                version: None,
                manufactured: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

    fn f(id: u32, data: &[u8]) -> CanFrame {
        CanFrame {
            id,
            data: data.to_vec(),
        }
    }

    /// One broadcast cycle of a 48 V pack: 53.2 V, −12.3 A (discharging), 23.4 °C, SoC 81 %,
    /// SoH 97 %, limits 56.8 V / 50 A / 100 A / 44.8 V.
    fn cycle() -> Vec<CanFrame> {
        vec![
            f(0x351, &[0x38, 0x02, 0xF4, 0x01, 0xE8, 0x03, 0xC0, 0x01]),
            f(0x355, &[0x51, 0x00, 0x61, 0x00]),
            f(0x356, &[0xC8, 0x14, 0x85, 0xFF, 0xEA, 0x00]),
            f(0x359, &[0x00, 0x00, 0x08, 0x00, 0x02, 0x50, 0x4E, 0x00]),
            f(0x35C, &[0xC0, 0x00]),
            f(0x35E, b"PYLON   "),
        ]
    }

    #[test]
    fn a_broadcast_cycle_decodes() {
        let mut d = Decoder::new(Conventions::default());
        for fr in cycle() {
            assert_eq!(d.push(&fr, T0).unwrap(), None);
        }
        // The next cycle's first frame completes the first one.
        let r = d.push(&cycle()[0], T0).unwrap().expect("complete");
        assert_eq!(r.pack.voltage, Volts(53.2));
        assert_eq!(r.pack.current, Amps(-12.3));
        assert_eq!(r.temperatures, vec![Celsius(23.4)]);
        assert_eq!(r.pack.soc, Percent(81.0));
        assert_eq!(r.pack.soh, Some(Percent(97.0)));
        let l = r.limits.unwrap();
        assert_eq!(
            (l.charge_voltage, l.charge_current, l.discharge_current),
            (Volts(56.8), Amps(50.0), Amps(100.0))
        );
        assert_eq!(l.discharge_voltage, Some(Volts(44.8)));
        assert!(r.alarms.is_empty());
        assert_eq!(r.warnings, vec![Alarm::OverTemperature]);
        assert_eq!(
            r.requests,
            Some(Requests {
                charge_enable: true,
                discharge_enable: true,
                force_charge: false,
                full_charge: false
            })
        );
        assert_eq!(r.source.manufacturer.as_deref(), Some("PYLON"));
        assert_eq!(r.source.model.as_deref(), Some("2 module(s)"));
        // A cycle without 0x356 gives no reading; a quiet bus ends a complete one.
        assert_eq!(d.flush(), None);
        d.push(&cycle()[1], T0).unwrap();
        assert_eq!(d.flush(), None);
        d.push(&cycle()[1], T0).unwrap();
        d.push(&cycle()[2], T0).unwrap();
        assert!(d.flush().is_some());
    }

    #[test]
    fn sign_and_scaling_are_configurable() {
        let mut d = Decoder::new(Conventions {
            current_sign: CurrentSign::Discharging,
            ..Default::default()
        });
        for fr in cycle() {
            d.push(&fr, T0).unwrap();
        }
        assert_eq!(d.flush().unwrap().pack.current, Amps(12.3));
    }

    #[test]
    fn protection_bits_and_short_frames() {
        let mut d = Decoder::new(Conventions::default());
        d.push(&f(0x359, &[0b1000_0110, 0b0000_1001, 0, 0, 1]), T0)
            .unwrap();
        assert_eq!(
            d.alarms,
            vec![
                Alarm::PackOverVoltage,
                Alarm::PackUnderVoltage,
                Alarm::DischargeOverCurrent,
                Alarm::ChargeOverCurrent,
                Alarm::SystemError
            ]
        );
        assert_eq!(
            d.push(&f(0x356, &[1, 2]), T0),
            Err(FrameError::Short {
                id: 0x356,
                len: 2,
                need: 6
            })
        );
        // Frames of other devices on the bus are ignored.
        assert_eq!(d.push(&f(0x123, &[1]), T0), Ok(None));
    }
}

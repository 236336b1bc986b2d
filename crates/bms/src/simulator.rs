//! A simulated LiFePO4 pack, for demos and for testing everything downstream of a BMS.
//!
//! The model is small but physical: a load profile drives the pack current; state of charge
//! follows it by coulomb counting; each cell's voltage is the open-circuit voltage at that
//! charge plus the IR drop of its own internal resistance plus a fixed per-cell offset
//! (imbalance); temperatures rise with I²R heating towards ambient with a thermal time
//! constant; state of health fades with charge throughput. Protections trip as a real BMS's
//! would: a full pack opens the charge FET (cell over-voltage), an empty one the discharge FET
//! (cell under-voltage), over-temperature and over-current open both, and each recovers with
//! hysteresis.

use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::reading::{Alarm, Fets, Limits, Pack, Reading, SourceInfo};
use crate::source::{BmsError, BmsSource};
use crate::units::{AmpHours, Amps, Celsius, Percent, Volts};

/// Simulator settings (the `[bms]` section of agent.toml with `kind = "simulator"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Cells in series.
    pub cells: usize,
    /// Rated capacity in Ah.
    pub capacity_ah: f64,
    /// State of charge at start, percent.
    pub initial_soc_pct: f64,
    /// Peak charge/discharge current of the load profile, A.
    pub peak_current_a: f64,
    /// Period of the charge/discharge cycle of the load profile, simulated seconds.
    pub cycle_period_s: f64,
    /// Simulated seconds per real second (60 = one minute of battery life per second).
    pub time_scale: f64,
    /// Ambient temperature, °C.
    pub ambient_c: f64,
    /// Temperature sensors.
    pub temperature_sensors: usize,
    /// Seed of the per-cell variation and noise (the same seed gives the same pack).
    pub seed: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            cells: 16,
            capacity_ah: 100.0,
            initial_soc_pct: 60.0,
            peak_current_a: 50.0,
            cycle_period_s: 4.0 * 3600.0,
            time_scale: 60.0,
            ambient_c: 25.0,
            temperature_sensors: 4,
            seed: 1,
        }
    }
}

// LiFePO4 cell limits (typical datasheet values).
const CELL_OVER_V: f64 = 3.65;
const CELL_UNDER_V: f64 = 2.50;
const CELL_INTERNAL_OHM: f64 = 0.0008;
const OVER_TEMP_C: f64 = 55.0;
const UNDER_TEMP_CHARGE_C: f64 = 0.0;

/// Open-circuit voltage of an LFP cell at `soc` (0..=1): steep ends, a long flat middle.
fn lfp_ocv(soc: f64) -> f64 {
    const CURVE: [(f64, f64); 9] = [
        (0.00, 2.50),
        (0.05, 3.00),
        (0.10, 3.20),
        (0.20, 3.25),
        (0.50, 3.29),
        (0.80, 3.32),
        (0.90, 3.34),
        (0.97, 3.40),
        (1.00, 3.60),
    ];
    let soc = soc.clamp(0.0, 1.0);
    for w in CURVE.windows(2) {
        let (s0, v0) = w[0];
        let (s1, v1) = w[1];
        if soc <= s1 {
            return v0 + (v1 - v0) * (soc - s0) / (s1 - s0);
        }
    }
    CURVE[CURVE.len() - 1].1
}

/// Small deterministic PRNG (xorshift64*), so a seed reproduces a pack exactly (the
/// document reader's tests draw from it too). The seed must not be zero.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in -1..1.
    fn symmetric(&mut self) -> f64 {
        self.next_f64() * 2.0 - 1.0
    }
}

/// The simulated pack.
#[derive(Debug, Clone)]
pub struct SimulatedPack {
    cfg: SimulatorConfig,
    rng: Rng,
    /// Per-cell charge offsets (imbalance), fraction of capacity.
    cell_soc_offset: Vec<f64>,
    /// Per-cell resistance factors.
    cell_r_factor: Vec<f64>,
    soc: f64,
    soh: f64,
    throughput_ah: f64,
    temps: Vec<f64>,
    sim_time_s: f64,
    current: f64,
    charge_fet: bool,
    discharge_fet: bool,
    alarms: Vec<Alarm>,
    last: Option<Instant>,
}

impl SimulatedPack {
    pub fn new(cfg: SimulatorConfig) -> Self {
        let mut rng = Rng(cfg.seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let cells = cfg.cells.max(1);
        let cell_soc_offset = (0..cells).map(|_| rng.symmetric() * 0.01).collect();
        let cell_r_factor = (0..cells).map(|_| 1.0 + rng.symmetric() * 0.1).collect();
        let sensors = cfg.temperature_sensors.max(1);
        SimulatedPack {
            soc: (cfg.initial_soc_pct / 100.0).clamp(0.0, 1.0),
            soh: 1.0,
            throughput_ah: 0.0,
            temps: vec![cfg.ambient_c; sensors],
            sim_time_s: 0.0,
            current: 0.0,
            charge_fet: true,
            discharge_fet: true,
            alarms: Vec::new(),
            last: None,
            cell_soc_offset,
            cell_r_factor,
            rng,
            cfg,
        }
    }

    /// Advances the simulation by `dt` simulated seconds.
    pub fn step(&mut self, dt: f64) {
        self.sim_time_s += dt;
        let capacity = self.cfg.capacity_ah * self.soh;
        // Load profile: a sine between charging and discharging, with some noise.
        let phase = std::f64::consts::TAU * self.sim_time_s / self.cfg.cycle_period_s.max(1.0);
        let mut demand = self.cfg.peak_current_a * phase.sin() + self.rng.symmetric() * 0.5;
        if demand > 0.0 && !self.charge_fet {
            demand = 0.0;
        }
        if demand < 0.0 && !self.discharge_fet {
            demand = 0.0;
        }
        self.current = demand;

        let dq = self.current * dt / 3600.0; // Ah, positive = charging
        self.soc = (self.soc + dq / capacity.max(1e-6)).clamp(0.0, 1.0);
        self.throughput_ah += dq.abs();
        // Capacity fade: about 20 % after 4000 full cycles.
        let cycles = self.throughput_ah / (2.0 * self.cfg.capacity_ah.max(1e-6));
        self.soh = (1.0 - 0.2 * cycles / 4000.0).clamp(0.5, 1.0);

        // First-order thermal model: I²R heating against cooling towards ambient.
        let pack_r = CELL_INTERNAL_OHM * self.cell_r_factor.len() as f64;
        let heat_rise = self.current * self.current * pack_r * 0.8; // °C above ambient at steady state
        let tau = 1800.0;
        let alpha = (dt / tau).min(1.0);
        let ambient = self.cfg.ambient_c;
        for (i, t) in self.temps.iter_mut().enumerate() {
            let target = ambient + heat_rise * (1.0 + 0.05 * i as f64);
            *t += (target - *t) * alpha;
        }
        self.update_protections();
    }

    fn cell_voltage(&self, i: usize) -> f64 {
        let soc = (self.soc + self.cell_soc_offset[i]).clamp(0.0, 1.0);
        lfp_ocv(soc) + self.current * CELL_INTERNAL_OHM * self.cell_r_factor[i]
    }

    fn update_protections(&mut self) {
        let n = self.cell_soc_offset.len();
        let cells: Vec<f64> = (0..n).map(|i| self.cell_voltage(i)).collect();
        let vmax = cells.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let vmin = cells.iter().copied().fold(f64::INFINITY, f64::min);
        let tmax = self.temps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let tmin = self.temps.iter().copied().fold(f64::INFINITY, f64::min);
        let mut alarms = Vec::new();
        // Trip, then recover with hysteresis.
        if vmax >= CELL_OVER_V || (self.soc >= 0.999 && self.current > 0.0) {
            alarms.push(Alarm::CellOverVoltage);
            self.charge_fet = false;
        } else if !self.charge_fet && self.soc < 0.95 {
            self.charge_fet = true;
        }
        if vmin <= CELL_UNDER_V || (self.soc <= 0.001 && self.current < 0.0) {
            alarms.push(Alarm::CellUnderVoltage);
            self.discharge_fet = false;
        } else if !self.discharge_fet && self.soc > 0.05 {
            self.discharge_fet = true;
        }
        if tmax >= OVER_TEMP_C {
            alarms.push(if self.current >= 0.0 {
                Alarm::ChargeOverTemperature
            } else {
                Alarm::DischargeOverTemperature
            });
            self.charge_fet = false;
            self.discharge_fet = false;
        }
        if tmin <= UNDER_TEMP_CHARGE_C && self.current > 0.0 {
            alarms.push(Alarm::ChargeUnderTemperature);
            self.charge_fet = false;
        }
        if self.current > self.cfg.peak_current_a * 1.5 {
            alarms.push(Alarm::ChargeOverCurrent);
        } else if self.current < -self.cfg.peak_current_a * 1.5 {
            alarms.push(Alarm::DischargeOverCurrent);
        }
        if vmax - vmin > 0.1 {
            alarms.push(Alarm::CellImbalance);
        }
        self.alarms = alarms;
    }

    /// The current state as a reading.
    pub fn snapshot(&self, ts: OffsetDateTime) -> Reading {
        let n = self.cell_soc_offset.len();
        let cells: Vec<Volts> = (0..n)
            .map(|i| Volts(round(self.cell_voltage(i), 3)))
            .collect();
        let voltage: f64 = cells.iter().map(|v| v.0).sum();
        let full = self.cfg.capacity_ah * self.soh;
        Reading {
            ts,
            pack: Pack {
                voltage: Volts(round(voltage, 2)),
                current: Amps(round(self.current, 1)),
                soc: Percent(round(self.soc * 100.0, 1)),
                soh: Some(Percent(round(self.soh * 100.0, 1))),
                remaining: Some(AmpHours(round(full * self.soc, 2))),
                full_capacity: Some(AmpHours(round(full, 2))),
                cycles: Some((self.throughput_ah / (2.0 * self.cfg.capacity_ah.max(1e-6))) as u32),
            },
            cells,
            temperatures: self.temps.iter().map(|t| Celsius(round(*t, 1))).collect(),
            limits: Some(Limits {
                charge_voltage: Volts(round(3.55 * n as f64, 1)),
                charge_current: Amps(if self.charge_fet {
                    self.cfg.peak_current_a
                } else {
                    0.0
                }),
                discharge_current: Amps(if self.discharge_fet {
                    self.cfg.peak_current_a
                } else {
                    0.0
                }),
                discharge_voltage: Some(Volts(round(2.8 * n as f64, 1))),
            }),
            alarms: self.alarms.clone(),
            warnings: Vec::new(),
            balancing: Vec::new(),
            requests: None,
            fets: Some(Fets {
                charge: self.charge_fet,
                discharge: self.discharge_fet,
            }),
            source: self.source_info(),
        }
    }

    fn source_info(&self) -> SourceInfo {
        SourceInfo {
            kind: "simulator".into(),
            model: Some(format!(
                "LFP {}S {} Ah",
                self.cell_soc_offset.len(),
                self.cfg.capacity_ah
            )),
            manufacturer: Some("Rampart".into()),
            version: None,
            manufactured: None,
        }
    }

    /// Sets the ambient temperature (lets tests and demos provoke temperature protections).
    pub fn set_ambient(&mut self, celsius: f64) {
        self.cfg.ambient_c = celsius;
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

#[async_trait]
impl BmsSource for SimulatedPack {
    fn info(&self) -> SourceInfo {
        self.source_info()
    }

    async fn read(&mut self) -> Result<Reading, BmsError> {
        let now = Instant::now();
        if let Some(last) = self.last {
            let dt = now.duration_since(last).as_secs_f64() * self.cfg.time_scale;
            // Integrate in steps of at most 10 simulated seconds for stability.
            let steps = (dt / 10.0).ceil().max(1.0) as usize;
            for _ in 0..steps.min(100_000) {
                self.step(dt / steps as f64);
            }
        }
        self.last = Some(now);
        Ok(self.snapshot(OffsetDateTime::now_utc()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::TelemetryMessage;

    fn pack(soc: f64) -> SimulatedPack {
        SimulatedPack::new(SimulatorConfig {
            initial_soc_pct: soc,
            ..Default::default()
        })
    }

    #[test]
    fn soc_follows_coulomb_counting() {
        let mut p = pack(50.0);
        // First quarter of the cycle charges (sine > 0).
        let start = p.soc;
        for _ in 0..360 {
            p.step(10.0);
        }
        assert!(p.soc > start, "charging raises SoC: {} -> {}", start, p.soc);
        // Second half discharges.
        let mid = p.soc;
        for _ in 0..720 {
            p.step(10.0);
        }
        assert!(p.soc < mid, "discharging lowers SoC");
    }

    #[test]
    fn full_pack_trips_over_voltage_and_opens_charge_fet() {
        let mut p = pack(99.5);
        for _ in 0..200 {
            p.step(10.0);
            if !p.charge_fet {
                break;
            }
        }
        let r = p.snapshot(OffsetDateTime::now_utc());
        assert!(r.alarms.contains(&Alarm::CellOverVoltage), "{:?}", r.alarms);
        assert_eq!(r.fets.map(|f| f.charge), Some(false));
        assert!(r.pack.current.0 <= 0.0 || r.pack.soc.0 >= 99.0);
    }

    #[test]
    fn empty_pack_trips_under_voltage() {
        let mut p = SimulatedPack::new(SimulatorConfig {
            initial_soc_pct: 1.0,
            // Start in the discharging half of the profile.
            ..Default::default()
        });
        p.sim_time_s = p.cfg.cycle_period_s * 0.5;
        for _ in 0..500 {
            p.step(10.0);
            if !p.discharge_fet {
                break;
            }
        }
        let r = p.snapshot(OffsetDateTime::now_utc());
        assert!(
            r.alarms.contains(&Alarm::CellUnderVoltage),
            "{:?}",
            r.alarms
        );
        assert_eq!(r.fets.map(|f| f.discharge), Some(false));
    }

    #[test]
    fn heat_trips_over_temperature() {
        let mut p = pack(50.0);
        p.set_ambient(60.0);
        for _ in 0..2000 {
            p.step(10.0);
        }
        let r = p.snapshot(OffsetDateTime::now_utc());
        assert!(
            r.alarms.iter().any(|a| matches!(
                a,
                Alarm::ChargeOverTemperature | Alarm::DischargeOverTemperature
            )),
            "{:?} at {:?}",
            r.alarms,
            r.temperatures
        );
        assert_eq!(
            r.fets,
            Some(Fets {
                charge: false,
                discharge: false
            })
        );
    }

    #[test]
    fn readings_are_consistent_and_valid() {
        let mut p = pack(60.0);
        for i in 0..100 {
            p.step(30.0);
            let r = p.snapshot(OffsetDateTime::now_utc());
            assert_eq!(r.cells.len(), 16);
            let sum: f64 = r.cells.iter().map(|v| v.0).sum();
            assert!((sum - r.pack.voltage.0).abs() < 0.02);
            for c in &r.cells {
                assert!((2.4..3.7).contains(&c.0), "cell {c}");
            }
            let msg = TelemetryMessage::full(i, &r);
            msg.validate()
                .expect("simulator output passes the hub's validation");
        }
    }

    #[test]
    fn same_seed_same_pack() {
        let mut a = pack(40.0);
        let mut b = pack(40.0);
        for _ in 0..50 {
            a.step(10.0);
            b.step(10.0);
        }
        let ts = OffsetDateTime::now_utc();
        assert_eq!(a.snapshot(ts), b.snapshot(ts));
    }
}

//! Data minimisation (CRA Annex I (2)(g)): which fields leave the device, how often, and how
//! they are summarised.
//!
//! The agent reads the BMS every `telemetry.interval`. Each `[[send]]` group of agent.toml
//! names fields, a period (`every`, a whole number of readings) and an aggregation; when its
//! period is complete the group yields one document with exactly its fields. A field no group
//! names never leaves the device.
//!
//! Aggregations: `last` (the last reading), `mean`, `min`, `max` (element-wise for cells and
//! temperatures), and `min_max_mean` (the mean, with the window's minima and maxima beside it
//! in `window.min` / `window.max`). Whatever the aggregation, alarms, warnings and balancing
//! cells are the union over the window: summarising never hides an alarm. Limits, FET states,
//! requests and the source are those of the last reading.

use std::time::Duration;

use rampart_bms::{
    Aggregate, Alarm, AmpHours, Amps, Celsius, Extremes, PackValues, Percent, Reading,
    TelemetryMessage, Volts, Window,
};
use serde::Deserialize;
use time::OffsetDateTime;

/// A `[[send]]` group as configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGroup {
    /// Field names: `pack` (all pack values) or `pack.voltage_v`, `pack.current_a`,
    /// `pack.soc_pct`, `pack.soh_pct`, `pack.remaining_ah`, `pack.full_ah`, `pack.cycles`;
    /// `cells_v`, `temps_c`, `limits`, `alarms`, `warnings`, `fets`, `balancing`, `requests`,
    /// `source`.
    pub fields: Vec<String>,
    /// How often the group is sent; a whole multiple of `telemetry.interval`. None: with
    /// every reading.
    #[serde(default, with = "crate::config::duration_opt")]
    pub every: Option<Duration>,
    #[serde(default)]
    pub aggregate: Aggregate,
}

/// Every field, for the default group.
pub const ALL_FIELDS: [&str; 10] = [
    "pack",
    "cells_v",
    "temps_c",
    "limits",
    "alarms",
    "warnings",
    "fets",
    "balancing",
    "requests",
    "source",
];

/// The selectable fields, as bits.
mod bit {
    pub const VOLTAGE: u32 = 1 << 0;
    pub const CURRENT: u32 = 1 << 1;
    pub const SOC: u32 = 1 << 2;
    pub const SOH: u32 = 1 << 3;
    pub const REMAINING: u32 = 1 << 4;
    pub const FULL: u32 = 1 << 5;
    pub const CYCLES: u32 = 1 << 6;
    pub const PACK: u32 = VOLTAGE | CURRENT | SOC | SOH | REMAINING | FULL | CYCLES;
    pub const CELLS: u32 = 1 << 7;
    pub const TEMPS: u32 = 1 << 8;
    pub const LIMITS: u32 = 1 << 9;
    pub const ALARMS: u32 = 1 << 10;
    pub const WARNINGS: u32 = 1 << 11;
    pub const FETS: u32 = 1 << 12;
    pub const BALANCING: u32 = 1 << 13;
    pub const REQUESTS: u32 = 1 << 14;
    pub const SOURCE: u32 = 1 << 15;
}

fn field_bits(name: &str) -> Option<u32> {
    Some(match name {
        "pack" => bit::PACK,
        "pack.voltage_v" => bit::VOLTAGE,
        "pack.current_a" => bit::CURRENT,
        "pack.soc_pct" => bit::SOC,
        "pack.soh_pct" => bit::SOH,
        "pack.remaining_ah" => bit::REMAINING,
        "pack.full_ah" => bit::FULL,
        "pack.cycles" => bit::CYCLES,
        "cells_v" => bit::CELLS,
        "temps_c" => bit::TEMPS,
        "limits" => bit::LIMITS,
        "alarms" => bit::ALARMS,
        "warnings" => bit::WARNINGS,
        "fets" => bit::FETS,
        "balancing" => bit::BALANCING,
        "requests" => bit::REQUESTS,
        "source" => bit::SOURCE,
        _ => return None,
    })
}

/// Running statistics of one value.
#[derive(Debug, Clone, Copy)]
struct Stat {
    sum: f64,
    min: f64,
    max: f64,
    n: u32,
}

impl Stat {
    fn new() -> Stat {
        Stat {
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            n: 0,
        }
    }

    fn add(&mut self, v: f64) {
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.n += 1;
    }

    fn get(&self, how: Aggregate, last: f64) -> f64 {
        let v = match how {
            Aggregate::Last => last,
            Aggregate::Mean | Aggregate::MinMaxMean => self.sum / f64::from(self.n.max(1)),
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
        };
        // Four decimals: below any BMS's resolution, and keeps documents short.
        (v * 1e4).round() / 1e4
    }
}

fn add_opt(s: &mut Option<Stat>, v: Option<f64>) {
    if let Some(v) = v {
        s.get_or_insert_with(Stat::new).add(v);
    }
}

fn add_vec(stats: &mut Vec<Stat>, values: &[f64]) {
    if stats.len() < values.len() {
        stats.resize(values.len(), Stat::new());
    }
    for (s, v) in stats.iter_mut().zip(values) {
        s.add(*v);
    }
}

fn union(into: &mut Vec<Alarm>, from: &[Alarm]) {
    for a in from {
        if !into.contains(a) {
            into.push(*a);
        }
    }
}

/// The readings of one group's current window.
#[derive(Debug, Default)]
struct Acc {
    n: u32,
    from: Option<OffsetDateTime>,
    last: Option<Reading>,
    pack: [Option<Stat>; 7],
    cells: Vec<Stat>,
    temps: Vec<Stat>,
    alarms: Vec<Alarm>,
    warnings: Vec<Alarm>,
    balancing: Vec<u16>,
}

impl Acc {
    fn add(&mut self, r: &Reading) {
        self.n += 1;
        self.from.get_or_insert(r.ts);
        let p = &r.pack;
        let values = [
            Some(p.voltage.0),
            Some(p.current.0),
            Some(p.soc.0),
            p.soh.map(|v| v.0),
            p.remaining.map(|v| v.0),
            p.full_capacity.map(|v| v.0),
            p.cycles.map(f64::from),
        ];
        for (s, v) in self.pack.iter_mut().zip(values) {
            add_opt(s, v);
        }
        add_vec(
            &mut self.cells,
            &r.cells.iter().map(|v| v.0).collect::<Vec<_>>(),
        );
        add_vec(
            &mut self.temps,
            &r.temperatures.iter().map(|v| v.0).collect::<Vec<_>>(),
        );
        union(&mut self.alarms, &r.alarms);
        union(&mut self.warnings, &r.warnings);
        for b in &r.balancing {
            if !self.balancing.contains(b) {
                self.balancing.push(*b);
            }
        }
        self.last = Some(r.clone());
    }
}

/// Pack values of the selected fields under `how`.
fn pack_values(acc: &Acc, last: &Reading, fields: u32, how: Aggregate) -> PackValues {
    let lp = &last.pack;
    let lasts = [
        Some(lp.voltage.0),
        Some(lp.current.0),
        Some(lp.soc.0),
        lp.soh.map(|v| v.0),
        lp.remaining.map(|v| v.0),
        lp.full_capacity.map(|v| v.0),
        lp.cycles.map(f64::from),
    ];
    let bits = [
        bit::VOLTAGE,
        bit::CURRENT,
        bit::SOC,
        bit::SOH,
        bit::REMAINING,
        bit::FULL,
        bit::CYCLES,
    ];
    let mut v = [None; 7];
    for i in 0..7 {
        if fields & bits[i] != 0
            && let (Some(s), Some(l)) = (acc.pack[i], lasts[i])
        {
            v[i] = Some(s.get(how, l));
        }
    }
    PackValues {
        voltage_v: v[0].map(Volts),
        current_a: v[1].map(Amps),
        soc_pct: v[2].map(Percent),
        soh_pct: v[3].map(Percent),
        remaining_ah: v[4].map(AmpHours),
        full_ah: v[5].map(AmpHours),
        cycles: v[6].map(|c| c.round() as u32),
    }
}

fn vec_values(stats: &[Stat], last: &[f64], how: Aggregate) -> Vec<f64> {
    stats
        .iter()
        .zip(last)
        .map(|(s, l)| s.get(how, *l))
        .collect()
}

/// One configured group with its window.
#[derive(Debug)]
struct Group {
    fields: u32,
    readings: u32,
    aggregate: Aggregate,
    acc: Acc,
}

impl Group {
    fn document(&self) -> Option<TelemetryMessage> {
        let acc = &self.acc;
        let last = acc.last.as_ref()?;
        let f = self.fields;
        let how = self.aggregate;
        let has = |b: u32| f & b != 0;
        let cells_last: Vec<f64> = last.cells.iter().map(|v| v.0).collect();
        let temps_last: Vec<f64> = last.temperatures.iter().map(|v| v.0).collect();
        let pack = pack_values(acc, last, f, how);
        let windowed = self.readings > 1;
        let extremes = |h: Aggregate| Extremes {
            pack: Some(pack_values(acc, last, f, h)).filter(|p| !p.is_empty()),
            cells_v: has(bit::CELLS).then(|| {
                vec_values(&acc.cells, &cells_last, h)
                    .into_iter()
                    .map(Volts)
                    .collect()
            }),
            temps_c: has(bit::TEMPS).then(|| {
                vec_values(&acc.temps, &temps_last, h)
                    .into_iter()
                    .map(Celsius)
                    .collect()
            }),
        };
        let with_extremes = how == Aggregate::MinMaxMean;
        Some(TelemetryMessage {
            v: rampart_bms::document::TELEMETRY_VERSION,
            seq: 0,
            ts: last.ts,
            pack: Some(pack).filter(|p| !p.is_empty()),
            cells_v: has(bit::CELLS).then(|| {
                vec_values(&acc.cells, &cells_last, how)
                    .into_iter()
                    .map(Volts)
                    .collect()
            }),
            temps_c: has(bit::TEMPS).then(|| {
                vec_values(&acc.temps, &temps_last, how)
                    .into_iter()
                    .map(Celsius)
                    .collect()
            }),
            limits: if has(bit::LIMITS) {
                last.limits.clone()
            } else {
                None
            },
            alarms: has(bit::ALARMS).then(|| acc.alarms.clone()),
            warnings: has(bit::WARNINGS).then(|| acc.warnings.clone()),
            fets: if has(bit::FETS) { last.fets } else { None },
            balancing: has(bit::BALANCING).then(|| acc.balancing.clone()),
            requests: if has(bit::REQUESTS) {
                last.requests
            } else {
                None
            },
            source: has(bit::SOURCE).then(|| Box::new(last.source.clone())),
            window: windowed.then(|| {
                Box::new(Window {
                    from: acc.from.unwrap_or(last.ts),
                    samples: acc.n,
                    aggregate: how,
                    min: with_extremes.then(|| extremes(Aggregate::Min)),
                    max: with_extremes.then(|| extremes(Aggregate::Max)),
                })
            }),
        })
    }
}

/// Turns readings into the documents the configuration lets out.
#[derive(Debug)]
pub struct Shaper {
    groups: Vec<Group>,
}

impl Shaper {
    /// Checks the groups against the reading interval. No groups: every field, every reading.
    pub fn new(groups: &[SendGroup], interval: Duration) -> Result<Shaper, String> {
        let default = [SendGroup {
            fields: ALL_FIELDS.iter().map(|s| s.to_string()).collect(),
            every: None,
            aggregate: Aggregate::Last,
        }];
        let groups = if groups.is_empty() {
            &default[..]
        } else {
            groups
        };
        let mut out = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let n = i + 1;
            if g.fields.is_empty() {
                return Err(format!("send group {n}: fields is empty"));
            }
            let mut fields = 0;
            for name in &g.fields {
                fields |= field_bits(name).ok_or_else(|| {
                    format!(
                        "send group {n}: unknown field {name:?} (pack, pack.voltage_v, pack.current_a, \
                         pack.soc_pct, pack.soh_pct, pack.remaining_ah, pack.full_ah, pack.cycles, \
                         {})",
                        ALL_FIELDS[1..].join(", ")
                    )
                })?;
            }
            let every = g.every.unwrap_or(interval);
            let ratio = every.as_secs_f64() / interval.as_secs_f64();
            let readings = ratio.round();
            if readings < 1.0 || (ratio - readings).abs() > 0.01 {
                return Err(format!(
                    "send group {n}: every = {every:?} must be a whole multiple of telemetry.interval ({interval:?})"
                ));
            }
            out.push(Group {
                fields,
                readings: readings as u32,
                aggregate: g.aggregate,
                acc: Acc::default(),
            });
        }
        Ok(Shaper { groups: out })
    }

    /// Takes a reading; returns the documents whose period it completes (seq still 0: the
    /// caller numbers them as it stores them).
    pub fn push(&mut self, r: &Reading) -> Vec<TelemetryMessage> {
        let mut docs = Vec::new();
        for g in &mut self.groups {
            g.acc.add(r);
            if g.acc.n >= g.readings {
                if let Some(d) = g.document() {
                    docs.push(d);
                }
                g.acc = Acc::default();
            }
        }
        docs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_bms::{Pack, SourceInfo};

    fn reading(i: u32, v: f64, alarms: Vec<Alarm>) -> Reading {
        Reading {
            ts: OffsetDateTime::from_unix_timestamp(1_800_000_000 + i64::from(i)).unwrap(),
            pack: Pack {
                voltage: Volts(v),
                current: Amps(-2.0 * f64::from(i)),
                soc: Percent(50.0),
                soh: Some(Percent(97.0)),
                remaining: None,
                full_capacity: None,
                cycles: Some(10),
            },
            cells: vec![Volts(v / 2.0), Volts(v / 2.0 + 0.01)],
            temperatures: vec![Celsius(20.0 + f64::from(i))],
            limits: None,
            alarms,
            warnings: vec![],
            fets: None,
            balancing: vec![],
            requests: None,
            source: SourceInfo {
                kind: "test".into(),
                model: Some("serial 1234".into()),
                manufacturer: None,
                version: None,
                manufactured: None,
            },
        }
    }

    fn group(fields: &[&str], every: u64, aggregate: Aggregate) -> SendGroup {
        SendGroup {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            every: Some(Duration::from_secs(every)),
            aggregate,
        }
    }

    #[test]
    fn without_groups_every_reading_goes_whole() {
        let mut s = Shaper::new(&[], Duration::from_secs(5)).unwrap();
        let r = reading(1, 7.0, vec![]);
        let docs = s.push(&r);
        assert_eq!(docs, vec![TelemetryMessage::full(0, &r)]);
    }

    #[test]
    fn only_the_configured_fields_leave_at_their_rate() {
        let mut s = Shaper::new(
            &[
                group(
                    &["pack.voltage_v", "pack.soc_pct", "alarms"],
                    1,
                    Aggregate::Last,
                ),
                group(&["cells_v"], 3, Aggregate::Last),
            ],
            Duration::from_secs(1),
        )
        .unwrap();
        let mut all = Vec::new();
        for i in 1..=6 {
            all.extend(s.push(&reading(i, 6.0 + f64::from(i), vec![])));
        }
        // 6 pack documents and 2 cell documents.
        assert_eq!(all.len(), 8);
        for d in &all {
            let json = serde_json::to_string(d).unwrap();
            // Never the serial number, current, temperatures or anything unlisted.
            for absent in [
                "serial",
                "current_a",
                "temps_c",
                "soh_pct",
                "cycles",
                "source",
            ] {
                assert!(!json.contains(absent), "{absent} leaked: {json}");
            }
        }
        let cells: Vec<_> = all.iter().filter(|d| d.cells_v.is_some()).collect();
        assert_eq!(cells.len(), 2);
        assert!(cells.iter().all(|d| d.pack.is_none() && d.alarms.is_none()));
        assert_eq!(cells[0].window.as_ref().unwrap().samples, 3);
        assert_eq!(
            cells[0].cells_v.as_ref().unwrap()[0],
            Volts(4.5),
            "last of readings 1..3"
        );
        let pack = &all[0];
        assert_eq!(pack.pack.as_ref().unwrap().voltage_v, Some(Volts(7.0)));
        assert_eq!(pack.pack.as_ref().unwrap().current_a, None);
        assert!(pack.window.is_none(), "one reading per document: no window");
    }

    #[test]
    fn windows_aggregate_and_never_hide_an_alarm() {
        let mut s = Shaper::new(
            &[group(
                &["pack", "temps_c", "alarms"],
                4,
                Aggregate::MinMaxMean,
            )],
            Duration::from_secs(1),
        )
        .unwrap();
        let mut docs = Vec::new();
        for (i, v) in [(1, 50.0), (2, 52.0), (3, 54.0), (4, 56.0)] {
            let alarms = if i == 2 {
                vec![Alarm::CellOverVoltage]
            } else {
                vec![]
            };
            docs.extend(s.push(&reading(i, v, alarms)));
        }
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        d.validate().unwrap();
        let p = d.pack.as_ref().unwrap();
        assert_eq!(p.voltage_v, Some(Volts(53.0)));
        assert_eq!(p.current_a, Some(Amps(-5.0)));
        assert_eq!(d.temps_c, Some(vec![Celsius(22.5)]));
        assert_eq!(
            d.alarms,
            Some(vec![Alarm::CellOverVoltage]),
            "the alarm of reading 2 survives"
        );
        let w = d.window.as_ref().unwrap();
        assert_eq!((w.samples, w.aggregate), (4, Aggregate::MinMaxMean));
        assert_eq!(w.from, reading(1, 0.0, vec![]).ts);
        assert_eq!(d.ts, reading(4, 0.0, vec![]).ts);
        let min = w.min.as_ref().unwrap();
        let max = w.max.as_ref().unwrap();
        assert_eq!(min.pack.as_ref().unwrap().voltage_v, Some(Volts(50.0)));
        assert_eq!(max.pack.as_ref().unwrap().voltage_v, Some(Volts(56.0)));
        assert_eq!(max.temps_c, Some(vec![Celsius(24.0)]));
        assert_eq!(min.cells_v, None, "cells were not selected");
        for (how, expect) in [
            (Aggregate::Min, 50.0),
            (Aggregate::Max, 56.0),
            (Aggregate::Last, 56.0),
        ] {
            let mut s = Shaper::new(
                &[group(&["pack.voltage_v"], 4, how)],
                Duration::from_secs(1),
            )
            .unwrap();
            let mut out = Vec::new();
            for (i, v) in [(1, 50.0), (2, 52.0), (3, 54.0), (4, 56.0)] {
                out.extend(s.push(&reading(i, v, vec![])));
            }
            assert_eq!(
                out[0].pack.as_ref().unwrap().voltage_v,
                Some(Volts(expect)),
                "{how:?}"
            );
            assert!(out[0].window.as_ref().unwrap().min.is_none());
        }
    }

    #[test]
    fn bad_groups_are_refused() {
        let i = Duration::from_secs(5);
        for (g, needle) in [
            (
                group(&["pack.voltage"], 5, Aggregate::Last),
                "unknown field",
            ),
            (group(&[], 5, Aggregate::Last), "empty"),
            (group(&["pack"], 7, Aggregate::Last), "multiple"),
            (group(&["pack"], 2, Aggregate::Last), "multiple"),
        ] {
            let e = Shaper::new(&[g], i).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}

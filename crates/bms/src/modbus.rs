//! BMS and inverter registers over Modbus TCP or RTU, mapped to the normalized reading by a
//! register map in the configuration:
//!
//! ```toml
//! [bms]
//! kind = "modbus"
//! transport = "tcp"             # or "rtu" with port = "/dev/ttyUSB0" and baud = 9600
//! address = "192.168.1.50:502"
//! unit = 1
//! [[bms.registers]]
//! field = "pack.voltage_v"      # see `Field` for the names
//! address = 0
//! type = "u16"                  # u16, i16, u32, i32
//! scale = 0.01
//! ```
//!
//! Registers are read in as few requests as possible (contiguous runs of at most 125
//! registers). A register map that does not give the required fields, names an unknown field
//! or gives a field twice is refused when the agent starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_modbus::Slave;
use tokio_modbus::client::{Context, Reader};

use crate::reading::{Alarm, Limits, Pack, Reading, SourceInfo};
use crate::source::{BmsError, BmsSource};
use crate::units::{AmpHours, Amps, Celsius, Percent, Volts};

/// How to reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Modbus TCP to `address` (IP:PORT).
    #[default]
    Tcp,
    /// Modbus RTU on the serial `port` at `baud` (8N1).
    Rtu,
}

fn default_baud() -> u32 {
    9600
}

/// Register table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    #[default]
    Holding,
    Input,
}

/// How a value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    #[default]
    U16,
    I16,
    U32,
    I32,
}

impl ValueType {
    fn words(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 => 1,
            ValueType::U32 | ValueType::I32 => 2,
        }
    }
}

/// Word order of 32-bit values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word first (the Modbus convention).
    #[default]
    Big,
    Little,
}

/// One register of the map, as configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSpec {
    pub field: String,
    pub address: u16,
    #[serde(default)]
    pub table: Table,
    #[serde(default, rename = "type")]
    pub value_type: ValueType,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub word_order: WordOrder,
    /// For `alarms`: bit number (as a TOML key, `"0"`..`"15"`) → alarm name
    /// (`cell_over_voltage`, ...).
    #[serde(default)]
    pub bits: BTreeMap<String, Alarm>,
}

fn one() -> f64 {
    1.0
}

/// The Modbus source configuration (the `[bms]` section with `kind = "modbus"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    #[serde(default)]
    pub transport: Transport,
    /// For TCP: IP:PORT of the device.
    #[serde(default)]
    pub address: Option<String>,
    /// For RTU: the serial device, e.g. /dev/ttyUSB0.
    #[serde(default)]
    pub port: Option<String>,
    /// For RTU: bit rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_unit")]
    pub unit: u8,
    #[serde(default = "default_timeout", with = "duration_str")]
    pub timeout: Duration,
    pub registers: Vec<RegisterSpec>,
}

fn default_unit() -> u8 {
    1
}

fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

mod duration_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        let (n, unit) = s.trim().split_at(
            s.trim()
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(s.len()),
        );
        let n: u64 = n.parse().map_err(serde::de::Error::custom)?;
        match unit {
            "ms" => Ok(Duration::from_millis(n)),
            "s" => Ok(Duration::from_secs(n)),
            other => Err(serde::de::Error::custom(format!(
                "unit {other:?}: use ms or s"
            ))),
        }
    }
}

/// A normalized field a register can fill.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Voltage,
    Current,
    Soc,
    Soh,
    Remaining,
    FullCapacity,
    Cycles,
    Cell(usize),
    Temperature(usize),
    ChargeVoltage,
    ChargeCurrent,
    DischargeCurrent,
    DischargeVoltage,
    Alarms,
}

impl Field {
    /// Parses a field name of the register map.
    pub fn parse(s: &str) -> Result<Field, String> {
        let indexed = |prefix: &str| -> Option<Result<usize, String>> {
            let rest = s.strip_prefix(prefix)?.strip_suffix(']')?;
            Some(
                rest.parse::<usize>()
                    .map_err(|_| format!("bad index in {s:?}"))
                    .and_then(|i| {
                        if i < 512 {
                            Ok(i)
                        } else {
                            Err(format!("index in {s:?} is too large"))
                        }
                    }),
            )
        };
        if let Some(i) = indexed("cells_v[") {
            return i.map(Field::Cell);
        }
        if let Some(i) = indexed("temps_c[") {
            return i.map(Field::Temperature);
        }
        Ok(match s {
            "pack.voltage_v" => Field::Voltage,
            "pack.current_a" => Field::Current,
            "pack.soc_pct" => Field::Soc,
            "pack.soh_pct" => Field::Soh,
            "pack.remaining_ah" => Field::Remaining,
            "pack.full_ah" => Field::FullCapacity,
            "pack.cycles" => Field::Cycles,
            "limits.charge_voltage_v" => Field::ChargeVoltage,
            "limits.charge_current_a" => Field::ChargeCurrent,
            "limits.discharge_current_a" => Field::DischargeCurrent,
            "limits.discharge_voltage_v" => Field::DischargeVoltage,
            "alarms" => Field::Alarms,
            other => {
                return Err(format!(
                    "unknown field {other:?} (pack.voltage_v, pack.current_a, pack.soc_pct, pack.soh_pct, \
                     pack.remaining_ah, pack.full_ah, pack.cycles, cells_v[N], temps_c[N], \
                     limits.charge_voltage_v, limits.charge_current_a, limits.discharge_current_a, \
                     limits.discharge_voltage_v, alarms)"
                ));
            }
        })
    }
}

#[derive(Debug, Clone)]
struct Register {
    field: Field,
    spec: RegisterSpec,
    /// For `alarms`: the parsed bit table.
    bits: Vec<(u8, Alarm)>,
}

/// One read request: a contiguous run of registers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadOp {
    table: Table,
    start: u16,
    count: u16,
}

/// Checks a register map and plans the reads.
fn plan(specs: &[RegisterSpec]) -> Result<(Vec<Register>, Vec<ReadOp>), String> {
    plan_with_gap(specs, MERGE_GAP)
}

/// Unmapped registers a merged read may span. Devices that refuse reads over unmapped
/// addresses answer "illegal data address"; the source then falls back to exact runs.
const MERGE_GAP: u16 = 8;

fn plan_with_gap(specs: &[RegisterSpec], gap: u16) -> Result<(Vec<Register>, Vec<ReadOp>), String> {
    let mut regs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for s in specs {
        let field = Field::parse(&s.field)?;
        if !seen.insert(field.clone()) {
            return Err(format!("field {:?} is mapped twice", s.field));
        }
        if !s.scale.is_finite() || s.scale == 0.0 {
            return Err(format!(
                "field {:?}: scale must be a non-zero number",
                s.field
            ));
        }
        if field == Field::Alarms && s.bits.is_empty() {
            return Err("field \"alarms\" needs a bits table (bit number = alarm name)".into());
        }
        if field != Field::Alarms && !s.bits.is_empty() {
            return Err(format!(
                "field {:?}: a bits table only belongs to \"alarms\"",
                s.field
            ));
        }
        let mut bits = Vec::new();
        for (k, alarm) in &s.bits {
            match k.parse::<u8>() {
                Ok(b) if b < 16 => bits.push((b, *alarm)),
                _ => return Err(format!("alarms: bit {k:?} is not a number from 0 to 15")),
            }
        }
        if s.address.checked_add(s.value_type.words() - 1).is_none() {
            return Err(format!("field {:?}: address out of range", s.field));
        }
        regs.push(Register {
            field,
            spec: s.clone(),
            bits,
        });
    }
    for required in [Field::Voltage, Field::Current, Field::Soc] {
        if !seen.contains(&required) {
            return Err(format!(
                "the register map must give {required:?} (pack.voltage_v, pack.current_a and pack.soc_pct are required)"
            ));
        }
    }
    for (kind, name) in [(0, "cells_v"), (1, "temps_c")] {
        let idx: Vec<usize> = seen
            .iter()
            .filter_map(|f| match (kind, f) {
                (0, Field::Cell(i)) | (1, Field::Temperature(i)) => Some(*i),
                _ => None,
            })
            .collect();
        if idx.iter().enumerate().any(|(n, i)| n != *i) {
            return Err(format!("{name} indices must run from 0 without gaps"));
        }
    }
    let mut spans: Vec<(Table, u16, u16)> = regs
        .iter()
        .map(|r| {
            (
                r.spec.table,
                r.spec.address,
                r.spec.address + r.spec.value_type.words() - 1,
            )
        })
        .collect();
    spans.sort();
    let mut ops: Vec<ReadOp> = Vec::new();
    for (table, lo, hi) in spans {
        if let Some(last) = ops.last_mut()
            && last.table == table
            && lo <= last.start + last.count + gap
            && hi + 1 - last.start <= 125
        {
            last.count = last.count.max(hi + 1 - last.start);
            continue;
        }
        ops.push(ReadOp {
            table,
            start: lo,
            count: hi + 1 - lo,
        });
    }
    Ok((regs, ops))
}

/// A BMS reached over Modbus.
pub struct ModbusSource {
    config: ModbusConfig,
    registers: Vec<Register>,
    ops: Vec<ReadOp>,
    /// Reads of contiguous registers only, for devices that refuse reads over gaps.
    exact_ops: Vec<ReadOp>,
    ctx: Option<Context>,
}

impl ModbusSource {
    /// Checks the register map; the connection is made at the first read (and again after a
    /// failure).
    pub fn new(config: ModbusConfig) -> Result<Self, String> {
        let (registers, ops) = plan(&config.registers)?;
        let (_, exact_ops) = plan_with_gap(&config.registers, 0)?;
        match (config.transport, &config.address, &config.port) {
            (Transport::Tcp, Some(address), None) => {
                address
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("modbus address {address:?}: {e} (expected IP:PORT)"))?;
            }
            (Transport::Tcp, _, _) => {
                return Err("modbus over TCP needs address = \"IP:PORT\" (and no port)".into());
            }
            (Transport::Rtu, None, Some(port)) if !port.is_empty() => {}
            (Transport::Rtu, _, _) => {
                return Err("modbus RTU needs port = \"/dev/tty...\" (and no address)".into());
            }
        }
        Ok(ModbusSource {
            config,
            registers,
            ops,
            exact_ops,
            ctx: None,
        })
    }

    fn label(&self) -> String {
        label(&self.config)
    }
}

impl std::fmt::Debug for ModbusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusSource")
            .field("device", &self.label())
            .field("reads", &self.ops)
            .field("connected", &self.ctx.is_some())
            .finish()
    }
}

fn label(config: &ModbusConfig) -> String {
    let none = String::new();
    match config.transport {
        Transport::Tcp => format!(
            "modbus tcp {} unit {}",
            config.address.as_ref().unwrap_or(&none),
            config.unit
        ),
        Transport::Rtu => format!(
            "modbus rtu {} {} unit {}",
            config.port.as_ref().unwrap_or(&none),
            config.baud,
            config.unit
        ),
    }
}

/// Opens the connection. A free function over a copy of the configuration: the source holds
/// a `Context`, which is `Send` but not `Sync`, so no `&self` may live across an await.
async fn connect(config: ModbusConfig) -> Result<Context, BmsError> {
    {
        let slave = Slave(config.unit);
        let t = config.timeout;
        match config.transport {
            Transport::Tcp => {
                let addr: SocketAddr = config
                    .address
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| BmsError::BadFrame(format!("modbus address: {e}")))?;
                tokio::time::timeout(t, tokio_modbus::client::tcp::connect_slave(addr, slave))
                    .await
                    .map_err(|_| BmsError::Timeout(t))?
                    .map_err(BmsError::Io)
            }
            Transport::Rtu => {
                use tokio_serial::SerialPortBuilderExt;
                let port = config.port.as_deref().unwrap_or_default();
                let serial = tokio_serial::new(port, config.baud)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(tokio_serial::Parity::None)
                    .stop_bits(tokio_serial::StopBits::One)
                    .open_native_async()
                    .map_err(|e| BmsError::Io(std::io::Error::other(format!("{port}: {e}"))))?;
                Ok(tokio_modbus::client::rtu::attach_slave(serial, slave))
            }
        }
    }
}

impl ModbusSource {
    async fn read_all(&mut self) -> Result<BTreeMap<(Table, u16), u16>, BmsError> {
        if self.ctx.is_none() {
            self.ctx = Some(connect(self.config.clone()).await?);
        }
        let t = self.config.timeout;
        let ops = self.ops.clone();
        let mut words = BTreeMap::new();
        for op in ops {
            let Some(ctx) = self.ctx.as_mut() else { break };
            let call = async {
                match op.table {
                    Table::Holding => ctx.read_holding_registers(op.start, op.count).await,
                    Table::Input => ctx.read_input_registers(op.start, op.count).await,
                }
            };
            let values = match tokio::time::timeout(t, call).await {
                Err(_) => return Err(BmsError::Timeout(t)),
                Ok(Err(e)) => return Err(BmsError::Io(std::io::Error::other(e.to_string()))),
                Ok(Ok(Err(code))) => {
                    if code == tokio_modbus::ExceptionCode::IllegalDataAddress
                        && self.ops != self.exact_ops
                    {
                        // The device refuses reads spanning unmapped registers: read exact
                        // runs from now on, starting with this reading.
                        self.ops = self.exact_ops.clone();
                        return Box::pin(self.read_all()).await;
                    }
                    return Err(BmsError::BadFrame(format!(
                        "the device answered exception {code:?} for {:?} registers {}..{}",
                        op.table,
                        op.start,
                        op.start + op.count - 1
                    )));
                }
                Ok(Ok(Ok(v))) => v,
            };
            if values.len() != usize::from(op.count) {
                return Err(BmsError::BadFrame(format!(
                    "asked for {} registers, got {}",
                    op.count,
                    values.len()
                )));
            }
            for (i, v) in values.into_iter().enumerate() {
                words.insert((op.table, op.start + i as u16), v);
            }
        }
        Ok(words)
    }
}

fn value(r: &RegisterSpec, words: &BTreeMap<(Table, u16), u16>) -> Option<f64> {
    let w = |i: u16| words.get(&(r.table, r.address + i)).copied();
    let raw = match r.value_type {
        ValueType::U16 => f64::from(w(0)?),
        ValueType::I16 => f64::from(w(0)? as i16),
        ValueType::U32 | ValueType::I32 => {
            let (hi, lo) = match r.word_order {
                WordOrder::Big => (w(0)?, w(1)?),
                WordOrder::Little => (w(1)?, w(0)?),
            };
            let v = (u32::from(hi) << 16) | u32::from(lo);
            if r.value_type == ValueType::I32 {
                f64::from(v as i32)
            } else {
                f64::from(v)
            }
        }
    };
    Some(raw * r.scale)
}

/// Builds the reading from register values.
fn assemble(
    registers: &[Register],
    words: &BTreeMap<(Table, u16), u16>,
    label: &str,
    ts: OffsetDateTime,
) -> Result<Reading, BmsError> {
    let mut get = BTreeMap::new();
    let mut alarms = Vec::new();
    for r in registers {
        if r.field == Field::Alarms {
            let raw = words
                .get(&(r.spec.table, r.spec.address))
                .copied()
                .unwrap_or(0);
            for (bit, alarm) in &r.bits {
                if raw & (1 << bit) != 0 && !alarms.contains(alarm) {
                    alarms.push(*alarm);
                }
            }
            continue;
        }
        let v = value(&r.spec, words).ok_or_else(|| {
            BmsError::BadFrame(format!(
                "register for {} missing in the answer",
                r.spec.field
            ))
        })?;
        get.insert(r.field.clone(), (v * 1e6).round() / 1e6);
    }
    let f = |k: &Field| get.get(k).copied();
    let limits = match (
        f(&Field::ChargeVoltage),
        f(&Field::ChargeCurrent),
        f(&Field::DischargeCurrent),
    ) {
        (Some(cv), Some(cc), Some(dc)) => Some(Limits {
            charge_voltage: Volts(cv),
            charge_current: Amps(cc),
            discharge_current: Amps(dc),
            discharge_voltage: f(&Field::DischargeVoltage).map(Volts),
        }),
        _ => None,
    };
    Ok(Reading {
        ts,
        pack: Pack {
            voltage: Volts(f(&Field::Voltage).unwrap_or(0.0)),
            current: Amps(f(&Field::Current).unwrap_or(0.0)),
            soc: Percent(f(&Field::Soc).unwrap_or(0.0)),
            soh: f(&Field::Soh).map(Percent),
            remaining: f(&Field::Remaining).map(AmpHours),
            full_capacity: f(&Field::FullCapacity).map(AmpHours),
            cycles: f(&Field::Cycles).map(|c| c as u32),
        },
        cells: get
            .iter()
            .filter_map(|(k, v)| matches!(k, Field::Cell(_)).then_some(Volts(*v)))
            .collect(),
        temperatures: get
            .iter()
            .filter_map(|(k, v)| matches!(k, Field::Temperature(_)).then_some(Celsius(*v)))
            .collect(),
        limits,
        alarms,
        warnings: Vec::new(),
        fets: None,
        balancing: Vec::new(),
        requests: None,
        source: SourceInfo {
            kind: "modbus".into(),
            model: Some(label.to_owned()),
            manufacturer: None,
            version: None,
            manufactured: None,
        },
    })
}

#[async_trait]
impl BmsSource for ModbusSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "modbus".into(),
            model: Some(self.label()),
            manufacturer: None,
            version: None,
            manufactured: None,
        }
    }

    async fn read(&mut self) -> Result<Reading, BmsError> {
        let result = self.read_all().await;
        match result {
            Ok(words) => assemble(
                &self.registers,
                &words,
                &self.label(),
                OffsetDateTime::now_utc(),
            ),
            Err(e) => {
                // Reconnect at the next read: the link may have dropped.
                self.ctx = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(field: &str, address: u16, t: ValueType, scale: f64) -> RegisterSpec {
        RegisterSpec {
            field: field.into(),
            address,
            table: Table::Holding,
            value_type: t,
            scale,
            word_order: WordOrder::Big,
            bits: BTreeMap::new(),
        }
    }

    fn map() -> Vec<RegisterSpec> {
        let mut alarms = spec("alarms", 20, ValueType::U16, 1.0);
        alarms.bits.insert("0".into(), Alarm::CellOverVoltage);
        alarms.bits.insert("3".into(), Alarm::OverTemperature);
        vec![
            spec("pack.voltage_v", 0, ValueType::U16, 0.01),
            spec("pack.current_a", 1, ValueType::I16, 0.1),
            spec("pack.soc_pct", 2, ValueType::U16, 1.0),
            spec("pack.remaining_ah", 4, ValueType::U32, 0.001),
            spec("cells_v[0]", 10, ValueType::U16, 0.001),
            spec("cells_v[1]", 11, ValueType::U16, 0.001),
            spec("temps_c[0]", 12, ValueType::I16, 0.1),
            alarms,
        ]
    }

    #[test]
    fn reads_are_planned_in_contiguous_runs() {
        let (_, ops) = plan(&map()).unwrap();
        assert_eq!(
            ops,
            vec![ReadOp {
                table: Table::Holding,
                start: 0,
                count: 21
            }]
        );
        let mut far = map();
        far.push(spec("pack.cycles", 300, ValueType::U16, 1.0));
        let (_, ops) = plan(&far).unwrap();
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn values_decode_with_types_scales_and_bits() {
        let (regs, _) = plan(&map()).unwrap();
        let mut w = BTreeMap::new();
        for (a, v) in [
            (0u16, 5230u16),
            (1, (-123i16) as u16),
            (2, 81),
            (4, 1),
            (5, 0x86A0),
            (10, 3301),
            (11, 3305),
            (12, (-52i16) as u16),
            (20, 0b1001),
        ] {
            w.insert((Table::Holding, a), v);
        }
        let r = assemble(&regs, &w, "test", OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(r.pack.voltage, Volts(52.3));
        assert_eq!(r.pack.current, Amps(-12.3));
        assert_eq!(r.pack.soc, Percent(81.0));
        assert_eq!(r.pack.remaining, Some(AmpHours(100.0)));
        assert_eq!(r.cells, vec![Volts(3.301), Volts(3.305)]);
        assert_eq!(r.temperatures, vec![Celsius(-5.2)]);
        assert_eq!(
            r.alarms,
            vec![Alarm::CellOverVoltage, Alarm::OverTemperature]
        );
    }

    #[test]
    fn bad_maps_are_refused_at_start() {
        let cases: Vec<(Vec<RegisterSpec>, &str)> = vec![
            (
                vec![spec("pack.voltage", 0, ValueType::U16, 1.0)],
                "unknown field",
            ),
            (
                vec![spec("pack.voltage_v", 0, ValueType::U16, 1.0)],
                "required",
            ),
            (
                {
                    let mut m = map();
                    m.push(spec("pack.voltage_v", 50, ValueType::U16, 1.0));
                    m
                },
                "mapped twice",
            ),
            (
                {
                    let mut m = map();
                    m.push(spec("cells_v[5]", 51, ValueType::U16, 1.0));
                    m
                },
                "without gaps",
            ),
            (
                {
                    let mut m = map();
                    m[0].scale = 0.0;
                    m
                },
                "scale",
            ),
            (
                {
                    let mut m = map();
                    m.last_mut().unwrap().bits.clear();
                    m
                },
                "bits",
            ),
        ];
        for (m, needle) in cases {
            let e = plan(&m).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}

//! The Modbus source against tokio-modbus servers: over TCP on loopback, and over RTU on a
//! linked pseudo-terminal pair (made with socat, which scripts/setup installs). The Python
//! pymodbus server, an independent implementation, is the peer of the end-to-end test.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rampart_bms::modbus::{
    ModbusConfig, ModbusSource, RegisterSpec, Table, Transport, ValueType, WordOrder,
};
use rampart_bms::{Alarm, BmsError, BmsSource, Celsius, Percent, Volts};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response};

/// A battery's register file.
#[derive(Clone, Default)]
struct Registers {
    holding: HashMap<u16, u16>,
    input: HashMap<u16, u16>,
}

impl Registers {
    fn read(map: &HashMap<u16, u16>, start: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
        (start..start + n)
            .map(|a| {
                map.get(&a)
                    .copied()
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }
}

impl Service for Registers {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(match req {
            Request::ReadHoldingRegisters(a, n) => {
                Self::read(&self.holding, a, n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, n) => {
                Self::read(&self.input, a, n).map(Response::ReadInputRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

fn battery() -> Registers {
    let mut r = Registers::default();
    for (a, v) in [
        (0u16, 5230u16),
        (1, (-123i16) as u16),
        (2, 81),
        (3, 0x0001),
        (4, 0x86A0),
        (10, 3301),
        (11, 3305),
        (12, 250),
        (20, 0b1001),
    ] {
        r.holding.insert(a, v);
    }
    r.input.insert(100, 96);
    r
}

fn spec(field: &str, address: u16, t: ValueType, scale: f64, table: Table) -> RegisterSpec {
    RegisterSpec {
        field: field.into(),
        address,
        table,
        value_type: t,
        scale,
        word_order: WordOrder::Big,
        bits: BTreeMap::new(),
    }
}

fn map() -> Vec<RegisterSpec> {
    let mut alarms = spec("alarms", 20, ValueType::U16, 1.0, Table::Holding);
    alarms.bits.insert("0".into(), Alarm::CellOverVoltage);
    alarms.bits.insert("3".into(), Alarm::OverTemperature);
    vec![
        spec("pack.voltage_v", 0, ValueType::U16, 0.01, Table::Holding),
        spec("pack.current_a", 1, ValueType::I16, 0.1, Table::Holding),
        spec("pack.soc_pct", 2, ValueType::U16, 1.0, Table::Holding),
        spec(
            "pack.remaining_ah",
            3,
            ValueType::U32,
            0.001,
            Table::Holding,
        ),
        spec("cells_v[0]", 10, ValueType::U16, 0.001, Table::Holding),
        spec("cells_v[1]", 11, ValueType::U16, 0.001, Table::Holding),
        spec("temps_c[0]", 12, ValueType::I16, 0.1, Table::Holding),
        spec("pack.soh_pct", 100, ValueType::U16, 1.0, Table::Input),
        alarms,
    ]
}

fn config(
    transport: Transport,
    address: Option<String>,
    port: Option<String>,
    registers: Vec<RegisterSpec>,
) -> ModbusConfig {
    ModbusConfig {
        transport,
        address,
        port,
        baud: 19200,
        unit: 1,
        timeout: Duration::from_millis(500),
        registers,
    }
}

async fn tcp_server(regs: Registers) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let service = Arc::new(regs);
    tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let new_service = |_addr| Ok(Some(Arc::clone(&service)));
        let on_connected = |stream, addr| async move {
            tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, new_service)
        };
        let _ = server.serve(&on_connected, |_e| {}).await;
    });
    addr
}

fn assert_battery(r: &rampart_bms::Reading) {
    assert_eq!(r.pack.voltage, Volts(52.3));
    assert_eq!(r.pack.current.0, -12.3);
    assert_eq!(r.pack.soc, Percent(81.0));
    assert_eq!(r.pack.remaining.map(|a| a.0), Some(100.0));
    assert_eq!(r.pack.soh, Some(Percent(96.0)));
    assert_eq!(r.cells, vec![Volts(3.301), Volts(3.305)]);
    assert_eq!(r.temperatures, vec![Celsius(25.0)]);
    assert_eq!(
        r.alarms,
        vec![Alarm::CellOverVoltage, Alarm::OverTemperature]
    );
}

#[tokio::test]
async fn reads_a_battery_over_modbus_tcp() {
    let addr = tcp_server(battery()).await;
    let mut src =
        ModbusSource::new(config(Transport::Tcp, Some(addr.to_string()), None, map())).unwrap();
    let r = src.read().await.unwrap();
    assert_battery(&r);
    // Again on the same connection.
    assert_battery(&src.read().await.unwrap());
}

#[tokio::test]
async fn an_exception_a_silent_peer_and_no_peer_are_errors_that_say_so() {
    let addr = tcp_server(battery()).await;
    let mut bad = map();
    bad.push(spec(
        "pack.cycles",
        500,
        ValueType::U16,
        1.0,
        Table::Holding,
    ));
    let mut src =
        ModbusSource::new(config(Transport::Tcp, Some(addr.to_string()), None, bad)).unwrap();
    let e = src.read().await.unwrap_err();
    assert!(
        matches!(&e, BmsError::BadFrame(m) if m.contains("exception")),
        "{e}"
    );

    // Accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut src = ModbusSource::new(config(
        Transport::Tcp,
        Some(silent_addr.to_string()),
        None,
        map(),
    ))
    .unwrap();
    assert!(matches!(src.read().await, Err(BmsError::Timeout(_))));

    // Nobody listening.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut src = ModbusSource::new(config(
        Transport::Tcp,
        Some(closed.to_string()),
        None,
        map(),
    ))
    .unwrap();
    assert!(matches!(src.read().await, Err(BmsError::Io(_))));
}

#[tokio::test]
async fn reads_a_battery_over_modbus_rtu_on_a_pty_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("bms"), dir.path().join("gateway"));
    let mut socat = match std::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("socat is needed for the RTU test ({e}): run scripts/setup"),
    };
    let wait = |p: &Path| {
        for _ in 0..100 {
            if p.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("socat did not create {}", p.display());
    };
    wait(&a);
    wait(&b);
    let server = tokio_modbus::server::rtu::Server::new_from_path(&a, 19200).unwrap();
    let service = battery();
    let task = tokio::spawn(async move { server.serve_forever(service).await });
    let mut src = ModbusSource::new(config(
        Transport::Rtu,
        None,
        Some(b.display().to_string()),
        map(),
    ))
    .unwrap();
    let r = src.read().await;
    task.abort();
    let _ = socat.kill();
    let _ = socat.wait();
    assert_battery(&r.unwrap());
}

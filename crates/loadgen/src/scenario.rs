//! A load run: what to do (the [`Scenario`]) and what happened (the [`Report`]).
//!
//! Fan-in, the pattern of a telemetry fleet: N devices publish telemetry documents on their
//! own `devices/{id}/telemetry` topics and one subscriber receives them all through
//! `devices/+/telemetry`. Each device records when it sent each sequence number; the
//! subscriber reads the device and sequence number back out of every message it receives,
//! which gives end-to-end latency (publisher to subscriber) and loss (a message sent — and,
//! at QoS 1, acknowledged by the broker — that never arrives).
//!
//! Fan-out, the pattern of commands: the subscriber identity publishes to each device's
//! `devices/{id}/inbox` in turn and every device receives its own.
//!
//! Phases: the receiving side connects and subscribes; devices connect (at most
//! `connect_concurrency` at once, optionally ramped to `connect_rate` per second); messages
//! flow for `duration` (or until `max_messages`); the run waits up to `drain` for what is
//! still in flight, then closes everything. With `idle`, devices only connect and hold their
//! sessions, and the report gives the target's memory per connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rampart_mqtt::{
    Ack, Packet, Protocol, QoS, Subscribe, SubscriptionOptions, encode_packet, encode_publish,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::LoadError;
use crate::client::{self, Conn, ConnError, ErrorKind, Target};
use crate::fleet::Fleet;
use crate::stats::{self, Latency, ProcSample};
use crate::trust::ServerTrust;

/// How fast devices publish.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    /// Each device publishes this many messages per second (paced in 10 ms batches).
    PerDevice(f64),
    /// As fast as the broker takes them: QoS 1 keeps up to `window` messages in flight per
    /// device, sending more once a quarter of the window is acknowledged; QoS 0 writes as
    /// fast as TCP drains.
    Max { window: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// N devices → 1 subscriber.
    FanIn,
    /// 1 publisher → N devices.
    FanOut,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub target: Target,
    /// Where the other side (the subscriber of a fan-in, the publisher of a fan-out)
    /// connects, when not to `target`: another node of a multi-node hub.
    pub other_target: Option<Target>,
    /// The CA that signed the broker's certificate (PEM); the fleet's own CA if `None`.
    pub server_ca_pem: Option<String>,
    pub devices: usize,
    pub protocol: Protocol,
    pub qos: QoS,
    /// Payload size in bytes (telemetry documents padded with JSON whitespace).
    pub payload: usize,
    pub rate: Rate,
    pub pattern: Pattern,
    /// Connections per second while connecting (`None`: as fast as the concurrency allows).
    pub connect_rate: Option<f64>,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub duration: Duration,
    pub max_messages: u64,
    pub drain: Duration,
    /// Connect and hold the sessions this long, publishing nothing.
    pub idle: Option<Duration>,
    /// The broker's process, for CPU and memory.
    pub target_pid: Option<u32>,
    /// A progress line on stderr while the run goes (for people; off for scripts).
    pub progress: bool,
}

/// Rewrites one status line on stderr.
fn progress_line(on: bool, text: std::fmt::Arguments<'_>) {
    if on {
        eprint!("\r\x1b[2K{text}");
    }
}

impl Scenario {
    fn check(&self, fleet: &Fleet) -> Result<(), LoadError> {
        for t in std::iter::once(&self.target).chain(&self.other_target) {
            if !t.addr.ip().is_loopback() {
                return Err(LoadError::NotLoopback(t.addr.ip()));
            }
        }
        if self.devices == 0 || self.devices > fleet.devices.len() {
            return Err(LoadError::Invalid(format!(
                "{} devices asked, the fleet has {}",
                self.devices,
                fleet.devices.len()
            )));
        }
        if let Rate::PerDevice(r) = self.rate
            && !(r > 0.0 && r <= 1e6)
        {
            return Err(LoadError::Invalid(format!(
                "a rate of {r} messages/s per device"
            )));
        }
        if let Rate::Max { window: 0 } = self.rate {
            return Err(LoadError::Invalid("a window of 0 messages".into()));
        }
        if self.duration > Duration::from_secs(3600) || self.max_messages == 0 {
            return Err(LoadError::Invalid(
                "runs are bounded: at most an hour and at least one message".into(),
            ));
        }
        Ok(())
    }
}

/// The connection phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub attempted: u64,
    pub connected: u64,
    pub seconds: f64,
    pub per_s: f64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// The first error of each kind, for the operator.
    pub first_errors: BTreeMap<ErrorKind, String>,
}

/// The target's resources during the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetUsage {
    /// CPU used while messages flowed, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    /// CPU time per delivered message, in microseconds.
    pub cpu_us_per_msg: f64,
    pub rss_kib_before: u64,
    pub rss_kib_after_connect: u64,
    /// (RSS after connecting − before) ÷ connections, in KiB.
    pub rss_kib_per_connection: f64,
    /// The target's CPU time per accepted connection while devices connected (TLS
    /// handshake, MQTT CONNECT, authorization), in microseconds: its connection cost,
    /// whatever limited the rate.
    #[serde(default)]
    pub connect_cpu_us_per_connection: f64,
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub pattern: Option<Pattern>,
    pub devices: usize,
    pub protocol: String,
    pub qos: u8,
    pub payload_bytes: usize,
    pub connect: ConnectReport,
    pub seconds: f64,
    pub sent: u64,
    /// QoS 1: PUBACKs received.
    pub acked: u64,
    pub received: u64,
    /// Sent (QoS 0) or acknowledged (QoS 1) but never received.
    pub lost: u64,
    pub sent_per_s: f64,
    pub received_per_s: f64,
    pub latency: Latency,
    pub errors: BTreeMap<ErrorKind, u64>,
    pub target: Option<TargetUsage>,
    /// The generator's own CPU while messages flowed, in cores: near 1.0 means the
    /// generator, not the broker, was the limit.
    pub generator_cpu_cores: f64,
}

/// One running publisher task, counted in [`Shared::publishing`] until it is dropped
/// (when the task returns or is aborted).
struct Publishing(Arc<Shared>);

/// Spawns a publisher task, counted in [`Shared::publishing`] from now until it ends.
fn spawn_publisher(
    tasks: &mut tokio::task::JoinSet<()>,
    sh: &Arc<Shared>,
    publisher: impl std::future::Future<Output = ()> + Send + 'static,
) {
    sh.publishing.fetch_add(1, Ordering::AcqRel);
    let running = Publishing(sh.clone());
    tasks.spawn(async move {
        publisher.await;
        drop(running);
    });
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.0.publishing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-device send times, indexed by sequence number modulo the ring size.
struct Sent {
    ring: usize,
    times: Vec<AtomicU64>,
}

impl Sent {
    fn new(devices: usize, ring: usize) -> Sent {
        Sent {
            ring,
            times: (0..devices * ring).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn record(&self, dev: usize, seq: u64, now_ns: u64) {
        if let Some(t) = self.times.get(dev * self.ring + (seq as usize % self.ring)) {
            t.store(now_ns, Ordering::Relaxed);
        }
    }
    fn get(&self, dev: usize, seq: u64) -> u64 {
        self.times
            .get(dev * self.ring + (seq as usize % self.ring))
            .map_or(0, |t| t.load(Ordering::Relaxed))
    }
}

struct Shared {
    epoch: Instant,
    /// First sequence number of the run: Unix seconds << 20, so a later run against the
    /// same broker never repeats (a store would silently skip repeats), and the low 20 bits
    /// index the send-time ring.
    base: u64,
    sent: Sent,
    stop: AtomicBool,
    /// Publisher tasks still running. The drain compares what was received with what was
    /// sent only once this is 0: a publisher that had passed its stop check when `stop` was
    /// set may still write (and count) one more batch.
    publishing: AtomicUsize,
    sent_count: AtomicU64,
    acked: AtomicU64,
    budget: AtomicU64,
    errors: parking_errors::Errors,
    payload: usize,
    qos: QoS,
    protocol: Protocol,
}

mod parking_errors {
    //! Error counters shared by tasks (few distinct kinds; a mutex is plenty).
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use crate::client::ErrorKind;

    #[derive(Default)]
    pub struct Errors(Mutex<BTreeMap<ErrorKind, u64>>);

    impl Errors {
        pub fn count(&self, k: ErrorKind) {
            if let Ok(mut m) = self.0.lock() {
                *m.entry(k).or_insert(0) += 1;
            }
        }
        pub fn take(&self) -> BTreeMap<ErrorKind, u64> {
            self.0.lock().map(|m| m.clone()).unwrap_or_default()
        }
    }
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Takes up to `n` messages from the run's budget.
    fn take(&self, n: u64) -> u64 {
        let mut left = self.budget.load(Ordering::Relaxed);
        loop {
            let take = left.min(n);
            if take == 0 {
                return 0;
            }
            match self.budget.compare_exchange_weak(
                left,
                left - take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => left = now,
            }
        }
    }
}

/// A telemetry document of (about) `size` bytes: the smallest valid one, padded with JSON
/// whitespace.
pub fn telemetry_payload(buf: &mut Vec<u8>, seq: u64, ts: &str, size: usize) {
    use std::io::Write;
    buf.clear();
    let _ = write!(
        buf,
        "{{\"v\":1,\"seq\":{seq},\"ts\":\"{ts}\",\"pack\":{{\"voltage_v\":52.41,\"current_a\":-12.5,\"soc_pct\":81.2}}"
    );
    while buf.len() + 1 < size {
        buf.push(b' ');
    }
    buf.push(b'}');
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2026-01-01T00:00:00Z".into())
}

/// Reads `seq` out of a payload written by [`telemetry_payload`].
fn seq_of(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(6).position(|w| w == b"\"seq\":")? + 6;
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

/// The device index of `devices/bench-NNNNN/...`.
fn device_of(topic: &str) -> Option<usize> {
    topic
        .strip_prefix("devices/bench-")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Runs the scenario with `fleet`'s identities.
pub async fn run(fleet: &Fleet, sc: &Scenario) -> Result<Report, LoadError> {
    sc.check(fleet)?;
    let trust = ServerTrust::from_pem(sc.server_ca_pem.as_deref().unwrap_or(&fleet.ca_pem))?;
    let ring = match sc.rate {
        Rate::Max { window } => (usize::from(window) * 4).next_power_of_two().max(256),
        Rate::PerDevice(r) => ((r * 4.0) as usize).next_power_of_two().clamp(256, 16_384),
    };
    let publishing = sc.idle.is_none();
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        base: (time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64) << 20,
        sent: Sent::new(if publishing { sc.devices } else { 0 }, ring),
        stop: AtomicBool::new(false),
        publishing: AtomicUsize::new(0),
        sent_count: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        budget: AtomicU64::new(sc.max_messages),
        errors: parking_errors::Errors::default(),
        payload: sc.payload,
        qos: sc.qos,
        protocol: sc.protocol,
    });
    let mut report = Report {
        pattern: Some(sc.pattern),
        devices: sc.devices,
        protocol: sc.protocol.label().to_owned(),
        qos: sc.qos as u8,
        payload_bytes: {
            let mut b = Vec::new();
            telemetry_payload(&mut b, 1_000_000, &now_rfc3339(), sc.payload);
            b.len()
        },
        ..Report::default()
    };
    let before = sc.target_pid.and_then(stats::sample);

    // The other side first, so nothing is published before it listens.
    let other = if publishing {
        let tls = client::tls_config(
            &trust,
            &fleet.subscriber.cert_pem,
            &fleet.subscriber.key_pem,
        )?;
        let conn = client::connect(
            sc.other_target.as_ref().unwrap_or(&sc.target),
            tls,
            Some(client::source_address(0)),
            &fleet.subscriber.id,
            sc.protocol,
            sc.connect_timeout,
        )
        .await
        .map_err(|e| LoadError::Subscriber(e.to_string()))?;
        Some(conn)
    } else {
        None
    };
    let receiver = match (other, sc.pattern) {
        (Some(mut conn), Pattern::FanIn) => {
            subscribe(&mut conn, "devices/+/telemetry", sc.qos)
                .await
                .map_err(|e| LoadError::Subscriber(e.to_string()))?;
            Some(conn)
        }
        (Some(conn), Pattern::FanOut) => Some(conn),
        (None, _) => None,
    };

    // Devices connect.
    let conns = connect_all(fleet, &trust, sc, &mut report.connect).await;
    let after_connect = sc.target_pid.and_then(stats::sample);
    if let Some(idle) = sc.idle {
        // Let the broker settle its buffers before reading its memory.
        tokio::time::sleep(Duration::from_secs(2).min(idle)).await;
        let settled = sc.target_pid.and_then(stats::sample);
        tokio::time::sleep(idle.saturating_sub(Duration::from_secs(2))).await;
        report.target = usage(before, settled, None, 0, report.connect.connected);
        connect_cost(&mut report, before, after_connect);
        drop(conns);
        return Ok(report);
    }
    if conns.is_empty() {
        return Ok(report);
    }
    let mut devices = conns;
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let flow_start = Instant::now();
    let gen_before = stats::sample(std::process::id());
    let target_before = sc.target_pid.and_then(stats::sample);
    let mut tasks = tokio::task::JoinSet::new();
    match sc.pattern {
        Pattern::FanIn => {
            for (i, conn) in devices.drain(..) {
                let sh = shared.clone();
                let rate = sc.rate;
                spawn_publisher(&mut tasks, &shared, publisher(sh, i, conn, rate));
            }
            if let Some(conn) = receiver {
                let (sh, rc, lat) = (shared.clone(), received.clone(), latencies.clone());
                tasks.spawn(async move { receiver_task(sh, conn, rc, lat).await });
            }
        }
        Pattern::FanOut => {
            let ids: Vec<String> = devices
                .iter()
                .map(|(i, _)| fleet.devices[*i].id.clone())
                .collect();
            for (i, mut conn) in devices.drain(..) {
                let topic = format!("devices/{}/inbox", fleet.devices[i].id);
                if let Err(e) = subscribe(&mut conn, &topic, sc.qos).await {
                    shared.errors.count(e.kind);
                    continue;
                }
                let (sh, rc, lat) = (shared.clone(), received.clone(), latencies.clone());
                tasks.spawn(async move { receiver_task(sh, conn, rc, lat).await });
            }
            if let Some(conn) = receiver {
                let sh = shared.clone();
                let rate = sc.rate;
                spawn_publisher(&mut tasks, &shared, fan_out_publisher(sh, conn, ids, rate));
            }
        }
    }
    // Messages flow for the duration or until the budget is spent.
    let deadline = flow_start + sc.duration;
    let mut shown = Instant::now();
    while Instant::now() < deadline && shared.budget.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            let t = flow_start.elapsed().as_secs_f64();
            progress_line(
                sc.progress,
                format_args!(
                    "{t:5.1}/{:.0} s  sent {}  received {} ({:.0}/s)",
                    sc.duration.as_secs_f64(),
                    shared.sent_count.load(Ordering::Relaxed),
                    received.load(Ordering::Relaxed),
                    received.load(Ordering::Relaxed) as f64 / t.max(1e-9)
                ),
            );
        }
    }
    progress_line(sc.progress, format_args!("draining ...\n"));
    shared.stop.store(true, Ordering::Relaxed);
    let flow = flow_start.elapsed();
    let target_after = sc.target_pid.and_then(stats::sample);
    let gen_after = stats::sample(std::process::id());
    // Wait for what is in flight: everything sent, at QoS 1 too. A message whose PUBACK
    // had not come back when the publishers stopped is not counted as acknowledged (so not
    // as lost if it never arrives), but it may well still be on its way to the subscriber.
    let drain_until = Instant::now() + sc.drain;
    loop {
        // Read in this order: once no publisher runs, the sent count is final.
        let publishers_done = shared.publishing.load(Ordering::Acquire) == 0;
        let expected = shared.sent_count.load(Ordering::Relaxed);
        let all_in = publishers_done && received.load(Ordering::Relaxed) >= expected;
        if all_in || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    report.seconds = flow.as_secs_f64();
    report.sent = shared.sent_count.load(Ordering::Relaxed);
    report.acked = shared.acked.load(Ordering::Relaxed);
    report.received = received.load(Ordering::Relaxed);
    let expected = if sc.qos == QoS::AtMostOnce {
        report.sent
    } else {
        report.acked
    };
    report.lost = expected.saturating_sub(report.received);
    report.sent_per_s = report.sent as f64 / report.seconds.max(1e-9);
    report.received_per_s = report.received as f64 / report.seconds.max(1e-9);
    report.latency = latencies
        .lock()
        .map(|mut l| Latency::of(&mut l))
        .unwrap_or_default();
    report.errors = shared.errors.take();
    report.generator_cpu_cores = match (gen_before, gen_after) {
        (Some(a), Some(b)) => stats::cores(a, b, flow),
        _ => 0.0,
    };
    report.target = usage(
        before,
        after_connect,
        target_before.zip(target_after).map(|p| (p, flow)),
        report.received,
        report.connect.connected,
    );
    connect_cost(&mut report, before, after_connect);
    Ok(report)
}

/// Fills in the target's CPU per connection from the samples around the connect phase.
fn connect_cost(report: &mut Report, before: Option<ProcSample>, after: Option<ProcSample>) {
    let connected = report.connect.connected;
    if let (Some(t), Some(b), Some(a)) = (report.target.as_mut(), before, after)
        && connected > 0
    {
        t.connect_cpu_us_per_connection =
            a.cpu_us.saturating_sub(b.cpu_us) as f64 / connected as f64;
    }
}

fn usage(
    before: Option<ProcSample>,
    connected: Option<ProcSample>,
    flow: Option<((ProcSample, ProcSample), Duration)>,
    received: u64,
    connections: u64,
) -> Option<TargetUsage> {
    let before = before?;
    let connected = connected.unwrap_or(before);
    let mut u = TargetUsage {
        rss_kib_before: before.rss_kib,
        rss_kib_after_connect: connected.rss_kib,
        rss_kib_per_connection: if connections > 0 {
            connected.rss_kib.saturating_sub(before.rss_kib) as f64 / connections as f64
        } else {
            0.0
        },
        ..TargetUsage::default()
    };
    if let Some(((a, b), wall)) = flow {
        u.cpu_cores = stats::cores(a, b, wall);
        u.cpu_us_per_msg = if received > 0 {
            b.cpu_us.saturating_sub(a.cpu_us) as f64 / received as f64
        } else {
            0.0
        };
    }
    Some(u)
}

async fn subscribe(conn: &mut Conn, filter: &str, qos: QoS) -> Result<(), ConnError> {
    let mut buf = BytesMut::new();
    encode_packet(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscription_id: None,
            user_properties: Vec::new(),
            filters: vec![(filter.into(), SubscriptionOptions::with_qos(qos))],
        }),
        conn.protocol,
        &mut buf,
    );
    conn.writer.write_all(&buf).await.map_err(|e| ConnError {
        kind: ErrorKind::Closed,
        detail: e.to_string(),
    })?;
    let mut packets = Vec::new();
    conn.reader.read_packets(&mut packets).await?;
    match packets.first() {
        Some(Packet::SubAck(a)) if a.codes.iter().all(|c| *c < 0x80) => Ok(()),
        Some(Packet::SubAck(a)) => Err(ConnError {
            kind: ErrorKind::SubscribeRefused,
            detail: format!("SUBACK codes {:?} for {filter}", a.codes),
        }),
        other => Err(ConnError {
            kind: ErrorKind::Protocol,
            detail: format!("expected SUBACK, got {:?}", other.map(Packet::name)),
        }),
    }
}

async fn connect_all(
    fleet: &Fleet,
    trust: &Arc<ServerTrust>,
    sc: &Scenario,
    rep: &mut ConnectReport,
) -> Vec<(usize, Conn)> {
    // The devices' TLS configurations before the clock starts: parsing keys is the
    // generator's setup, not part of the broker's connection rate.
    let configs: Vec<_> = fleet.devices[..sc.devices]
        .iter()
        .map(|d| client::tls_config(trust, &d.cert_pem, &d.key_pem))
        .collect();
    let sem = Arc::new(Semaphore::new(sc.connect_concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    for (i, config) in configs.into_iter().enumerate() {
        if let Some(rate) = sc.connect_rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate.max(0.001));
            tokio::time::sleep_until(due.into()).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let d = &fleet.devices[i];
        let tls = match config {
            Ok(t) => t,
            Err(e) => {
                rep.errors
                    .entry(ErrorKind::Tls)
                    .and_modify(|n| *n += 1)
                    .or_insert(1);
                rep.first_errors
                    .entry(ErrorKind::Tls)
                    .or_insert(e.to_string());
                continue;
            }
        };
        let (target, id, protocol, timeout) = (
            sc.target.clone(),
            d.id.clone(),
            sc.protocol,
            sc.connect_timeout,
        );
        set.spawn(async move {
            let r = client::connect(
                &target,
                tls,
                Some(client::source_address(i + 1)),
                &id,
                protocol,
                timeout,
            )
            .await;
            drop(permit);
            (i, r)
        });
    }
    let mut conns = Vec::with_capacity(sc.devices);
    let mut shown = Instant::now();
    while let Some(done) = set.join_next().await {
        rep.attempted += 1;
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            progress_line(
                sc.progress,
                format_args!("connecting: {} of {}", rep.attempted, sc.devices),
            );
        }
        match done {
            Ok((i, Ok(c))) => conns.push((i, c)),
            Ok((_, Err(e))) => {
                *rep.errors.entry(e.kind).or_insert(0) += 1;
                rep.first_errors.entry(e.kind).or_insert(e.detail);
            }
            Err(_) => *rep.errors.entry(ErrorKind::Protocol).or_insert(0) += 1,
        }
    }
    rep.seconds = start.elapsed().as_secs_f64();
    rep.connected = conns.len() as u64;
    progress_line(
        sc.progress,
        format_args!("connected {} of {}\n", rep.connected, sc.devices),
    );
    rep.per_s = rep.connected as f64 / rep.seconds.max(1e-9);
    conns.sort_by_key(|(i, _)| *i);
    conns
}

/// Publishes of numbered telemetry documents, encoded into one buffer and sent in one write.
struct Batch {
    buf: BytesMut,
    payload: Vec<u8>,
    /// The last sequence number used; the send-time ring is indexed from `base`.
    seq: u64,
    base: u64,
    packet_id: u16,
    ts: String,
    sent_at: u64,
}

impl Batch {
    fn new(sh: &Shared) -> Batch {
        Batch {
            buf: BytesMut::with_capacity(64 * 1024),
            payload: Vec::with_capacity(sh.payload + 64),
            seq: sh.base,
            base: sh.base,
            packet_id: 0,
            ts: String::new(),
            sent_at: 0,
        }
    }

    /// Starts a batch: one timestamp for its documents and its send-time records.
    fn start(&mut self, sh: &Shared) {
        self.buf.clear();
        self.ts = now_rfc3339();
        self.sent_at = sh.now_ns();
    }

    fn push(&mut self, sh: &Shared, topic: &str, dev: usize) {
        self.seq += 1;
        telemetry_payload(&mut self.payload, self.seq, &self.ts, sh.payload);
        let id = (sh.qos != QoS::AtMostOnce).then(|| {
            self.packet_id = self.packet_id.wrapping_add(1).max(1);
            self.packet_id
        });
        encode_publish(
            &mut self.buf,
            sh.protocol,
            topic,
            &self.payload,
            sh.qos,
            false,
            false,
            id,
            None,
        );
        sh.sent.record(dev, self.seq - self.base, self.sent_at);
    }

    /// Writes the batch of `n` publishes; false (counted) if the connection is gone.
    async fn send(&mut self, sh: &Shared, conn: &mut Conn, n: u64) -> bool {
        if conn.writer.write_all(&self.buf).await.is_err() {
            sh.errors.count(ErrorKind::Closed);
            return false;
        }
        sh.sent_count.fetch_add(n, Ordering::Relaxed);
        true
    }
}

/// How many publishes to send at `--rate max` with QoS 1, `inflight` of `window` being
/// unacknowledged: none until a quarter of the window is free, then all that is. A broker
/// that acknowledges each publish in a TCP segment of its own (Mosquitto does) would
/// otherwise get one publish per segment back, each costing both sides a system call and the
/// kernel's work for a packet: at Mosquitto's QoS 1 saturation the generator used 0.91–0.95
/// of its core, and refilling by quarters it used 0.70–0.78 while Mosquitto took 25% more
/// messages (docs/benchmarks.md). "Several packets per write" (BENCHMARKS.md).
fn refill(window: u64, inflight: u64) -> u64 {
    let free = window.saturating_sub(inflight);
    if free * 4 >= window { free } else { 0 }
}

/// Counts the PUBACKs among `packets` (emptied) as acknowledged; returns how many.
fn take_acks(sh: &Shared, packets: &mut Vec<Packet>) -> u64 {
    let acks = packets
        .drain(..)
        .filter(|p| matches!(p, Packet::PubAck(_)))
        .count() as u64;
    sh.acked.fetch_add(acks, Ordering::Relaxed);
    acks
}

/// One device publishing its telemetry.
async fn publisher(sh: Arc<Shared>, dev: usize, mut conn: Conn, rate: Rate) {
    let topic = format!("devices/{}/telemetry", crate::fleet::device_id(dev));
    let window = match rate {
        Rate::Max { window } => u64::from(window),
        // Paced: the window only guards against a broker that stops acknowledging.
        Rate::PerDevice(_) => 1024,
    }
    .min(u64::from(conn.receive_maximum.unwrap_or(u16::MAX)));
    let mut batch = Batch::new(&sh);
    let mut inflight: u64 = 0;
    let mut packets = Vec::new();
    let mut owed = 0.0f64;
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let qos1 = sh.qos != QoS::AtMostOnce;
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        // How many to send now.
        let want = match rate {
            Rate::Max { .. } if qos1 => refill(window, inflight),
            Rate::Max { .. } => 32,
            Rate::PerDevice(r) => {
                let now = Instant::now();
                owed += r * now.duration_since(last).as_secs_f64();
                last = now;
                let n = owed.floor() as u64;
                owed -= n as f64;
                if qos1 {
                    n.min(window.saturating_sub(inflight))
                } else {
                    n
                }
            }
        };
        let n = if want > 0 { sh.take(want) } else { 0 };
        if n > 0 {
            batch.start(&sh);
            for _ in 0..n {
                batch.push(&sh, &topic, dev);
            }
            if !batch.send(&sh, &mut conn, n).await {
                return;
            }
            if qos1 {
                inflight += n;
            }
        }
        // Wait for acknowledgements or the next tick.
        let waiting_for_acks = qos1 && matches!(rate, Rate::Max { .. });
        if waiting_for_acks || qos1 && inflight > 0 {
            tokio::select! {
                r = conn.reader.read_packets(&mut packets) => {
                    if r.is_err() {
                        sh.errors.count(ErrorKind::Closed);
                        return;
                    }
                    inflight = inflight.saturating_sub(take_acks(&sh, &mut packets));
                }
                _ = tick.tick(), if !waiting_for_acks => {}
            }
        } else if matches!(rate, Rate::PerDevice(_)) {
            tick.tick().await;
        } else {
            // QoS 0 at full speed: yield so other devices get their turn.
            tokio::task::yield_now().await;
        }
    }
}

/// The subscriber's side of publisher sequence numbers: the device's ring is indexed from
/// the run's base, which the receiver recovers as `seq & ((1 << 20) - 1)`.
fn ring_index(seq: u64) -> u64 {
    seq & ((1 << 20) - 1)
}

/// Receives messages: latency from the sender's record, PUBACKs for QoS 1.
async fn receiver_task(
    sh: Arc<Shared>,
    mut conn: Conn,
    received: Arc<AtomicU64>,
    latencies: Arc<std::sync::Mutex<Vec<u32>>>,
) {
    let mut packets = Vec::new();
    let mut acks = BytesMut::with_capacity(4096);
    let mut local: Vec<u32> = Vec::with_capacity(4096);
    loop {
        if conn.reader.read_packets(&mut packets).await.is_err() {
            break;
        }
        let now = sh.now_ns();
        acks.clear();
        let mut n = 0;
        for p in packets.drain(..) {
            if let Packet::Publish(p) = p {
                n += 1;
                if let (Some(dev), Some(seq)) = (device_of(&p.topic), seq_of(&p.payload)) {
                    let sent = sh.sent.get(dev, ring_index(seq));
                    if sent > 0 && now >= sent {
                        local.push(((now - sent) / 1000).min(u64::from(u32::MAX)) as u32);
                    }
                }
                if let Some(id) = p.packet_id {
                    encode_packet(
                        &Packet::PubAck(Ack {
                            packet_id: id,
                            reason: 0,
                        }),
                        sh.protocol,
                        &mut acks,
                    );
                }
            }
        }
        received.fetch_add(n, Ordering::Relaxed);
        if !acks.is_empty() && conn.writer.write_all(&acks).await.is_err() {
            break;
        }
        // Handed over after every read: the task is aborted at the end of the run, and
        // samples still held here would be lost (one uncontended lock per read).
        if !local.is_empty()
            && let Ok(mut l) = latencies.lock()
        {
            l.append(&mut local);
        }
    }
}

/// The fan-out publisher: each device's inbox in turn.
async fn fan_out_publisher(sh: Arc<Shared>, mut conn: Conn, ids: Vec<String>, rate: Rate) {
    let topics: Vec<String> = ids.iter().map(|id| format!("devices/{id}/inbox")).collect();
    let devs: Vec<usize> = ids
        .iter()
        .filter_map(|id| id.strip_prefix("bench-").and_then(|n| n.parse().ok()))
        .collect();
    let per_tick = match rate {
        Rate::PerDevice(r) => ((r * ids.len() as f64) / 100.0).max(1.0) as u64,
        Rate::Max { window } => u64::from(window),
    };
    let qos1 = sh.qos != QoS::AtMostOnce;
    let mut batch = Batch::new(&sh);
    let mut packets = Vec::new();
    let mut k = 0usize;
    let mut inflight: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let paced = matches!(rate, Rate::PerDevice(_));
    while !sh.stop.load(Ordering::Relaxed) && !topics.is_empty() {
        // At --rate max with QoS 1, only what fits in the window.
        let want = if qos1 && !paced {
            refill(per_tick, inflight).max(1)
        } else {
            per_tick
        };
        let n = sh.take(want);
        if n == 0 {
            return;
        }
        batch.start(&sh);
        for _ in 0..n {
            let i = k % topics.len();
            k += 1;
            batch.push(&sh, &topics[i], devs[i]);
        }
        if !batch.send(&sh, &mut conn, n).await {
            return;
        }
        if qos1 {
            inflight += n;
        }
        // Paced: the next batch waits for the tick. At --rate max: for room in the window.
        // Acknowledgements are counted meanwhile.
        let next_tick = tick.tick();
        tokio::pin!(next_tick);
        let mut ticked = false;
        loop {
            let room = !qos1 || refill(per_tick, inflight) > 0;
            if (!paced && room) || (paced && ticked) {
                break;
            }
            tokio::select! {
                r = conn.reader.read_packets(&mut packets), if qos1 => {
                    if r.is_err() {
                        sh.errors.count(ErrorKind::Closed);
                        return;
                    }
                    inflight = inflight.saturating_sub(take_acks(&sh, &mut packets));
                }
                _ = &mut next_tick, if !ticked => ticked = true,
            }
        }
        if !paced && !qos1 {
            // QoS 0 at full speed: let the receivers run.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_refilled_by_quarters() {
        assert_eq!(refill(64, 0), 64);
        assert_eq!(refill(64, 48), 16);
        assert_eq!(refill(64, 49), 0);
        assert_eq!(refill(64, 64), 0);
        assert_eq!(refill(64, 70), 0);
        // A window too small to split still sends one at a time.
        assert_eq!(refill(1, 0), 1);
        assert_eq!(refill(3, 2), 1);
        assert_eq!(refill(3, 3), 0);
    }

    #[test]
    fn payloads_are_valid_telemetry_of_the_asked_size_and_carry_their_sequence_number() {
        let mut b = Vec::new();
        telemetry_payload(&mut b, 123_456_789, "2026-11-25T12:00:00Z", 128);
        assert_eq!(b.len(), 128);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["seq"], 123_456_789);
        assert_eq!(seq_of(&b), Some(123_456_789));
        telemetry_payload(&mut b, 1, "2026-11-25T12:00:00Z", 10);
        assert!(b.len() > 10, "never shorter than a valid document");
        assert_eq!(device_of("devices/bench-00042/telemetry"), Some(42));
        assert_eq!(device_of("devices/other/telemetry"), None);
        assert_eq!(seq_of(b"{\"v\":1}"), None);
    }
}

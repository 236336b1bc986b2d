//! `agent.toml`, every field documented (docs/configuration.md) and checked at start.
//! Relative paths are relative to the directory of the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_bms::SimulatorConfig;
use rampart_bms::modbus::ModbusConfig;
use rampart_bms::pylontech::Conventions;
use serde::Deserialize;

use crate::error::AgentError;

/// The agent's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The device id. Optional: it is the CN of the device certificate, which a provisioned
    /// device only learns from the hub. When set, it must equal that CN.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Where the agent keeps its state: sequence counters, the outbox, the storage key, the
    /// session token, status.json.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub hub: HubSection,
    #[serde(default)]
    pub telemetry: TelemetrySection,
    #[serde(default)]
    pub reconnect: ReconnectSection,
    #[serde(default)]
    pub bms: BmsSection,
    #[serde(default)]
    pub credentials: CredentialsSection,
    /// Present on factory-fresh devices that provision themselves with a claim certificate.
    #[serde(default)]
    pub provisioning: Option<ProvisioningSection>,
    #[serde(default)]
    pub tokens: TokensSection,
    /// The product and release this device runs, reported to the hub on every connection so
    /// the fleet view knows which devices run which components.
    #[serde(default)]
    pub release: Option<ReleaseSection>,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub outbox: OutboxSection,
    /// Secure software updates (TUF). Absent: the agent never updates anything.
    #[serde(default)]
    pub updates: Option<UpdatesSection>,
    /// Data minimisation: the groups of fields that leave the device. None: every field of
    /// every reading.
    #[serde(default)]
    pub send: Vec<crate::minimise::SendGroup>,
    /// Directory of the file, for resolving relative paths (not read from the file).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    "state".into()
}

/// `[hub]`: where to call home and with which credentials.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// `host:port` of the hub's MQTT/TLS listener.
    pub address: String,
    /// CA bundle that authenticates the hub.
    #[serde(default = "default_ca")]
    pub ca: PathBuf,
    #[serde(default = "default_cert")]
    pub cert: PathBuf,
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive", with = "duration")]
    pub keep_alive: Duration,
}

fn default_ca() -> PathBuf {
    "ca-chain.crt".into()
}
fn default_cert() -> PathBuf {
    "device.crt".into()
}
fn default_key() -> PathBuf {
    "device.key".into()
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Time between BMS readings.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Consecutive failed readings after which a `bms_unreachable` event is raised.
    pub bms_unreachable_after: u32,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            interval: Duration::from_secs(5),
            bms_unreachable_after: 3,
        }
    }
}

/// `[storage]`: the storage key that seals the outbox and the stored credentials.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Key file (64 hex digits, 0600), created at first start. Default: STATE/storage.key.
    pub key_file: Option<PathBuf>,
    /// A program printing the key (64 hex digits) on stdout, e.g. unsealing it from a TPM.
    /// When set, no key file is used.
    pub key_command: Option<Vec<String>>,
    /// A program run by `rampart-agent reset --factory` to destroy a key held by
    /// `key_command` (e.g. evict the TPM object).
    pub erase_command: Option<Vec<String>>,
    /// Seal the device's private keys and session token with the storage key.
    pub encrypt_credentials: bool,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            key_file: None,
            key_command: None,
            erase_command: None,
            encrypt_credentials: true,
        }
    }
}

/// When outbox appends are synced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    Interval,
    Never,
}

/// What gives way when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    DropOldest,
    DropNewest,
}

/// `[outbox]`: the durable queue between the BMS and the network.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSection {
    /// Bound on the outbox's disk use; beyond it the oldest records are dropped.
    #[serde(with = "bytes")]
    pub max_bytes: u64,
    /// Records older than this are dropped.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// Size of one segment file.
    #[serde(with = "bytes")]
    pub segment_bytes: u64,
    /// "always": every record is on stable storage before it is offered to the network;
    /// "interval": synced every `fsync_interval` (a power loss loses at most that much);
    /// "never": left to the kernel (survives an agent crash, not a power loss).
    pub fsync: Fsync,
    #[serde(with = "duration")]
    pub fsync_interval: Duration,
    /// At `max_bytes`: "drop_oldest" (default) or "drop_newest".
    pub when_full: WhenFull,
    /// Records published and not yet acknowledged, at most.
    pub window: u32,
    /// Telemetry documents per publish when a backlog drains.
    pub batch: u32,
}

impl Default for OutboxSection {
    fn default() -> Self {
        OutboxSection {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(7 * 24 * 3600),
            segment_bytes: 1 << 20,
            fsync: Fsync::Always,
            fsync_interval: Duration::from_secs(1),
            when_full: WhenFull::DropOldest,
            window: 100,
            batch: 50,
        }
    }
}

/// `[reconnect]`: exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSection {
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
}

impl Default for ReconnectSection {
    fn default() -> Self {
        ReconnectSection {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// `[credentials]`: certificate renewal.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsSection {
    /// Renew when this fraction of the certificate's lifetime has passed.
    pub renew_at: f64,
    /// Key type of renewed keys: "ecdsa-p256" or "ed25519".
    pub key_algorithm: String,
    /// How long to wait for the hub's answer to a renewal request.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
}

impl Default for CredentialsSection {
    fn default() -> Self {
        CredentialsSection {
            renew_at: 2.0 / 3.0,
            key_algorithm: "ecdsa-p256".into(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[provisioning]`: fleet provisioning by claim certificate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningSection {
    /// The factory claim certificate and key (shared by a production batch).
    #[serde(default = "default_claim_cert")]
    pub claim_cert: PathBuf,
    #[serde(default = "default_claim_key")]
    pub claim_key: PathBuf,
    /// This device's serial number: what the hub's allow-list or hook decides on.
    pub serial_number: String,
    /// Extra facts sent to the provisioning hook.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

fn default_claim_cert() -> PathBuf {
    "claim.crt".into()
}
fn default_claim_key() -> PathBuf {
    "claim.key".into()
}

/// `[release]`: what software the device runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSection {
    /// The product name, as in the hub's product record.
    pub product: String,
    /// The installed release (firmware or software version).
    pub version: String,
}

/// `[updates]`: what the agent installs, when, and how it decides it worked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatesSection {
    /// Base URL of the hub's update repository (`https://HOST:PORT/v1/updates`); requests
    /// carry the device certificate and session token.
    pub url: String,
    /// The TUF root the device trusts initially (shipped with the device; later roots are
    /// verified by the chain from this one).
    #[serde(default = "default_update_root")]
    pub root: PathBuf,
    /// This device's hardware model: targets for other hardware are refused.
    pub hardware: String,
    /// The release channel followed.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// The version installed at the factory (superseded by what the updater commits).
    pub installed_version: String,
    /// Time between checks for updates.
    #[serde(default = "default_check_interval", with = "duration")]
    pub check_interval: Duration,
    /// Install security updates (signed by the security role) without waiting for a rollout.
    #[serde(default = "default_true")]
    pub security_auto_install: bool,
    /// Postpone automatic security installs by this long after they are first seen (at
    /// most 7 days; the update is then installed).
    #[serde(default, with = "duration_opt")]
    pub security_postpone: Option<Duration>,
    /// Install feature updates as soon as they are seen (otherwise only when a rollout
    /// instructs it).
    #[serde(default)]
    pub feature_auto_install: bool,
    /// Must exit 0 after a switch for the new version to be committed ("" = none).
    #[serde(default)]
    pub health_command: String,
    /// Time the health command has, and within which the agent must be connected to the
    /// hub again after a switch.
    #[serde(default = "default_health_timeout", with = "duration")]
    pub health_timeout: Duration,
    /// Package targets: unpacked into DIR/releases/VERSION, DIR/current links the active one.
    #[serde(default = "default_package_dir")]
    pub package_dir: PathBuf,
    #[serde(default)]
    pub pre_install: String,
    #[serde(default)]
    pub post_install: String,
    /// Image targets: the two slots of the A/B pair and the boot state that selects one.
    #[serde(default = "default_slot_a")]
    pub slot_a: PathBuf,
    #[serde(default = "default_slot_b")]
    pub slot_b: PathBuf,
    #[serde(default = "default_boot_state")]
    pub boot_state: PathBuf,
    /// Run after an image switch (e.g. "systemctl reboot"); empty: the trial runs at once.
    #[serde(default)]
    pub reboot_command: String,
}

fn default_update_root() -> PathBuf {
    "update-root.json".into()
}
fn default_channel() -> String {
    "stable".into()
}
fn default_check_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_true() -> bool {
    true
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_package_dir() -> PathBuf {
    "app".into()
}
fn default_slot_a() -> PathBuf {
    "slots/a.img".into()
}
fn default_slot_b() -> PathBuf {
    "slots/b.img".into()
}
fn default_boot_state() -> PathBuf {
    "slots/boot.json".into()
}

/// Longest postponement of a security update the device owner may configure.
pub const MAX_SECURITY_POSTPONE: Duration = Duration::from_secs(7 * 24 * 3600);

/// `[tokens]`: short-lived session tokens for the hub's HTTPS endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensSection {
    /// Request a token after connecting and renew it before it expires.
    pub enabled: bool,
    /// Renew when this fraction of the token's lifetime has passed.
    pub renew_at: f64,
}

impl Default for TokensSection {
    fn default() -> Self {
        TokensSection {
            enabled: true,
            renew_at: 0.8,
        }
    }
}

/// `[bms]`: the battery source. `kind` selects the driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BmsSection {
    /// A simulated LiFePO4 pack.
    Simulator(SimulatorConfig),
    /// JBD / Xiaoxiang BMS on a serial port (UART, RS-485 adapter or Bluetooth bridge).
    Jbd(JbdSection),
    /// Pylontech/SMA-style CAN battery on a SocketCAN interface (agent built with the
    /// `socketcan` feature).
    PylontechCan(CanSection),
    /// Replay of a candump log of a Pylontech/SMA-style CAN battery.
    Candump(CandumpSection),
    /// Registers of a BMS or inverter over Modbus TCP or RTU, by register map.
    Modbus(ModbusConfig),
}

impl BmsSection {
    /// The driver name.
    pub fn kind(&self) -> &'static str {
        match self {
            BmsSection::Simulator(_) => "simulator",
            BmsSection::Jbd(_) => "jbd",
            BmsSection::PylontechCan(_) => "pylontech_can",
            BmsSection::Candump(_) => "candump",
            BmsSection::Modbus(_) => "modbus",
        }
    }
}

impl Default for BmsSection {
    fn default() -> Self {
        BmsSection::Simulator(SimulatorConfig::default())
    }
}

/// `[bms]` with `kind = "jbd"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JbdSection {
    /// Serial device, e.g. /dev/ttyUSB0.
    pub port: String,
    #[serde(default = "default_jbd_baud")]
    pub baud: u32,
    /// How long to wait for each answer.
    #[serde(default = "default_jbd_timeout", with = "duration")]
    pub timeout: Duration,
    /// Extra attempts per command after a timeout or a bad frame.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_jbd_baud() -> u32 {
    9600
}
fn default_jbd_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_retries() -> u32 {
    2
}

/// `[bms]` with `kind = "pylontech_can"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanSection {
    /// CAN interface, e.g. can0 (up, at the battery's bit rate).
    pub interface: String,
    /// How long a quiet bus is waited for before a reading fails.
    #[serde(default = "default_can_timeout", with = "duration")]
    pub timeout: Duration,
    /// Sign and scaling conventions of this battery's messages.
    #[serde(default)]
    pub conventions: Conventions,
}

fn default_can_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[bms]` with `kind = "candump"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandumpSection {
    /// The log file (`candump -l` format).
    pub file: PathBuf,
    /// Start over at the end (demos); otherwise the BMS is reported unreachable there.
    #[serde(default)]
    pub repeat: bool,
    #[serde(default)]
    pub conventions: Conventions,
}

/// Durations as humantime strings ("5s", "250ms", "1m").
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Optional durations.
pub(crate) mod duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Sizes as a number of bytes or a string with a unit ("64MiB", "512KiB", "1GiB").
pub(crate) mod bytes {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }

    pub fn parse(s: &str) -> Result<u64, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("size {s:?}: expected e.g. 64MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => return Err(format!("size {s:?}: unit {other:?} (B, KiB, MiB, GiB)")),
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)? {
            Size::Number(n) => Ok(n),
            Size::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl AgentConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, path, &base)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str, origin: &Path, base_dir: &Path) -> Result<AgentConfig, AgentError> {
        let err = |message: String| AgentError::Config {
            path: origin.to_path_buf(),
            message,
        };
        let mut cfg: AgentConfig = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        cfg.base_dir = base_dir.to_path_buf();
        if let Some(id) = &cfg.device_id
            && (id.is_empty() || id.contains(['/', '+', '#']))
        {
            return Err(err(format!("device_id = {id:?} is not a valid device id")));
        }
        let c = &cfg.credentials;
        if !(0.1..=0.95).contains(&c.renew_at) {
            return Err(err(format!(
                "credentials.renew_at = {} must be between 0.1 and 0.95",
                c.renew_at
            )));
        }
        c.key_algorithm
            .parse::<rampart_pki::KeyAlgorithm>()
            .map_err(|e| err(format!("credentials.key_algorithm: {e}")))?;
        if !(0.1..=0.95).contains(&cfg.tokens.renew_at) {
            return Err(err(format!(
                "tokens.renew_at = {} must be between 0.1 and 0.95",
                cfg.tokens.renew_at
            )));
        }
        if let Some(p) = &cfg.provisioning
            && (p.serial_number.is_empty() || p.serial_number.contains(['/', '+', '#']))
        {
            return Err(err(format!(
                "provisioning.serial_number = {:?}: must be non-empty, without / + #",
                p.serial_number
            )));
        }
        if let Some(r) = &cfg.release {
            for (field, v) in [
                ("release.product", &r.product),
                ("release.version", &r.version),
            ] {
                if v.trim().is_empty() || v.len() > 128 || v.contains(['@', '|']) {
                    return Err(err(format!(
                        "{field} = {v:?}: must be 1-128 characters without @ or |"
                    )));
                }
            }
        }
        if let Some(u) = &cfg.updates {
            if !u.url.starts_with("https://") {
                return Err(err(format!(
                    "updates.url = {:?}: must be https:// (the hub's device API)",
                    u.url
                )));
            }
            if u.hardware.trim().is_empty() {
                return Err(err("updates.hardware must name the hardware model".into()));
            }
            if u.security_postpone
                .is_some_and(|p| p > MAX_SECURITY_POSTPONE)
            {
                return Err(err(
                    "updates.security_postpone is longer than 7d: security fixes may be postponed, not refused".into(),
                ));
            }
            if u.check_interval < Duration::from_secs(1) {
                return Err(err("updates.check_interval must be at least 1s".into()));
            }
        }
        cfg.hub_host_port().map_err(err)?;
        if cfg.telemetry.interval < Duration::from_millis(10) {
            return Err(err("telemetry.interval must be at least 10ms".into()));
        }
        if cfg.telemetry.bms_unreachable_after == 0 {
            return Err(err(
                "telemetry.bms_unreachable_after must be at least 1".into()
            ));
        }
        if cfg.reconnect.initial_backoff.is_zero()
            || cfg.reconnect.max_backoff < cfg.reconnect.initial_backoff
        {
            return Err(err(
                "reconnect: initial_backoff must be > 0 and <= max_backoff".into(),
            ));
        }
        if cfg.hub.keep_alive < Duration::from_secs(5) {
            return Err(err("hub.keep_alive must be at least 5s".into()));
        }
        cfg.check_bms().map_err(|m| err(format!("bms: {m}")))?;
        cfg.check_outbox()
            .map_err(|m| err(format!("outbox: {m}")))?;
        crate::minimise::Shaper::new(&cfg.send, cfg.telemetry.interval)
            .map_err(|m| err(format!("[[send]]: {m}")))?;
        let st = &cfg.storage;
        if st.key_command.as_ref().is_some_and(|c| c.is_empty())
            || st.erase_command.as_ref().is_some_and(|c| c.is_empty())
        {
            return Err(err(
                "storage: key_command and erase_command, when set, name a program".into(),
            ));
        }
        if st.key_command.is_some() && st.key_file.is_some() {
            return Err(err("storage: set key_file or key_command, not both".into()));
        }
        Ok(cfg)
    }

    fn check_bms(&self) -> Result<(), String> {
        match &self.bms {
            BmsSection::Simulator(sim) => {
                if sim.cells == 0
                    || sim.cells > 512
                    || sim.capacity_ah <= 0.0
                    || sim.time_scale <= 0.0
                {
                    return Err("cells must be 1..=512, capacity_ah and time_scale > 0".into());
                }
            }
            BmsSection::Jbd(j) => {
                if j.port.is_empty() || j.baud == 0 {
                    return Err("jbd needs port = \"/dev/tty...\" and a baud rate".into());
                }
                if j.timeout < Duration::from_millis(10) || j.retries > 10 {
                    return Err("jbd: timeout at least 10ms, retries at most 10".into());
                }
            }
            BmsSection::PylontechCan(c) => {
                if c.interface.is_empty() {
                    return Err("pylontech_can needs interface = \"can0\"".into());
                }
                if !cfg!(feature = "socketcan") {
                    return Err(
                        "this agent was built without SocketCAN support; build it with \
                        `--features socketcan`, or replay a log with kind = \"candump\""
                            .into(),
                    );
                }
            }
            BmsSection::Candump(c) => {
                let path = self.resolve(&c.file);
                if !path.is_file() {
                    return Err(format!("candump file {} does not exist", path.display()));
                }
            }
            BmsSection::Modbus(m) => {
                rampart_bms::modbus::ModbusSource::new(m.clone())?;
            }
        }
        Ok(())
    }

    fn check_outbox(&self) -> Result<(), String> {
        let o = &self.outbox;
        if !((64 << 10)..=(64 << 20)).contains(&o.segment_bytes) {
            return Err("segment_bytes must be between 64KiB and 64MiB".into());
        }
        if o.max_bytes < 4 * o.segment_bytes {
            return Err("max_bytes must be at least 4 x segment_bytes".into());
        }
        if o.max_age < Duration::from_secs(1) {
            return Err("max_age must be at least 1s".into());
        }
        if !(1..=1000).contains(&o.window) {
            return Err("window must be 1..=1000".into());
        }
        if !(1..=rampart_bms::document::MAX_BATCH as u32).contains(&o.batch) {
            return Err(format!(
                "batch must be 1..={}",
                rampart_bms::document::MAX_BATCH
            ));
        }
        if o.fsync == Fsync::Interval && o.fsync_interval < Duration::from_millis(10) {
            return Err("fsync_interval must be at least 10ms".into());
        }
        Ok(())
    }

    /// The state directory, resolved.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.state_dir)
    }

    /// Where the storage key comes from.
    pub fn key_source(&self) -> crate::vault::KeySource {
        match (&self.storage.key_command, &self.storage.key_file) {
            (Some(cmd), _) => crate::vault::KeySource::Command(cmd.clone()),
            (None, Some(f)) => crate::vault::KeySource::File(self.resolve(f)),
            (None, None) => crate::vault::KeySource::File(self.state_dir().join("storage.key")),
        }
    }

    /// The outbox options.
    pub fn outbox_options(&self) -> crate::outbox::OutboxOptions {
        let o = &self.outbox;
        crate::outbox::OutboxOptions {
            dir: self.state_dir().join("outbox"),
            max_bytes: o.max_bytes,
            max_age: o.max_age,
            segment_bytes: o.segment_bytes,
            fsync: match o.fsync {
                Fsync::Always => crate::outbox::FsyncPolicy::Always,
                Fsync::Interval => crate::outbox::FsyncPolicy::Interval(o.fsync_interval),
                Fsync::Never => crate::outbox::FsyncPolicy::Never,
            },
            when_full: match o.when_full {
                WhenFull::DropOldest => crate::outbox::WhenFull::DropOldest,
                WhenFull::DropNewest => crate::outbox::WhenFull::DropNewest,
            },
        }
    }

    /// Host and port of the hub.
    pub fn hub_host_port(&self) -> Result<(String, u16), String> {
        let (host, port) =
            self.hub.address.rsplit_once(':').ok_or_else(|| {
                format!("hub.address = {:?}: expected host:port", self.hub.address)
            })?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("hub.address = {:?}: invalid port", self.hub.address))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("hub.address = {:?}: empty host", self.hub.address));
        }
        Ok((host.to_string(), port))
    }

    /// A path from the configuration, resolved against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The factory `agent.toml` that `rampart claim add --out DIR` writes: no device
    /// credentials yet, a `[provisioning]` section whose `serial_number` each device sets.
    pub fn provisioning_template(hub_address: &str) -> String {
        let device = Self::template("-", hub_address);
        let device = device
            .replace(
                "# The device id: equals the CN of device.crt and the MQTT client id.\ndevice_id = \"-\"\n",
                "# No device_id: the hub assigns it when the device provisions (the CN of device.crt).\n",
            );
        format!(
            r#"{device}
[provisioning]
# Factory-fresh: no device.crt/device.key yet. The agent makes its own key, sends a CSR with
# its serial number over the claim certificate's connection, and stores the certificate it
# gets. The claim certificate only allows that exchange.
claim_cert = "claim.crt"
claim_key = "claim.key"
# Set per device at the factory (the hub's allow-list or provisioning hook decides on it).
serial_number = "SERIAL"
"#
        )
    }

    /// The `agent.toml` that `rampart device add --out DIR` writes next to the bundle.
    pub fn template(device_id: &str, hub_address: &str) -> String {
        format!(
            r#"# Rampart agent configuration (agent.toml). See docs/configuration.md.
# Relative paths are relative to this file's directory.

# The device id: equals the CN of device.crt and the MQTT client id.
device_id = "{device_id}"
# Where the agent keeps its state: sequence counters, the encrypted outbox, the storage key,
# the session token and status.json.
state_dir = "state"

[hub]
# host:port of the hub's MQTT over TLS listener. The host must be one of the names in the
# hub's certificate (localhost and 127.0.0.1 by default; add more with `rampart init --hostname`).
address = "{hub_address}"
# CA that authenticates the hub, and this device's certificate and private key (0600).
ca = "ca-chain.crt"
cert = "device.crt"
key = "device.key"
# MQTT keep-alive.
keep_alive = "30s"

[telemetry]
# Time between BMS readings.
interval = "5s"
# Consecutive failed readings before a bms_unreachable event goes to the hub.
bms_unreachable_after = 3

# Data minimisation (CRA Annex I (2)(g)): only the fields listed in [[send]] groups leave the
# device, each group at its own rate (`every`, a whole multiple of telemetry.interval;
# omitted: each reading) and
# aggregation ("last", "mean", "min", "max", "min_max_mean"; alarms are never averaged away).
# Fields: pack (or pack.voltage_v, pack.current_a, pack.soc_pct, pack.soh_pct,
# pack.remaining_ah, pack.full_ah, pack.cycles), cells_v, temps_c, limits, alarms, warnings,
# fets, balancing, requests, source. Without any [[send]] group, every field of every reading
# is sent. A leaner example:
#   [[send]]
#   fields = ["pack.voltage_v", "pack.current_a", "pack.soc_pct", "alarms", "warnings"]
#   every = "5s"
#   [[send]]
#   fields = ["cells_v", "temps_c"]
#   every = "60s"
#   aggregate = "min_max_mean"
# This group: every field of every reading (no `every`: each reading).
[[send]]
fields = ["pack", "cells_v", "temps_c", "limits", "alarms", "warnings", "fets", "balancing", "requests", "source"]
aggregate = "last"

[outbox]
# Every document is written here (encrypted) before it is sent, and removed once the hub
# acknowledged it. Bounds: records older than max_age are dropped; at max_bytes the oldest
# records are dropped (when_full = "drop_oldest") or new ones are ("drop_newest"). Every drop
# is counted and a data_dropped event tells the hub how many and which seq numbers.
max_bytes = "64MiB"
max_age = "7d"
when_full = "drop_oldest"
segment_bytes = "1MiB"
# "always": on stable storage before it is sent; "interval": synced every fsync_interval;
# "never": left to the kernel.
fsync = "always"
fsync_interval = "1s"
# Records in flight (published, not yet acknowledged), and documents per publish when a
# backlog drains.
window = 100
batch = 50

[storage]
# The storage key seals the outbox, the private keys and the session token (ChaCha20-Poly1305).
# Default: a key file state/storage.key (0600) made at first start. With a TPM, use
# key_command = ["/usr/local/bin/unseal-rampart-key"] (prints 64 hex digits) and
# erase_command for `rampart-agent reset --factory`.
encrypt_credentials = true

[credentials]
# Renew the certificate (new key, CSR over MQTT) when this fraction of its lifetime has passed.
renew_at = 0.667
key_algorithm = "ecdsa-p256"
request_timeout = "30s"

[tokens]
# Keep a short-lived session token for the hub's HTTPS endpoints (state/token, 0600).
enabled = true
renew_at = 0.8

[reconnect]
# Exponential backoff with full jitter between connection attempts.
initial_backoff = "1s"
max_backoff = "60s"

[bms]
# The battery source: "simulator", "jbd" (port, baud, timeout, retries), "pylontech_can"
# (interface), "candump" (file, repeat) or "modbus" (transport, address or port, unit,
# [[bms.registers]]). See docs/configuration.md. "simulator": a simulated LiFePO4 pack.
kind = "simulator"
cells = 16
capacity_ah = 100.0
initial_soc_pct = 60.0
peak_current_a = 50.0
# One simulated charge/discharge cycle every 4 hours, run 60x faster than real time.
cycle_period_s = 14400.0
time_scale = 60.0
ambient_c = 25.0
temperature_sensors = 4
seed = 1
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses() {
        let t = AgentConfig::template("gw-1", "localhost:8883");
        let c = AgentConfig::parse(&t, Path::new("agent.toml"), Path::new("/etc/rampart"))
            .expect("template parses");
        assert_eq!(c.device_id.as_deref(), Some("gw-1"));
        assert_eq!(c.hub_host_port().expect("addr"), ("localhost".into(), 8883));
        assert_eq!(c.telemetry.interval, Duration::from_secs(5));
        assert_eq!(
            c.resolve(&c.hub.key),
            PathBuf::from("/etc/rampart/device.key")
        );
        assert_eq!(c.bms, BmsSection::Simulator(SimulatorConfig::default()));
    }

    #[test]
    fn provisioning_template_parses() {
        let t = AgentConfig::provisioning_template("hub:8883");
        let c = AgentConfig::parse(&t, Path::new("agent.toml"), Path::new("/f")).expect("parses");
        assert_eq!(c.device_id, None);
        assert_eq!(c.provisioning.expect("section").serial_number, "SERIAL");
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let base = AgentConfig::template("gw-1", "localhost:8883");
        let cases = [
            (
                base.replace("address = \"localhost:8883\"", "address = \"localhost\""),
                "host:port",
            ),
            (
                base.replace("interval = \"5s\"", "interval = \"1ms\""),
                "telemetry.interval",
            ),
            (
                base.replace("interval = \"5s\"", "interval = \"soon\""),
                "interval",
            ),
            (
                base.replace("kind = \"simulator\"", "kind = \"canbus9000\""),
                "canbus9000",
            ),
            (
                base.replace("device_id = \"gw-1\"", "device_id = \"a/b\""),
                "device_id",
            ),
            (base.clone() + "\nunknown = 1\n", "unknown"),
        ];
        for (text, needle) in cases {
            let e = AgentConfig::parse(&text, Path::new("agent.toml"), Path::new("."))
                .expect_err(needle);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }
}

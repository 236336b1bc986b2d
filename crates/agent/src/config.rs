//! `agent.toml`. Relative paths are relative to the directory of the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_bms::SimulatorConfig;
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
    /// Where the agent keeps its state (sequence counter).
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
    #[serde(default = "default_keep_alive", with = "humantime_serde_compat")]
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
    /// Time between readings.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// Readings held in memory while the hub is unreachable; beyond that the newest reading
    /// is dropped and counted (the durable outbox replaces this bound).
    pub queue: usize,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            interval: Duration::from_secs(5),
            queue: 1000,
        }
    }
}

/// `[reconnect]`: exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSection {
    #[serde(with = "humantime_serde_compat")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde_compat")]
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
    #[serde(with = "humantime_serde_compat")]
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
    Simulator(SimulatorConfig),
}

impl Default for BmsSection {
    fn default() -> Self {
        BmsSection::Simulator(SimulatorConfig::default())
    }
}

/// Durations as humantime strings ("5s", "250ms", "1m").
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
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
        cfg.hub_host_port().map_err(err)?;
        if cfg.telemetry.interval < Duration::from_millis(10) {
            return Err(err("telemetry.interval must be at least 10ms".into()));
        }
        if cfg.telemetry.queue == 0 {
            return Err(err("telemetry.queue must be at least 1".into()));
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
        let BmsSection::Simulator(sim) = &cfg.bms;
        if sim.cells == 0 || sim.cells > 512 || sim.capacity_ah <= 0.0 || sim.time_scale <= 0.0 {
            return Err(err(
                "bms: cells must be 1..=512, capacity_ah and time_scale > 0".into(),
            ));
        }
        Ok(cfg)
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
# Where the agent keeps its state (the telemetry sequence counter).
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
# Time between BMS readings; each is published with QoS 1 on devices/{device_id}/telemetry.
interval = "5s"
# Readings held in memory while the hub is unreachable; beyond that new readings are dropped
# and counted.
queue = 1000

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
# The battery source. "simulator": a simulated LiFePO4 pack.
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

//! `rampart.toml`: the hub's configuration.
//!
//! Every field has a default, a comment in the file `rampart init` writes, and a check at
//! start; an unknown field or an out-of-range value stops the hub with a message that names
//! the field. Relative paths are relative to the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_broker::BrokerConfig;
use rampart_pki::KeyAlgorithm;
use rampart_store::Synchronous;
use serde::Deserialize;

use crate::error::HubError;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub pki: PkiConfig,
    pub storage: StorageConfig,
    pub metrics: MetricsConfig,
}

/// `[mqtt]`: the device-facing MQTT/TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub listen: String,
    pub max_packet_size: usize,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_keep_alive_s: u16,
    pub connect_timeout_s: u64,
    pub max_session_expiry_s: u64,
    pub max_connections: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        let b = BrokerConfig::default();
        MqttConfig {
            listen: "0.0.0.0:8883".into(),
            max_packet_size: b.max_packet_size,
            receive_maximum: b.receive_maximum,
            max_inflight: b.max_inflight,
            max_queued_messages: b.max_queued_messages,
            max_keep_alive_s: b.max_keep_alive,
            connect_timeout_s: b.connect_timeout.as_secs(),
            max_session_expiry_s: b.max_session_expiry.as_secs(),
            max_connections: b.max_connections,
        }
    }
}

/// `[tls]`: the listener's certificate and the CA trusted for client certificates.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            server_cert: "pki/hub.crt".into(),
            server_key: "pki/hub.key".into(),
            client_ca: "pki/device-ca.crt".into(),
        }
    }
}

/// `[pki]`: the certificate authority that issues device certificates.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    pub root_ca_cert: PathBuf,
    pub device_ca_cert: PathBuf,
    pub device_ca_key: PathBuf,
    pub device_cert_days: u32,
    pub key_algorithm: String,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            root_ca_cert: "pki/root-ca.crt".into(),
            device_ca_cert: "pki/device-ca.crt".into(),
            device_ca_key: "pki/device-ca.key".into(),
            device_cert_days: 90,
            key_algorithm: "ecdsa-p256".into(),
        }
    }
}

/// `[storage]`: where registry and telemetry live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: String,
    pub sqlite_path: PathBuf,
    pub synchronous: String,
    pub ingest_batch: usize,
    pub ingest_queue: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "sqlite".into(),
            sqlite_path: "rampart.db".into(),
            synchronous: "full".into(),
            ingest_batch: 2000,
            ingest_queue: 65_536,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9883".into(),
        }
    }
}

/// The file `rampart init` writes: every field, its default and what it means.
pub fn template(hostnames: &[String]) -> String {
    let d = HubConfig::default();
    format!(
        r#"# Rampart hub configuration (rampart.toml).
# Every field is optional; the values below are the defaults. Relative paths are relative to
# the data directory that holds this file. See docs/configuration.md.

[mqtt]
# Address of the device-facing MQTT over TLS listener. `rampart hub --listen` overrides it.
listen = "{listen}"
# Largest MQTT packet accepted, in bytes (fixed header included). 64 to 268435455.
max_packet_size = {mps}
# Unacknowledged QoS 1/2 messages a client may send before it must wait (MQTT 5 Receive
# Maximum). 1 to 65535.
receive_maximum = {rm}
# Unacknowledged QoS 1 messages the hub sends to one client before waiting. 1 to 65535.
max_inflight = {mi}
# Messages queued per session (online or offline) before new ones are dropped and counted.
max_queued_messages = {mq}
# Longest keep-alive accepted, in seconds; MQTT 5 clients asking for more are told this value.
max_keep_alive_s = {mka}
# Seconds a client has to finish the TLS handshake and send CONNECT.
connect_timeout_s = {ct}
# Longest a disconnected persistent session is kept, in seconds.
max_session_expiry_s = {mse}
# Concurrent connections accepted; more are closed at once.
max_connections = {mc}

[tls]
# The hub's server certificate and key (SANs: {names}).
server_cert = "{sc}"
server_key = "{sk}"
# CA certificate(s) whose client certificates may connect: the device CA.
client_ca = "{cca}"

[pki]
# Root CA certificate (what devices trust to authenticate the hub). Its private key,
# pki/root-ca.key, is needed only to re-issue the hub or device CA: move it offline.
root_ca_cert = "{root}"
# The device issuing CA, used by `rampart device add`.
device_ca_cert = "{dca}"
device_ca_key = "{dcak}"
# Lifetime of device certificates, in days.
device_cert_days = {days}
# Key type for keys the hub creates: "ecdsa-p256" or "ed25519".
key_algorithm = "{alg}"

[storage]
# "sqlite" (embedded default).
backend = "{backend}"
sqlite_path = "{db}"
# "full": every commit is fsynced before a device gets its PUBACK (survives power loss).
# "normal": survives a crash of the hub, may lose the last commits on power loss.
synchronous = "{sync}"
# Most telemetry rows per transaction, and rows waiting for a commit before publishers wait.
ingest_batch = {ib}
ingest_queue = {iq}

[metrics]
# Prometheus endpoint (GET /metrics, /healthz). Loopback by default; "" disables it.
listen = "{ml}"
"#,
        listen = d.mqtt.listen,
        mps = d.mqtt.max_packet_size,
        rm = d.mqtt.receive_maximum,
        mi = d.mqtt.max_inflight,
        mq = d.mqtt.max_queued_messages,
        mka = d.mqtt.max_keep_alive_s,
        ct = d.mqtt.connect_timeout_s,
        mse = d.mqtt.max_session_expiry_s,
        mc = d.mqtt.max_connections,
        names = hostnames.join(", "),
        sc = d.tls.server_cert.display(),
        sk = d.tls.server_key.display(),
        cca = d.tls.client_ca.display(),
        root = d.pki.root_ca_cert.display(),
        dca = d.pki.device_ca_cert.display(),
        dcak = d.pki.device_ca_key.display(),
        days = d.pki.device_cert_days,
        alg = d.pki.key_algorithm,
        backend = d.storage.backend,
        db = d.storage.sqlite_path.display(),
        sync = d.storage.synchronous,
        ib = d.storage.ingest_batch,
        iq = d.storage.ingest_queue,
        ml = d.metrics.listen,
    )
}

impl HubConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<HubConfig, HubError> {
        let text = std::fs::read_to_string(path).map_err(|source| HubError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<HubConfig, HubError> {
        let cfg: HubConfig = toml::from_str(text).map_err(|e| HubError::Config {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| HubError::Config {
            path: origin.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        fn within<T: PartialOrd + std::fmt::Display>(
            field: &str,
            v: T,
            min: T,
            max: T,
        ) -> Result<(), String> {
            if v < min || v > max {
                Err(format!("{field} = {v} is out of range ({min} to {max})"))
            } else {
                Ok(())
            }
        }
        self.mqtt.listen.parse::<SocketAddr>().map_err(|e| {
            format!(
                "mqtt.listen = {:?}: {e} (expected ADDR:PORT)",
                self.mqtt.listen
            )
        })?;
        within(
            "mqtt.max_packet_size",
            self.mqtt.max_packet_size,
            64,
            268_435_455,
        )?;
        within(
            "mqtt.receive_maximum",
            self.mqtt.receive_maximum,
            1,
            u16::MAX,
        )?;
        within("mqtt.max_inflight", self.mqtt.max_inflight, 1, u16::MAX)?;
        within(
            "mqtt.max_queued_messages",
            self.mqtt.max_queued_messages,
            1,
            10_000_000,
        )?;
        within(
            "mqtt.max_keep_alive_s",
            self.mqtt.max_keep_alive_s,
            1,
            u16::MAX,
        )?;
        within(
            "mqtt.connect_timeout_s",
            self.mqtt.connect_timeout_s,
            1,
            300,
        )?;
        within(
            "mqtt.max_session_expiry_s",
            self.mqtt.max_session_expiry_s,
            0,
            u64::from(u32::MAX),
        )?;
        within(
            "mqtt.max_connections",
            self.mqtt.max_connections,
            1,
            10_000_000,
        )?;
        within("pki.device_cert_days", self.pki.device_cert_days, 1, 3650)?;
        self.key_algorithm()?;
        if self.storage.backend != "sqlite" {
            return Err(format!(
                "storage.backend = {:?}: only \"sqlite\" is available in this build",
                self.storage.backend
            ));
        }
        self.synchronous()?;
        within(
            "storage.ingest_batch",
            self.storage.ingest_batch,
            1,
            100_000,
        )?;
        within(
            "storage.ingest_queue",
            self.storage.ingest_queue,
            1,
            10_000_000,
        )?;
        if !self.metrics.listen.is_empty() {
            self.metrics.listen.parse::<SocketAddr>().map_err(|e| {
                format!(
                    "metrics.listen = {:?}: {e} (expected ADDR:PORT or \"\")",
                    self.metrics.listen
                )
            })?;
        }
        Ok(())
    }

    /// The key algorithm for keys the hub creates.
    pub fn key_algorithm(&self) -> Result<KeyAlgorithm, String> {
        self.pki
            .key_algorithm
            .parse()
            .map_err(|e| format!("pki.key_algorithm: {e}"))
    }

    /// The SQLite durability level.
    pub fn synchronous(&self) -> Result<Synchronous, String> {
        self.storage
            .synchronous
            .parse()
            .map_err(|e| format!("storage.synchronous: {e}"))
    }

    /// Broker limits from `[mqtt]`.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            max_packet_size: self.mqtt.max_packet_size,
            receive_maximum: self.mqtt.receive_maximum,
            max_inflight: self.mqtt.max_inflight,
            max_queued_messages: self.mqtt.max_queued_messages,
            max_keep_alive: self.mqtt.max_keep_alive_s,
            connect_timeout: Duration::from_secs(self.mqtt.connect_timeout_s),
            max_session_expiry: Duration::from_secs(self.mqtt.max_session_expiry_s),
            max_connections: self.mqtt.max_connections,
            ..BrokerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_the_default_configuration() {
        let text = template(&["localhost".into()]);
        let parsed = HubConfig::parse(&text, Path::new("rampart.toml")).expect("template parses");
        assert_eq!(parsed, HubConfig::default());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[mqtt]\nlisten = \"nope\"", "mqtt.listen"),
            ("[mqtt]\nmax_packet_size = 10", "mqtt.max_packet_size"),
            ("[pki]\nkey_algorithm = \"rsa\"", "pki.key_algorithm"),
            (
                "[storage]\nsynchronous = \"sometimes\"",
                "storage.synchronous",
            ),
            ("[storage]\nbackend = \"oracle\"", "storage.backend"),
            ("[mqtt]\nlisten_port = 1", "listen_port"),
            ("[mqtt\n", "rampart.toml"),
        ];
        for (text, needle) in cases {
            let e = HubConfig::parse(text, Path::new("rampart.toml")).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}

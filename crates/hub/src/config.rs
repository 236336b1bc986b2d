//! `rampart.toml`: the hub's configuration.
//!
//! Every field has a default, a comment in the file `rampart init` writes, and a check at
//! start; an unknown field or an out-of-range value stops the hub with a message that names
//! the field. Relative paths are relative to the data directory. Durations are humantime
//! strings ("90d", "24h", "30s").

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
    pub policy: PolicyConfig,
    pub provisioning: ProvisioningConfig,
    pub device_api: DeviceApiConfig,
    pub storage: StorageConfig,
    pub metrics: MetricsConfig,
    pub audit: AuditConfig,
    pub cra: CraConfig,
    pub updates: UpdatesConfig,
    pub cluster: ClusterConfig,
}

/// `[cluster]`: running as one of several hub nodes (docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server(s) the nodes meet at; "" runs a single node (the in-process bus only).
    pub nats_url: String,
    /// Subject prefix shared by the nodes of one fleet.
    pub name: String,
    /// This node's name, unique among the nodes; "" takes the host name and process id.
    pub node: String,
    /// Routed messages waiting for NATS before new ones are dropped for the other nodes.
    pub queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: String::new(),
            name: "rampart".into(),
            node: String::new(),
            queue: 65_536,
        }
    }
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

/// `[pki]`: the certificate authority, certificate lifetimes, revocation and tokens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    pub root_ca_cert: PathBuf,
    pub device_ca_cert: PathBuf,
    pub device_ca_key: PathBuf,
    pub crl_file: PathBuf,
    pub token_key: PathBuf,
    pub device_cert_lifetime: String,
    pub key_algorithm: String,
    pub renewal: bool,
    pub rotation_overlap: String,
    pub crl_validity: String,
    pub token_lifetime: String,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            root_ca_cert: "pki/root-ca.crt".into(),
            device_ca_cert: "pki/device-ca.crt".into(),
            device_ca_key: "pki/device-ca.key".into(),
            crl_file: "pki/device-ca.crl".into(),
            token_key: "pki/token.key".into(),
            device_cert_lifetime: "90d".into(),
            key_algorithm: "ecdsa-p256".into(),
            renewal: true,
            rotation_overlap: "24h".into(),
            crl_validity: "7d".into(),
            token_lifetime: "1h".into(),
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub quarantine: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            quarantine: "quarantine".into(),
        }
    }
}

/// `[provisioning]`: fleet provisioning by claim certificate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningConfig {
    pub allowlist: bool,
    pub hook_command: String,
    pub hook_url: String,
    pub hook_ca: PathBuf,
    pub hook_timeout: String,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        ProvisioningConfig {
            allowlist: true,
            hook_command: String::new(),
            hook_url: String::new(),
            hook_ca: PathBuf::new(),
            hook_timeout: "5s".into(),
        }
    }
}

/// `[device_api]`: HTTPS endpoints for devices (client certificate + token).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceApiConfig {
    pub listen: String,
}

impl Default for DeviceApiConfig {
    fn default() -> Self {
        DeviceApiConfig {
            listen: "0.0.0.0:8443".into(),
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
    /// `postgres://user[:password]@host[:port]/database` (backend `postgres`).
    pub postgres_url: String,
    /// Schema holding Rampart's tables in that database (created if missing).
    pub postgres_schema: String,
    /// Connections each hub process keeps to PostgreSQL.
    pub postgres_max_connections: u32,
    pub ingest_batch: usize,
    /// Most rows in a transaction that holds only QoS 0 telemetry (nobody's PUBACK waits);
    /// `ingest_batch` if that is larger.
    pub qos0_ingest_batch: usize,
    pub ingest_queue: usize,
    /// How long a commit holding only QoS 0 telemetry may wait for more rows, in ms.
    pub qos0_commit_delay_ms: u64,
    /// How long a commit holding QoS 1 telemetry may wait for more rows, in ms, when the
    /// commit before it answered more than one PUBACK.
    pub qos1_commit_delay_ms: u64,
    /// SQLite: the telemetry writer thread's nice value (0 to 19).
    pub telemetry_writer_nice: i32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "sqlite".into(),
            sqlite_path: "rampart.db".into(),
            synchronous: "full".into(),
            postgres_url: String::new(),
            postgres_schema: "rampart".into(),
            postgres_max_connections: 16,
            ingest_batch: 2000,
            qos0_ingest_batch: 32_000,
            ingest_queue: 65_536,
            qos0_commit_delay_ms: 200,
            qos1_commit_delay_ms: 5,
            telemetry_writer_nice: 19,
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

/// `[audit]`: the identity audit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub interval: String,
    pub certificate_expiry_warning: String,
    pub max_certificate_age: String,
    pub ca_expiry_warning: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            interval: "24h".into(),
            certificate_expiry_warning: "14d".into(),
            max_certificate_age: "365d".into(),
            ca_expiry_warning: "90d".into(),
        }
    }
}

/// `[cra]`: the compliance engine's scheduled work.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CraConfig {
    pub deadline_check_interval: String,
    pub deadline_warning: String,
}

impl Default for CraConfig {
    fn default() -> Self {
        CraConfig {
            deadline_check_interval: "5m".into(),
            deadline_warning: "6h".into(),
        }
    }
}

/// `[updates]`: the TUF update repository the hub serves to devices.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdatesConfig {
    pub repository: PathBuf,
    pub root_expiry: String,
    pub targets_expiry: String,
    pub snapshot_expiry: String,
    pub timestamp_expiry: String,
    pub refresh_interval: String,
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        UpdatesConfig {
            repository: "updates".into(),
            root_expiry: "365d".into(),
            targets_expiry: "90d".into(),
            snapshot_expiry: "7d".into(),
            timestamp_expiry: "1d".into(),
            refresh_interval: "1m".into(),
        }
    }
}

/// The file `rampart init` writes: every field, its default and what it means.
pub fn template(hostnames: &[String]) -> String {
    let d = HubConfig::default();
    format!(
        r#"# Rampart hub configuration (rampart.toml).
# Every field is optional; the values below are the defaults. Relative paths are relative to
# the data directory that holds this file. Durations: "30s", "24h", "90d". See
# docs/configuration.md.

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
# CA certificate whose client certificates may connect: the device CA. CAs registered with
# `rampart ca register` are trusted in addition.
client_ca = "{cca}"

[pki]
# Root CA certificate (what devices trust to authenticate the hub). Its private key,
# pki/root-ca.key, is needed only to re-issue the hub or device CA: move it offline.
root_ca_cert = "{root}"
# The device issuing CA, used by `rampart device add`, provisioning and renewals.
device_ca_cert = "{dca}"
device_ca_key = "{dcak}"
# The device CA's revocation list, rewritten on every revocation (`rampart ca crl`).
crl_file = "{crl}"
# The key that signs device session tokens (created on first start if missing).
token_key = "{tk}"
# Lifetime of device certificates.
device_cert_lifetime = "{life}"
# Key type for keys the hub creates: "ecdsa-p256" or "ed25519".
key_algorithm = "{alg}"
# Whether devices may renew their certificate over MQTT (by CSR, with a new key).
renewal = {renewal}
# After a renewal the old certificate stays valid this long, then it is retired.
rotation_overlap = "{overlap}"
# Validity of each CRL; the hub re-signs it well before it expires.
crl_validity = "{crlv}"
# Lifetime of device session tokens (at most 1h).
token_lifetime = "{tl}"

[policy]
# The policy a quarantined device gets instead of its own.
quarantine = "{quarantine}"

[provisioning]
# Provisioning by claim certificate: a serial number must be on the allow-list
# (`rampart provision allow SERIAL`) or be allowed by a hook.
allowlist = {allowlist}
# A command run with the request as JSON on stdin; it prints {{"allow": true|false, ...}}.
hook_command = "{hookc}"
# An http(s) URL the request is POSTed to as JSON; it answers the same JSON.
hook_url = "{hooku}"
# CA bundle (PEM) that authenticates an https hook_url.
hook_ca = "{hookca}"
hook_timeout = "{hookt}"

[device_api]
# HTTPS endpoints for devices (client certificate and a session token required); "" disables.
listen = "{api}"

[storage]
# "sqlite" (embedded default, one hub process) or "postgres" (large fleets, several hub nodes).
backend = "{backend}"
sqlite_path = "{db}"
# SQLite only. "full": every commit is fsynced before a device gets its PUBACK (survives power
# loss). "normal": survives a crash of the hub, may lose the last commits on power loss.
synchronous = "{sync}"
# PostgreSQL only: postgres://user[:password]@host[:port]/database. Keep this file private if
# the URL holds a password. Commits wait for the server's WAL flush (synchronous_commit = on;
# the hub refuses a server where it is off).
postgres_url = "{pgurl}"
# Schema for Rampart's tables (created if missing); hub nodes sharing a registry use the same.
postgres_schema = "{pgschema}"
postgres_max_connections = {pgmax}
# Most telemetry rows per transaction, and rows waiting for a commit before publishers wait.
ingest_batch = {ib}
ingest_queue = {iq}
# Telemetry sent at QoS 0 gets no PUBACK: a commit holding only such rows waits up to this
# many ms for more (fewer commits, less CPU per row). A crash loses at most this much more
# QoS 0 telemetry than the rows in flight. 0 commits at once.
qos0_commit_delay_ms = {qd}
# A commit holding QoS 1 telemetry waits up to this many ms for more rows (its PUBACKs wait
# that much longer) when the commit before it answered more than one PUBACK: commits and
# PUBACK writes are shared by more messages, less CPU per message. A lone device's PUBACK is
# not held back. 0 commits at once.
qos1_commit_delay_ms = {q1d}
# Most rows in a commit holding only QoS 0 telemetry (ingest_batch if that is larger): no
# PUBACK waits on it, and larger commits cost less CPU per row.
qos0_ingest_batch = {qb}
# SQLite, Linux: the nice value (0-19) of the threads committing telemetry and syncing it
# to disk. Above 0, routing messages goes first when they share a core, so a burst of commit
# work does not delay deliveries; 0 treats them alike.
telemetry_writer_nice = {wn}

[metrics]
# Prometheus endpoint (GET /metrics, /healthz). Loopback by default; "" disables it.
listen = "{ml}"

[audit]
# How often the hub runs the identity audit (`rampart audit` runs it on demand). The first
# run comes one interval after the start, at most 60 s, after the reconnections.
interval = "{ai}"
# Warn about device certificates expiring within this time, or older than the maximum age.
certificate_expiry_warning = "{cew}"
max_certificate_age = "{mca}"
# Warn about CA certificates expiring within this time.
ca_expiry_warning = "{caw}"

[cra]
# How often the hub checks the deadlines of open Article 14 reports (`rampart cra report
# check` runs it on demand). Each stage due soon or overdue is logged once, recorded in the
# report's history and counted in rampart_cra_deadlines_due_soon / _overdue.
deadline_check_interval = "{cdi}"
# A stage not yet submitted counts as due soon this long before its deadline.
deadline_warning = "{cdw}"

[updates]
# The release workspace: online keys, staged roles and the published TUF repository that
# the device API serves (`rampart release ...`, docs/updates.md).
repository = "{ur}"
# How long each role's metadata is valid after signing. Root, targets and the security
# role are signed offline: re-sign them (`rampart release renew`) before they expire.
root_expiry = "{ure}"
targets_expiry = "{ute}"
# Snapshot and timestamp are signed by the hub's online keys and re-signed automatically
# when half of their validity has passed; devices refuse expired ones (freeze attacks).
snapshot_expiry = "{use}"
timestamp_expiry = "{utse}"
# How often the hub checks whether snapshot or timestamp needs re-signing.
refresh_interval = "{uri}"

[cluster]
# Several hub nodes behind a TCP load balancer (docs/cluster.md): each node sets the NATS
# server(s) they meet at, e.g. "nats://nats.internal:4222"; "" runs this hub alone. Nodes
# must share storage (backend = "postgres", same postgres_url and postgres_schema) and the
# pki/ directory.
nats_url = "{cnu}"
# Subject prefix of this fleet's nodes (letters, digits, - and _).
name = "{cname}"
# This node's name, unique among the nodes; "" takes the host name and process id.
node = "{cnode}"
# Routed messages waiting for NATS before new ones are dropped for the other nodes.
queue = {cq}
"#,
        cnu = d.cluster.nats_url,
        cname = d.cluster.name,
        cnode = d.cluster.node,
        cq = d.cluster.queue,
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
        crl = d.pki.crl_file.display(),
        tk = d.pki.token_key.display(),
        life = d.pki.device_cert_lifetime,
        alg = d.pki.key_algorithm,
        renewal = d.pki.renewal,
        overlap = d.pki.rotation_overlap,
        crlv = d.pki.crl_validity,
        tl = d.pki.token_lifetime,
        quarantine = d.policy.quarantine,
        allowlist = d.provisioning.allowlist,
        hookc = d.provisioning.hook_command,
        hooku = d.provisioning.hook_url,
        hookca = d.provisioning.hook_ca.display(),
        hookt = d.provisioning.hook_timeout,
        api = d.device_api.listen,
        backend = d.storage.backend,
        db = d.storage.sqlite_path.display(),
        sync = d.storage.synchronous,
        pgurl = d.storage.postgres_url,
        pgschema = d.storage.postgres_schema,
        pgmax = d.storage.postgres_max_connections,
        ib = d.storage.ingest_batch,
        qd = d.storage.qos0_commit_delay_ms,
        q1d = d.storage.qos1_commit_delay_ms,
        qb = d.storage.qos0_ingest_batch,
        wn = d.storage.telemetry_writer_nice,
        iq = d.storage.ingest_queue,
        ml = d.metrics.listen,
        ai = d.audit.interval,
        cew = d.audit.certificate_expiry_warning,
        mca = d.audit.max_certificate_age,
        caw = d.audit.ca_expiry_warning,
        cdi = d.cra.deadline_check_interval,
        cdw = d.cra.deadline_warning,
        ur = d.updates.repository.display(),
        ure = d.updates.root_expiry,
        ute = d.updates.targets_expiry,
        use = d.updates.snapshot_expiry,
        utse = d.updates.timestamp_expiry,
        uri = d.updates.refresh_interval,
    )
}

/// Parses a humantime duration from a configuration field.
fn duration(field: &str, value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("{field} = {value:?}: {e} (e.g. \"30s\", \"24h\", \"90d\")"))
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
        fn addr(field: &str, v: &str, optional: bool) -> Result<(), String> {
            if optional && v.is_empty() {
                return Ok(());
            }
            v.parse::<SocketAddr>().map(|_| ()).map_err(|e| {
                format!(
                    "{field} = {v:?}: {e} (expected ADDR:PORT{})",
                    if optional { " or \"\"" } else { "" }
                )
            })
        }
        addr("mqtt.listen", &self.mqtt.listen, false)?;
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
        let life = self.device_cert_lifetime()?;
        if life < Duration::from_secs(60) || life > Duration::from_secs(10 * 365 * 86_400) {
            return Err(format!(
                "pki.device_cert_lifetime = {:?} is out of range (1m to 3650d)",
                self.pki.device_cert_lifetime
            ));
        }
        self.key_algorithm()?;
        self.rotation_overlap()?;
        let crl = self.crl_validity()?;
        if crl < Duration::from_secs(3600) {
            return Err("pki.crl_validity must be at least 1h".into());
        }
        let tl = self.token_lifetime()?;
        if tl.is_zero() || tl > Duration::from_secs(3600) {
            return Err(format!(
                "pki.token_lifetime = {:?} is out of range (1s to 1h)",
                self.pki.token_lifetime
            ));
        }
        if self.policy.quarantine.is_empty() {
            return Err("policy.quarantine must name a policy".into());
        }
        self.hook_timeout()?;
        let url = &self.provisioning.hook_url;
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(format!(
                "provisioning.hook_url = {url:?}: expected an http:// or https:// URL"
            ));
        }
        if self.provisioning.hook_url.starts_with("https://")
            && self.provisioning.hook_ca.as_os_str().is_empty()
        {
            return Err("provisioning.hook_ca is required for an https:// hook_url".into());
        }
        addr("device_api.listen", &self.device_api.listen, true)?;
        match self.storage.backend.as_str() {
            "sqlite" => {}
            "postgres" => {
                let url = &self.storage.postgres_url;
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(format!(
                        "storage.postgres_url = {url:?}: backend \"postgres\" needs a postgres://user@host:port/database URL"
                    ));
                }
                rampart_store::check_schema(&self.storage.postgres_schema)
                    .map_err(|e| format!("storage.postgres_schema: {e}"))?;
                within(
                    "storage.postgres_max_connections",
                    self.storage.postgres_max_connections as usize,
                    1,
                    1000,
                )?;
            }
            other => {
                return Err(format!(
                    "storage.backend = {other:?}: expected \"sqlite\" or \"postgres\""
                ));
            }
        }
        self.synchronous()?;
        within(
            "storage.ingest_batch",
            self.storage.ingest_batch,
            1,
            100_000,
        )?;
        within(
            "storage.qos0_ingest_batch",
            self.storage.qos0_ingest_batch,
            1,
            100_000,
        )?;
        within(
            "storage.ingest_queue",
            self.storage.ingest_queue,
            1,
            10_000_000,
        )?;
        within(
            "storage.qos0_commit_delay_ms",
            self.storage.qos0_commit_delay_ms,
            0,
            1000,
        )?;
        within(
            "storage.qos1_commit_delay_ms",
            self.storage.qos1_commit_delay_ms,
            0,
            100,
        )?;
        within(
            "storage.telemetry_writer_nice",
            self.storage.telemetry_writer_nice,
            0,
            19,
        )?;
        addr("metrics.listen", &self.metrics.listen, true)?;
        if !self.cluster.nats_url.is_empty() {
            let url = &self.cluster.nats_url;
            if !url.split(',').all(|u| {
                let u = u.trim();
                u.starts_with("nats://") || u.starts_with("tls://")
            }) {
                return Err(format!(
                    "cluster.nats_url = {url:?}: expected nats://host:port (or tls://), several separated by commas"
                ));
            }
            if self.storage.backend != "postgres" {
                return Err("cluster.nats_url is set but storage.backend is not \"postgres\": the nodes of a cluster share one registry in PostgreSQL".into());
            }
            rampart_cluster::check_name(&self.cluster.name)
                .map_err(|e| format!("cluster.name = {:?}: {e}", self.cluster.name))?;
            if !self.cluster.node.is_empty() {
                rampart_cluster::check_name(&self.cluster.node)
                    .map_err(|e| format!("cluster.node = {:?}: {e}", self.cluster.node))?;
            }
            within("cluster.queue", self.cluster.queue, 1, 10_000_000)?;
        }
        let interval = self.audit_interval()?;
        if interval < Duration::from_secs(1) {
            return Err("audit.interval must be at least 1s".into());
        }
        self.audit_thresholds()?;
        let (check, _) = self.cra_deadlines()?;
        if check < Duration::from_secs(1) {
            return Err("cra.deadline_check_interval must be at least 1s".into());
        }
        let e = self.update_expiries()?;
        let refresh = self.updates_refresh_interval()?;
        if refresh < Duration::from_secs(1) {
            return Err("updates.refresh_interval must be at least 1s".into());
        }
        if time::Duration::try_from(refresh * 2).map_or(true, |r| e.timestamp <= r) {
            return Err(format!(
                "updates.timestamp_expiry = {:?} must be more than twice updates.refresh_interval = {:?}, or timestamps could expire before they are re-signed",
                self.updates.timestamp_expiry, self.updates.refresh_interval
            ));
        }
        if e.snapshot < e.timestamp || e.targets < e.snapshot || e.root < e.targets {
            return Err("updates: expiries must grow from timestamp to snapshot to targets to root (online metadata is re-signed more often than offline)".into());
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

    pub fn device_cert_lifetime(&self) -> Result<Duration, String> {
        duration("pki.device_cert_lifetime", &self.pki.device_cert_lifetime)
    }

    pub fn rotation_overlap(&self) -> Result<Duration, String> {
        duration("pki.rotation_overlap", &self.pki.rotation_overlap)
    }

    pub fn crl_validity(&self) -> Result<Duration, String> {
        duration("pki.crl_validity", &self.pki.crl_validity)
    }

    pub fn token_lifetime(&self) -> Result<Duration, String> {
        duration("pki.token_lifetime", &self.pki.token_lifetime)
    }

    pub fn hook_timeout(&self) -> Result<Duration, String> {
        duration("provisioning.hook_timeout", &self.provisioning.hook_timeout)
    }

    /// How often the deadlines are checked, and how early a stage counts as due soon.
    pub fn cra_deadlines(&self) -> Result<(Duration, Duration), String> {
        Ok((
            duration(
                "cra.deadline_check_interval",
                &self.cra.deadline_check_interval,
            )?,
            duration("cra.deadline_warning", &self.cra.deadline_warning)?,
        ))
    }

    /// Validity of each update metadata role.
    pub fn update_expiries(&self) -> Result<rampart_update::release::Expiries, String> {
        let d = |field: &str, value: &str| -> Result<time::Duration, String> {
            let v = duration(field, value)?;
            if v < Duration::from_secs(60) {
                return Err(format!("{field} = {value:?} is shorter than 1m"));
            }
            time::Duration::try_from(v).map_err(|e| format!("{field} = {value:?}: {e}"))
        };
        let u = &self.updates;
        Ok(rampart_update::release::Expiries {
            root: d("updates.root_expiry", &u.root_expiry)?,
            targets: d("updates.targets_expiry", &u.targets_expiry)?,
            snapshot: d("updates.snapshot_expiry", &u.snapshot_expiry)?,
            timestamp: d("updates.timestamp_expiry", &u.timestamp_expiry)?,
        })
    }

    pub fn updates_refresh_interval(&self) -> Result<Duration, String> {
        duration("updates.refresh_interval", &self.updates.refresh_interval)
    }

    pub fn audit_interval(&self) -> Result<Duration, String> {
        duration("audit.interval", &self.audit.interval)
    }

    /// (certificate expiry warning, maximum certificate age, CA expiry warning).
    pub fn audit_thresholds(&self) -> Result<(Duration, Duration, Duration), String> {
        Ok((
            duration(
                "audit.certificate_expiry_warning",
                &self.audit.certificate_expiry_warning,
            )?,
            duration("audit.max_certificate_age", &self.audit.max_certificate_age)?,
            duration("audit.ca_expiry_warning", &self.audit.ca_expiry_warning)?,
        ))
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
                "[pki]\ndevice_cert_lifetime = \"soon\"",
                "pki.device_cert_lifetime",
            ),
            (
                "[pki]\ndevice_cert_lifetime = \"10s\"",
                "pki.device_cert_lifetime",
            ),
            ("[pki]\ntoken_lifetime = \"2h\"", "pki.token_lifetime"),
            (
                "[provisioning]\nhook_url = \"ftp://x\"",
                "provisioning.hook_url",
            ),
            ("[device_api]\nlisten = \"x\"", "device_api.listen"),
            (
                "[storage]\nsynchronous = \"sometimes\"",
                "storage.synchronous",
            ),
            ("[storage]\nbackend = \"oracle\"", "storage.backend"),
            (
                "[storage]\nqos0_ingest_batch = 0",
                "storage.qos0_ingest_batch = 0 is out of range",
            ),
            (
                "[storage]\nqos0_commit_delay_ms = 5000",
                "storage.qos0_commit_delay_ms = 5000 is out of range",
            ),
            (
                "[storage]\nqos1_commit_delay_ms = 250",
                "storage.qos1_commit_delay_ms = 250 is out of range",
            ),
            (
                "[storage]\ntelemetry_writer_nice = -5",
                "storage.telemetry_writer_nice = -5 is out of range",
            ),
            ("[storage]\nbackend = \"postgres\"", "storage.postgres_url"),
            (
                "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"",
                "storage.backend",
            ),
            ("[cluster]\nnats_url = \"http://x\"", "cluster.nats_url"),
            (
                "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://h/db\"\n[cluster]\nnats_url = \"nats://h:4222\"\nnode = \"a.b\"",
                "cluster.node",
            ),
            (
                "[storage]\nbackend = \"postgres\"\npostgres_url = \"mysql://x\"",
                "storage.postgres_url",
            ),
            (
                "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://h/db\"\npostgres_schema = \"Bad-Name\"",
                "storage.postgres_schema",
            ),
            (
                "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://h/db\"\npostgres_max_connections = 0",
                "storage.postgres_max_connections",
            ),
            ("[mqtt]\nlisten_port = 1", "listen_port"),
            ("[mqtt\n", "rampart.toml"),
            (
                "[updates]\ntimestamp_expiry = \"90s\"",
                "updates.timestamp_expiry",
            ),
            ("[updates]\nsnapshot_expiry = \"1h\"", "expiries must grow"),
        ];
        for (text, needle) in cases {
            let e = HubConfig::parse(text, Path::new("rampart.toml")).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}

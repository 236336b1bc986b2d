//! Local status: `STATE/status.json`, rewritten by the running agent every second and read by
//! `rampart-agent status`. A file, not a port: the agent never listens on the network, and a
//! local tool (or a technician with a shell) reads it with the same permissions as the state
//! directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::AgentError;
use crate::outbox::OutboxStatus;
use crate::source::BmsState;

/// The connection to the hub.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConnectionStatus {
    /// "starting", "provisioning", "connecting", "connected", "stopped".
    pub state: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub since: Option<OffsetDateTime>,
    pub connects: u64,
    pub failures: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The BMS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BmsStatus {
    pub source: String,
    pub state: BmsState,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_reading: Option<OffsetDateTime>,
    pub readings: u64,
    pub failed_reads: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The device certificate in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// Everything `rampart-agent status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub agent_version: String,
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub device_id: Option<String>,
    pub hub: String,
    pub connection: ConnectionStatus,
    pub bms: BmsStatus,
    pub outbox: OutboxStatus,
    pub next_telemetry_seq: u64,
    pub next_event_seq: u64,
    pub certificate: Option<CertificateStatus>,
}

/// Shared by the agent's tasks; written to disk by [`Board::write`].
#[derive(Debug)]
pub struct Board {
    path: PathBuf,
    status: Mutex<Status>,
}

impl Board {
    pub fn new(state_dir: &Path, hub: &str, source: &str) -> Board {
        let now = OffsetDateTime::now_utc();
        Board {
            path: state_dir.join("status.json"),
            status: Mutex::new(Status {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                started_at: now,
                updated_at: now,
                device_id: None,
                hub: hub.into(),
                connection: ConnectionStatus {
                    state: "starting".into(),
                    since: Some(now),
                    ..Default::default()
                },
                bms: BmsStatus {
                    source: source.into(),
                    state: BmsState::Starting,
                    last_reading: None,
                    readings: 0,
                    failed_reads: 0,
                    last_error: None,
                },
                outbox: OutboxStatus::default(),
                next_telemetry_seq: 0,
                next_event_seq: 0,
                certificate: None,
            }),
        }
    }

    /// Changes the status under the lock.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        // A poisoned lock only means another task panicked while updating a plain struct;
        // the data is still usable for a status display.
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }

    /// Sets the connection state (keeps `since` when it does not change).
    pub fn connection(&self, state: &str, error: Option<String>) {
        self.update(|s| {
            if s.connection.state != state {
                s.connection.state = state.into();
                s.connection.since = Some(OffsetDateTime::now_utc());
            }
            if state == "connected" {
                s.connection.connects += 1;
            }
            if let Some(e) = error {
                s.connection.failures += 1;
                s.connection.last_error = Some(e);
            }
        });
    }

    pub fn snapshot(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes status.json atomically (a reader never sees half a file). Not synced: it is
    /// rewritten every second and only describes the present, so a power cut losing the last
    /// version costs nothing, while a sync per second would cost flash wear and CPU.
    pub fn write(&self) -> Result<(), AgentError> {
        let mut s = self.snapshot();
        s.updated_at = OffsetDateTime::now_utc();
        let json = serde_json::to_vec_pretty(&s).map_err(|e| AgentError::State {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o640)
                .open(&tmp)?;
            f.write_all(&json)?;
            drop(f);
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|source| AgentError::State {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads status.json of an agent's state directory.
pub fn read(state_dir: &Path) -> Result<Status, AgentError> {
    let path = state_dir.join("status.json");
    let text = std::fs::read_to_string(&path).map_err(|source| AgentError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| AgentError::State {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// Whether the process that wrote `s` still runs and updated it recently.
pub fn is_running(s: &Status) -> bool {
    let fresh = OffsetDateTime::now_utc() - s.updated_at < time::Duration::seconds(5);
    fresh && Path::new(&format!("/proc/{}", s.pid)).exists()
}

fn ago(t: OffsetDateTime) -> String {
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64;
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(secs))
    )
}

fn size(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// The human-readable view.
pub fn render(s: &Status) -> String {
    let running = is_running(s);
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| {
        out.push_str(&format!("{k:<12}{v}\n"));
    };
    line(
        &mut out,
        "agent",
        if running {
            format!(
                "running (pid {}, version {}, started {})",
                s.pid,
                s.agent_version,
                ago(s.started_at)
            )
        } else {
            format!(
                "NOT RUNNING (last status from pid {}, {})",
                s.pid,
                ago(s.updated_at)
            )
        },
    );
    let c = &s.connection;
    line(
        &mut out,
        "hub",
        format!(
            "{} {} (since {}; {} connects, {} failures{})",
            s.hub,
            c.state,
            c.since.map(ago).unwrap_or_else(|| "-".into()),
            c.connects,
            c.failures,
            c.last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        ),
    );
    line(
        &mut out,
        "device",
        s.device_id
            .clone()
            .unwrap_or_else(|| "(not provisioned yet)".into()),
    );
    let b = &s.bms;
    line(
        &mut out,
        "bms",
        format!(
            "{}: {:?}, last reading {}, {} readings{}",
            b.source,
            b.state,
            b.last_reading.map(ago).unwrap_or_else(|| "never".into()),
            b.readings,
            b.last_error
                .as_ref()
                .filter(|_| b.state != BmsState::Ok)
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        )
        .to_lowercase(),
    );
    let o = &s.outbox;
    line(
        &mut out,
        "outbox",
        format!(
            "{} waiting ({}), oldest {}; {} appended, {} acknowledged; dropped: {} at the size bound, {} at the age bound, {} damaged",
            o.depth_records,
            size(o.depth_bytes),
            o.oldest.map(ago).unwrap_or_else(|| "-".into()),
            o.appended,
            o.acknowledged,
            o.dropped_max_bytes,
            o.dropped_max_age,
            o.dropped_corrupt
        ),
    );
    line(
        &mut out,
        "sequence",
        format!(
            "next telemetry {}, next event {}",
            s.next_telemetry_seq, s.next_event_seq
        ),
    );
    line(
        &mut out,
        "certificate",
        match &s.certificate {
            Some(c) => {
                let left = (c.not_after - OffsetDateTime::now_utc()).whole_days();
                format!(
                    "serial {}, expires {} ({left} days)",
                    c.serial,
                    c.not_after.date()
                )
            }
            None => "-".into(),
        },
    );
    out
}

/// Path of status.json in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_written_read_and_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let b = Board::new(dir.path(), "hub:8883", "jbd /dev/ttyUSB0");
        b.connection("connected", None);
        b.update(|s| {
            s.device_id = Some("gw-1".into());
            s.outbox.depth_records = 12;
        });
        b.write().unwrap();
        let s = read(dir.path()).unwrap();
        assert_eq!(s.device_id.as_deref(), Some("gw-1"));
        assert_eq!(s.connection.connects, 1);
        assert!(is_running(&s));
        let text = render(&s);
        assert!(text.contains("running (pid"), "{text}");
        assert!(text.contains("hub:8883 connected"), "{text}");
        assert!(text.contains("12 waiting"), "{text}");
        // A status left by a process that is gone.
        let mut old = s.clone();
        old.updated_at -= time::Duration::minutes(5);
        assert!(!is_running(&old));
        assert!(render(&old).contains("NOT RUNNING"));
    }
}

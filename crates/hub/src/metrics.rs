//! What the operator can watch: a snapshot of the hub's counters (broker, storage, device
//! API, audit, device events), rendered in the Prometheus
//! text exposition format on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rampart_broker::{Metrics, RefusalReason};
use rampart_store::IngestStats;

use crate::audit::{Finding, Severity};
use crate::device_api::ApiMetrics;

/// Findings of the last scheduled audit, by severity (low, medium, high, critical).
#[derive(Debug, Default)]
pub struct AuditCounts([std::sync::atomic::AtomicU64; 4]);

impl AuditCounts {
    pub(crate) fn set(&self, findings: &[Finding]) {
        for (i, sev) in [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .iter()
        .enumerate()
        {
            let n = findings.iter().filter(|f| f.severity == *sev).count() as u64;
            self.0[i].store(n, Ordering::Relaxed);
        }
    }
}
/// Article 14 reporting deadlines of open reports, as of the hub's last scheduled check:
/// what an alert rule watches (`rampart_cra_deadlines_overdue > 0`).
#[derive(Debug, Default)]
pub struct DeadlineCounts {
    due_soon: std::sync::atomic::AtomicU64,
    overdue: std::sync::atomic::AtomicU64,
}

impl DeadlineCounts {
    pub(crate) fn set(&self, warnings: &[crate::compliance::DeadlineWarning]) {
        let overdue = warnings
            .iter()
            .filter(|w| w.state == rampart_compliance::report::State::Overdue)
            .count() as u64;
        self.overdue.store(overdue, Ordering::Relaxed);
        self.due_soon
            .store(warnings.len() as u64 - overdue, Ordering::Relaxed);
    }
}

/// Events devices reported, by kind, and the records they said their outbox dropped.
#[derive(Debug, Default)]
pub struct EventCounters {
    bms_unreachable: std::sync::atomic::AtomicU64,
    bms_recovered: std::sync::atomic::AtomicU64,
    data_dropped: std::sync::atomic::AtomicU64,
    dropped_records: std::sync::atomic::AtomicU64,
    update_failed: std::sync::atomic::AtomicU64,
    update_rolled_back: std::sync::atomic::AtomicU64,
    update_succeeded: std::sync::atomic::AtomicU64,
}

impl EventCounters {
    pub(crate) fn count(&self, event: &rampart_bms::Event) {
        let c = match event {
            rampart_bms::Event::BmsUnreachable { .. } => &self.bms_unreachable,
            rampart_bms::Event::BmsRecovered { .. } => &self.bms_recovered,
            rampart_bms::Event::DataDropped { records, .. } => {
                self.dropped_records.fetch_add(*records, Ordering::Relaxed);
                &self.data_dropped
            }
            rampart_bms::Event::Update { stage, .. } => match stage {
                rampart_bms::UpdateStage::Failed => &self.update_failed,
                rampart_bms::UpdateStage::RolledBack => &self.update_rolled_back,
                rampart_bms::UpdateStage::Succeeded => &self.update_succeeded,
                _ => return,
            },
            rampart_bms::Event::UpdateAvailable { .. } => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

use serde::{Deserialize, Serialize};

/// Counter and gauge values at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetricsSnapshot {
    /// Metric name → value (gauges may be negative only transiently; stored as i64).
    pub values: BTreeMap<String, i64>,
    /// Refusal reason → count.
    pub refusals: BTreeMap<String, u64>,
}

struct Def {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const DEFS: [Def; METRIC_COUNT] = [
    Def {
        name: "rampart_connections_accepted_total",
        kind: "counter",
        help: "TCP connections accepted.",
    },
    Def {
        name: "rampart_connections_active",
        kind: "gauge",
        help: "Connections open now (any stage).",
    },
    Def {
        name: "rampart_tls_handshakes_total",
        kind: "counter",
        help: "Completed mutual-TLS handshakes.",
    },
    Def {
        name: "rampart_connects_accepted_total",
        kind: "counter",
        help: "MQTT CONNECTs accepted.",
    },
    Def {
        name: "rampart_sessions",
        kind: "gauge",
        help: "MQTT sessions (connected or persistent).",
    },
    Def {
        name: "rampart_subscriptions",
        kind: "gauge",
        help: "Subscriptions.",
    },
    Def {
        name: "rampart_retained_messages",
        kind: "gauge",
        help: "Retained messages.",
    },
    Def {
        name: "rampart_messages_received_total",
        kind: "counter",
        help: "PUBLISH packets received.",
    },
    Def {
        name: "rampart_messages_delivered_total",
        kind: "counter",
        help: "PUBLISH packets sent to subscribers.",
    },
    Def {
        name: "rampart_bytes_received_total",
        kind: "counter",
        help: "Bytes received (decrypted MQTT).",
    },
    Def {
        name: "rampart_bytes_sent_total",
        kind: "counter",
        help: "Bytes sent (MQTT before encryption).",
    },
    Def {
        name: "rampart_dropped_queue_full_total",
        kind: "counter",
        help: "Messages dropped because a subscriber queue stayed full.",
    },
    Def {
        name: "rampart_dropped_expired_total",
        kind: "counter",
        help: "Messages dropped because their expiry passed.",
    },
    Def {
        name: "rampart_dropped_too_large_for_client_total",
        kind: "counter",
        help: "Messages not sent because they exceed the client's maximum packet size.",
    },
    Def {
        name: "rampart_telemetry_rows_submitted_total",
        kind: "counter",
        help: "Telemetry rows queued for storage.",
    },
    Def {
        name: "rampart_telemetry_rows_committed_total",
        kind: "counter",
        help: "Telemetry rows in committed transactions.",
    },
    Def {
        name: "rampart_telemetry_rows_inserted_total",
        kind: "counter",
        help: "Telemetry rows that were new (not resends).",
    },
    Def {
        name: "rampart_telemetry_batches_total",
        kind: "counter",
        help: "Telemetry transactions committed.",
    },
    Def {
        name: "rampart_telemetry_rows_failed_total",
        kind: "counter",
        help: "Telemetry rows whose transaction failed or could not be synced to disk (not acknowledged).",
    },
    Def {
        name: "rampart_telemetry_upkeep_failures_total",
        kind: "counter",
        help: "Failed steps of storage upkeep (SQLite: moving telemetry from its log into its table); the readings stay stored, and the step is retried with the next commit.",
    },
    Def {
        name: "rampart_device_api_requests_total",
        kind: "counter",
        help: "Device API requests with a registered client certificate.",
    },
    Def {
        name: "rampart_device_api_tls_refused_total",
        kind: "counter",
        help: "Device API connections refused in TLS (no or untrusted certificate).",
    },
    Def {
        name: "rampart_device_api_certificate_refused_total",
        kind: "counter",
        help: "Device API connections whose certificate the registry refused.",
    },
    Def {
        name: "rampart_device_api_token_missing_total",
        kind: "counter",
        help: "Device API requests without a token.",
    },
    Def {
        name: "rampart_device_api_token_expired_total",
        kind: "counter",
        help: "Device API requests with an expired token.",
    },
    Def {
        name: "rampart_device_api_token_forged_total",
        kind: "counter",
        help: "Device API requests with a token whose signature does not verify.",
    },
    Def {
        name: "rampart_device_api_token_wrong_device_total",
        kind: "counter",
        help: "Device API requests with a token of another device or certificate.",
    },
    Def {
        name: "rampart_device_api_token_invalid_total",
        kind: "counter",
        help: "Device API requests with a malformed token.",
    },
    Def {
        name: "rampart_update_files_served_total",
        kind: "counter",
        help: "Update metadata and artifact files served to devices (whole or a range).",
    },
    Def {
        name: "rampart_update_ranges_served_total",
        kind: "counter",
        help: "Partial update file responses (Range requests of resumed downloads).",
    },
    Def {
        name: "rampart_update_files_refused_total",
        kind: "counter",
        help: "Update file requests refused: unknown file, bad name or unsatisfiable range.",
    },
    Def {
        name: "rampart_audit_findings_low",
        kind: "gauge",
        help: "Low findings of the last scheduled identity audit.",
    },
    Def {
        name: "rampart_audit_findings_medium",
        kind: "gauge",
        help: "Medium findings of the last scheduled identity audit.",
    },
    Def {
        name: "rampart_audit_findings_high",
        kind: "gauge",
        help: "High findings of the last scheduled identity audit.",
    },
    Def {
        name: "rampart_audit_findings_critical",
        kind: "gauge",
        help: "Critical findings of the last scheduled identity audit.",
    },
    Def {
        name: "rampart_device_updates_succeeded_total",
        kind: "counter",
        help: "Updates devices reported committed after their health check.",
    },
    Def {
        name: "rampart_device_updates_failed_total",
        kind: "counter",
        help: "Updates devices reported failed (download, verification or install refused).",
    },
    Def {
        name: "rampart_device_updates_rolled_back_total",
        kind: "counter",
        help: "Updates devices rolled back (health check failed or restart before commit).",
    },
    Def {
        name: "rampart_device_events_bms_unreachable_total",
        kind: "counter",
        help: "bms_unreachable events reported by devices (re-sends counted again).",
    },
    Def {
        name: "rampart_device_events_bms_recovered_total",
        kind: "counter",
        help: "bms_recovered events reported by devices.",
    },
    Def {
        name: "rampart_device_events_data_dropped_total",
        kind: "counter",
        help: "data_dropped events reported by devices.",
    },
    Def {
        name: "rampart_device_dropped_records_total",
        kind: "counter",
        help: "Records devices reported dropped from their outbox (bound reached or damaged).",
    },
    Def {
        name: "rampart_rollout_install_commands_total",
        kind: "counter",
        help: "Install instructions sent to devices by rollouts.",
    },
    Def {
        name: "rampart_rollout_rollback_commands_total",
        kind: "counter",
        help: "Rollback instructions sent to devices by aborted rollouts.",
    },
    Def {
        name: "rampart_rollout_reports_total",
        kind: "counter",
        help: "Device reports applied to rollouts.",
    },
    Def {
        name: "rampart_rollout_automatic_pauses_total",
        kind: "counter",
        help: "Rollouts paused by their failure or success threshold.",
    },
    Def {
        name: "rampart_cra_deadlines_due_soon",
        kind: "gauge",
        help: "Article 14 report stages due within cra.deadline_warning, not yet submitted.",
    },
    Def {
        name: "rampart_cra_deadlines_overdue",
        kind: "gauge",
        help: "Article 14 report stages past their deadline, not yet submitted.",
    },
    Def {
        name: "rampart_cluster_forwarded_total",
        kind: "counter",
        help: "Routed messages sent to the other hub nodes over NATS.",
    },
    Def {
        name: "rampart_cluster_dropped_total",
        kind: "counter",
        help: "Routed messages not sent to the other nodes: the queue to NATS was full.",
    },
    Def {
        name: "rampart_cluster_received_total",
        kind: "counter",
        help: "Messages other nodes routed, delivered to this node's subscribers.",
    },
    Def {
        name: "rampart_cluster_malformed_total",
        kind: "counter",
        help: "Frames from the cluster that could not be decoded (dropped).",
    },
    Def {
        name: "rampart_cluster_notices_sent_total",
        kind: "counter",
        help: "Registry changes this node told the other nodes of.",
    },
    Def {
        name: "rampart_cluster_notices_received_total",
        kind: "counter",
        help: "Registry changes other nodes told this node of.",
    },
    Def {
        name: "rampart_cluster_sessions_parked_total",
        kind: "counter",
        help: "Persistent sessions parked in the cluster (JetStream) when their connection here ended.",
    },
    Def {
        name: "rampart_cluster_sessions_resumed_total",
        kind: "counter",
        help: "Persistent sessions resumed from the cluster at CONNECT (session present = 1).",
    },
    Def {
        name: "rampart_cluster_park_failures_total",
        kind: "counter",
        help: "Persistent sessions that could not be parked in the cluster (kept on this node only).",
    },
    Def {
        name: "rampart_cluster_resume_failures_total",
        kind: "counter",
        help: "CONNECTs whose session could not be resumed from the cluster (a new session was started).",
    },
    Def {
        name: "rampart_cluster_session_messages_queued_total",
        kind: "counter",
        help: "Messages for parked sessions queued in JetStream by this node (its own, once JetStream acknowledged them; copies of other nodes' messages when handed over).",
    },
    Def {
        name: "rampart_cluster_session_messages_lost_total",
        kind: "counter",
        help: "Messages for parked sessions that could not be queued in JetStream (lost for that session).",
    },
];

/// Number of metrics in [`DEFS`]; `snapshot` must produce exactly this many values.
const METRIC_COUNT: usize = 60;

/// Takes a snapshot of broker, ingest, device API, audit, event, deadline, rollout and
/// cluster counters.
#[allow(clippy::too_many_arguments)] // one argument per counter group, each named at the call
pub fn snapshot(
    m: &Metrics,
    ingest: &Arc<IngestStats>,
    api: &ApiMetrics,
    audit: &AuditCounts,
    events: &EventCounters,
    deadlines: &DeadlineCounts,
    rollouts: &crate::rollouts::RolloutCounters,
    cluster: &rampart_cluster::ClusterStats,
) -> MetricsSnapshot {
    let u = |a: &std::sync::atomic::AtomicU64| {
        i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    };
    let g = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed);
    // Typed as an array of METRIC_COUNT: a value without a definition (or the reverse)
    // does not compile.
    let values: [i64; METRIC_COUNT] = [
        u(&m.connections_accepted),
        g(&m.connections_active),
        u(&m.tls_handshakes),
        u(&m.connects_accepted),
        g(&m.sessions),
        g(&m.subscriptions),
        g(&m.retained_messages),
        u(&m.messages_received),
        u(&m.messages_delivered),
        u(&m.bytes_received),
        u(&m.bytes_sent),
        u(&m.dropped_queue_full),
        u(&m.dropped_expired),
        u(&m.dropped_too_large_for_client),
        u(&ingest.submitted),
        u(&ingest.committed),
        u(&ingest.inserted),
        u(&ingest.batches),
        u(&ingest.failed),
        u(&ingest.upkeep_failures),
        u(&api.requests),
        u(&api.tls_refused),
        u(&api.certificate_refused),
        u(&api.token_missing),
        u(&api.token_expired),
        u(&api.token_forged),
        u(&api.token_wrong_device),
        u(&api.token_malformed),
        u(&api.update_files_served),
        u(&api.update_ranges_served),
        u(&api.update_files_refused),
        u(&audit.0[0]),
        u(&audit.0[1]),
        u(&audit.0[2]),
        u(&audit.0[3]),
        u(&events.update_succeeded),
        u(&events.update_failed),
        u(&events.update_rolled_back),
        u(&events.bms_unreachable),
        u(&events.bms_recovered),
        u(&events.data_dropped),
        u(&events.dropped_records),
        u(&rollouts.install_commands),
        u(&rollouts.rollback_commands),
        u(&rollouts.reports_applied),
        u(&rollouts.automatic_pauses),
        u(&deadlines.due_soon),
        u(&deadlines.overdue),
        u(&cluster.forwarded),
        u(&cluster.dropped),
        u(&cluster.received),
        u(&cluster.malformed),
        u(&cluster.notices_sent),
        u(&cluster.notices_received),
        u(&m.cluster_sessions_parked),
        u(&m.cluster_sessions_resumed),
        u(&m.cluster_park_failures),
        u(&m.cluster_resume_failures),
        u(&m.cluster_enqueued),
        u(&m.cluster_enqueue_failures),
    ];
    MetricsSnapshot {
        values: DEFS
            .iter()
            .zip(values)
            .map(|(d, v)| (d.name.to_string(), v))
            .collect(),
        refusals: RefusalReason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), m.refusals(*r)))
            .collect(),
    }
}

/// Renders a snapshot in the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &MetricsSnapshot) -> String {
    let mut out = String::new();
    for d in DEFS {
        let v = s.values.get(d.name).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}\n{} {}",
            d.name, d.help, d.name, d.kind, d.name, v
        );
    }
    let _ = writeln!(
        out,
        "# HELP rampart_refusals_total Refused connections, packets and operations, by reason.\n# TYPE rampart_refusals_total counter"
    );
    for (reason, n) in &s.refusals {
        let _ = writeln!(out, "rampart_refusals_total{{reason=\"{reason}\"}} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_every_metric_and_reason() {
        let m = Metrics::default();
        let s = snapshot(
            &m,
            &Arc::new(IngestStats::default()),
            &ApiMetrics::default(),
            &AuditCounts::default(),
            &EventCounters::default(),
            &DeadlineCounts::default(),
            &crate::rollouts::RolloutCounters::default(),
            &rampart_cluster::ClusterStats::default(),
        );
        let text = render(&s);
        for d in DEFS {
            assert!(text.contains(&format!("# TYPE {} {}", d.name, d.kind)));
        }
        for r in RefusalReason::ALL {
            assert!(text.contains(&format!(
                "rampart_refusals_total{{reason=\"{}\"}} 0",
                r.as_str()
            )));
        }
    }
}

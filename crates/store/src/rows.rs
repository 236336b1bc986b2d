//! Rows to records, once for both backends.
//!
//! Both schemas use the same column names and the same value types (text, 64-bit integers,
//! 64-bit floats; times as Unix milliseconds; flags as 0/1), so a row of either database
//! maps to a record through the few typed reads of [`Columns`].

use std::collections::BTreeMap;

use sqlx::Row;
use time::OffsetDateTime;

use crate::model::from_ms;
use crate::{
    AllowEntry, AuditEntry, CaTemplate, CertificateRecord, CertificateStatus, CertificateUsage,
    ClaimRecord, Device, DeviceRelease, DeviceStatus, EventRow, HistoryEntry, IdentityKind,
    PolicyRecord, RolloutDeviceRow, RolloutRow, StoreError, TelemetryRow, TrustedCa,
};

/// The typed column reads the record mappings need.
pub(crate) trait Columns {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn opt_real(&self, col: &str) -> Result<Option<f64>, StoreError>;

    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        Ok(self.int(col)? != 0)
    }

    fn time(&self, col: &str, table: &'static str) -> Result<OffsetDateTime, StoreError> {
        from_ms(self.int(col)?, table)
    }

    fn opt_time(
        &self,
        col: &str,
        table: &'static str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        self.opt_int(col)?.map(|ms| from_ms(ms, table)).transpose()
    }
}

/// The same reads for a row of either sqlx backend and for a rusqlite row (the SQLite reads
/// made without sqlx's worker thread: `sqlite::inline`).
macro_rules! columns_for {
    ($row:ty, $get:ident) => {
        impl Columns for $row {
            fn text(&self, col: &str) -> Result<String, StoreError> {
                Ok(self.$get(col)?)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                Ok(self.$get(col)?)
            }
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                Ok(self.$get(col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.$get(col)?)
            }
            fn opt_real(&self, col: &str) -> Result<Option<f64>, StoreError> {
                Ok(self.$get(col)?)
            }
        }
    };
}

columns_for!(sqlx::sqlite::SqliteRow, try_get);
columns_for!(sqlx::postgres::PgRow, try_get);
columns_for!(rusqlite::Row<'_>, get);

/// A row's columns named with a prefix: a join that reads two tables with columns of the same
/// name (both `certificates` and `devices` have a `status`) selects one table's as
/// `prefix || name`, and its record is mapped through this.
pub(crate) struct Prefixed<'a, R>(pub &'a R, pub &'static str);

impl<R: Columns> Columns for Prefixed<'_, R> {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        self.0.text(&format!("{}{col}", self.1))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.0.opt_text(&format!("{}{col}", self.1))
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.0.int(&format!("{}{col}", self.1))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.0.opt_int(&format!("{}{col}", self.1))
    }
    fn opt_real(&self, col: &str) -> Result<Option<f64>, StoreError> {
        self.0.opt_real(&format!("{}{col}", self.1))
    }
}

/// The columns of `certificates` (alias `c`) as [`certificate`] reads them, each named
/// `cert_` and its name, for a join with `devices`; a macro so that queries are string
/// literals (`concat!`).
macro_rules! certificate_as_cert {
    () => {
        "c.serial AS cert_serial, c.device_id AS cert_device_id, \
         c.fingerprint AS cert_fingerprint, c.not_before AS cert_not_before, \
         c.not_after AS cert_not_after, c.key_algorithm AS cert_key_algorithm, \
         c.issued_at AS cert_issued_at, c.status AS cert_status, c.issuer AS cert_issuer, \
         c.revoked_at AS cert_revoked_at, c.revocation_reason AS cert_revocation_reason, \
         c.retire_at AS cert_retire_at"
    };
}
pub(crate) use certificate_as_cert;

/// A row of `SELECT certificate_as_cert!(), d.* FROM certificates AS c LEFT JOIN devices AS d
/// …`: the certificate, and the device if the join found one.
pub(crate) fn certificate_and_device(
    r: &impl Columns,
) -> Result<(CertificateRecord, Option<Device>), StoreError> {
    let cert = certificate(&Prefixed(r, "cert_"))?;
    // A device row's id is never NULL: NULL here means the join found none.
    let device = r.opt_text("id")?.map(|_| device(r)).transpose()?;
    Ok((cert, device))
}

pub(crate) fn corrupt(table: &'static str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        why: why.to_string(),
    }
}

pub(crate) fn json_map(
    text: &str,
    table: &'static str,
) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(table, format!("attributes: {e}")))
}

pub(crate) fn to_json<T: serde::Serialize>(
    v: &T,
    table: &'static str,
) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt(table, e))
}

pub(crate) fn device(r: &impl Columns) -> Result<Device, StoreError> {
    let status = r.text("status")?;
    let kind = r.text("kind")?;
    Ok(Device {
        id: r.text("id")?,
        kind: IdentityKind::parse(&kind)
            .ok_or_else(|| corrupt("devices", format!("kind {kind:?}")))?,
        status: DeviceStatus::parse(&status)
            .ok_or_else(|| corrupt("devices", format!("status {status:?}")))?,
        pending: r.flag("pending")?,
        quarantined: r.flag("quarantined")?,
        group: r.opt_text("group_name")?,
        attributes: json_map(&r.text("attributes")?, "devices")?,
        registered_via: r.text("registered_via")?,
        created_at: r.time("created_at", "devices")?,
        last_seen_at: r.opt_time("last_seen_at", "devices")?,
        last_address: r.opt_text("last_address")?,
    })
}

pub(crate) fn certificate(r: &impl Columns) -> Result<CertificateRecord, StoreError> {
    const T: &str = "certificates";
    let status = r.text("status")?;
    Ok(CertificateRecord {
        serial: r.text("serial")?,
        device_id: r.text("device_id")?,
        fingerprint: r.text("fingerprint")?,
        not_before: r.time("not_before", T)?,
        not_after: r.time("not_after", T)?,
        key_algorithm: r.text("key_algorithm")?,
        issued_at: r.time("issued_at", T)?,
        status: CertificateStatus::parse(&status)
            .ok_or_else(|| corrupt(T, format!("status {status:?}")))?,
        issuer: r.text("issuer")?,
        revoked_at: r.opt_time("revoked_at", T)?,
        revocation_reason: r.opt_text("revocation_reason")?,
        retire_at: r.opt_time("retire_at", T)?,
    })
}

pub(crate) fn telemetry(r: &impl Columns) -> Result<TelemetryRow, StoreError> {
    const T: &str = "telemetry";
    Ok(TelemetryRow {
        device_id: r.text("device_id")?.into(),
        seq: r.int("seq")?,
        ts: r.time("ts", T)?,
        received_at: r.time("received_at", T)?,
        voltage_v: r.opt_real("voltage_v")?,
        current_a: r.opt_real("current_a")?,
        soc_pct: r.opt_real("soc_pct")?,
        soh_pct: r.opt_real("soh_pct")?,
        temp_min_c: r.opt_real("temp_min_c")?,
        temp_max_c: r.opt_real("temp_max_c")?,
        cell_min_v: r.opt_real("cell_min_v")?,
        cell_max_v: r.opt_real("cell_max_v")?,
        alarms: serde_json::from_str(&r.text("alarms")?)
            .map_err(|e| corrupt(T, format!("alarms: {e}")))?,
        body: r.text("body")?.into(),
    })
}

pub(crate) fn audit(r: &impl Columns) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        at: r.time("at", "audit_log")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        subject: r.text("subject")?,
        detail: r.text("detail")?,
    })
}

pub(crate) fn event(r: &impl Columns) -> Result<EventRow, StoreError> {
    Ok(EventRow {
        device_id: r.text("device_id")?,
        seq: r.int("seq")?,
        ts: r.time("ts", "device_events")?,
        received_at: r.time("received_at", "device_events")?,
        kind: r.text("kind")?,
        body: r.text("body")?,
    })
}

pub(crate) fn trusted_ca(r: &impl Columns) -> Result<TrustedCa, StoreError> {
    Ok(TrustedCa {
        fingerprint: r.text("fingerprint")?,
        subject: r.text("subject")?,
        certificate: r.text("certificate")?,
        auto_activate: r.flag("auto_activate")?,
        template: serde_json::from_str::<CaTemplate>(&r.text("template")?)
            .map_err(|e| corrupt("trusted_cas", e))?,
        added_at: r.time("added_at", "trusted_cas")?,
    })
}

pub(crate) fn certificate_usage(r: &impl Columns) -> Result<CertificateUsage, StoreError> {
    Ok(CertificateUsage {
        fingerprint: r.text("fingerprint")?,
        client_id: r.text("client_id")?,
        first_seen: r.time("first_seen", "certificate_usage")?,
        last_seen: r.time("last_seen", "certificate_usage")?,
    })
}

/// A policy from `policies` (time column `updated_at`) or `policy_versions` (`created_at`).
pub(crate) fn policy(r: &impl Columns, time_col: &str) -> Result<PolicyRecord, StoreError> {
    Ok(PolicyRecord {
        name: r.text("name")?,
        version: r.int("version")?,
        document: r.text("document")?,
        updated_at: r.time(time_col, "policies")?,
    })
}

pub(crate) fn claim(r: &impl Columns) -> Result<ClaimRecord, StoreError> {
    Ok(ClaimRecord {
        name: r.text("name")?,
        max_uses: r.opt_int("max_uses")?,
        uses: r.int("uses")?,
        not_after: r.opt_time("not_after", "claims")?,
    })
}

pub(crate) fn allow_entry(r: &impl Columns) -> Result<AllowEntry, StoreError> {
    Ok(AllowEntry {
        serial_number: r.text("serial_number")?,
        device_id: r.opt_text("device_id")?,
        group: r.opt_text("group_name")?,
        attributes: json_map(&r.text("attributes")?, "provisioning_allowlist")?,
    })
}

pub(crate) fn history(r: &impl Columns) -> Result<HistoryEntry, StoreError> {
    Ok(HistoryEntry {
        id: r.int("id")?,
        kind: r.text("kind")?,
        key: r.text("key")?,
        at: r.time("at", "compliance_history")?,
        action: r.text("action")?,
        detail: r.text("detail")?,
    })
}

pub(crate) fn device_release(r: &impl Columns) -> Result<DeviceRelease, StoreError> {
    Ok(DeviceRelease {
        device_id: r.text("device_id")?,
        product: r.text("product")?,
        release: r.text("release")?,
        reported_at: r.time("reported_at", "device_releases")?,
    })
}

pub(crate) fn rollout(r: &impl Columns) -> Result<RolloutRow, StoreError> {
    Ok(RolloutRow {
        id: r.text("id")?,
        target: r.text("target")?,
        version: r.text("version")?,
        plan: r.text("plan")?,
        state: r.text("state")?,
        wave: r.int("wave")?,
        accepted_failures: r.int("accepted_failures")?,
        reason: r.opt_text("reason")?,
        created_at: r.time("created_at", "rollouts")?,
        updated_at: r.time("updated_at", "rollouts")?,
    })
}

pub(crate) fn rollout_device(r: &impl Columns) -> Result<RolloutDeviceRow, StoreError> {
    Ok(RolloutDeviceRow {
        device_id: r.text("device_id")?,
        wave: r.int("wave")?,
        state: r.text("state")?,
        command: r.opt_text("command")?,
        detail: r.opt_text("detail")?,
        last_seq: r.int("last_seq")?,
        updated_at: r.time("updated_at", "rollout_devices")?,
    })
}

//! CRA compliance records, their append-only history, SBOM components, the OSV index and the
//! releases devices report.

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;

use super::PgStore;
use crate::model::to_ms;
use crate::rows;
use crate::{
    AdvisoryRow, ComplianceStore, DeviceRelease, HistoryEntry, SbomComponentRow, StoreError,
};

#[async_trait]
impl ComplianceStore for PgStore {
    async fn put_record(
        &self,
        kind: &str,
        key: &str,
        body: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO compliance_records (kind, key, body, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        )
        .bind(kind)
        .bind(key)
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO compliance_history (kind, key, at, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(kind)
        .bind(key)
        .bind(now)
        .bind(action)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record(&self, kind: &str, key: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT body FROM compliance_records WHERE kind = $1 AND key = $2")
                .bind(kind)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get("body"))
                .transpose()?,
        )
    }

    async fn records(&self, kind: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT key, body FROM compliance_records WHERE kind = $1 ORDER BY key")
                .bind(kind)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key")?, r.try_get("body")?)))
            .collect()
    }

    async fn append_history(
        &self,
        kind: &str,
        key: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO compliance_history (kind, key, at, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(kind)
        .bind(key)
        .bind(to_ms(OffsetDateTime::now_utc()))
        .bind(action)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn history(&self, kind: &str, key: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM compliance_history WHERE kind = $1 AND key = $2 ORDER BY id",
        )
        .bind(kind)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::history).collect()
    }

    async fn put_sbom_components(
        &self,
        product: &str,
        release: &str,
        rows: &[SbomComponentRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM sbom_components WHERE product = $1 AND release = $2")
            .bind(product)
            .bind(release)
            .execute(&mut *tx)
            .await?;
        for c in rows {
            sqlx::query(
                "INSERT INTO sbom_components (product, release, bom_ref, ecosystem, package, version) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(product)
            .bind(release)
            .bind(&c.bom_ref)
            .bind(&c.ecosystem)
            .bind(&c.package)
            .bind(&c.version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn releases_with(
        &self,
        ecosystem: &str,
        package: &str,
        version: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT product, release FROM sbom_components \
             WHERE ecosystem = $1 AND package = $2 AND version = $3 ORDER BY product, release",
        )
        .bind(ecosystem)
        .bind(package)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("product")?, r.try_get("release")?)))
            .collect()
    }

    async fn import_advisories(&self, rows: &[AdvisoryRow]) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut new = 0;
        for a in rows {
            let existed = sqlx::query("SELECT 1 FROM osv_advisories WHERE id = $1")
                .bind(&a.id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !existed {
                new += 1;
            }
            sqlx::query(
                "INSERT INTO osv_advisories (id, modified, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET modified = excluded.modified, body = excluded.body",
            )
            .bind(&a.id)
            .bind(&a.modified)
            .bind(&a.body)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM osv_packages WHERE advisory = $1")
                .bind(&a.id)
                .execute(&mut *tx)
                .await?;
            for (eco, pkg) in &a.packages {
                sqlx::query(
                    "INSERT INTO osv_packages (ecosystem, package, advisory) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(eco)
                .bind(pkg)
                .bind(&a.id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn advisories_for(
        &self,
        ecosystem: &str,
        package: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.body FROM osv_packages p JOIN osv_advisories a ON a.id = p.advisory \
             WHERE p.ecosystem = $1 AND p.package = $2 ORDER BY a.id",
        )
        .bind(ecosystem)
        .bind(package)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("body")?)).collect()
    }

    async fn advisories_for_packages(
        &self,
        ecosystem: &str,
        packages: &[String],
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        // Well under SQLite's default limit of 32,766 bound parameters per statement.
        const BATCH: usize = 500;
        let mut out = Vec::new();
        for chunk in packages.chunks(BATCH) {
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "SELECT p.package, a.id, a.body FROM osv_packages p \
                 JOIN osv_advisories a ON a.id = p.advisory WHERE p.ecosystem = ",
            );
            q.push_bind(ecosystem).push(" AND p.package IN (");
            let mut list = q.separated(", ");
            for p in chunk {
                list.push_bind(p);
            }
            q.push(") ORDER BY p.package, a.id");
            for r in q.build().fetch_all(&self.pool).await? {
                out.push((r.try_get("package")?, r.try_get("id")?, r.try_get("body")?));
            }
        }
        Ok(out)
    }

    async fn advisory_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM osv_advisories")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn set_device_release(&self, r: &DeviceRelease) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO device_releases (device_id, product, release, reported_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (device_id) DO UPDATE SET product = excluded.product, \
             release = excluded.release, reported_at = excluded.reported_at",
        )
        .bind(&r.device_id)
        .bind(&r.product)
        .bind(&r.release)
        .bind(to_ms(r.reported_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn device_releases(&self) -> Result<Vec<DeviceRelease>, StoreError> {
        let rows = sqlx::query("SELECT * FROM device_releases ORDER BY device_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::device_release).collect()
    }
}

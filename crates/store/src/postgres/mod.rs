//! The PostgreSQL backend: for fleets that outgrow one machine, and for several hub
//! processes sharing one registry.
//!
//! Durability before PUBACK holds as on SQLite: a commit returns once PostgreSQL has flushed
//! its WAL (`synchronous_commit = on`, PostgreSQL's default; the backend refuses to start on
//! a server where it is `off` or `local`, which would acknowledge readings a crash can lose).
//! Everything lives in one schema ([`PgOptions::schema`]), created if missing, so several
//! installations (or test runs) can share a database; migrations come from
//! `migrations/postgres`, the twin of `migrations/sqlite`, and run under sqlx's advisory
//! lock, so hub nodes starting together apply them once.
//!
//! Statements that read and then write rely on single-statement atomicity (`UPDATE ...
//! RETURNING`, `INSERT ... ON CONFLICT`) or row locks (`SELECT ... FOR UPDATE`), never on
//! a process-local lock: another hub node may be writing the same rows.
//!
//! One file per storage trait, as in the SQLite backend.

mod audit;
mod compliance;
mod events;
mod pki;
mod policies;
mod provisioning;
mod registry;
mod retained;
mod rollouts;
mod telemetry;

use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::StoreError;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=...]`.
    pub url: String,
    /// Schema holding Rampart's tables (created if missing): lower-case letters, digits and
    /// `_`, starting with a letter or `_`, at most 63 bytes.
    pub schema: String,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            schema: "rampart".into(),
            max_connections: 8,
        }
    }
}

/// Checks a schema name: it is spliced into `CREATE SCHEMA` and `search_path`, which take no
/// bind parameters, so only plain identifiers are accepted.
pub fn check_schema(name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > 63 {
        "it is longer than 63 bytes (PostgreSQL would truncate it)"
    } else if name.starts_with("pg_") {
        "names starting with pg_ are reserved by PostgreSQL"
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        "it starts with a digit"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        "only lower-case letters, digits and _ are allowed"
    } else {
        return Ok(());
    };
    Err(format!("schema {name:?}: {why}"))
}

/// PostgreSQL implementation of the storage traits.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
    /// `host:port/database schema S`, for logs (the URL without credentials).
    location: String,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl PgStore {
    /// Connects, creates the schema if needed, checks the server's durability setting and
    /// applies pending migrations.
    pub async fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        check_schema(&options.schema).map_err(StoreError::Config)?;
        if !(options.url.starts_with("postgres://") || options.url.starts_with("postgresql://")) {
            return Err(StoreError::Config(
                "postgres url: expected postgres://user@host:port/database".into(),
            ));
        }
        let base = PgConnectOptions::from_str(&options.url).map_err(|e| {
            StoreError::Config(format!(
                "postgres url: {e} (expected postgres://user@host:port/database)"
            ))
        })?;
        {
            // A separate single connection: the pool's connections start with the schema on
            // their search path, which must exist first.
            let bootstrap = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(base.clone())
                .await?;
            // Spliced, not bound (DDL takes no parameters); check_schema admitted only a
            // plain identifier.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                options.schema
            )))
            .execute(&bootstrap)
            .await
            .or_else(|e| {
                // Two nodes creating the schema at once: the loser sees a unique violation on
                // the catalog; the schema exists either way.
                if crate::error::is_unique_violation(&e) {
                    Ok(Default::default())
                } else {
                    Err(e)
                }
            })?;
            bootstrap.close().await;
        }
        let connect = base.options([("search_path", options.schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await?;
        let sync: String = sqlx::query("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await?
            .try_get(0)?;
        if sync == "off" || sync == "local" {
            return Err(StoreError::Config(format!(
                "the server runs with synchronous_commit = {sync}: a reading acknowledged to a device could be lost in a crash; set it to on (or remote_write, remote_apply)"
            )));
        }
        MIGRATOR.run(&pool).await?;
        let o = pool.connect_options();
        let location = format!(
            "postgres {}:{}/{} schema {}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("(default)"),
            options.schema
        );
        Ok(PgStore {
            pool,
            schema: options.schema.clone(),
            location,
        })
    }

    /// Starts a write transaction (READ COMMITTED; see the module comment for how statements
    /// stay correct under concurrent writers).
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// Server, database and schema (no credentials).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection pool (for benchmarks and tests that need raw SQL).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::check_schema;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["rampart", "_x", "node_2", "a1"] {
            assert_eq!(check_schema(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("Rampart", "lower-case"),
            ("a-b", "lower-case"),
            ("x\"; DROP TABLE devices; --", "lower-case"),
            ("1abc", "digit"),
            ("pg_catalog", "reserved"),
            (&"a".repeat(64), "63 bytes"),
        ] {
            let e = check_schema(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

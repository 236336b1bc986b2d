//! Ingest: telemetry rows/s stored through the hub's ingest path ÷ a raw batched insert of
//! the same rows into the same schema, side by side in one run (BENCHMARKS.md figure 4;
//! docs/benchmarks.md).
//!
//! `cargo bench -p rampart-store --bench ingest`
//!
//! - hub path: `IngestQueue` — 100 concurrent submitters (one per device, as connections
//!   are), each waiting for its row's commit ticket like a PUBACK does; group commit, one
//!   transaction per batch (at most 2,000 rows, the hub's default), multi-row statements;
//! - raw: the same rows, arriving device-interleaved, inserted with plain SQL on a
//!   connection of its own, called directly (rusqlite, no worker thread in between) —
//!   2,000 rows per transaction, each transaction's rows in key order, stored as the hub
//!   stores them: each device's 20 readings of a transaction as one chunk (since
//!   2026-11-28; before, a row per reading into `telemetry`), 64 chunks per multi-row
//!   INSERT, no queue, no tickets.
//!
//! Each side gets a fresh database file (WAL) with the hub's migrations, for both
//! `synchronous` levels. Bounded: 100,000 rows per side and round; three rounds, the sides
//! alternating, and the median round of each is reported (a round lasts about a second, and
//! single rounds varied by ±20 %).
//!
//! With `RAMPART_TEST_POSTGRES_URL` set (scripts/services sets it), the same on PostgreSQL:
//! the hub path through `PgStore` (a COPY per batch, or `INSERT ... SELECT FROM UNNEST ... ON
//! CONFLICT` when the batch holds a reading already stored), against `COPY ... FROM STDIN` of
//! the same rows, 2,000 per transaction in key order — the fastest way PostgreSQL has to load
//! rows, so the ratio is conservative. Each side gets a fresh schema per round; the sides
//! take turns, and the median round of each is reported. Then the telemetry layout: the same 100,000 rows COPYed into four layouts — the
//! (device_id, ts, seq) key migration 0008 creates, and the (device_id, seq) key before it
//! with the (device_id, ts) B-tree it had, with a BRIN index on ts, and alone — with the
//! load rate and the latency of the hub's query (the newest 100 readings of one device since
//! a time) for each.

use std::sync::Arc;
use std::time::Instant;

use rampart_store::{
    Batching, IngestQueue, PgOptions, PgStore, SqliteOptions, SqliteStore, Store, Synchronous,
    TelemetryRow, encode_telemetry_chunk,
};
use time::OffsetDateTime;

const DEVICES: usize = 100;
const ROWS: usize = 100_000;
const BATCH: usize = 2_000;
/// Rounds per side, the two sides taking turns; the median is reported.
const ROUNDS: usize = 3;

/// The round with the median rate.
fn median(mut rates: Vec<Rate>) -> Rate {
    rates.sort_by(|a, b| a.rows_per_s.total_cmp(&b.rows_per_s));
    rates[rates.len() / 2]
}

/// CPU time this process has used so far, in microseconds: the sum over its threads (the
/// runtime's and SQLite's worker threads alike) of `/proc/self/task/*/schedstat`, which
/// counts nanoseconds on the CPU.
fn process_cpu_us() -> f64 {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 / 1_000.0
}

/// Rows per second, and CPU microseconds per row.
#[derive(Debug, Clone, Copy)]
struct Rate {
    rows_per_s: f64,
    cpu_us_per_row: f64,
}

impl Rate {
    fn since(start: Instant, cpu_start: f64) -> Rate {
        Rate {
            rows_per_s: ROWS as f64 / start.elapsed().as_secs_f64(),
            cpu_us_per_row: (process_cpu_us() - cpu_start) / ROWS as f64,
        }
    }
}

fn row(device: usize, seq: i64, now: OffsetDateTime) -> TelemetryRow {
    let body = format!(
        "{{\"v\":1,\"seq\":{seq},\"ts\":\"2026-11-25T12:00:00.000Z\",\"pack\":{{\"voltage_v\":52.41,\"current_a\":-12.5,\"soc_pct\":81.2}}}}"
    );
    TelemetryRow {
        device_id: format!("gw-{device:05}").into(),
        seq,
        ts: now + time::Duration::milliseconds(seq),
        received_at: now,
        voltage_v: Some(52.41),
        current_a: Some(-12.5),
        soc_pct: Some(81.2),
        soh_pct: None,
        temp_min_c: None,
        temp_max_c: None,
        cell_min_v: None,
        cell_max_v: None,
        alarms: Vec::new(),
        body: body.into(),
    }
}

fn rows() -> Vec<TelemetryRow> {
    let now = OffsetDateTime::now_utc();
    (0..ROWS)
        .map(|i| row(i % DEVICES, (i / DEVICES) as i64, now))
        .collect()
}

async fn open(dir: &std::path::Path, name: &str, sync: Synchronous) -> SqliteStore {
    let mut o = SqliteOptions::new(dir.join(name));
    o.synchronous = sync;
    SqliteStore::open(&o).await.expect("open the database")
}

async fn hub_path(store: Arc<dyn Store>, rows: Vec<TelemetryRow>) -> Rate {
    let queue = IngestQueue::spawn(store.clone(), 65_536, Batching::immediate(BATCH));
    let mut per_device: Vec<Vec<TelemetryRow>> = (0..DEVICES).map(|_| Vec::new()).collect();
    for (i, r) in rows.into_iter().enumerate() {
        per_device[i % DEVICES].push(r);
    }
    let (start, cpu) = (Instant::now(), process_cpu_us());
    let mut tasks = tokio::task::JoinSet::new();
    for mine in per_device {
        let q = queue.clone();
        tasks.spawn(async move {
            // Like a device with a window of 64 unacknowledged publishes.
            let mut pending = std::collections::VecDeque::new();
            for r in mine {
                pending.push_back(q.submit(r).await.expect("submit"));
                if pending.len() >= 64 {
                    pending
                        .pop_front()
                        .expect("a ticket")
                        .await
                        .expect("committed");
                }
            }
            for t in pending {
                t.await.expect("committed");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Rate::since(start, cpu)
}

async fn raw(dir: &std::path::Path, sync: Synchronous, rows: &[TelemetryRow]) -> Rate {
    // The hub's schema, then a connection of our own, used where it is (no thread between
    // the caller and SQLite): the storage floor.
    let path = dir.join("raw.db");
    open(dir, "raw.db", sync).await.close().await;
    let mut conn = rusqlite::Connection::open(&path).expect("raw connection");
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )
    .expect("synchronous");
    // Each device's readings of a transaction as one row of `telemetry_chunks`, laid out as
    // the hub lays them out, by the store's own encoder (crates/store/src/sqlite/chunks.rs:
    // SQLite's binary JSON): a batch of 2,000 from 100
    // devices holds 20 of each, which the hub stores as chunks too. Multi-row INSERTs of
    // 64 chunks.
    let insert = |n: usize| {
        let mut sql = String::from(
            "INSERT INTO telemetry_chunks (device_id, ts_last, seq_last, ts_first, n_readings, \
             readings) VALUES ",
        );
        for i in 0..n {
            sql.push_str(if i == 0 { "" } else { "," });
            sql.push_str("(?,?,?,?,?,?)");
        }
        sql
    };
    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let (start, cpu) = (Instant::now(), process_cpu_us());
    for batch in rows.chunks(BATCH) {
        let mut batch: Vec<&TelemetryRow> = batch.iter().collect();
        batch.sort_by(|a, b| (&a.device_id, a.ts, a.seq).cmp(&(&b.device_id, b.ts, b.seq)));
        let runs: Vec<&[&TelemetryRow]> =
            batch.chunk_by(|a, b| a.device_id == b.device_id).collect();
        let tx = conn.transaction().expect("begin");
        for group in runs.chunks(64) {
            let chunks: Vec<Vec<u8>> = group
                .iter()
                .map(|run| {
                    let mut chunk = Vec::new();
                    encode_telemetry_chunk(run.iter().copied(), &mut chunk);
                    chunk
                })
                .collect();
            let mut st = tx.prepare_cached(&insert(group.len())).expect("prepare");
            let mut at = 0;
            for (run, chunk) in group.iter().zip(&chunks) {
                let (first, last) = (run[0], run[run.len() - 1]);
                let values: [&dyn rusqlite::ToSql; 6] = [
                    &&*first.device_id,
                    &ms(last.ts),
                    &last.seq,
                    &ms(first.ts),
                    &(run.len() as i64),
                    chunk,
                ];
                for v in values {
                    at += 1;
                    st.raw_bind_parameter(at, v).expect("bind");
                }
            }
            st.raw_execute().expect("insert");
        }
        tx.commit().expect("commit");
    }
    Rate::since(start, cpu)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "machine: {} CPUs; {} rows from {DEVICES} devices, interleaved; batches of {BATCH}; median of {ROUNDS} rounds",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        ROWS
    );
    println!(
        "{:8} {:>14} {:>14} {:>7} {:>16} {:>16}",
        "sync", "hub rows/s", "raw rows/s", "ratio", "hub CPU µs/row", "raw CPU µs/row"
    );
    for (name, sync) in [("full", Synchronous::Full), ("normal", Synchronous::Normal)] {
        let (mut raws, mut hubs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let data = rows();
            let raw_dir = tempfile::tempdir().expect("tempdir");
            let hub_dir = tempfile::tempdir().expect("tempdir");
            raws.push(rt.block_on(raw(raw_dir.path(), sync, &data)));
            hubs.push(rt.block_on(async {
                let store = Arc::new(open(hub_dir.path(), "hub.db", sync).await);
                hub_path(store, data).await
            }));
        }
        let (r, h) = (median(raws), median(hubs));
        println!(
            "{name:8} {:>14.0} {:>14.0} {:>7.2} {:>16.2} {:>16.2}",
            h.rows_per_s,
            r.rows_per_s,
            h.rows_per_s / r.rows_per_s,
            h.cpu_us_per_row,
            r.cpu_us_per_row
        );
    }
    match std::env::var("RAMPART_TEST_POSTGRES_URL") {
        Ok(url) => rt.block_on(postgres(&url)),
        Err(_) => println!("PostgreSQL: skipped (RAMPART_TEST_POSTGRES_URL is not set)"),
    }
}

async fn pg_open(url: &str, schema: &str) -> PgStore {
    let mut o = PgOptions::new(url);
    o.schema = schema.into();
    PgStore::open(&o).await.expect("open PostgreSQL")
}

async fn drop_schema(store: &PgStore) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA {} CASCADE",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .expect("drop schema");
    store.close().await;
}

/// The rows as COPY text: tab-separated, `\N` for NULL (the bodies hold no tab, newline or
/// backslash).
fn copy_text(rows: &[&TelemetryRow]) -> String {
    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let opt = |v: Option<f64>| v.map_or_else(|| "\\N".to_string(), |v| v.to_string());
    let mut out = String::with_capacity(rows.len() * 200);
    for r in rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t[]\t{}\n",
            r.device_id,
            r.seq,
            ms(r.ts),
            ms(r.received_at),
            opt(r.voltage_v),
            opt(r.current_a),
            opt(r.soc_pct),
            opt(r.soh_pct),
            opt(r.temp_min_c),
            opt(r.temp_max_c),
            opt(r.cell_min_v),
            opt(r.cell_max_v),
            r.body
        ));
    }
    out
}

/// COPY of `rows` into `table` of the store's schema, BATCH rows per transaction in key order.
async fn copy_rows(store: &PgStore, table: &str, rows: &[TelemetryRow]) -> f64 {
    let start = Instant::now();
    for batch in rows.chunks(BATCH) {
        let mut batch: Vec<&TelemetryRow> = batch.iter().collect();
        batch.sort_by(|a, b| (&a.device_id, a.ts, a.seq).cmp(&(&b.device_id, b.ts, b.seq)));
        let mut conn = store.pool().acquire().await.expect("connection");
        let statement = format!(
            "COPY {table} (device_id, seq, ts, received_at, voltage_v, current_a, soc_pct, \
             soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body) FROM STDIN"
        );
        let mut copy = conn.copy_in_raw(&statement).await.expect("COPY");
        copy.send(copy_text(&batch).into_bytes())
            .await
            .expect("send");
        copy.finish().await.expect("finish");
    }
    ROWS as f64 / start.elapsed().as_secs_f64()
}

async fn postgres(url: &str) {
    let tag = std::process::id();
    // Single rounds moved by a third between runs (0.83-1.38), hence rounds here too, each
    // side on a fresh schema.
    let (mut raws, mut hubs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let data = rows();
        let raw = pg_open(url, &format!("bench_raw_{tag}_{round}")).await;
        raws.push(copy_rows(&raw, "telemetry", &data).await);
        drop_schema(&raw).await;
        let hub = Arc::new(pg_open(url, &format!("bench_hub_{tag}_{round}")).await);
        hubs.push(hub_path(hub.clone(), data).await.rows_per_s);
        drop_schema(&hub).await;
    }
    let middle = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, h) = (middle(raws), middle(hubs));
    // The server's CPU is another process's: no CPU column here.
    println!(
        "{:8} {:>14.0} {r:>14.0} {:>7.2}   (PostgreSQL; raw = COPY)",
        "pg",
        h,
        h / r
    );

    println!(
        "\nPostgreSQL telemetry layout ({ROWS} rows, {DEVICES} devices): load by COPY, then the newest 100 readings of a device since a time"
    );
    println!(
        "{:46} {:>12} {:>14} {:>12}",
        "layout", "rows/s", "query mean µs", "index KiB"
    );
    const SEQ_KEY: &str = "ALTER TABLE layout ADD PRIMARY KEY (device_id, seq)";
    let layouts: [(&str, &[&str]); 4] = [
        (
            "key (device_id, ts, seq) [0008]",
            &["ALTER TABLE layout ADD PRIMARY KEY (device_id, ts, seq)"],
        ),
        (
            "key (device_id, seq) + B-tree (device_id, ts)",
            &[SEQ_KEY, "CREATE INDEX ON layout (device_id, ts)"],
        ),
        (
            "key (device_id, seq) + BRIN (ts)",
            &[SEQ_KEY, "CREATE INDEX ON layout USING brin (ts)"],
        ),
        ("key (device_id, seq) only", &[SEQ_KEY]),
    ];
    for (name, statements) in layouts {
        let s = pg_open(url, &format!("bench_layout_{tag}")).await;
        // The columns alone: the layout brings its own key and indexes.
        sqlx::query("CREATE TABLE layout (LIKE telemetry INCLUDING DEFAULTS)")
            .execute(s.pool())
            .await
            .expect("create");
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(s.pool())
                .await
                .expect("layout");
        }
        let data = rows();
        let rate = copy_rows(&s, "layout", &data).await;
        sqlx::query("ANALYZE layout")
            .execute(s.pool())
            .await
            .expect("analyze");
        // Half of each device's readings are newer than this.
        let since =
            (data[0].ts.unix_timestamp_nanos() / 1_000_000) as i64 + (ROWS / DEVICES / 2) as i64;
        const QUERIES: usize = 200;
        let start = Instant::now();
        for q in 0..QUERIES {
            let n = sqlx::query(
                "SELECT * FROM layout WHERE device_id = $1 AND ts >= $2 ORDER BY ts DESC, seq DESC LIMIT 100",
            )
            .bind(format!("gw-{:05}", q % DEVICES))
            .bind(since)
            .fetch_all(s.pool())
            .await
            .expect("query")
            .len();
            assert!(n > 0, "the query finds readings");
        }
        let mean = start.elapsed().as_micros() as f64 / QUERIES as f64;
        let index_bytes: i64 = sqlx::query_scalar("SELECT pg_indexes_size('layout')")
            .fetch_one(s.pool())
            .await
            .expect("size");
        println!(
            "{name:46} {rate:>12.0} {mean:>14.0} {:>12}",
            index_bytes / 1024
        );
        drop_schema(&s).await;
    }
}

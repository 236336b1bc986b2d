#!/usr/bin/env python3
# An experiment, not part of the product: SQLite's CPU per reading when each commit stores
# its readings as rows of the hub's `telemetry` schema (one per reading, keyed by device_id,
# ts, seq), or as one chunk per device (a row holding that device's readings of the commit as
# one JSON document, or that document compressed with zlib level 1).
#
#   python3 scripts/experiments/telemetry-chunks.py rows|chunks|zlib ROWS_PER_DEVICE COMMITS
#
# 100 devices; each commit holds ROWS_PER_DEVICE readings of each (31 is what the hub commits
# every 50 ms at half of Mosquitto's QoS 0 saturation). WAL, 8 KiB pages, synchronous =
# normal, a 40 MiB autocheckpoint, as the hub's writer has them. What is timed is the process's
# CPU over the commits alone: the payloads (and the chunks' encoding and compression) are
# made before, so the figure is SQLite's part, plus Python's binding of the parameters (about
# 14 per reading for rows, 6 per chunk). Writes only under /tmp/chunk. docs/benchmarks.md
# (run AH) has the figures.
import sqlite3, os, time, json, zlib, sys
mode = sys.argv[1]; per_dev = int(sys.argv[2]); batches = int(sys.argv[3])
if mode not in ("rows", "chunks", "zlib") or per_dev < 1 or batches < 1:
    sys.exit("usage: telemetry-chunks.py rows|chunks|zlib ROWS_PER_DEVICE COMMITS")
os.makedirs("/tmp/chunk", exist_ok=True)
path = f"/tmp/chunk/{mode}.db"
for s in ("", "-wal", "-shm"):
    try: os.remove(path + s)
    except FileNotFoundError: pass
c = sqlite3.connect(path, isolation_level=None)
c.execute("PRAGMA page_size=8192"); c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL")
c.execute("PRAGMA wal_autocheckpoint=5120"); c.execute("PRAGMA cache_size=-16384")
def reading(d, seq):
    ts = 1_700_000_000_000 + seq * 10
    body = json.dumps({"v": 1, "seq": seq, "ts": "2026-11-28T04:00:%02d.%03dZ" % (seq // 1000 % 60, seq % 1000), "pack": {"voltage_v": 51.2 + (seq % 7) / 100, "current_a": -3.5, "soc_pct": 80.5, "soh_pct": 97.0}, "temps_c": [21.0, 24.5], "cells_v": [3.2, 3.3, 3.21, 3.19], "alarms": []}, separators=(",", ":"))
    return (f"dev-{d:05}", seq, ts, ts + 5, 51.2, -3.5, 80.5, 97.0, 21.0, 24.5, 3.19, 3.3, "[]", body)
batches_data = []
for b in range(batches):
    rows = [reading(d, b * per_dev + k) for d in range(100) for k in range(per_dev)]
    if mode == "rows":
        batches_data.append(rows)
    else:
        chunks = []
        for d in range(100):
            rs = rows[d * per_dev:(d + 1) * per_dev]
            blob = json.dumps([r[1:] for r in rs], separators=(",", ":")).encode()
            if mode == "zlib": blob = zlib.compress(blob, 1)
            chunks.append((rs[0][0], rs[-1][2], rs[-1][1], rs[0][2], len(rs), blob))
        batches_data.append(chunks)
if mode == "rows":
    c.execute("CREATE TABLE t (device_id TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, received_at INTEGER NOT NULL, voltage_v REAL, current_a REAL, soc_pct REAL, soh_pct REAL, temp_min_c REAL, temp_max_c REAL, cell_min_v REAL, cell_max_v REAL, alarms TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (device_id, ts, seq)) WITHOUT ROWID")
    ins = "INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
else:
    c.execute("CREATE TABLE t (device_id TEXT NOT NULL, ts_last INTEGER NOT NULL, seq_last INTEGER NOT NULL, ts_first INTEGER NOT NULL, n INTEGER NOT NULL, readings BLOB NOT NULL, PRIMARY KEY (device_id, ts_last, seq_last)) WITHOUT ROWID")
    ins = "INSERT INTO t VALUES (?,?,?,?,?,?)"
t0 = time.process_time()
for data in batches_data:
    c.execute("BEGIN IMMEDIATE"); c.executemany(ins, data); c.execute("COMMIT")
t1 = time.process_time()
n = batches * 100 * per_dev
size = os.path.getsize(path) + os.path.getsize(path + "-wal")
print(f"{mode:6} {per_dev:3} rows/device/commit: {(t1 - t0) / n * 1e6:5.2f} µs CPU per reading, {size / n:6.0f} bytes per reading in the files")

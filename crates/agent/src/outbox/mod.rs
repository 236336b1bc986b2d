//! The durable outbox: every telemetry and event document goes to disk before the network.
//!
//! ```text
//! state/outbox/
//!   seg-00000000000000000001.log   records 1.. (named by the first record id)
//!   seg-00000000000000001843.log   the active segment, appended to
//!   cursor                         id of the oldest record not yet acknowledged
//!   drops.json                     data dropped and not yet reported to the hub
//! ```
//!
//! - **Write-ahead.** A document is appended (sealed with the storage key, see
//!   [`record`] for the layout) before it is offered to MQTT. With `fsync = "always"` the
//!   append is on stable storage when [`Outbox::append`] returns; `"interval"` syncs at most
//!   that long after; `"never"` leaves it to the kernel.
//! - **Removed only after PUBACK.** Records are read from the oldest unacknowledged one
//!   (`cursor`), published in order, and marked resolved when acknowledged; the cursor moves
//!   over resolved records and segments behind it are deleted. After a restart or a new
//!   connection everything from the cursor is sent again — the hub stores each document once
//!   (device, seq), so a re-send is a duplicate on the wire only.
//! - **Bounded.** By bytes on disk and by age. At the bound the oldest records are dropped
//!   (never the newest), counted by reason, and reported through [`Outbox::take_drops`] so the
//!   agent can raise a `data_dropped` event.
//! - **Damage.** A record that fails its CRC or its authentication tag is reported, counted as
//!   dropped (reason `corrupt`) and skipped; it is never sent. A write cut short at the end of
//!   the last segment (power loss) is truncated at open.
//!
//! The outbox is synchronous; the agent calls it from short critical sections.

pub mod record;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_bms::DropReason;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::vault::{OVERHEAD, Vault};
use record::{At, HEADER_LEN, Header, Kind};

pub use record::Kind as RecordKind;

/// How far the cursor file may lag behind acknowledgements.
pub const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(200);

/// When appended records reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before `append` returns: nothing appended is lost on power loss.
    Always,
    /// At most this long after the append: a power loss loses at most this much.
    Interval(Duration),
    /// When the kernel writes back: survives a crash of the agent, not of the machine.
    Never,
}

/// What gives way when the outbox reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// The oldest records are dropped to make room (the default: recent data matters most).
    #[default]
    DropOldest,
    /// New records are dropped until there is room again (keeps the start of an outage).
    DropNewest,
}

/// How the outbox is set up.
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    pub dir: PathBuf,
    /// Bound on the bytes of all segment files.
    pub max_bytes: u64,
    /// Records older than this are dropped.
    pub max_age: Duration,
    /// Size at which a new segment is started.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub when_full: WhenFull,
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox: a record of {len} bytes exceeds the limit of {max} (half a segment)")]
    TooLarge { len: usize, max: u64 },
    #[error("outbox: {0}")]
    Seal(#[from] crate::vault::VaultError),
}

/// A document read back for sending.
#[derive(Debug)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    pub seq: u64,
    pub payload: Zeroizing<Vec<u8>>,
}

/// Dropped data not yet reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropTally {
    pub records: u64,
    pub bytes: u64,
    /// Telemetry sequence numbers of the first and last dropped telemetry record.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Of those, records that had been sent and were waiting for the hub's acknowledgement
    /// when they were dropped: the hub may have stored them (their fate is unknown), so a
    /// report can tell "lost" from "perhaps delivered".
    #[serde(default)]
    pub unacknowledged: u64,
    #[serde(default)]
    pub unacknowledged_first_seq: Option<u64>,
    #[serde(default)]
    pub unacknowledged_last_seq: Option<u64>,
}

fn widen(range: (&mut Option<u64>, &mut Option<u64>), s: u64) {
    *range.0 = Some(range.0.map_or(s, |f| f.min(s)));
    *range.1 = Some(range.1.map_or(s, |l| l.max(s)));
}

impl DropTally {
    fn add(&mut self, records: u64, bytes: u64, telemetry_seq: Option<u64>, sent: bool) {
        self.records += records;
        self.bytes += bytes;
        if let Some(s) = telemetry_seq {
            widen((&mut self.first_seq, &mut self.last_seq), s);
        }
        if sent {
            self.unacknowledged += records;
            if let Some(s) = telemetry_seq {
                widen(
                    (
                        &mut self.unacknowledged_first_seq,
                        &mut self.unacknowledged_last_seq,
                    ),
                    s,
                );
            }
        }
    }

    /// Adds another tally (of the same reason) to this one.
    fn merge(&mut self, other: &DropTally) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.unacknowledged += other.unacknowledged;
        for s in [other.first_seq, other.last_seq].into_iter().flatten() {
            widen((&mut self.first_seq, &mut self.last_seq), s);
        }
        for s in [
            other.unacknowledged_first_seq,
            other.unacknowledged_last_seq,
        ]
        .into_iter()
        .flatten()
        {
            widen(
                (
                    &mut self.unacknowledged_first_seq,
                    &mut self.unacknowledged_last_seq,
                ),
                s,
            );
        }
    }
}

/// Counters since the agent started, and the current depth.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxStatus {
    /// Records waiting for acknowledgement (including those in flight).
    pub depth_records: u64,
    /// Bytes on disk from the oldest waiting record on.
    pub depth_bytes: u64,
    /// Append time of the oldest waiting record.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest: Option<OffsetDateTime>,
    pub disk_bytes: u64,
    pub segments: usize,
    pub appended: u64,
    pub published: u64,
    pub acknowledged: u64,
    pub dropped_max_bytes: u64,
    pub dropped_max_age: u64,
    pub dropped_corrupt: u64,
    /// Bytes of a cut-short write removed at open.
    pub torn_tail_bytes: u64,
}

/// A position in the outbox: segment (by first id) and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    seg: u64,
    off: u64,
}

struct Segment {
    path: PathBuf,
    size: u64,
}

/// A record (or damaged span of ids) between the cursor and the send position.
#[derive(Debug, Clone)]
struct Tracked {
    pos: Pos,
    next: Pos,
    /// Ids this entry stands for (more than one for a damaged span).
    covers: u64,
    /// Acknowledged, or dropped as damaged.
    resolved: bool,
    bytes: u64,
    telemetry_seq: Option<u64>,
}

/// What is at a position.
enum Found {
    End,
    Record {
        header: Header,
        body: Vec<u8>,
        next: Pos,
    },
    /// Damage; reading resumes at `resume`, whose record has id `resume_id` if known.
    Damaged {
        resume: Pos,
        resume_id: Option<u64>,
        bytes: u64,
    },
}

/// The outbox. See the module documentation.
pub struct Outbox {
    opts: OutboxOptions,
    vault: Arc<Vault>,
    segments: BTreeMap<u64, Segment>,
    active: File,
    active_first: u64,
    next_id: u64,
    cursor: u64,
    head: Pos,
    head_ts: Option<i64>,
    send_id: u64,
    send: Pos,
    track: BTreeMap<u64, Tracked>,
    max_seq: [u64; 2],
    status: OutboxStatus,
    drops: BTreeMap<DropReason, DropTally>,
    drops_dirty: bool,
    dirty: bool,
    last_sync: Instant,
    cursor_saved: u64,
    cursor_saved_at: Instant,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.opts.dir)
            .field("cursor", &self.cursor)
            .field("next_id", &self.next_id)
            .field("segments", &self.segments.len())
            .finish()
    }
}

fn seg_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Outbox {
    /// Opens (or creates) the outbox: scans the segments, truncates a cut-short tail, and
    /// positions at the cursor.
    pub fn open(opts: OutboxOptions, vault: Arc<Vault>) -> Result<Outbox, OutboxError> {
        let dir = opts.dir.clone();
        let io = |source| OutboxError::Io {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        let mut firsts: Vec<u64> = fs::read_dir(&dir)
            .map_err(io)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse::<u64>()
                    .ok()
            })
            .collect();
        firsts.sort_unstable();
        let saved_cursor = match fs::read_to_string(dir.join("cursor")) {
            Ok(t) => t.trim().parse::<u64>().ok(),
            Err(_) => None,
        };
        // Drops counted before a restart and not yet reported.
        let drops: BTreeMap<DropReason, DropTally> = fs::read(dir.join("drops.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut status = OutboxStatus::default();
        let mut segments = BTreeMap::new();
        let mut last_id = 0u64;
        let mut max_seq = [0u64; 2];
        for (i, first) in firsts.iter().enumerate() {
            let path = dir.join(seg_name(*first));
            let file = File::open(&path).map_err(|source| OutboxError::Io {
                path: path.clone(),
                source,
            })?;
            let mut len = file
                .metadata()
                .map_err(|source| OutboxError::Io {
                    path: path.clone(),
                    source,
                })?
                .len();
            let is_last = i + 1 == firsts.len();
            let mut off = 0;
            loop {
                let at = record::read_at(&file, off, len).map_err(|source| OutboxError::Io {
                    path: path.clone(),
                    source,
                })?;
                match at {
                    At::End => break,
                    At::Record { header, next, .. } => {
                        last_id = last_id.max(header.id);
                        let k = header.kind.index();
                        max_seq[k] = max_seq[k].max(header.seq);
                        off = next;
                    }
                    At::Torn | At::Damaged => {
                        let found =
                            record::resync(&file, off, len).map_err(|source| OutboxError::Io {
                                path: path.clone(),
                                source,
                            })?;
                        match found {
                            Some((o, _)) => off = o,
                            None if is_last => {
                                // A write cut short by a crash or power loss: nothing good
                                // follows, so the tail goes.
                                tracing::warn!(segment = %path.display(), offset = off,
                                    bytes = len - off, "outbox: incomplete record at the end (interrupted write); truncated");
                                status.torn_tail_bytes += len - off;
                                OpenOptions::new()
                                    .write(true)
                                    .open(&path)
                                    .and_then(|f| {
                                        f.set_len(off)?;
                                        f.sync_all()
                                    })
                                    .map_err(|source| OutboxError::Io {
                                        path: path.clone(),
                                        source,
                                    })?;
                                len = off;
                                break;
                            }
                            // Damage inside an older segment: the reader reports and skips it.
                            None => break,
                        }
                    }
                }
            }
            segments.insert(*first, Segment { path, size: len });
        }
        let first_id = firsts.first().copied();
        let mut next_id = (last_id + 1).max(saved_cursor.unwrap_or(1)).max(1);
        if let Some(&last_first) = firsts.last() {
            next_id = next_id.max(last_first);
        }
        let mut cursor = saved_cursor.unwrap_or(first_id.unwrap_or(next_id));
        if let Some(f) = first_id
            && cursor < f
        {
            tracing::warn!(
                cursor,
                first_segment = f,
                "outbox: cursor points before the oldest segment; starting at the oldest record"
            );
            cursor = f;
        }
        cursor = cursor.min(next_id);
        let (active_first, active) = match firsts.last() {
            Some(&f) => {
                let path = dir.join(seg_name(f));
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|source| OutboxError::Io { path, source })?;
                (f, file)
            }
            None => {
                let path = dir.join(seg_name(next_id));
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|source| OutboxError::Io {
                        path: path.clone(),
                        source,
                    })?;
                segments.insert(next_id, Segment { path, size: 0 });
                (next_id, file)
            }
        };
        let mut ob = Outbox {
            opts,
            vault,
            segments,
            active,
            active_first,
            next_id,
            cursor,
            head: Pos {
                seg: firsts.first().copied().unwrap_or(active_first),
                off: 0,
            },
            head_ts: None,
            send_id: cursor,
            send: Pos { seg: 0, off: 0 },
            track: BTreeMap::new(),
            max_seq,
            status,
            drops,
            drops_dirty: false,
            dirty: false,
            last_sync: Instant::now(),
            cursor_saved: saved_cursor.unwrap_or(0),
            cursor_saved_at: Instant::now(),
        };
        ob.position_head()?;
        ob.send = ob.head;
        ob.delete_behind_head()?;
        ob.save_cursor()?;
        Ok(ob)
    }

    /// Moves `head` to the record with id `cursor`, hopping over older ones.
    fn position_head(&mut self) -> Result<(), OutboxError> {
        // The last segment whose first id is at or before the cursor holds it.
        let seg = self
            .segments
            .range(..=self.cursor)
            .next_back()
            .map(|(f, _)| *f)
            .unwrap_or(self.active_first);
        let mut pos = Pos { seg, off: 0 };
        loop {
            match self.find(pos)? {
                Found::End => break,
                Found::Record { header, next, .. } => {
                    if header.id >= self.cursor {
                        break;
                    }
                    pos = next;
                }
                Found::Damaged {
                    resume, resume_id, ..
                } => match resume_id {
                    Some(id) if id <= self.cursor => pos = resume,
                    _ => break,
                },
            }
        }
        self.head = self.normalize(pos);
        Ok(())
    }

    /// The same place, moved to the start of the next segment if at the end of one.
    fn normalize(&self, mut pos: Pos) -> Pos {
        loop {
            let size = self.segments.get(&pos.seg).map_or(0, |s| s.size);
            if pos.off < size {
                return pos;
            }
            match self.segments.range(pos.seg + 1..).next() {
                Some((f, _)) => pos = Pos { seg: *f, off: 0 },
                None => return pos,
            }
        }
    }

    fn seg_file(&self, seg: u64) -> Result<(File, u64, PathBuf), OutboxError> {
        let s = self.segments.get(&seg).ok_or_else(|| OutboxError::Io {
            path: self.opts.dir.join(seg_name(seg)),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let f = File::open(&s.path).map_err(|source| OutboxError::Io {
            path: s.path.clone(),
            source,
        })?;
        Ok((f, s.size, s.path.clone()))
    }

    /// What is at `pos` (normalized across segment ends).
    fn find(&self, pos: Pos) -> Result<Found, OutboxError> {
        let pos = self.normalize(pos);
        if !self.segments.contains_key(&pos.seg) {
            return Ok(Found::End);
        }
        let (file, size, path) = self.seg_file(pos.seg)?;
        let io = |source| OutboxError::Io {
            path: path.clone(),
            source,
        };
        match record::read_at(&file, pos.off, size).map_err(io)? {
            At::End => Ok(Found::End),
            At::Record { header, body, next } => Ok(Found::Record {
                header,
                body,
                next: Pos {
                    seg: pos.seg,
                    off: next,
                },
            }),
            At::Torn | At::Damaged => match record::resync(&file, pos.off, size).map_err(io)? {
                Some((off, h)) => Ok(Found::Damaged {
                    resume: Pos { seg: pos.seg, off },
                    resume_id: Some(h.id),
                    bytes: off - pos.off,
                }),
                None => {
                    let next_seg = self.segments.range(pos.seg + 1..).next().map(|(f, _)| *f);
                    Ok(Found::Damaged {
                        resume: Pos {
                            seg: next_seg.unwrap_or(pos.seg),
                            off: if next_seg.is_some() { 0 } else { size },
                        },
                        resume_id: next_seg,
                        bytes: size - pos.off,
                    })
                }
            },
        }
    }

    /// Appends a document; returns its record id, or `None` if it was dropped because the
    /// outbox is full and `when_full` is `DropNewest` (counted like every drop). With
    /// `DropOldest` the oldest records make room first.
    pub fn append(
        &mut self,
        kind: Kind,
        seq: u64,
        payload: &[u8],
    ) -> Result<Option<u64>, OutboxError> {
        let body_len = payload.len() + OVERHEAD;
        let rec_len = (HEADER_LEN + body_len) as u64;
        if rec_len > self.opts.segment_bytes / 2 || body_len > record::MAX_BODY as usize {
            return Err(OutboxError::TooLarge {
                len: payload.len(),
                max: self.opts.segment_bytes / 2,
            });
        }
        let header = Header {
            kind,
            id: self.next_id,
            seq,
            ts_ms: now_ms(),
            body_len: body_len as u32,
        };
        let body = self.vault.seal(&header.aad(), payload)?;
        if !self.enforce_bounds(rec_len)? {
            let telemetry_seq = (kind == Kind::Telemetry).then_some(seq);
            self.count_drop(DropReason::MaxBytes, 1, rec_len, telemetry_seq, false);
            return Ok(None);
        }
        let active_size = self.segments.get(&self.active_first).map_or(0, |s| s.size);
        if active_size > 0 && active_size + rec_len > self.opts.segment_bytes {
            self.roll()?;
        }
        let bytes = header.encode(&body);
        let seg = self.active_first;
        let path = self.opts.dir.join(seg_name(seg));
        let before = self.segments.get(&seg).map_or(0, |s| s.size);
        if let Err(source) = self.active.write_all(&bytes) {
            // Leave no partial record behind: the next append starts at a record boundary.
            let _ = self.active.set_len(before);
            return Err(OutboxError::Io { path, source });
        }
        if self.opts.fsync == FsyncPolicy::Always {
            self.active
                .sync_data()
                .map_err(|source| OutboxError::Io { path, source })?;
        } else {
            self.dirty = true;
        }
        if let Some(s) = self.segments.get_mut(&seg) {
            s.size += rec_len;
        }
        self.next_id += 1;
        let k = kind.index();
        self.max_seq[k] = self.max_seq[k].max(seq);
        self.status.appended += 1;
        Ok(Some(header.id))
    }

    /// Starts a new segment.
    fn roll(&mut self) -> Result<(), OutboxError> {
        let old = self.opts.dir.join(seg_name(self.active_first));
        if self.opts.fsync != FsyncPolicy::Never {
            self.active
                .sync_data()
                .map_err(|source| OutboxError::Io { path: old, source })?;
        }
        let first = self.next_id;
        let path = self.opts.dir.join(seg_name(first));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| OutboxError::Io {
                path: path.clone(),
                source,
            })?;
        if self.opts.fsync != FsyncPolicy::Never {
            self.sync_dir()?;
        }
        self.active = file;
        self.active_first = first;
        self.segments.insert(first, Segment { path, size: 0 });
        self.dirty = false;
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), OutboxError> {
        File::open(&self.opts.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| OutboxError::Io {
                path: self.opts.dir.clone(),
                source,
            })
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Drops what is too old, then makes room for `incoming` more bytes: delivered segments
    /// go first; then, with `DropOldest`, the oldest records. False if there is no room (only
    /// with `DropNewest`).
    fn enforce_bounds(&mut self, incoming: u64) -> Result<bool, OutboxError> {
        let oldest_allowed =
            now_ms() - i64::try_from(self.opts.max_age.as_millis()).unwrap_or(i64::MAX);
        while self.cursor < self.next_id {
            match self.head_ts()? {
                Some(ts) if ts < oldest_allowed => self.drop_head(DropReason::MaxAge)?,
                _ => break,
            }
        }
        while self.disk_bytes() + incoming > self.opts.max_bytes {
            let Some((&oldest, _)) = self.segments.iter().next() else {
                break;
            };
            if oldest == self.active_first {
                if self.segments.get(&oldest).map_or(0, |s| s.size) == 0 {
                    break;
                }
                // Everything is in one segment: start a new one so the old can go.
                self.roll()?;
                continue;
            }
            if self.head.seg > oldest {
                self.delete_behind_head()?;
                continue;
            }
            if self.cursor >= self.next_id {
                break;
            }
            if self.opts.when_full == WhenFull::DropNewest {
                return Ok(false);
            }
            self.drop_head(DropReason::MaxBytes)?;
            self.delete_behind_head()?;
        }
        Ok(true)
    }

    /// Append time of the record at the cursor.
    fn head_ts(&mut self) -> Result<Option<i64>, OutboxError> {
        if self.head_ts.is_none() && self.cursor < self.next_id {
            let pos = self.normalize(self.head);
            if self.segments.contains_key(&pos.seg) {
                let (file, size, path) = self.seg_file(pos.seg)?;
                self.head_ts = record::header_at(&file, pos.off, size)
                    .map_err(|source| OutboxError::Io { path, source })?
                    .map(|h| h.ts_ms);
            }
        }
        Ok(self.head_ts)
    }

    /// Drops the record (or damaged span) at the cursor, counting it under `reason`.
    fn drop_head(&mut self, reason: DropReason) -> Result<(), OutboxError> {
        let (covers, next, bytes, seq, reason, sent) = match self.track.remove(&self.cursor) {
            // Tracked and unresolved: published on the connection, not yet acknowledged.
            Some(t) => (
                t.covers,
                t.next,
                t.bytes,
                t.telemetry_seq,
                reason,
                !t.resolved,
            ),
            None => match self.find(self.head)? {
                Found::End => {
                    // Nothing readable up to the end: the ids left are gone.
                    let covers = self.next_id - self.cursor;
                    (covers, self.head, 0, None, DropReason::Corrupt, false)
                }
                Found::Record { header, next, .. } if header.id < self.cursor => {
                    // A stray older record (see next_batch): step over it.
                    self.head = self.normalize(next);
                    self.head_ts = None;
                    return Ok(());
                }
                Found::Record { header, .. } if header.id > self.cursor => {
                    // Ids before this record are missing.
                    (
                        header.id - self.cursor,
                        self.head,
                        0,
                        None,
                        DropReason::Corrupt,
                        false,
                    )
                }
                Found::Record { header, next, .. } => (
                    1,
                    next,
                    header.record_len(),
                    (header.kind == Kind::Telemetry).then_some(header.seq),
                    reason,
                    false,
                ),
                Found::Damaged {
                    resume,
                    resume_id,
                    bytes,
                } => {
                    let covers = resume_id.map_or(1, |r| r.saturating_sub(self.cursor).max(1));
                    (covers, resume, bytes, None, DropReason::Corrupt, false)
                }
            },
        };
        self.count_drop(reason, covers, bytes, seq, sent);
        self.cursor += covers;
        self.head = self.normalize(next);
        self.head_ts = None;
        if self.send_id < self.cursor {
            self.send_id = self.cursor;
            self.send = self.head;
        }
        self.advance();
        Ok(())
    }

    fn count_drop(
        &mut self,
        reason: DropReason,
        records: u64,
        bytes: u64,
        seq: Option<u64>,
        sent: bool,
    ) {
        match reason {
            DropReason::MaxBytes => self.status.dropped_max_bytes += records,
            DropReason::MaxAge => self.status.dropped_max_age += records,
            DropReason::Corrupt => self.status.dropped_corrupt += records,
        }
        self.drops
            .entry(reason)
            .or_default()
            .add(records, bytes, seq, sent);
        self.drops_dirty = true;
    }

    /// Writes drops.json if the unreported drops changed.
    pub fn save_drops(&mut self) -> Result<(), OutboxError> {
        if !self.drops_dirty {
            return Ok(());
        }
        let path = self.opts.dir.join("drops.json");
        let tmp = self.opts.dir.join("drops.json.tmp");
        let json = serde_json::to_vec(&self.drops).map_err(|e| OutboxError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            if self.opts.fsync == FsyncPolicy::Always {
                f.sync_data()?;
            }
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| OutboxError::Io { path, source })?;
        self.drops_dirty = false;
        Ok(())
    }

    /// Deletes segments that lie wholly before the cursor (after saving the cursor, so a crash
    /// in between cannot point it into a deleted segment).
    fn delete_behind_head(&mut self) -> Result<(), OutboxError> {
        let behind: Vec<u64> = self
            .segments
            .range(..self.head.seg)
            .map(|(f, _)| *f)
            .filter(|f| *f != self.active_first)
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        self.save_cursor()?;
        self.save_drops()?;
        for f in behind {
            if let Some(s) = self.segments.remove(&f) {
                fs::remove_file(&s.path).map_err(|source| OutboxError::Io {
                    path: s.path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Writes the cursor file if it moved (atomically, not synced).
    pub fn save_cursor(&mut self) -> Result<(), OutboxError> {
        if self.cursor_saved == self.cursor {
            return Ok(());
        }
        let path = self.opts.dir.join("cursor");
        let tmp = self.opts.dir.join("cursor.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            writeln!(f, "{}", self.cursor)?;
            // Not synced: a cursor lost to a power cut is an older cursor, which only makes
            // acknowledged records go out again (the hub stores them once) — never a loss.
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| OutboxError::Io { path, source })?;
        self.cursor_saved = self.cursor;
        self.cursor_saved_at = Instant::now();
        Ok(())
    }

    /// Up to `max_records` documents to publish next, in order, totalling at most
    /// `max_bytes` (at least one). Telemetry documents may come several at a time; an event
    /// comes alone. Damaged records met on the way are reported and skipped.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, OutboxError> {
        let mut batch: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        while self.send_id < self.next_id && batch.len() < max_records.max(1) {
            if let Some(t) = self.track.get(&self.send_id)
                && t.resolved
            {
                self.send = self.normalize(t.next);
                self.send_id += t.covers;
                continue;
            }
            let pos = self.normalize(self.send);
            match self.find(pos)? {
                Found::End => {
                    let covers = self.next_id - self.send_id;
                    self.resolve_damage(
                        pos,
                        pos,
                        covers,
                        0,
                        "records missing at the end of the outbox",
                    );
                }
                Found::Damaged {
                    resume,
                    resume_id,
                    bytes: n,
                } => {
                    let covers = resume_id
                        .map_or(self.next_id - self.send_id, |r| {
                            r.saturating_sub(self.send_id)
                        })
                        .max(1);
                    self.resolve_damage(pos, resume, covers, n, "record failed its checksum");
                }
                Found::Record { header, body, next } => {
                    if header.id > self.send_id {
                        // Ids before this record are missing (damage swallowed them).
                        let covers = header.id - self.send_id;
                        self.resolve_damage(pos, pos, covers, 0, "record ids missing");
                        continue;
                    }
                    if header.id < self.send_id {
                        // A stray copy of an older record (a segment restored by hand):
                        // not sent again, and it takes no id of its own.
                        tracing::error!(segment = %self.opts.dir.join(seg_name(pos.seg)).display(),
                            offset = pos.off, id = header.id, expected = self.send_id,
                            "outbox: record id out of order; skipped");
                        self.count_drop(DropReason::Corrupt, 1, header.record_len(), None, false);
                        self.send = self.normalize(next);
                        continue;
                    }
                    let payload =
                        match self
                            .vault
                            .open_sealed(&header.aad(), &body, "outbox record")
                        {
                            Ok(p) => p,
                            Err(_) => {
                                self.resolve_damage(
                                    pos,
                                    next,
                                    1,
                                    header.record_len(),
                                    "record failed authentication (tampered or another key)",
                                );
                                continue;
                            }
                        };
                    if let Some(first) = batch.first()
                        && (first.kind != Kind::Telemetry
                            || header.kind != Kind::Telemetry
                            || bytes + payload.len() > max_bytes)
                    {
                        break;
                    }
                    bytes += payload.len();
                    self.track.insert(
                        header.id,
                        Tracked {
                            pos,
                            next,
                            covers: 1,
                            resolved: false,
                            bytes: header.record_len(),
                            telemetry_seq: (header.kind == Kind::Telemetry).then_some(header.seq),
                        },
                    );
                    self.send = self.normalize(next);
                    self.send_id += 1;
                    let is_event = header.kind == Kind::Event;
                    batch.push(Record {
                        id: header.id,
                        kind: header.kind,
                        seq: header.seq,
                        payload,
                    });
                    if is_event {
                        break;
                    }
                }
            }
        }
        self.status.published += batch.len() as u64;
        self.advance();
        Ok(batch)
    }

    /// Records damage at `pos` spanning `covers` ids: reported once, counted as dropped, and
    /// resolved so the cursor moves past it.
    fn resolve_damage(&mut self, pos: Pos, next: Pos, covers: u64, bytes: u64, why: &str) {
        let id = self.send_id;
        if self.track.get(&id).is_none_or(|t| !t.resolved) {
            let file = self.opts.dir.join(seg_name(pos.seg));
            tracing::error!(segment = %file.display(), offset = pos.off, first_id = id, records = covers, bytes,
                "outbox: {why}; skipped, never sent");
            self.count_drop(DropReason::Corrupt, covers, bytes, None, false);
        }
        self.track.insert(
            id,
            Tracked {
                pos,
                next,
                covers,
                resolved: true,
                bytes,
                telemetry_seq: None,
            },
        );
        self.send = self.normalize(next);
        self.send_id += covers;
    }

    /// Puts records handed out by `next_batch` back (they could not be published); the next
    /// batch starts at `first_id` again.
    pub fn unsend(&mut self, first_id: u64) {
        if let Some(t) = self.track.get(&first_id)
            && !t.resolved
        {
            self.send = t.pos;
            self.send_id = first_id;
            let later: Vec<u64> = self
                .track
                .range(first_id..)
                .filter(|(_, t)| !t.resolved)
                .map(|(id, _)| *id)
                .collect();
            self.status.published = self.status.published.saturating_sub(later.len() as u64);
            for id in later {
                self.track.remove(&id);
            }
        }
    }

    /// Marks records acknowledged; the cursor moves over everything resolved. The cursor
    /// file follows at most [`CURSOR_SAVE_EVERY`] behind, which bounds what a crash makes
    /// the agent send again.
    pub fn ack(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(t) = self.track.get_mut(id)
                && !t.resolved
            {
                t.resolved = true;
                self.status.acknowledged += 1;
            }
        }
        self.advance();
        if self.cursor != self.cursor_saved
            && self.cursor_saved_at.elapsed() >= CURSOR_SAVE_EVERY
            && let Err(e) = self.save_cursor()
        {
            tracing::warn!(error = %e, "outbox: cannot save the cursor (records may be sent again after a restart)");
        }
    }

    fn advance(&mut self) {
        use std::collections::btree_map::Entry;
        while let Entry::Occupied(e) = self.track.entry(self.cursor) {
            if !e.get().resolved {
                break;
            }
            let t = e.remove();
            self.cursor += t.covers;
            self.head = self.normalize(t.next);
            self.head_ts = None;
        }
    }

    /// Starts sending again from the oldest unacknowledged record (a new connection: what was
    /// in flight on the old one is sent again).
    pub fn rewind(&mut self) {
        self.track.retain(|_, t| t.resolved);
        self.send = self.head;
        self.send_id = self.cursor;
    }

    /// Housekeeping, called about once a second: the age bound, the interval fsync, the
    /// cursor file, and deleting delivered segments.
    pub fn maintain(&mut self) -> Result<(), OutboxError> {
        self.enforce_bounds(0)?;
        if let FsyncPolicy::Interval(d) = self.opts.fsync
            && self.dirty
            && self.last_sync.elapsed() >= d
        {
            self.sync()?;
        }
        self.delete_behind_head()?;
        self.save_drops()?;
        self.save_cursor()
    }

    /// Flushes appended records to stable storage.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        if self.dirty {
            self.active.sync_data().map_err(|source| OutboxError::Io {
                path: self.opts.dir.join(seg_name(self.active_first)),
                source,
            })?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Syncs and saves the cursor; for shutdown.
    pub fn close(&mut self) -> Result<(), OutboxError> {
        self.sync()?;
        self.delete_behind_head()?;
        self.save_drops()?;
        self.save_cursor()
    }

    /// Drops not yet reported, by reason, handed over for reporting. The caller appends the
    /// report and then calls [`Outbox::save_drops`]; until then drops.json still holds them,
    /// so a crash in between reports them again rather than never.
    pub fn take_drops(&mut self) -> BTreeMap<DropReason, DropTally> {
        if !self.drops.is_empty() {
            self.drops_dirty = true;
        }
        std::mem::take(&mut self.drops)
    }

    /// Puts back drops that could not be reported (their report did not fit).
    pub fn restore_drops(&mut self, reason: DropReason, tally: DropTally) {
        self.drops.entry(reason).or_default().merge(&tally);
        self.drops_dirty = true;
    }

    /// Highest stream sequence number of `kind` ever appended (as far as the segments on
    /// disk show), so counters can be kept ahead of it after a crash.
    pub fn max_seq(&self, kind: Kind) -> u64 {
        self.max_seq[kind.index()]
    }

    /// Records appended and not yet acknowledged or dropped.
    pub fn depth(&self) -> u64 {
        self.next_id - self.cursor
    }

    /// Counters and depth.
    pub fn status(&mut self) -> OutboxStatus {
        let oldest = self.head_ts().ok().flatten().and_then(|ms| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        });
        let head = self.normalize(self.head);
        let depth_bytes = self
            .segments
            .range(head.seg..)
            .map(|(_, s)| s.size)
            .sum::<u64>()
            .saturating_sub(head.off);
        OutboxStatus {
            depth_records: self.depth(),
            depth_bytes: if self.depth() == 0 { 0 } else { depth_bytes },
            oldest: if self.depth() == 0 { None } else { oldest },
            disk_bytes: self.disk_bytes(),
            segments: self.segments.len(),
            ..self.status.clone()
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }
}

#[cfg(test)]
mod tests;

//! The outbox against real files: ordering, acknowledgement, restarts, bounds, damage.

use std::os::unix::fs::FileExt;

use super::*;
use crate::vault::KeySource;

struct Fixture {
    dir: tempfile::TempDir,
    vault: Arc<Vault>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let vault =
            Arc::new(Vault::open(&KeySource::File(dir.path().join("storage.key"))).unwrap());
        Fixture { dir, vault }
    }

    fn opts(&self) -> OutboxOptions {
        OutboxOptions {
            dir: self.dir.path().join("outbox"),
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
            segment_bytes: 64 << 10,
            fsync: FsyncPolicy::Always,
            when_full: WhenFull::DropOldest,
        }
    }

    fn open(&self) -> Outbox {
        Outbox::open(self.opts(), self.vault.clone()).unwrap()
    }

    fn open_with(&self, f: impl FnOnce(&mut OutboxOptions)) -> Outbox {
        let mut o = self.opts();
        f(&mut o);
        Outbox::open(o, self.vault.clone()).unwrap()
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.dir.path().join("outbox"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        v.sort();
        v
    }
}

fn doc(seq: u64) -> Vec<u8> {
    format!("{{\"v\":1,\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes()
}

fn seqs(batch: &[Record]) -> Vec<u64> {
    batch.iter().map(|r| r.seq).collect()
}

/// Sends and acknowledges everything, returning the sequence numbers in order.
fn drain(ob: &mut Outbox) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let b = ob.next_batch(50, 64 << 10).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend(seqs(&b));
        ob.ack(&b.iter().map(|r| r.id).collect::<Vec<_>>());
    }
}

#[test]
fn documents_come_back_in_order_and_leave_only_when_acknowledged() {
    let f = Fixture::new();
    let mut ob = f.open();
    for s in 1..=10 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    let b = ob.next_batch(4, 1 << 20).unwrap();
    assert_eq!(seqs(&b), vec![1, 2, 3, 4]);
    assert_eq!(&b[0].payload[..], &doc(1)[..]);
    // Acknowledged out of order: the cursor waits for the gap.
    ob.ack(&[b[1].id, b[2].id]);
    assert_eq!(ob.depth(), 10);
    ob.ack(&[b[0].id]);
    assert_eq!(ob.depth(), 7);
    ob.close().unwrap();
    drop(ob);
    // After a restart, everything not acknowledged comes again, in order (4 was in flight).
    let mut ob = f.open();
    assert_eq!(ob.depth(), 7);
    assert_eq!(drain(&mut ob), (4..=10).collect::<Vec<_>>());
    assert_eq!(ob.depth(), 0);
    ob.close().unwrap();
    drop(ob);
    let mut ob = f.open();
    assert!(ob.next_batch(50, 1 << 20).unwrap().is_empty());
    assert_eq!(ob.max_seq(Kind::Telemetry), 10);
    // Ids keep increasing across restarts.
    let id = ob.append(Kind::Telemetry, 11, &doc(11)).unwrap();
    assert_eq!(id, Some(11));
}

#[test]
fn nothing_on_disk_is_readable_without_the_key() {
    let f = Fixture::new();
    let mut ob = f.open();
    ob.append(Kind::Telemetry, 1, b"{\"secret_soc\":42}")
        .unwrap();
    ob.close().unwrap();
    let raw = fs::read(&f.segments()[0]).unwrap();
    assert!(!raw.windows(10).any(|w| w == b"secret_soc"));
}

#[test]
fn batches_hold_telemetry_and_events_travel_alone() {
    let f = Fixture::new();
    let mut ob = f.open();
    for s in 1..=3 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    ob.append(Kind::Event, 1, b"{\"kind\":\"x\"}").unwrap();
    ob.append(Kind::Telemetry, 4, &doc(4)).unwrap();
    let b = ob.next_batch(50, 1 << 20).unwrap();
    assert_eq!(seqs(&b), vec![1, 2, 3]);
    let b = ob.next_batch(50, 1 << 20).unwrap();
    assert_eq!((b.len(), b[0].kind), (1, Kind::Event));
    let b = ob.next_batch(50, 1 << 20).unwrap();
    assert_eq!(seqs(&b), vec![4]);
    // The byte limit splits batches (but a batch always has at least one document).
    let f = Fixture::new();
    let mut ob = f.open();
    for s in 1..=5 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    let b = ob.next_batch(50, doc(1).len() * 2).unwrap();
    assert_eq!(seqs(&b), vec![1, 2]);
    let b = ob.next_batch(50, 1).unwrap();
    assert_eq!(seqs(&b), vec![3]);
}

#[test]
fn a_new_connection_resends_what_was_in_flight_and_unsend_puts_back() {
    let f = Fixture::new();
    let mut ob = f.open();
    for s in 1..=6 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    let a = ob.next_batch(2, 1 << 20).unwrap();
    let b = ob.next_batch(2, 1 << 20).unwrap();
    ob.ack(&[b[0].id]);
    ob.rewind();
    // 1 and 2 (never acknowledged) come again; 3 was acknowledged and is not resent.
    let again = ob.next_batch(10, 1 << 20).unwrap();
    assert_eq!(seqs(&again), vec![1, 2, 4, 5, 6]);
    assert_eq!(seqs(&a), vec![1, 2]);
    ob.unsend(again[2].id);
    assert_eq!(seqs(&ob.next_batch(10, 1 << 20).unwrap()), vec![4, 5, 6]);
}

#[test]
fn the_byte_bound_drops_the_oldest_and_says_how_much() {
    let f = Fixture::new();
    let max = 256 << 10;
    let mut ob = f.open_with(|o| {
        o.max_bytes = max;
        o.segment_bytes = 32 << 10;
    });
    let n = 2000;
    for s in 1..=n {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
        assert!(ob.disk_bytes() <= max, "disk {} after {s}", ob.disk_bytes());
    }
    let drops = ob.take_drops();
    let t = drops[&DropReason::MaxBytes];
    assert_eq!(t.first_seq, Some(1), "the oldest go first");
    assert_eq!(ob.depth() + t.records, n);
    assert_eq!(t.last_seq, Some(t.records));
    assert_eq!(t.unacknowledged, 0, "nothing was sent");
    assert!(t.bytes > 0);
    assert!(ob.take_drops().is_empty(), "reported once");
    // What is left is the newest, contiguous, in order.
    let rest = drain(&mut ob);
    assert_eq!(rest, (t.records + 1..=n).collect::<Vec<_>>());
    assert_eq!(ob.status().dropped_max_bytes, t.records);
}

#[test]
fn records_in_flight_can_be_dropped_and_late_acks_are_ignored() {
    let f = Fixture::new();
    let mut ob = f.open_with(|o| {
        o.max_bytes = 128 << 10;
        o.segment_bytes = 32 << 10;
    });
    ob.append(Kind::Telemetry, 1, &doc(1)).unwrap();
    let inflight = ob.next_batch(1, 1 << 20).unwrap();
    for s in 2..=1000 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    ob.ack(&[inflight[0].id]);
    // The report says which dropped records had been sent: only reading 1 (the hub may
    // have stored it); the others were never sent and are lost.
    let t = ob.take_drops()[&DropReason::MaxBytes];
    assert_eq!(t.first_seq, Some(1));
    assert_eq!(
        (
            t.unacknowledged,
            t.unacknowledged_first_seq,
            t.unacknowledged_last_seq
        ),
        (1, Some(1), Some(1))
    );
    assert!(t.records > 1);
    let rest = drain(&mut ob);
    assert!(rest[0] > 1 && rest.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(*rest.last().unwrap(), 1000);
}

#[test]
fn the_age_bound_drops_old_records() {
    let f = Fixture::new();
    let mut ob = f.open();
    for s in 1..=5 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    ob.close().unwrap();
    drop(ob);
    std::thread::sleep(Duration::from_millis(30));
    let mut ob = f.open_with(|o| o.max_age = Duration::from_millis(20));
    ob.maintain().unwrap();
    let t = ob.take_drops()[&DropReason::MaxAge];
    assert_eq!((t.records, t.first_seq, t.last_seq), (5, Some(1), Some(5)));
    assert_eq!(ob.depth(), 0);
}

#[test]
fn a_flipped_byte_is_reported_and_the_rest_still_flows() {
    for (what, at) in [("body", 60u64), ("header", 10), ("crc", 37)] {
        let f = Fixture::new();
        let mut ob = f.open();
        let mut offsets = Vec::new();
        let mut off = 0u64;
        for s in 1..=5 {
            offsets.push(off);
            ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
            off += (HEADER_LEN + doc(s).len() + OVERHEAD) as u64;
        }
        ob.close().unwrap();
        drop(ob);
        // Damage record 3.
        let seg = f.segments()[0].clone();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, offsets[2] + at).unwrap();
        file.write_all_at(&[b[0] ^ 0x20], offsets[2] + at).unwrap();
        drop(file);
        let mut ob = f.open();
        assert_eq!(drain(&mut ob), vec![1, 2, 4, 5], "{what}");
        let t = ob.take_drops()[&DropReason::Corrupt];
        assert_eq!(t.records, 1, "{what}");
        assert_eq!(ob.status().dropped_corrupt, 1);
        assert_eq!(ob.depth(), 0, "{what}: the cursor moved past the damage");
        // Reported once, also after a reconnect.
        ob.rewind();
        assert!(ob.next_batch(10, 1 << 20).unwrap().is_empty());
        assert!(ob.take_drops().is_empty());
    }
}

#[test]
fn a_record_sealed_under_another_key_fails_authentication() {
    let f = Fixture::new();
    let mut ob = f.open();
    ob.append(Kind::Telemetry, 1, &doc(1)).unwrap();
    ob.close().unwrap();
    drop(ob);
    // Same layout and a valid CRC, but sealed with a different key: a forged record.
    let other = Arc::new(Vault::open(&KeySource::File(f.dir.path().join("other.key"))).unwrap());
    let mut forger = Outbox::open(f.opts(), other).unwrap();
    forger
        .append(Kind::Telemetry, 2, b"{\"forged\":true}")
        .unwrap();
    forger.close().unwrap();
    drop(forger);
    let mut ob = f.open();
    ob.append(Kind::Telemetry, 3, &doc(3)).unwrap();
    assert_eq!(drain(&mut ob), vec![1, 3]);
    assert_eq!(ob.take_drops()[&DropReason::Corrupt].records, 1);
}

#[test]
fn an_interrupted_write_is_truncated_at_open() {
    let f = Fixture::new();
    let mut ob = f.open();
    for s in 1..=3 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    ob.close().unwrap();
    drop(ob);
    let seg = f.segments()[0].clone();
    let len = fs::metadata(&seg).unwrap().len();
    // Power lost in the middle of writing record 3.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 50)
        .unwrap();
    let mut ob = f.open();
    assert!(ob.status().torn_tail_bytes > 0);
    let id = ob.append(Kind::Telemetry, 4, &doc(4)).unwrap();
    assert_eq!(
        id,
        Some(3),
        "the cut-short record's id is reused: it never existed"
    );
    assert_eq!(drain(&mut ob), vec![1, 2, 4]);
}

#[test]
fn delivered_segments_are_deleted() {
    let f = Fixture::new();
    let mut ob = f.open_with(|o| o.segment_bytes = 8 << 10);
    for s in 1..=200 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    assert!(f.segments().len() > 5);
    assert_eq!(drain(&mut ob).len(), 200);
    ob.maintain().unwrap();
    assert_eq!(f.segments().len(), 1, "only the active segment stays");
    ob.close().unwrap();
    drop(ob);
    let mut ob = f.open();
    assert_eq!(ob.depth(), 0);
    assert!(ob.next_batch(10, 1 << 20).unwrap().is_empty());
}

#[test]
fn oversized_documents_are_refused() {
    let f = Fixture::new();
    let mut ob = f.open_with(|o| o.segment_bytes = 8 << 10);
    let e = ob
        .append(Kind::Telemetry, 1, &vec![b'x'; 5000])
        .unwrap_err();
    assert!(matches!(e, OutboxError::TooLarge { .. }), "{e}");
}

#[test]
fn unreported_drops_survive_a_restart() {
    let f = Fixture::new();
    let bounded = |o: &mut OutboxOptions| {
        o.max_bytes = 256 << 10;
        o.segment_bytes = 32 << 10;
    };
    let mut ob = f.open_with(bounded);
    for s in 1..=2000 {
        ob.append(Kind::Telemetry, s, &doc(s)).unwrap();
    }
    ob.close().unwrap();
    drop(ob);
    let mut ob = f.open_with(bounded);
    let t = ob.take_drops()[&DropReason::MaxBytes];
    assert!(t.records > 0 && t.first_seq == Some(1));
    // Reported (the report would be appended here), then saved: gone for good.
    ob.save_drops().unwrap();
    ob.close().unwrap();
    drop(ob);
    let mut ob = f.open_with(bounded);
    assert!(ob.take_drops().is_empty());
}

#[test]
fn drop_newest_keeps_the_start_of_an_outage() {
    let f = Fixture::new();
    let mut ob = f.open_with(|o| {
        o.max_bytes = 256 << 10;
        o.segment_bytes = 32 << 10;
        o.when_full = WhenFull::DropNewest;
    });
    let n = 2000;
    let mut stored = 0;
    for s in 1..=n {
        if ob.append(Kind::Telemetry, s, &doc(s)).unwrap().is_some() {
            stored += 1;
        }
        assert!(ob.disk_bytes() <= 256 << 10);
    }
    let t = ob.take_drops()[&DropReason::MaxBytes];
    assert_eq!(t.records + stored, n);
    assert_eq!(t.last_seq, Some(n), "the newest were dropped");
    assert_eq!(t.first_seq, Some(stored + 1));
    assert_eq!(drain(&mut ob), (1..=stored).collect::<Vec<_>>());
    // Delivered: room again.
    ob.maintain().unwrap();
    assert!(
        ob.append(Kind::Telemetry, n + 1, &doc(n + 1))
            .unwrap()
            .is_some()
    );
    // A report that did not fit goes back.
    ob.restore_drops(DropReason::MaxBytes, t);
    assert_eq!(ob.take_drops()[&DropReason::MaxBytes], t);
}

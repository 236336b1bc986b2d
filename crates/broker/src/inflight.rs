//! A session's in-flight deliveries: QoS 1 messages sent to the client and not yet
//! acknowledged, in the order sent, with the packet identifiers they hold.
//!
//! Every new delivery needs an identifier no in-flight message holds (MQTT section 2.2.1).
//! Scanning the queue for each candidate cost a fan-in subscriber at saturation, which holds
//! up to `max_inflight` (1,024) messages, most of its time in moving deliveries to its write
//! buffer (docs/benchmarks.md). So once the queue is long, the identifiers in use are also
//! kept in a bit set; most sessions hold a few messages at most and never build one, since
//! it takes 8 KiB and the memory of idle connections is what limits a hub's connections.

use std::collections::VecDeque;

use crate::mailbox::Delivery;

/// Queue length from which a bit set answers "is this identifier in use": below it, a scan
/// of the queue is as fast and costs no memory.
const BITS_FROM: usize = 64;

/// One bit per packet identifier (0 is never used, it keeps the arithmetic plain).
type IdBits = [u64; 1024];

/// The in-flight queue.
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    queue: VecDeque<(u16, Delivery)>,
    /// The identifiers in `queue`, while it is long (see [`BITS_FROM`]).
    used: Option<Box<IdBits>>,
}

impl Inflight {
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(u16, Delivery)> {
        self.queue.iter()
    }

    /// Whether an in-flight message holds `id`.
    pub(crate) fn contains(&self, id: u16) -> bool {
        match &self.used {
            Some(bits) => bits[usize::from(id / 64)] & bit(id) != 0,
            None => self.queue.iter().any(|(p, _)| *p == id),
        }
    }

    /// Records a delivery sent with `id` (which the caller found free with
    /// [`Inflight::contains`]).
    pub(crate) fn push_back(&mut self, id: u16, delivery: Delivery) {
        self.queue.push_back((id, delivery));
        if let Some(bits) = &mut self.used {
            set(bits, id, true);
        } else if self.queue.len() >= BITS_FROM {
            let mut bits: Box<IdBits> = Box::new([0; 1024]);
            for (p, _) in &self.queue {
                set(&mut bits, *p, true);
            }
            self.used = Some(bits);
        }
    }

    /// Settles the delivery holding `id` (its PUBACK arrived); false if none does.
    pub(crate) fn remove(&mut self, id: u16) -> bool {
        // Acknowledgements come back mostly in the order sent: the front is found first.
        let Some(pos) = self.queue.iter().position(|(p, _)| *p == id) else {
            return false;
        };
        self.queue.remove(pos);
        if self.queue.is_empty() {
            // Drained: give the set's memory back (an idle connection keeps none).
            self.used = None;
        } else if let Some(bits) = &mut self.used {
            set(bits, id, false);
        }
        true
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.used = None;
    }
}

/// `id`'s bit within its word of [`IdBits`].
fn bit(id: u16) -> u64 {
    1 << (id % 64)
}

fn set(bits: &mut IdBits, id: u16, on: bool) {
    let word = &mut bits[usize::from(id / 64)];
    if on {
        *word |= bit(id);
    } else {
        *word &= !bit(id);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rampart_mqtt::QoS;

    use super::*;
    use crate::message::Message;

    fn delivery() -> Delivery {
        Delivery {
            msg: Message::bare(
                "devices/d1/telemetry",
                Bytes::from_static(b"{}"),
                QoS::AtLeastOnce,
                false,
            ),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    /// The answer of a plain scan, which the set must always agree with.
    fn scanned(f: &Inflight, id: u16) -> bool {
        f.iter().any(|(p, _)| *p == id)
    }

    #[test]
    fn the_set_is_built_from_the_threshold_and_dropped_when_drained() {
        let mut f = Inflight::default();
        for id in 1..BITS_FROM as u16 {
            f.push_back(id, delivery());
        }
        assert!(f.used.is_none(), "below the threshold a scan answers");
        f.push_back(BITS_FROM as u16, delivery());
        assert!(f.used.is_some(), "at the threshold the set is built");
        for id in 1..=BITS_FROM as u16 {
            assert!(
                f.contains(id),
                "{id} was recorded before or at the threshold"
            );
        }
        assert!(!f.contains(BITS_FROM as u16 + 1));
        for id in 1..=BITS_FROM as u16 {
            assert!(f.remove(id));
            assert!(!f.contains(id), "{id} settled");
        }
        assert_eq!(f.len(), 0);
        assert!(f.used.is_none(), "an empty queue keeps no set");
    }

    #[test]
    fn contains_agrees_with_a_scan_through_sends_acks_out_of_order_and_wrapping_ids() {
        let mut f = Inflight::default();
        // A fixed pseudo-random sequence (xorshift): sends outnumber acks until the queue
        // is long, then acks catch up; identifiers wrap past 65,535.
        let mut x: u32 = 0x9E37_79B9;
        let mut next: u16 = 65_000;
        for step in 0..40_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let send = if step < 20_000 {
                !x.is_multiple_of(3)
            } else {
                x.is_multiple_of(3)
            };
            if send && f.len() < 1024 {
                loop {
                    next = next.wrapping_add(1).max(1);
                    if !f.contains(next) {
                        break;
                    }
                }
                f.push_back(next, delivery());
            } else if f.len() > 0 {
                // Mostly the oldest, sometimes one further back (a client may acknowledge
                // out of order).
                let idx = if x.is_multiple_of(5) {
                    (x as usize / 7) % f.len()
                } else {
                    0
                };
                let id = f.queue[idx].0;
                assert!(f.remove(id));
            }
            let probe = (x >> 16) as u16;
            assert_eq!(
                f.contains(probe),
                scanned(&f, probe),
                "step {step}, id {probe}"
            );
            assert_eq!(
                f.contains(next),
                scanned(&f, next),
                "step {step}, id {next}"
            );
        }
        assert!(!f.remove(0), "0 is never an identifier");
    }

    #[test]
    fn clear_forgets_every_identifier() {
        let mut f = Inflight::default();
        for id in 1..=200 {
            f.push_back(id, delivery());
        }
        f.clear();
        assert_eq!(f.len(), 0);
        assert!((1..=200).all(|id| !f.contains(id)));
    }
}

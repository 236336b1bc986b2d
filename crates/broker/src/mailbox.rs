//! The per-session outbound queue.
//!
//! Bounded: a publisher that finds a subscriber's queue full waits (QoS 1, up to the
//! enqueue timeout: back-pressure that reaches the publisher through TCP) or drops the message
//! (QoS 0). Empty queues own no allocation, which matters at tens of thousands of idle
//! connections.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rampart_mqtt::QoS;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::message::Message;

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub msg: Arc<Message>,
    /// min(message QoS, subscription QoS).
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    queue: Mutex<VecDeque<Delivery>>,
    capacity: usize,
    readable: Notify,
    writable: Notify,
}

impl Mailbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            readable: Notify::new(),
            writable: Notify::new(),
        }
    }

    /// Queues `d` unless the mailbox is full (then hands it back).
    pub(crate) fn try_push(&self, d: Delivery) -> Result<(), Delivery> {
        {
            let mut q = self.queue.lock();
            if q.len() >= self.capacity {
                return Err(d);
            }
            q.push_back(d);
        }
        self.readable.notify_one();
        Ok(())
    }

    /// Queues `d`, waiting up to `timeout` for space. Returns false if it was dropped.
    pub(crate) async fn push_wait(&self, d: Delivery, timeout: Duration) -> bool {
        let mut d = match self.try_push(d) {
            Ok(()) => return true,
            Err(d) => d,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            // Register before re-checking so a pop between the check and the wait is not missed.
            notified.as_mut().enable();
            d = match self.try_push(d) {
                Ok(()) => return true,
                Err(d) => d,
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Moves up to `max` queued deliveries into `out`.
    pub(crate) fn pop_into(&self, out: &mut Vec<Delivery>, max: usize) {
        let was_full;
        {
            let mut q = self.queue.lock();
            was_full = q.len() >= self.capacity;
            let n = max.min(q.len());
            out.extend(q.drain(..n));
            if q.is_empty() && q.capacity() > 64 {
                // Give memory back once a backlog has drained.
                *q = VecDeque::new();
            }
        }
        if was_full {
            self.writable.notify_waiters();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// Completes when something was queued since the last wake-up.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.readable.notified()
    }

    /// Drops everything queued.
    pub(crate) fn clear(&self) {
        self.queue.lock().clear();
        self.writable.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn d(n: u8) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from(vec![n]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                expires_at: None,
                publisher: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    #[tokio::test]
    async fn bounded_with_waiting_publishers() {
        let m = Arc::new(Mailbox::new(2));
        assert!(m.try_push(d(1)).is_ok());
        assert!(m.try_push(d(2)).is_ok());
        assert!(m.try_push(d(3)).is_err());
        // A waiting publisher times out if nobody drains.
        assert!(!m.push_wait(d(3), Duration::from_millis(20)).await);
        // ...and succeeds once the consumer makes room.
        let m2 = m.clone();
        let waiter = tokio::spawn(async move { m2.push_wait(d(3), Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut out = Vec::new();
        m.pop_into(&mut out, 1);
        assert!(waiter.await.expect("join"));
        out.clear();
        m.pop_into(&mut out, 10);
        let order: Vec<u8> = out.iter().map(|d| d.msg.payload[0]).collect();
        assert_eq!(order, vec![2, 3]);
    }
}

//! Authorization answers reused while they are sure to be the same.
//!
//! Every publish is checked against the publisher's rights and every delivery against the
//! receiver's ([`Action::Receive`]). Asked of the policy engine each time, that was 2.5% of
//! the hub's CPU at a fixed QoS 1 rate and 4.2% at saturation (a look-up of the identity's
//! resolved statements, keyed by four strings, then matching the topic against each).
//! A device publishes on the same few topics, and a subscriber receives the same topics
//! again and again, so the broker keeps the allows it was given and asks again only when
//! the authorizer's epoch ([`Authorizer::epoch`]) has moved — any change of policies,
//! attachments or a device's facts, quarantine included — or, for a session, when another
//! connection (perhaps with another certificate) has taken it over. Denials are not kept:
//! they are rare and each is reported.
//!
//! [`Action::Receive`]: rampart_policy::Action::Receive
//! [`Authorizer::epoch`]: rampart_policy::Authorizer::epoch

use std::collections::HashSet;

/// Topics a session's receive answers keep; past it they start over. A subscriber of a
/// fleet's telemetry receives one topic per device: this covers the fleets the broker is
/// measured with, and bounds what a subscriber to `#` on a busy broker costs in memory.
pub(crate) const RECEIVE_TOPICS: usize = 4096;

/// The last topic a connection was allowed to publish on.
///
/// Topics are kept as copies: a decoded topic may share the buffer of its whole packet.
#[derive(Debug, Default)]
pub(crate) struct PublishAnswer {
    allowed: Option<(u64, Box<str>)>,
}

impl PublishAnswer {
    /// Whether publishing on `topic` was allowed at `epoch` (`None`: answers are not kept).
    pub(crate) fn allows(&self, epoch: Option<u64>, topic: &str) -> bool {
        match (epoch, &self.allowed) {
            (Some(now), Some((at, t))) => *at == now && **t == *topic,
            _ => false,
        }
    }

    /// Keeps an allow, given after `epoch` was read.
    pub(crate) fn allowed(&mut self, epoch: Option<u64>, topic: &str) {
        self.allowed = epoch.map(|e| (e, topic.into()));
    }
}

/// The topics a session was allowed to receive, for one epoch and one connection.
#[derive(Debug, Default)]
pub(crate) struct ReceiveAnswers {
    epoch: u64,
    /// The session's generation (a new one each time a connection takes it over).
    generation: u64,
    /// Copies, as for [`PublishAnswer`].
    allowed: HashSet<Box<str>, foldhash::fast::RandomState>,
}

impl ReceiveAnswers {
    /// Whether the session, attached as `generation`, was allowed `topic` at `epoch`.
    pub(crate) fn allows(&self, epoch: Option<u64>, generation: u64, topic: &str) -> bool {
        epoch == Some(self.epoch) && generation == self.generation && self.allowed.contains(topic)
    }

    /// Keeps an allow, given after `epoch` was read, to the session attached as `generation`.
    pub(crate) fn allowed(&mut self, epoch: Option<u64>, generation: u64, topic: &str) {
        let Some(epoch) = epoch else {
            return;
        };
        if epoch != self.epoch || generation != self.generation {
            // Answers of another epoch or connection are no longer good.
            self.allowed.clear();
            self.epoch = epoch;
            self.generation = generation;
        }
        if self.allowed.len() >= RECEIVE_TOPICS {
            self.allowed.clear();
        }
        self.allowed.insert(topic.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(t: &str) -> String {
        t.to_owned()
    }

    #[test]
    fn a_publish_answer_holds_for_its_topic_and_epoch_only() {
        let mut a = PublishAnswer::default();
        let t = topic("devices/a/telemetry");
        assert!(!a.allows(Some(1), &t), "nothing kept yet");
        a.allowed(Some(1), &t);
        assert!(a.allows(Some(1), &t));
        assert!(!a.allows(Some(2), &t), "the epoch moved");
        assert!(
            !a.allows(Some(1), &topic("devices/a/events")),
            "another topic"
        );
        assert!(!a.allows(None, &t), "an authorizer without an epoch");
        // Without an epoch nothing is kept.
        a.allowed(None, &t);
        assert!(!a.allows(Some(1), &t));
    }

    #[test]
    fn receive_answers_start_over_with_a_new_epoch_or_connection_and_stay_bounded() {
        let mut r = ReceiveAnswers::default();
        let (a, b) = (topic("devices/a/telemetry"), topic("devices/b/telemetry"));
        r.allowed(Some(5), 1, &a);
        r.allowed(Some(5), 1, &b);
        assert!(r.allows(Some(5), 1, &a) && r.allows(Some(5), 1, &b));
        assert!(!r.allows(Some(6), 1, &a), "the epoch moved");
        assert!(
            !r.allows(Some(5), 2, &a),
            "another connection took the session"
        );
        assert!(!r.allows(None, 1, &a));
        // An allow at a new epoch forgets the old ones.
        r.allowed(Some(6), 1, &a);
        assert!(r.allows(Some(6), 1, &a));
        assert!(!r.allows(Some(6), 1, &b));
        // Bounded: past the bound it starts over, and keeps the newest.
        for i in 0..RECEIVE_TOPICS {
            r.allowed(Some(6), 1, &topic(&format!("devices/d{i}/telemetry")));
        }
        assert!(r.allowed.len() <= RECEIVE_TOPICS);
        let last = topic(&format!("devices/d{}/telemetry", RECEIVE_TOPICS - 1));
        assert!(r.allows(Some(6), 1, &last));
        assert!(
            !r.allows(Some(6), 1, &a),
            "forgotten when the set started over"
        );
    }
}

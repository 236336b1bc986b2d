//! Subscription index and retained messages.
//!
//! The index is a trie over topic levels. Publishing takes a read lock, walks the trie once,
//! and collects the matching sessions; many publishers route in parallel and only
//! SUBSCRIBE/UNSUBSCRIBE take the write lock.
//!
//! A connection keeps the subscribers of the last topic it published on ([`RouteCache`])
//! while the index's generation, moved by every change to it, stays the same: a device
//! publishes on the same topic again and again, and the walk (a hash of each level, a clone
//! of each match) was 7% of the hub's CPU at a fixed QoS 0 rate (docs/benchmarks.md, run AP).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use rampart_mqtt::{QoS, SubscriptionOptions, topic};
use smallvec::SmallVec;

use crate::message::Message;
use crate::session::Session;

#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscriptions whose filter ends at this node.
    exact: Vec<Subscriber>,
    /// Subscriptions whose filter is this node's path followed by `#`.
    hash: Vec<Subscriber>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.hash.is_empty()
    }
}

/// A match: a session and the highest QoS among its matching subscriptions.
pub(crate) type Matches = SmallVec<[Subscriber; 4]>;

#[derive(Debug, Default)]
pub(crate) struct Router {
    root: RwLock<Node>,
    /// Moved by every change to `root`, while its write lock is held.
    generation: AtomicU64,
    retained: RwLock<HashMap<Box<str>, Arc<Message>>>,
}

/// The subscribers of one topic, as matched at one generation of the index. What it holds
/// stays alive until the connection's next publish or its end, also a session the index no
/// longer holds: only the generation says whether it is still good.
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    kept: Option<(u64, Box<str>, Arc<[Subscriber]>)>,
}

fn same(a: &Arc<Session>, b: &Arc<Session>) -> bool {
    Arc::ptr_eq(a, b)
}

impl Router {
    /// Adds or replaces `session`'s subscription to `filter`. Returns true if it is new.
    pub(crate) fn subscribe(&self, filter: &str, sub: Subscriber) -> bool {
        let mut root = self.root.write();
        // Under the write lock: a publisher that reads the new generation walks the index
        // after this change (its read lock waits for ours).
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut node = &mut *root;
        let mut levels = filter.split('/').peekable();
        let mut is_hash = false;
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                is_hash = true;
                break;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let list = if is_hash {
            &mut node.hash
        } else {
            &mut node.exact
        };
        if let Some(existing) = list.iter_mut().find(|s| same(&s.session, &sub.session)) {
            existing.options = sub.options;
            false
        } else {
            list.push(sub);
            true
        }
    }

    /// Removes `session`'s subscription to `filter`. Returns true if one existed.
    pub(crate) fn unsubscribe(&self, filter: &str, session: &Arc<Session>) -> bool {
        let mut root = self.root.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        let levels: Vec<&str> = filter.split('/').collect();
        remove(&mut root, &levels, session)
    }

    /// Sessions subscribed to `topic_name`, as [`Router::matches`] finds them, taken from
    /// `cache` if it holds that topic at the index's current generation, and kept there.
    pub(crate) fn matches_cached(
        &self,
        topic_name: &str,
        cache: &mut RouteCache,
    ) -> Arc<[Subscriber]> {
        // Read before the walk: a change made during it moves the generation past this one,
        // so what the walk found is kept as of the generation before the change, and walked
        // again next time.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((at, topic, subs)) = &cache.kept
            && *at == generation
            && **topic == *topic_name
        {
            return subs.clone();
        }
        let mut found = Matches::new();
        self.matches(topic_name, &mut found);
        let subs: Arc<[Subscriber]> = found.into_iter().collect();
        cache.kept = Some((generation, topic_name.into(), subs.clone()));
        subs
    }

    /// Sessions subscribed to `topic_name`, each once, with the highest granted QoS.
    pub(crate) fn matches(&self, topic_name: &str, out: &mut Matches) {
        let root = self.root.read();
        let dollar = topic_name.starts_with('$');
        let levels: SmallVec<[&str; 8]> = topic_name.split('/').collect();
        collect(&root, &levels, dollar, out);
        if out.len() > 1 {
            // Overlapping subscriptions of one session: deliver once at the highest QoS.
            let mut i = 0;
            while i < out.len() {
                let mut j = i + 1;
                while j < out.len() {
                    if same(&out[i].session, &out[j].session) {
                        if out[j].options.qos > out[i].options.qos {
                            out[i].options.qos = out[j].options.qos;
                        }
                        out.swap_remove(j);
                    } else {
                        j += 1;
                    }
                }
                i += 1;
            }
        }
    }

    /// Stores (or, for an empty payload, clears) the retained message of its topic.
    /// Returns the change in the number of retained messages.
    pub(crate) fn set_retained(&self, msg: Arc<Message>) -> i64 {
        let mut r = self.retained.write();
        if msg.payload.is_empty() {
            -i64::from(r.remove(&*msg.topic).is_some())
        } else {
            let key: Box<str> = Box::from(&*msg.topic);
            i64::from(r.insert(key, msg).is_none())
        }
    }

    /// Retained messages matching `filter` (expired ones are skipped).
    pub(crate) fn retained_for(&self, filter: &str, now: std::time::Instant) -> Vec<Arc<Message>> {
        let r = self.retained.read();
        if !topic::has_wildcard(filter) {
            return r
                .get(filter)
                .filter(|m| !m.is_expired(now))
                .cloned()
                .into_iter()
                .collect();
        }
        r.iter()
            .filter(|(t, m)| topic::matches(filter, t) && !m.is_expired(now))
            .map(|(_, m)| m.clone())
            .collect()
    }
}

fn collect(node: &Node, levels: &[&str], dollar_first: bool, out: &mut Matches) {
    // `#` matches the parent level too ("a/#" matches "a"), but never a `$` topic at the root.
    if !dollar_first {
        out.extend(node.hash.iter().cloned());
    }
    let Some((first, rest)) = levels.split_first() else {
        out.extend(node.exact.iter().cloned());
        return;
    };
    if let Some(child) = node.children.get(*first) {
        collect(child, rest, false, out);
    }
    if !dollar_first && let Some(plus) = &node.plus {
        collect(plus, rest, false, out);
    }
}

fn remove(node: &mut Node, levels: &[&str], session: &Arc<Session>) -> bool {
    match levels {
        ["#"] => {
            let before = node.hash.len();
            node.hash.retain(|s| !same(&s.session, session));
            before != node.hash.len()
        }
        [] => {
            let before = node.exact.len();
            node.exact.retain(|s| !same(&s.session, session));
            before != node.exact.len()
        }
        [first, rest @ ..] => {
            if *first == "+" {
                let Some(plus) = node.plus.as_mut() else {
                    return false;
                };
                let removed = remove(plus, rest, session);
                if plus.is_empty() {
                    node.plus = None;
                }
                removed
            } else {
                let Some(child) = node.children.get_mut(*first) else {
                    return false;
                };
                let removed = remove(child, rest, session);
                if child.is_empty() {
                    node.children.remove(*first);
                }
                removed
            }
        }
    }
}

/// The QoS to deliver with: the lower of the message's and the subscription's, capped at
/// QoS 1 (the broker's outbound maximum).
pub(crate) fn delivery_qos(msg: QoS, sub: QoS) -> QoS {
    msg.min(sub).min(QoS::AtLeastOnce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_mqtt::Protocol;
    use rampart_policy::{Identity, IdentityKind};

    fn session(id: &str) -> Arc<Session> {
        Session::new(
            id.into(),
            Identity {
                kind: IdentityKind::Device,
                id: id.into(),
                client_id: id.into(),
                cert_serial: "00".into(),
                cert_fingerprint: "00".into(),
            },
            Protocol::V5,
            10,
        )
    }

    fn sub(s: &Arc<Session>, qos: QoS) -> Subscriber {
        Subscriber {
            session: s.clone(),
            options: SubscriptionOptions::with_qos(qos),
        }
    }

    fn ids(r: &Router, t: &str) -> Vec<String> {
        let mut m = Matches::new();
        r.matches(t, &mut m);
        let mut v: Vec<String> = m.iter().map(|s| s.session.client_id.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn trie_matches_like_the_filter_function() {
        let r = Router::default();
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/b", "+", "$SYS/#", "a/b/c", "/+",
        ];
        let sessions: Vec<_> = filters.iter().map(|f| (f, session(f))).collect();
        for (f, s) in &sessions {
            r.subscribe(f, sub(s, QoS::AtMostOnce));
        }
        for t in ["a/b", "a", "a/b/c", "b", "/x", "$SYS/up", "x/b", "a/"] {
            let mut expected: Vec<String> = filters
                .iter()
                .filter(|f| topic::matches(f, t))
                .map(|f| f.to_string())
                .collect();
            expected.sort();
            assert_eq!(ids(&r, t), expected, "topic {t}");
        }
    }

    /// What the cache gives is what a walk of the index gives, after every kind of change:
    /// a subscriber added, options replaced, a subscription removed, another topic.
    #[test]
    fn cached_matches_follow_every_change_to_the_index() {
        let r = Router::default();
        let mut cache = RouteCache::default();
        let view = |subs: &[Subscriber]| {
            let mut v: Vec<(String, QoS)> = subs
                .iter()
                .map(|s| (s.session.client_id.to_string(), s.options.qos))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let walked = |r: &Router, t: &str| {
            let mut m = Matches::new();
            r.matches(t, &mut m);
            view(&m)
        };
        let t = "devices/gw-1/telemetry";
        assert!(r.matches_cached(t, &mut cache).is_empty());
        let (a, b) = (session("a"), session("b"));
        r.subscribe("devices/+/telemetry", sub(&a, QoS::AtMostOnce));
        let first = r.matches_cached(t, &mut cache);
        assert_eq!(view(&first), [("a".to_string(), QoS::AtMostOnce)]);
        let again = r.matches_cached(t, &mut cache);
        assert!(
            Arc::ptr_eq(&first, &again),
            "unchanged: the kept subscribers"
        );
        let changes: [&dyn Fn(); 4] = [
            &|| {
                r.subscribe("devices/#", sub(&b, QoS::AtLeastOnce));
            },
            &|| {
                r.subscribe("devices/+/telemetry", sub(&a, QoS::AtLeastOnce));
            },
            &|| {
                r.unsubscribe("devices/#", &b);
            },
            &|| {
                r.unsubscribe("devices/+/telemetry", &a);
            },
        ];
        for change in changes {
            let before = r.matches_cached(t, &mut cache);
            change();
            let after = r.matches_cached(t, &mut cache);
            assert_eq!(view(&after), walked(&r, t));
            assert_ne!(view(&before), view(&after), "each change is seen");
        }
        r.subscribe("devices/gw-2/#", sub(&b, QoS::AtMostOnce));
        assert!(r.matches_cached(t, &mut cache).is_empty());
        let other = r.matches_cached("devices/gw-2/telemetry", &mut cache);
        assert_eq!(view(&other), walked(&r, "devices/gw-2/telemetry"));
        assert_eq!(
            other.len(),
            1,
            "another topic is walked, not taken from the cache"
        );
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_at_max_qos() {
        let r = Router::default();
        let s = session("x");
        r.subscribe("a/#", sub(&s, QoS::AtMostOnce));
        r.subscribe("a/+", sub(&s, QoS::AtLeastOnce));
        let mut m = Matches::new();
        r.matches("a/b", &mut m);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].options.qos, QoS::AtLeastOnce);
    }

    #[test]
    fn unsubscribe_prunes() {
        let r = Router::default();
        let s = session("x");
        assert!(r.subscribe("a/+/c", sub(&s, QoS::AtMostOnce)));
        assert!(
            !r.subscribe("a/+/c", sub(&s, QoS::AtLeastOnce)),
            "replace, not add"
        );
        assert!(r.unsubscribe("a/+/c", &s));
        assert!(!r.unsubscribe("a/+/c", &s));
        assert!(r.root.read().is_empty());
        assert!(ids(&r, "a/b/c").is_empty());
    }
}

//! Policy evaluation.
//!
//! The engine holds the policies, where they are attached, and the facts about each device
//! that variables and attachments depend on (group, attributes, quarantine). For a connection
//! it resolves once the statements that apply — rendering every variable — and caches the
//! result per (identity, client id, certificate); any change to policies, attachments or a
//! device's facts invalidates the cache, so the next packet of a live session is judged by
//! the new rules without a reconnect. Each such change also advances the engine's epoch
//! ([`Authorizer::epoch`]), which is how the broker knows that the answers it keeps per
//! session are still good.
//!
//! Evaluation: an explicit deny that matches wins; otherwise an allow that matches allows;
//! otherwise the answer is deny.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use rampart_mqtt::topic;

use crate::document::{Effect, PolicyDocument};
use crate::identity::{Action, Authorizer, Decision, Identity, IdentityKind};
use crate::template::Bindings;

/// Where a policy is attached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachmentTarget {
    /// Every device.
    Fleet,
    /// Every claim certificate.
    Claims,
    Device(String),
    Group(String),
    Service(String),
    Claim(String),
}

impl AttachmentTarget {
    /// Parses `fleet`, `claims`, `device:ID`, `group:NAME`, `service:NAME`, `claim:NAME`.
    pub fn parse(s: &str) -> Result<AttachmentTarget, String> {
        match s {
            "fleet" => return Ok(AttachmentTarget::Fleet),
            "claims" => return Ok(AttachmentTarget::Claims),
            _ => {}
        }
        let (kind, id) = s
            .split_once(':')
            .ok_or_else(|| format!("attachment target {s:?}: expected fleet, claims or KIND:ID"))?;
        if id.is_empty() {
            return Err(format!("attachment target {s:?}: empty id"));
        }
        let id = id.to_owned();
        match kind {
            "device" => Ok(AttachmentTarget::Device(id)),
            "group" => Ok(AttachmentTarget::Group(id)),
            "service" => Ok(AttachmentTarget::Service(id)),
            "claim" => Ok(AttachmentTarget::Claim(id)),
            other => Err(format!(
                "attachment target kind {other:?}: expected device, group, service or claim"
            )),
        }
    }
}

impl std::fmt::Display for AttachmentTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachmentTarget::Fleet => f.write_str("fleet"),
            AttachmentTarget::Claims => f.write_str("claims"),
            AttachmentTarget::Device(d) => write!(f, "device:{d}"),
            AttachmentTarget::Group(g) => write!(f, "group:{g}"),
            AttachmentTarget::Service(s) => write!(f, "service:{s}"),
            AttachmentTarget::Claim(c) => write!(f, "claim:{c}"),
        }
    }
}

/// What the registry knows about a device that policies depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub group: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub quarantined: bool,
}

/// Policies and attachments (everything but per-device facts).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: HashMap<String, PolicyDocument>,
    pub attachments: Vec<(String, AttachmentTarget)>,
    /// Policy that replaces all others for quarantined devices.
    pub quarantine_policy: Option<String>,
}

/// A statement rendered for one connection.
#[derive(Debug)]
struct Resolved {
    effect: Effect,
    actions: u8,
    resources: Vec<String>,
    origin: String,
}

#[derive(Debug, Default)]
struct ResolvedSet {
    statements: Vec<Resolved>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    kind: IdentityKind,
    id: Arc<str>,
    client_id: Arc<str>,
    cert_serial: Arc<str>,
}

/// The policy engine; the broker's [`Authorizer`].
#[derive(Debug, Default)]
pub struct PolicyEngine {
    set: RwLock<Arc<PolicySet>>,
    facts: RwLock<HashMap<String, Facts>>,
    cache: RwLock<HashMap<CacheKey, Arc<ResolvedSet>>>,
    /// Advanced by every change, while the cache's write lock is held (so a resolution begun
    /// before a change never lands in the cache after it).
    epoch: AtomicU64,
}

impl PolicyEngine {
    pub fn new(set: PolicySet, facts: HashMap<String, Facts>) -> Self {
        PolicyEngine {
            set: RwLock::new(Arc::new(set)),
            facts: RwLock::new(facts),
            cache: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    /// Replaces policies and attachments; applies to live sessions at their next packet.
    pub fn replace_policies(&self, set: PolicySet) {
        let mut cache = self.cache.write();
        *self.set.write() = Arc::new(set);
        cache.clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Sets (or, with `None`, removes) the facts of one device.
    pub fn set_facts(&self, device_id: &str, facts: Option<Facts>) {
        let mut cache = self.cache.write();
        match facts {
            Some(f) => self.facts.write().insert(device_id.to_owned(), f),
            None => self.facts.write().remove(device_id),
        };
        cache.retain(|k, _| &*k.id != device_id);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The facts of a device, if known.
    pub fn facts(&self, device_id: &str) -> Option<Facts> {
        self.facts.read().get(device_id).cloned()
    }

    /// Names of the policies that apply to an identity (for `rampart device show`).
    pub fn applicable_policies(&self, kind: IdentityKind, id: &str) -> Vec<String> {
        let set = self.set.read().clone();
        let facts = self.facts(id).unwrap_or_default();
        applicable(&set, kind, id, &facts)
    }

    fn resolve(&self, identity: &Identity) -> Arc<ResolvedSet> {
        let key = CacheKey {
            kind: identity.kind,
            id: identity.id.clone(),
            client_id: identity.client_id.clone(),
            cert_serial: identity.cert_serial.clone(),
        };
        if let Some(r) = self.cache.read().get(&key) {
            return r.clone();
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let set = self.set.read().clone();
        let facts = self.facts(&identity.id).unwrap_or_default();
        let bindings = Bindings {
            device_id: (identity.kind == IdentityKind::Device).then_some(&*identity.id),
            group: facts.group.as_deref(),
            attributes: &facts.attributes,
            cert_serial: &identity.cert_serial,
            client_id: &identity.client_id,
        };
        let mut statements = Vec::new();
        for name in applicable(&set, identity.kind, &identity.id, &facts) {
            let Some(doc) = set.policies.get(&name) else {
                continue;
            };
            for (i, s) in doc.statements.iter().enumerate() {
                let resources: Vec<String> = s
                    .resources
                    .iter()
                    .filter_map(|t| t.render(&bindings))
                    .collect();
                if resources.is_empty() {
                    continue;
                }
                statements.push(Resolved {
                    effect: s.effect,
                    actions: s.actions.iter().fold(0, |m, a| m | a.bit()),
                    resources,
                    origin: format!("policy {} {}", doc.name, s.label(i)),
                });
            }
        }
        let resolved = Arc::new(ResolvedSet { statements });
        let mut cache = self.cache.write();
        // Resolved from what a change made since may have replaced: used for this answer
        // only (the answer is as of before the change), never cached.
        if self.epoch.load(Ordering::Acquire) == epoch {
            cache.insert(key, resolved.clone());
        }
        resolved
    }
}

fn applicable(set: &PolicySet, kind: IdentityKind, id: &str, facts: &Facts) -> Vec<String> {
    if kind == IdentityKind::Device && facts.quarantined {
        // Quarantine replaces every other policy; without a quarantine policy, nothing is allowed.
        return set.quarantine_policy.iter().cloned().collect();
    }
    let mut names: Vec<String> = set
        .attachments
        .iter()
        .filter(|(_, target)| match (kind, target) {
            (IdentityKind::Device, AttachmentTarget::Fleet) => true,
            (IdentityKind::Device, AttachmentTarget::Device(d)) => d == id,
            (IdentityKind::Device, AttachmentTarget::Group(g)) => facts.group.as_deref() == Some(g),
            (IdentityKind::Service, AttachmentTarget::Service(s)) => s == id,
            (IdentityKind::Claim, AttachmentTarget::Claims) => true,
            (IdentityKind::Claim, AttachmentTarget::Claim(c)) => c == id,
            _ => false,
        })
        .map(|(p, _)| p.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// True if some topic is matched by both filters.
pub(crate) fn filters_overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            _ => return false,
        }
    }
}

fn matches(action: Action, pattern: &str, resource: &str, effect: Effect) -> bool {
    match action {
        Action::Connect => pattern == "*" || pattern == resource,
        Action::Publish | Action::Receive => topic::matches(pattern, resource),
        // Subscribing is allowed when an allow statement covers the whole requested filter and
        // denied when a deny statement overlaps any part of it.
        Action::Subscribe => match effect {
            Effect::Allow => topic::filter_covers(pattern, resource),
            Effect::Deny => filters_overlap(pattern, resource),
        },
    }
}

impl Authorizer for PolicyEngine {
    fn epoch(&self) -> Option<u64> {
        Some(self.epoch.load(Ordering::Acquire))
    }

    fn authorize(&self, identity: &Identity, action: Action, resource: &str) -> Decision {
        let set = self.resolve(identity);
        let bit = action.bit();
        let mut allowed_by = None;
        for s in &set.statements {
            if s.actions & bit == 0 {
                continue;
            }
            if s.resources
                .iter()
                .any(|p| matches(action, p, resource, s.effect))
            {
                match s.effect {
                    Effect::Deny => {
                        return Decision::Deny(format!(
                            "{} on {resource:?} denied by {}",
                            action.as_str(),
                            s.origin
                        ));
                    }
                    Effect::Allow => allowed_by = Some(()),
                }
            }
        }
        match allowed_by {
            Some(()) => Decision::Allow,
            None => Decision::Deny(format!(
                "no policy allows {} {} on {resource:?}",
                identity.kind.as_str(),
                action.as_str()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(kind: IdentityKind, id: &str) -> Identity {
        Identity {
            kind,
            id: id.into(),
            client_id: id.into(),
            cert_serial: "01".into(),
            cert_fingerprint: "ff".into(),
        }
    }

    fn engine(policies: &[&str], attachments: &[(&str, &str)]) -> PolicyEngine {
        let mut set = PolicySet::default();
        for text in policies {
            let p = PolicyDocument::parse(text).unwrap();
            set.policies.insert(p.name.clone(), p);
        }
        set.attachments = attachments
            .iter()
            .map(|(p, t)| (p.to_string(), AttachmentTarget::parse(t).unwrap()))
            .collect();
        set.quarantine_policy = Some("quarantine".into());
        let q = PolicyDocument::parse(PolicyDocument::quarantine_text()).unwrap();
        set.policies.insert(q.name.clone(), q);
        PolicyEngine::new(set, HashMap::new())
    }

    fn allowed(e: &PolicyEngine, i: &Identity, a: Action, r: &str) -> bool {
        e.authorize(i, a, r).is_allowed()
    }

    #[test]
    fn one_fleet_policy_confines_every_device_to_its_own_topics() {
        let e = engine(
            &[PolicyDocument::fleet_default_text()],
            &[("fleet-default", "fleet")],
        );
        let a = identity(IdentityKind::Device, "a");
        assert!(allowed(&e, &a, Action::Connect, "a"));
        assert!(!allowed(&e, &a, Action::Connect, "b"));
        assert!(allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
        assert!(!allowed(&e, &a, Action::Publish, "devices/b/telemetry"));
        assert!(!allowed(&e, &a, Action::Publish, "devices/ab/telemetry"));
        assert!(allowed(&e, &a, Action::Subscribe, "devices/a/#"));
        assert!(!allowed(&e, &a, Action::Subscribe, "devices/+/telemetry"));
        assert!(!allowed(&e, &a, Action::Subscribe, "#"));
        // Not attached to services or claims.
        let s = identity(IdentityKind::Service, "a");
        assert!(!allowed(&e, &s, Action::Publish, "devices/a/telemetry"));
    }

    #[test]
    fn group_policy_grants_a_shared_topic_and_explicit_deny_wins() {
        let group = r#"
name = "berlin"
[[statement]]
effect = "allow"
actions = ["publish", "subscribe", "receive"]
resources = ["groups/${device.group}/#"]
[[statement]]
effect = "deny"
actions = ["publish"]
resources = ["groups/${device.group}/announcements"]
"#;
        let e = engine(
            &[PolicyDocument::fleet_default_text(), group],
            &[("fleet-default", "fleet"), ("berlin", "group:berlin")],
        );
        let a = identity(IdentityKind::Device, "a");
        assert!(
            !allowed(&e, &a, Action::Publish, "groups/berlin/chat"),
            "not in the group yet"
        );
        e.set_facts(
            "a",
            Some(Facts {
                group: Some("berlin".into()),
                ..Default::default()
            }),
        );
        assert!(allowed(&e, &a, Action::Publish, "groups/berlin/chat"));
        assert!(allowed(&e, &a, Action::Subscribe, "groups/berlin/#"));
        let d = e.authorize(&a, Action::Publish, "groups/berlin/announcements");
        assert!(
            matches!(d, Decision::Deny(ref why) if why.contains("denied by policy berlin statement 2")),
            "{d:?}"
        );
        // A deny on part of a filter denies subscribing to the whole filter.
        let deny_sub = r#"
name = "no-secrets"
[[statement]]
effect = "deny"
actions = ["subscribe", "receive"]
resources = ["devices/+/secret"]
"#;
        let e2 = engine(
            &[PolicyDocument::fleet_default_text(), deny_sub],
            &[("fleet-default", "fleet"), ("no-secrets", "fleet")],
        );
        assert!(!allowed(&e2, &a, Action::Subscribe, "devices/a/#"));
        assert!(allowed(&e2, &a, Action::Subscribe, "devices/a/telemetry"));
        assert!(!allowed(&e2, &a, Action::Receive, "devices/a/secret"));
    }

    #[test]
    fn changes_apply_without_reconnecting() {
        let e = engine(
            &[PolicyDocument::fleet_default_text()],
            &[("fleet-default", "fleet")],
        );
        let a = identity(IdentityKind::Device, "a");
        assert!(allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
        // Quarantine: only update and diagnostics topics.
        e.set_facts(
            "a",
            Some(Facts {
                quarantined: true,
                ..Default::default()
            }),
        );
        assert!(!allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
        assert!(allowed(&e, &a, Action::Subscribe, "devices/a/update/#"));
        assert!(allowed(
            &e,
            &a,
            Action::Publish,
            "devices/a/diagnostics/log"
        ));
        e.set_facts("a", Some(Facts::default()));
        assert!(allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
        // Detaching the fleet policy takes effect at once.
        let mut set = PolicySet::default();
        set.policies.insert(
            "fleet-default".into(),
            PolicyDocument::parse(PolicyDocument::fleet_default_text()).unwrap(),
        );
        e.replace_policies(set);
        assert!(!allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
    }

    /// The epoch moves with every change that can change an answer, and only then: the
    /// broker reuses answers while it stays.
    #[test]
    fn the_epoch_moves_with_every_change_and_answers_follow_it() {
        let e = engine(
            &[PolicyDocument::fleet_default_text()],
            &[("fleet-default", "fleet")],
        );
        let a = identity(IdentityKind::Device, "a");
        let start = e.epoch().expect("the engine has an epoch");
        assert!(allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
        assert_eq!(e.epoch(), Some(start), "answering changes nothing");
        e.set_facts(
            "a",
            Some(Facts {
                quarantined: true,
                ..Facts::default()
            }),
        );
        let quarantined = e.epoch().expect("epoch");
        assert!(quarantined > start);
        assert!(!allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
        e.set_facts("a", None);
        assert!(e.epoch().expect("epoch") > quarantined);
        assert!(allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
        let before = e.epoch().expect("epoch");
        e.replace_policies(PolicySet::default());
        assert!(e.epoch().expect("epoch") > before);
        assert!(!allowed(&e, &a, Action::Publish, "devices/a/telemetry"));
    }

    #[test]
    fn services_read_across_devices_only_when_a_policy_says_so() {
        let backend = r#"
name = "backend"
[[statement]]
effect = "allow"
actions = ["connect"]
resources = ["*"]
[[statement]]
effect = "allow"
actions = ["subscribe", "receive"]
resources = ["devices/+/telemetry"]
"#;
        let e = engine(&[backend], &[("backend", "service:pipeline")]);
        let s = identity(IdentityKind::Service, "pipeline");
        assert!(allowed(&e, &s, Action::Connect, "pipeline-worker-3"));
        assert!(allowed(&e, &s, Action::Subscribe, "devices/+/telemetry"));
        assert!(allowed(&e, &s, Action::Receive, "devices/gw-9/telemetry"));
        assert!(!allowed(&e, &s, Action::Publish, "devices/gw-9/telemetry"));
        let other = identity(IdentityKind::Service, "other");
        assert!(!allowed(&e, &other, Action::Connect, "x"));
    }

    #[test]
    fn claims_reach_only_their_provisioning_topics() {
        let e = engine(
            &[PolicyDocument::provisioning_text()],
            &[("provisioning", "claims")],
        );
        let mut c = identity(IdentityKind::Claim, "factory-2026");
        c.client_id = "SN-0042".into();
        assert!(allowed(&e, &c, Action::Connect, "SN-0042"));
        assert!(allowed(
            &e,
            &c,
            Action::Publish,
            "$rampart/provision/SN-0042/request"
        ));
        assert!(!allowed(
            &e,
            &c,
            Action::Publish,
            "$rampart/provision/SN-0043/request"
        ));
        assert!(!allowed(
            &e,
            &c,
            Action::Publish,
            "devices/SN-0042/telemetry"
        ));
    }

    #[test]
    fn overlap() {
        assert!(filters_overlap("a/+/c", "a/b/#"));
        assert!(filters_overlap("#", "x"));
        assert!(!filters_overlap("a/b", "a/c"));
        assert!(!filters_overlap("a/b", "a/b/c"));
        assert!(filters_overlap("a/b/#", "a/b"));
    }
}

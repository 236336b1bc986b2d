//! Authorization: who may do what on which topic.
//!
//! The broker asks one question, through one hook ([`Authorizer::authorize`]): may this
//! verified identity perform this action on this resource? Everything is denied unless a rule
//! allows it. The foundation rule set, [`DeviceNamespace`], confines each device to
//! `devices/{its id}/#` and lets it connect only under its own id; a policy language replaces
//! it later behind the same trait.

use std::sync::Arc;

use rampart_mqtt::topic;

/// What kind of principal a certificate identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// A device: certificate CN = device id.
    Device,
    /// A backend or operator tool.
    Service,
}

/// The verified identity of a connection, taken from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: IdentityKind,
    /// Certificate CN: the device id for devices.
    pub id: Arc<str>,
    /// Serial number of the presented certificate (lowercase hex).
    pub cert_serial: Arc<str>,
}

/// An operation a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Connect with the client id given as resource.
    Connect,
    /// Publish to the topic given as resource.
    Publish,
    /// Subscribe with the topic filter given as resource.
    Subscribe,
    /// Receive a message published on the topic given as resource.
    Receive,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Receive => "receive",
        }
    }
}

/// The answer to an authorization question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, with the reason shown to the operator (logs, metrics labels stay generic).
    Deny(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// The single authorization hook of the broker.
pub trait Authorizer: Send + Sync + 'static {
    /// Decides whether `identity` may perform `action` on `resource`.
    fn authorize(&self, identity: &Identity, action: Action, resource: &str) -> Decision;

    /// Whether [`Action::Receive`] must be checked per delivered message. Rule sets in which a
    /// granted subscription already implies the right to receive everything it matches
    /// return `false`, which keeps the delivery path free of per-message checks.
    fn checks_receive(&self) -> bool {
        false
    }
}

/// Foundation rules: deny by default; a device may connect only as its own id, and publish,
/// subscribe and receive only under `devices/{id}/#`. Services are denied everything until
/// the policy language grants them rights.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceNamespace;

/// Prefix of every device's namespace.
pub const DEVICE_TOPIC_ROOT: &str = "devices/";

/// True if `topic` is `devices/{id}` or below it.
fn in_namespace(id: &str, topic: &str) -> bool {
    topic
        .strip_prefix(DEVICE_TOPIC_ROOT)
        .and_then(|rest| rest.strip_prefix(id))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Authorizer for DeviceNamespace {
    fn authorize(&self, identity: &Identity, action: Action, resource: &str) -> Decision {
        if identity.kind != IdentityKind::Device {
            return Decision::Deny("no policy grants this service identity any right".into());
        }
        let id = &*identity.id;
        let allowed = match action {
            Action::Connect => resource == id,
            Action::Publish | Action::Receive => in_namespace(id, resource),
            Action::Subscribe => {
                topic::filter_covers(&format!("{DEVICE_TOPIC_ROOT}{id}/#"), resource)
            }
        };
        if allowed {
            Decision::Allow
        } else if action == Action::Connect {
            Decision::Deny(format!(
                "client id {resource:?} differs from the certificate identity {id:?}"
            ))
        } else {
            Decision::Deny(format!(
                "{} on {resource:?} is outside the device namespace {DEVICE_TOPIC_ROOT}{id}/#",
                action.as_str()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> Identity {
        Identity {
            kind: IdentityKind::Device,
            id: id.into(),
            cert_serial: "01".into(),
        }
    }

    #[test]
    fn device_is_confined_to_its_namespace() {
        let p = DeviceNamespace;
        let a = device("a");
        for ok in ["devices/a", "devices/a/telemetry", "devices/a/x/y"] {
            assert!(p.authorize(&a, Action::Publish, ok).is_allowed(), "{ok}");
        }
        for bad in [
            "devices/b/telemetry",
            "devices/ab/telemetry",
            "devices/",
            "devices",
            "other/a",
            "$SYS/x",
            "devices/a+",
        ] {
            assert!(!p.authorize(&a, Action::Publish, bad).is_allowed(), "{bad}");
        }
    }

    #[test]
    fn subscriptions_must_stay_inside_the_namespace() {
        let p = DeviceNamespace;
        let a = device("a");
        for ok in ["devices/a/#", "devices/a/+", "devices/a/cmd", "devices/a"] {
            assert!(p.authorize(&a, Action::Subscribe, ok).is_allowed(), "{ok}");
        }
        for bad in [
            "#",
            "devices/#",
            "devices/+/telemetry",
            "devices/b/#",
            "+/a/#",
        ] {
            assert!(
                !p.authorize(&a, Action::Subscribe, bad).is_allowed(),
                "{bad}"
            );
        }
    }

    #[test]
    fn connect_only_as_own_id() {
        let p = DeviceNamespace;
        assert!(p.authorize(&device("a"), Action::Connect, "a").is_allowed());
        let d = p.authorize(&device("a"), Action::Connect, "b");
        assert!(matches!(d, Decision::Deny(ref why) if why.contains("differs")));
    }

    #[test]
    fn services_are_denied_by_default() {
        let s = Identity {
            kind: IdentityKind::Service,
            id: "backend".into(),
            cert_serial: "02".into(),
        };
        assert!(
            !DeviceNamespace
                .authorize(&s, Action::Subscribe, "devices/+/telemetry")
                .is_allowed()
        );
    }
}

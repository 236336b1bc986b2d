//! Identities, actions and decisions: the vocabulary between the broker and the policies.

use std::sync::Arc;

/// What kind of principal a certificate identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// A device: certificate CN = device id.
    Device,
    /// A backend, data pipeline or test harness (`rampart service add`).
    Service,
    /// A factory claim certificate: may only provision itself.
    Claim,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Device => "device",
            IdentityKind::Service => "service",
            IdentityKind::Claim => "claim",
        }
    }
}

/// The verified identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: IdentityKind,
    /// Certificate CN: the device id, service name or claim name.
    pub id: Arc<str>,
    /// The MQTT client id of the connection.
    pub client_id: Arc<str>,
    /// Serial number of the presented certificate (lowercase hex).
    pub cert_serial: Arc<str>,
    /// SHA-256 of the presented certificate (lowercase hex).
    pub cert_fingerprint: Arc<str>,
}

/// An operation a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    pub const ALL: [Action; 4] = [
        Action::Connect,
        Action::Publish,
        Action::Subscribe,
        Action::Receive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Receive => "receive",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Actions whose resource is a topic (or topic filter).
    pub fn is_topic_action(self) -> bool {
        self != Action::Connect
    }
}

/// The answer to an authorization question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, with the reason shown to the operator.
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

    /// Whether [`Action::Receive`] must be checked per delivered message.
    fn checks_receive(&self) -> bool {
        true
    }

    /// A number that changes whenever any answer may change (for the policy engine: a change
    /// of policies, attachments or a device's facts). While it is unchanged, the same
    /// question gets the same answer, so a caller may reuse an answer it got after reading
    /// the epoch. `None` (the default): answers must not be reused.
    fn epoch(&self) -> Option<u64> {
        None
    }
}

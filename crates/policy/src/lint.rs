//! The policy linter: statements that grant more than a device should have, and statements
//! that can never take effect.

use rampart_mqtt::topic;

use crate::document::{Effect, PolicyDocument};
use crate::identity::Action;
use crate::template::Template;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One finding of the linter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// 1-based statement number, with its sid.
    pub statement: String,
    pub message: String,
    pub hint: String,
}

/// Renders a template with variables as a unique literal level (an allow's view: one
/// identity) or as `+` (a deny's view: it applies whatever the value).
fn concrete(t: &Template, as_wildcard: bool) -> String {
    t.with_placeholder(if as_wildcard { "+" } else { "\u{1}v" })
}

/// True if the rendered filter reaches topics of every identity: a wildcard and no variable
/// that singles out the identity.
fn cross_identity(t: &Template) -> bool {
    !t.has_identity_variable() && topic::has_wildcard(&t.with_placeholder("x"))
}

/// Lints one policy.
pub fn lint(doc: &PolicyDocument) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, s) in doc.statements.iter().enumerate() {
        let label = s.label(i);
        let topic_actions: Vec<Action> = s
            .actions
            .iter()
            .copied()
            .filter(|a| a.is_topic_action())
            .collect();
        if s.effect == Effect::Allow {
            for r in &s.resources {
                let sample = r.with_placeholder("x");
                if s.actions.contains(&Action::Connect)
                    && sample == "*"
                    && !r.has_identity_variable()
                {
                    out.push(Finding {
                        severity: Severity::Warning,
                        statement: label.clone(),
                        message: "allows connecting under any client id: the identity can take over other clients' sessions".into(),
                        hint: "for devices use resources = [\"${device.id}\"]; keep \"*\" for service identities that need several client ids".into(),
                    });
                }
                if topic_actions.is_empty() {
                    continue;
                }
                // "#", "+/#", "+/+/#": every topic, whatever its levels.
                let levels: Vec<&str> = sample.split('/').collect();
                let everything = levels.last() == Some(&"#")
                    && levels[..levels.len() - 1].iter().all(|l| *l == "+");
                if everything && !r.has_identity_variable() {
                    out.push(Finding {
                        severity: if topic_actions.contains(&Action::Publish) {
                            Severity::Error
                        } else {
                            Severity::Warning
                        },
                        statement: label.clone(),
                        message: format!(
                            "{} on {:?} reaches every topic of every device",
                            topic_actions
                                .iter()
                                .map(|a| a.as_str())
                                .collect::<Vec<_>>()
                                .join("/"),
                            r.source()
                        ),
                        hint: "confine devices with a variable, e.g. \"devices/${device.id}/#\""
                            .into(),
                    });
                } else if cross_identity(r) {
                    out.push(Finding {
                        severity: Severity::Warning,
                        statement: label.clone(),
                        message: format!(
                            "{:?} has wildcards and no identity variable: it grants cross-device access",
                            r.source()
                        ),
                        hint: "attach it only to service identities, or add ${device.id} / ${client.id} to the resource".into(),
                    });
                }
            }
            // An allow covered by a deny of the same policy never takes effect.
            for (j, d) in doc.statements.iter().enumerate() {
                if d.effect != Effect::Deny || j == i {
                    continue;
                }
                let shadowed = s.actions.iter().all(|a| {
                    d.actions.contains(a)
                        && s.resources.iter().all(|r| {
                            d.resources.iter().any(|dr| {
                                let (allow, deny) = (concrete(r, false), concrete(dr, true));
                                if *a == Action::Connect {
                                    deny == "*" || deny == allow
                                } else {
                                    topic::filter_covers(&deny, &allow)
                                }
                            })
                        })
                });
                if shadowed {
                    out.push(Finding {
                        severity: Severity::Warning,
                        statement: label.clone(),
                        message: format!(
                            "can never take effect: {} denies everything it allows",
                            d.label(j)
                        ),
                        hint: "remove the statement or narrow the deny".into(),
                    });
                }
            }
            // Subscribing without the right to receive delivers nothing.
            if s.actions.contains(&Action::Subscribe) {
                for r in &s.resources {
                    let covered = doc.statements.iter().any(|o| {
                        o.effect == Effect::Allow
                            && o.actions.contains(&Action::Receive)
                            && o.resources.iter().any(|or| {
                                topic::filter_covers(&concrete(or, true), &concrete(r, false))
                                    || or.source() == r.source()
                            })
                    });
                    if !covered {
                        out.push(Finding {
                            severity: Severity::Info,
                            statement: label.clone(),
                            message: format!(
                                "allows subscribing to {:?} but no statement of this policy allows receiving it",
                                r.source()
                            ),
                            hint: "add \"receive\" to the actions unless another policy grants it".into(),
                        });
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.statement.cmp(&b.statement))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(text: &str) -> Vec<Finding> {
        lint(&PolicyDocument::parse(text).unwrap())
    }

    #[test]
    fn built_in_policies_are_clean_or_explained() {
        assert!(findings(PolicyDocument::fleet_default_text()).is_empty());
        assert!(findings(PolicyDocument::quarantine_text()).is_empty());
        // The claim policy allows any client id on purpose (the device id is not known yet).
        let p = findings(PolicyDocument::provisioning_text());
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("any client id"));
    }

    #[test]
    fn publish_everywhere_is_an_error() {
        let f = findings(
            "name = \"bad\"\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\"]\nresources = [\"#\"]",
        );
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].message.contains("every topic of every device"));
    }

    #[test]
    fn cross_device_access_without_identity_variable_is_flagged() {
        let f = findings(
            "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"subscribe\", \"receive\"]\nresources = [\"devices/+/telemetry\"]",
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].message.contains("cross-device"));
        // A single shared topic without wildcards is fine.
        assert!(findings("name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"subscribe\", \"receive\"]\nresources = [\"fleet/announcements\"]").is_empty());
    }

    #[test]
    fn shadowed_statements_never_match() {
        let f = findings(
            "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\"]\nresources = [\"devices/${device.id}/x\"]\n\
             [[statement]]\neffect = \"deny\"\nactions = [\"publish\"]\nresources = [\"devices/${device.id}/#\"]",
        );
        assert!(
            f.iter().any(
                |f| f.message.contains("can never take effect") && f.statement == "statement 1"
            ),
            "{f:?}"
        );
        // A deny of another device's namespace does not shadow the identity's own.
        let f = findings(
            "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\"]\nresources = [\"devices/${device.id}/x\"]\n\
             [[statement]]\neffect = \"deny\"\nactions = [\"publish\"]\nresources = [\"devices/gw-7/#\"]",
        );
        assert!(
            !f.iter()
                .any(|f| f.message.contains("can never take effect")),
            "{f:?}"
        );
    }

    #[test]
    fn subscribe_without_receive_is_noted() {
        let f = findings(
            "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"subscribe\"]\nresources = [\"devices/${device.id}/cmd\"]",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Info);
    }
}

//! Loading policies, attachments and device facts from the registry into the policy engine,
//! and installing the built-in policies in a new registry.

use std::collections::HashMap;

use rampart_policy::{AttachmentTarget, Facts, PolicyDocument, PolicyEngine, PolicySet};
use rampart_store::{Device, IdentityKind, Store};

use crate::config::HubConfig;
use crate::error::HubError;

/// The facts a device's policies depend on.
pub fn facts_of(d: &Device) -> Facts {
    Facts {
        group: d.group.clone(),
        attributes: d.attributes.clone(),
        quarantined: d.quarantined,
    }
}

/// Policies and attachments as stored; `quarantine` names the quarantine policy.
pub async fn load_set(store: &dyn Store, quarantine: &str) -> Result<PolicySet, HubError> {
    let mut set = PolicySet {
        quarantine_policy: Some(quarantine.to_owned()),
        ..Default::default()
    };
    for p in store.policies().await? {
        match PolicyDocument::parse(&p.document) {
            Ok(doc) => {
                set.policies.insert(p.name.clone(), doc);
            }
            // Stored policies were validated when written; a bad one is skipped (its rights
            // are not granted) and reported, never half-applied.
            Err(e) => {
                tracing::error!(policy = %p.name, error = %e, "stored policy does not parse; ignored")
            }
        }
    }
    for (policy, target) in store.attachments().await? {
        match AttachmentTarget::parse(&target) {
            Ok(t) => set.attachments.push((policy, t)),
            Err(e) => tracing::error!(%policy, %target, error = %e, "bad attachment ignored"),
        }
    }
    Ok(set)
}

/// A policy engine with everything from the registry.
pub async fn load_engine(store: &dyn Store, cfg: &HubConfig) -> Result<PolicyEngine, HubError> {
    let set = load_set(store, &cfg.policy.quarantine).await?;
    let facts: HashMap<String, Facts> = store
        .identities(Some(IdentityKind::Device))
        .await?
        .iter()
        .map(|d| (d.id.clone(), facts_of(d)))
        .collect();
    Ok(PolicyEngine::new(set, facts))
}

/// Installs the built-in policies into a registry that has none: `fleet-default` attached to
/// the fleet, `quarantine`, and `provisioning` attached to all claims.
pub async fn install_builtin(store: &dyn Store) -> Result<bool, HubError> {
    if !store.policies().await?.is_empty() {
        return Ok(false);
    }
    for (text, target) in [
        (PolicyDocument::fleet_default_text(), Some("fleet")),
        (PolicyDocument::quarantine_text(), None),
        (PolicyDocument::provisioning_text(), Some("claims")),
    ] {
        let doc = PolicyDocument::parse(text).map_err(|e| HubError::Invalid(e.to_string()))?;
        store.put_policy(&doc.name, text).await?;
        if let Some(t) = target {
            store.attach_policy(&doc.name, t).await?;
        }
    }
    Ok(true)
}

//! SPDX 3.0.1 JSON-LD: writing.
//!
//! The document is one `@graph` of elements (SPDX 3.0.1 model, Core, Software and
//! SimpleLicensing profiles): a shared `CreationInfo`, the manufacturer as an
//! `Organization` (creator and supplier), the `SpdxDocument`, a `software_Sbom` whose root
//! is the described component, one `software_Package` per component, and `Relationship`s.
//! Dependencies are `dependsOn` relationships carrying SPDX 3's own completeness marker
//! (`complete`, `incomplete`, `noAssertion`); a component known to have no dependencies
//! points at the `NoneElement` individual. Declared licences are
//! `simplelicensing_LicenseExpression` elements linked by `hasDeclaredLicense`.
//!
//! Identifiers are IRIs under a namespace unique to the document (a random UUID), so two
//! SBOMs never share element ids.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Completeness, ComponentKind, Sbom};

/// The JSON-LD context every SPDX 3.0.1 document names.
pub const CONTEXT: &str = "https://spdx.org/rdf/3.0.1/spdx-context.jsonld";

/// SPDX 3 hash algorithm names (lower case, no dash) from the CycloneDX spelling.
fn hash_algorithm(alg: &str) -> Option<&'static str> {
    Some(match alg {
        "SHA-1" => "sha1",
        "SHA-256" => "sha256",
        "SHA-384" => "sha384",
        "SHA-512" => "sha512",
        "SHA3-256" => "sha3_256",
        "SHA3-384" => "sha3_384",
        "SHA3-512" => "sha3_512",
        "BLAKE2b-256" => "blake2b256",
        "BLAKE2b-384" => "blake2b384",
        "BLAKE2b-512" => "blake2b512",
        "BLAKE3" => "blake3",
        "MD5" => "md5",
        _ => return None,
    })
}

/// SPDX 3 timestamps are UTC with seconds and no fraction: `2026-11-23T08:00:00Z`.
fn timestamp(rfc3339: &str) -> String {
    match time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        // The model keeps `created` as given; an unparsable value is written as is and the
        // reader of the document sees it (the writers of this crate always set RFC 3339).
        Err(_) => rfc3339.to_owned(),
    }
}

/// Writes the SBOM as an SPDX 3.0.1 JSON-LD document.
pub fn write(sbom: &Sbom) -> Value {
    let ns = format!(
        "https://spdx.org/spdxdocs/rampart/{}/",
        uuid::Uuid::new_v4()
    );
    let ci = "_:creationinfo";
    let ids: HashMap<&str, String> = sbom
        .all_components()
        .enumerate()
        .map(|(i, c)| (c.bom_ref.as_str(), format!("{ns}package/{i}")))
        .collect();
    let mut graph: Vec<Value> = Vec::new();
    let mut elements: Vec<String> = Vec::new();

    let tool_id = format!("{ns}tool");
    let creator_id = format!("{ns}creator");
    let creator_name = sbom.author.clone().unwrap_or_else(|| sbom.tool.clone());
    graph.push(json!({
        "type": "CreationInfo",
        "@id": ci,
        "specVersion": "3.0.1",
        "created": timestamp(&sbom.created),
        "createdBy": [creator_id],
        "createdUsing": [tool_id],
    }));
    graph.push(json!({
        "type": "Organization",
        "spdxId": creator_id,
        "creationInfo": ci,
        "name": creator_name,
    }));
    graph.push(json!({
        "type": "Tool",
        "spdxId": tool_id,
        "creationInfo": ci,
        "name": sbom.tool,
    }));
    elements.push(creator_id.clone());
    elements.push(tool_id);

    // Suppliers other than the creator become organisations of their own, once each.
    let mut suppliers: HashMap<&str, String> = HashMap::new();
    for c in sbom.all_components() {
        if let Some(s) = c.supplier.as_deref()
            && !suppliers.contains_key(s)
        {
            let id = if Some(s) == sbom.author.as_deref() {
                creator_id.clone()
            } else {
                let id = format!("{ns}supplier/{}", suppliers.len());
                graph.push(json!({
                    "type": "Organization",
                    "spdxId": id,
                    "creationInfo": ci,
                    "name": s,
                }));
                elements.push(id.clone());
                id
            };
            suppliers.insert(s, id);
        }
    }

    let mut relationship = 0usize;
    let mut rel = |graph: &mut Vec<Value>,
                   elements: &mut Vec<String>,
                   from: &str,
                   kind: &str,
                   to: Vec<String>,
                   completeness: Option<&str>| {
        let id = format!("{ns}relationship/{relationship}");
        relationship += 1;
        let mut r = json!({
            "type": "Relationship",
            "spdxId": id,
            "creationInfo": ci,
            "from": from,
            "relationshipType": kind,
            "to": to,
        });
        if let Some(c) = completeness {
            r["completeness"] = c.into();
        }
        graph.push(r);
        elements.push(id);
    };

    let mut licenses: HashMap<&str, String> = HashMap::new();
    for c in sbom.all_components() {
        let id = ids[c.bom_ref.as_str()].clone();
        let mut p = json!({
            "type": "software_Package",
            "spdxId": id,
            "creationInfo": ci,
            "name": c.name,
            "software_packageVersion": c.version,
            "software_primaryPurpose": match c.kind {
                ComponentKind::Application => "application",
                ComponentKind::Library => "library",
                ComponentKind::Firmware => "firmware",
                ComponentKind::OperatingSystem => "operatingSystem",
                ComponentKind::File => "file",
            },
        });
        if let Some(purl) = &c.purl {
            p["software_packageUrl"] = purl.clone().into();
        }
        if let Some(s) = c.supplier.as_deref() {
            p["suppliedBy"] = suppliers[s].clone().into();
        }
        if !c.authors.is_empty() {
            p["comment"] = format!("Authors: {}", c.authors.join(", ")).into();
        }
        if let Some(d) = &c.description {
            p["summary"] = d.clone().into();
        }
        if let Some(u) = &c.download_url {
            p["software_downloadLocation"] = u.clone().into();
        }
        if let Some(u) = &c.source_url {
            p["software_sourceInfo"] = format!("source: {u}").into();
        }
        let hashes: Vec<Value> = c
            .hashes
            .iter()
            .filter_map(|h| {
                hash_algorithm(&h.alg)
                    .map(|a| json!({"type": "Hash", "algorithm": a, "hashValue": h.value}))
            })
            .collect();
        if !hashes.is_empty() {
            p["verifiedUsing"] = hashes.into();
        }
        graph.push(p);
        elements.push(id.clone());

        if let Some(expr) = c.license.as_deref() {
            let lid = match licenses.get(expr) {
                Some(l) => l.clone(),
                None => {
                    let l = format!("{ns}license/{}", licenses.len());
                    graph.push(json!({
                        "type": "simplelicensing_LicenseExpression",
                        "spdxId": l,
                        "creationInfo": ci,
                        "simplelicensing_licenseExpression": expr,
                    }));
                    elements.push(l.clone());
                    licenses.insert(expr, l.clone());
                    l
                }
            };
            rel(
                &mut graph,
                &mut elements,
                &id,
                "hasDeclaredLicense",
                vec![lid],
                None,
            );
        }

        let deps: Vec<String> = sbom
            .depends_on(&c.bom_ref)
            .iter()
            .filter_map(|d| ids.get(d.as_str()).cloned())
            .collect();
        let completeness = match c.dependencies_complete {
            Completeness::Complete => "complete",
            Completeness::Incomplete => "incomplete",
            Completeness::Unknown => "noAssertion",
        };
        let to = if deps.is_empty() {
            match c.dependencies_complete {
                Completeness::Complete => vec!["NoneElement".to_owned()],
                _ => vec!["NoAssertionElement".to_owned()],
            }
        } else {
            deps
        };
        rel(
            &mut graph,
            &mut elements,
            &id,
            "dependsOn",
            to,
            Some(completeness),
        );
    }

    let sbom_id = format!("{ns}sbom");
    let root = ids[sbom.root.bom_ref.as_str()].clone();
    graph.push(json!({
        "type": "software_Sbom",
        "spdxId": sbom_id,
        "creationInfo": ci,
        "name": format!("SBOM of {} {}", sbom.root.name, sbom.root.version),
        "software_sbomType": ["build"],
        "rootElement": [root],
        "element": elements,
        "profileConformance": ["core", "software", "simpleLicensing"],
    }));
    let doc_id = format!("{ns}document");
    let mut all = elements.clone();
    all.push(sbom_id.clone());
    graph.push(json!({
        "type": "SpdxDocument",
        "spdxId": doc_id,
        "creationInfo": ci,
        "name": format!("{}-{}", sbom.root.name, sbom.root.version),
        "rootElement": [sbom_id],
        "element": all,
        "profileConformance": ["core", "software", "simpleLicensing"],
    }));
    json!({"@context": CONTEXT, "@graph": graph})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::{Component, Hash};

    fn component(name: &str, complete: Completeness) -> Component {
        Component {
            bom_ref: format!("pkg:cargo/{name}@1.0.0"),
            kind: ComponentKind::Library,
            name: name.into(),
            version: "1.0.0".into(),
            purl: Some(format!("pkg:cargo/{name}@1.0.0")),
            supplier: None,
            authors: vec![],
            license: Some("MIT OR Apache-2.0".into()),
            hashes: vec![Hash {
                alg: "SHA-256".into(),
                value: "ab".repeat(32),
            }],
            description: None,
            source_url: None,
            download_url: None,
            filename: None,
            dependencies_complete: complete,
        }
    }

    #[test]
    fn graph_has_packages_dependencies_with_completeness_and_shared_licences() {
        let mut root = component("gateway", Completeness::Complete);
        root.kind = ComponentKind::Application;
        root.supplier = Some("Example Energy GmbH".into());
        let sbom = Sbom {
            root,
            components: vec![
                component("a", Completeness::Complete),
                component("b", Completeness::Unknown),
            ],
            dependencies: vec![(
                "pkg:cargo/gateway@1.0.0".into(),
                vec!["pkg:cargo/a@1.0.0".into(), "pkg:cargo/b@1.0.0".into()],
            )],
            created: "2026-11-23T09:30:00.5+01:00".into(),
            author: Some("Example Energy GmbH".into()),
            tool: "rampart 0.1.0".into(),
            source_format: None,
        };
        let doc = write(&sbom);
        assert_eq!(doc["@context"], CONTEXT);
        let g = doc["@graph"].as_array().expect("graph");
        let of = |t: &str| g.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
        assert_eq!(of("CreationInfo")[0]["created"], "2026-11-23T08:30:00Z");
        assert_eq!(of("software_Package").len(), 3);
        // One licence element shared by all three packages.
        assert_eq!(of("simplelicensing_LicenseExpression").len(), 1);
        // The supplier equal to the author is the creator organisation, not a second one.
        assert_eq!(of("Organization").len(), 1);
        let deps: Vec<&Value> = of("Relationship")
            .into_iter()
            .filter(|r| r["relationshipType"] == "dependsOn")
            .collect();
        assert_eq!(deps.len(), 3);
        assert_eq!(deps[0]["to"].as_array().map(Vec::len), Some(2));
        assert_eq!(deps[0]["completeness"], "complete");
        assert_eq!(deps[1]["to"][0], "NoneElement");
        assert_eq!(deps[2]["to"][0], "NoAssertionElement");
        assert_eq!(deps[2]["completeness"], "noAssertion");
        assert_eq!(
            of("software_Package")[1]["verifiedUsing"][0]["algorithm"],
            "sha256"
        );
        // Every element the document lists exists in the graph.
        let ids: Vec<&str> = g.iter().filter_map(|e| e["spdxId"].as_str()).collect();
        for e in of("SpdxDocument")[0]["element"]
            .as_array()
            .expect("elements")
        {
            assert!(ids.contains(&e.as_str().expect("id")), "{e}");
        }
    }
}

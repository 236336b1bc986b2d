//! SPDX 2.3 JSON: writing and reading.
//!
//! SPDX 2.3 has no completeness field; the writer states it with relationships: a component
//! whose dependencies are known to be none `DEPENDS_ON NONE`, one whose dependencies are not
//! known `DEPENDS_ON NOASSERTION` (SPDX 2.3 clause 11). SPDX 3.0.1 JSON-LD is written by `spdx3`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Completeness, Component, ComponentKind, Hash, Sbom};
use crate::ComplianceError;

fn spdx_alg(alg: &str) -> String {
    alg.replace('-', "").to_ascii_uppercase()
}

fn cdx_alg(alg: &str) -> String {
    match alg {
        "SHA1" => "SHA-1".into(),
        "SHA256" => "SHA-256".into(),
        "SHA384" => "SHA-384".into(),
        "SHA512" => "SHA-512".into(),
        other => other.into(),
    }
}

/// Writes the SBOM as an SPDX 2.3 JSON document.
pub fn write(sbom: &Sbom) -> Value {
    let ids: HashMap<&str, String> = sbom
        .all_components()
        .enumerate()
        .map(|(i, c)| {
            let safe: String = c
                .name
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
                .collect();
            (c.bom_ref.as_str(), format!("SPDXRef-Package-{i}-{safe}"))
        })
        .collect();
    let packages: Vec<Value> = sbom
        .all_components()
        .map(|c| {
            let mut p = json!({
                "SPDXID": ids[c.bom_ref.as_str()],
                "name": c.name,
                "versionInfo": c.version,
                "downloadLocation": c.download_url.clone().unwrap_or_else(|| "NOASSERTION".into()),
                "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": c.license.clone().unwrap_or_else(|| "NOASSERTION".into()),
                "copyrightText": "NOASSERTION",
                "supplier": c.supplier.as_ref().map(|s| format!("Organization: {s}")).unwrap_or_else(|| "NOASSERTION".into()),
                "primaryPackagePurpose": match c.kind {
                    ComponentKind::Application => "APPLICATION",
                    ComponentKind::Library => "LIBRARY",
                    ComponentKind::Firmware => "FIRMWARE",
                    ComponentKind::OperatingSystem => "OPERATING-SYSTEM",
                    ComponentKind::File => "FILE",
                },
            });
            if !c.hashes.is_empty() {
                p["checksums"] = c
                    .hashes
                    .iter()
                    .map(|h| json!({"algorithm": spdx_alg(&h.alg), "checksumValue": h.value}))
                    .collect();
            }
            if let Some(purl) = &c.purl {
                p["externalRefs"] = json!([{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl,
                }]);
            }
            if let Some(u) = &c.source_url {
                p["homepage"] = u.clone().into();
            }
            if let Some(f) = &c.filename {
                p["packageFileName"] = f.clone().into();
            }
            if !c.authors.is_empty() {
                p["originator"] = format!("Organization: {}", c.authors.join(", ")).into();
            }
            if let Some(d) = &c.description {
                p["summary"] = d.clone().into();
            }
            p
        })
        .collect();
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": ids[sbom.root.bom_ref.as_str()],
    })];
    for c in sbom.all_components() {
        let deps = sbom.depends_on(&c.bom_ref);
        for d in deps {
            if let Some(target) = ids.get(d.as_str()) {
                relationships.push(json!({
                    "spdxElementId": ids[c.bom_ref.as_str()],
                    "relationshipType": "DEPENDS_ON",
                    "relatedSpdxElement": target,
                }));
            }
        }
        let marker = match c.dependencies_complete {
            Completeness::Complete if deps.is_empty() => Some("NONE"),
            Completeness::Unknown | Completeness::Incomplete => Some("NOASSERTION"),
            Completeness::Complete => None,
        };
        if let Some(m) = marker {
            relationships.push(json!({
                "spdxElementId": ids[c.bom_ref.as_str()],
                "relationshipType": "DEPENDS_ON",
                "relatedSpdxElement": m,
            }));
        }
    }
    let mut creators = vec![format!("Tool: {}", sbom.tool)];
    if let Some(a) = &sbom.author {
        creators.push(format!("Organization: {a}"));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", sbom.root.name, sbom.root.version),
        "documentNamespace": format!(
            "https://spdx.org/spdxdocs/rampart/{}-{}-{}",
            sbom.root.name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
            sbom.root.version.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "-"),
            uuid::Uuid::new_v4()
        ),
        "creationInfo": {"created": sbom.created, "creators": creators},
        "documentDescribes": [ids[sbom.root.bom_ref.as_str()]],
        "packages": packages,
        "relationships": relationships,
    })
}

/// Reads an SPDX 2.3 JSON document.
pub fn read(file: &str, doc: &Value) -> Result<Sbom, ComplianceError> {
    let version = doc.get("spdxVersion").and_then(Value::as_str).unwrap_or("");
    if version != "SPDX-2.3" && version != "SPDX-2.2" {
        return Err(ComplianceError::UnknownFormat {
            file: file.into(),
            message: format!("spdxVersion {version:?} (SPDX-2.3 is read)"),
        });
    }
    let packages = doc
        .get("packages")
        .and_then(Value::as_array)
        .ok_or_else(|| ComplianceError::invalid(file, "packages", "missing or not an array"))?;
    let mut by_id: Vec<(String, Component)> = Vec::new();
    for (i, p) in packages.iter().enumerate() {
        let place = format!("packages[{i}]");
        let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
        let id = s("SPDXID")
            .ok_or_else(|| ComplianceError::invalid(file, format!("{place}.SPDXID"), "missing"))?;
        let name = s("name")
            .ok_or_else(|| ComplianceError::invalid(file, format!("{place}.name"), "missing"))?;
        let assertion = |v: Option<String>| v.filter(|x| x != "NOASSERTION" && x != "NONE");
        let purl = p
            .get("externalRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| r.get("referenceType").and_then(Value::as_str) == Some("purl"))
            .and_then(|r| r.get("referenceLocator"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut hashes = Vec::new();
        for (j, h) in p
            .get("checksums")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            match (
                h.get("algorithm").and_then(Value::as_str),
                h.get("checksumValue").and_then(Value::as_str),
            ) {
                (Some(a), Some(v)) => hashes.push(Hash {
                    alg: cdx_alg(a),
                    value: v.to_ascii_lowercase(),
                }),
                _ => {
                    return Err(ComplianceError::invalid(
                        file,
                        format!("{place}.checksums[{j}]"),
                        "a checksum needs algorithm and checksumValue",
                    ));
                }
            }
        }
        let supplier = assertion(s("supplier")).map(|v| {
            v.trim_start_matches("Organization:")
                .trim_start_matches("Person:")
                .trim()
                .to_owned()
        });
        let kind = match s("primaryPackagePurpose").as_deref() {
            Some("APPLICATION") => ComponentKind::Application,
            Some("FIRMWARE") => ComponentKind::Firmware,
            Some("OPERATING-SYSTEM") => ComponentKind::OperatingSystem,
            Some("FILE") => ComponentKind::File,
            _ => ComponentKind::Library,
        };
        by_id.push((
            id.clone(),
            Component {
                bom_ref: purl.clone().unwrap_or_else(|| id.clone()),
                kind,
                version: s("versionInfo").unwrap_or_default(),
                name,
                purl,
                supplier,
                authors: Vec::new(),
                license: assertion(s("licenseDeclared")),
                hashes,
                description: s("summary").or_else(|| s("description")),
                source_url: assertion(s("homepage")),
                download_url: assertion(s("downloadLocation")),
                filename: s("packageFileName"),
                dependencies_complete: Completeness::Unknown,
            },
        ));
    }
    let ref_of: HashMap<String, String> = by_id
        .iter()
        .map(|(id, c)| (id.clone(), c.bom_ref.clone()))
        .collect();
    let mut root_id = doc
        .get("documentDescribes")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut markers: HashMap<String, Completeness> = HashMap::new();
    for (i, r) in doc
        .get("relationships")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let g = |k: &str| r.get(k).and_then(Value::as_str);
        let (Some(a), Some(t), Some(b)) = (
            g("spdxElementId"),
            g("relationshipType"),
            g("relatedSpdxElement"),
        ) else {
            return Err(ComplianceError::invalid(
                file,
                format!("relationships[{i}]"),
                "a relationship needs spdxElementId, relationshipType and relatedSpdxElement",
            ));
        };
        match t {
            "DESCRIBES" if a == "SPDXRef-DOCUMENT" && root_id.is_none() => {
                root_id = Some(b.to_owned())
            }
            "DEPENDS_ON" | "CONTAINS" if b == "NONE" => {
                markers.insert(a.to_owned(), Completeness::Complete);
            }
            "DEPENDS_ON" | "CONTAINS" if b == "NOASSERTION" => {
                markers.insert(a.to_owned(), Completeness::Unknown);
            }
            "DEPENDS_ON" | "CONTAINS" => deps.entry(a.to_owned()).or_default().push(b.to_owned()),
            "DEPENDENCY_OF" => deps.entry(b.to_owned()).or_default().push(a.to_owned()),
            _ => {}
        }
    }
    let root_id = root_id
        .or_else(|| by_id.first().map(|(id, _)| id.clone()))
        .ok_or_else(|| ComplianceError::invalid(file, "packages", "no packages"))?;
    let mut root = None;
    let mut components = Vec::new();
    for (id, mut c) in by_id {
        if let Some(m) = markers.get(&id) {
            c.dependencies_complete = *m;
        }
        if id == root_id {
            root = Some(c);
        } else {
            components.push(c);
        }
    }
    let root = root.ok_or_else(|| {
        ComplianceError::invalid(
            file,
            "documentDescribes",
            format!("{root_id} is not a package"),
        )
    })?;
    let dependencies = deps
        .into_iter()
        .filter_map(|(a, bs)| {
            Some((
                ref_of.get(&a)?.clone(),
                bs.iter().filter_map(|b| ref_of.get(b).cloned()).collect(),
            ))
        })
        .collect();
    Ok(Sbom {
        root,
        components,
        dependencies,
        created: doc
            .pointer("/creationInfo/created")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        author: None,
        tool: "unknown".into(),
        source_format: Some(version.replace('-', " ")),
    })
}

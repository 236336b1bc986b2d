//! CycloneDX 1.6 JSON (ECMA-424): writing, and reading 1.4 to 1.6.
//!
//! Completeness goes into `compositions`: one aggregate per completeness value, listing the
//! components whose direct dependencies it describes. BSI TR-03183-2 fields without a
//! CycloneDX core field (the deployable's file name) are `bsi:tr-03183:*`-style properties.

use serde_json::{Map, Value, json};

use super::{Completeness, Component, ComponentKind, Hash, Sbom};
use crate::ComplianceError;

/// Writes the SBOM as a CycloneDX 1.6 JSON document.
pub fn write(sbom: &Sbom) -> Value {
    let mut metadata = Map::new();
    metadata.insert("timestamp".into(), sbom.created.clone().into());
    let (tool_name, tool_version) = sbom
        .tool
        .split_once('-')
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .unwrap_or((sbom.tool.clone(), String::new()));
    let mut tool = json!({"type": "application", "name": tool_name});
    if !tool_version.is_empty() {
        tool["version"] = tool_version.into();
    }
    metadata.insert("tools".into(), json!({"components": [tool]}));
    if let Some(a) = &sbom.author {
        metadata.insert("authors".into(), json!([{"name": a}]));
        metadata.insert("manufacturer".into(), json!({"name": a}));
    }
    metadata.insert("component".into(), component(&sbom.root));
    let dependencies: Vec<Value> = sbom
        .all_components()
        .map(|c| json!({"ref": c.bom_ref, "dependsOn": sbom.depends_on(&c.bom_ref)}))
        .collect();
    let mut compositions = Vec::new();
    for completeness in [
        Completeness::Complete,
        Completeness::Incomplete,
        Completeness::Unknown,
    ] {
        let refs: Vec<&str> = sbom
            .all_components()
            .filter(|c| c.dependencies_complete == completeness)
            .map(|c| c.bom_ref.as_str())
            .collect();
        if !refs.is_empty() {
            compositions.push(json!({"aggregate": completeness.as_str(), "dependencies": refs}));
        }
    }
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "version": 1,
        "metadata": metadata,
        "components": sbom.components.iter().map(component).collect::<Vec<_>>(),
        "dependencies": dependencies,
        "compositions": compositions,
    })
}

fn component(c: &Component) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), c.kind.as_str().into());
    o.insert("bom-ref".into(), c.bom_ref.clone().into());
    if let Some(s) = &c.supplier {
        o.insert("supplier".into(), json!({"name": s}));
    }
    if !c.authors.is_empty() {
        o.insert(
            "authors".into(),
            c.authors.iter().map(|a| json!({"name": a})).collect(),
        );
    }
    o.insert("name".into(), c.name.clone().into());
    o.insert("version".into(), c.version.clone().into());
    if let Some(d) = &c.description {
        o.insert("description".into(), d.clone().into());
    }
    if !c.hashes.is_empty() {
        o.insert(
            "hashes".into(),
            c.hashes
                .iter()
                .map(|h| json!({"alg": h.alg, "content": h.value}))
                .collect(),
        );
    }
    if let Some(l) = &c.license {
        o.insert("licenses".into(), json!([{"expression": l}]));
    }
    if let Some(p) = &c.purl {
        o.insert("purl".into(), p.clone().into());
    }
    let mut refs = Vec::new();
    if let Some(u) = &c.source_url {
        refs.push(json!({"type": "vcs", "url": u}));
    }
    if let Some(u) = &c.download_url {
        refs.push(json!({"type": "distribution", "url": u}));
    }
    if !refs.is_empty() {
        o.insert("externalReferences".into(), refs.into());
    }
    if let Some(f) = &c.filename {
        o.insert(
            "properties".into(),
            json!([{"name": "bsi:tr-03183:filename", "value": f}]),
        );
    }
    Value::Object(o)
}

/// Reads a CycloneDX JSON document (spec versions 1.4 to 1.6).
pub fn read(file: &str, doc: &Value) -> Result<Sbom, ComplianceError> {
    let spec = doc.get("specVersion").and_then(Value::as_str).unwrap_or("");
    if !matches!(spec, "1.4" | "1.5" | "1.6") {
        return Err(ComplianceError::UnknownFormat {
            file: file.into(),
            message: format!("CycloneDX specVersion {spec:?} (1.4, 1.5 or 1.6 are read)"),
        });
    }
    let meta = doc.get("metadata");
    let mut components = Vec::new();
    if let Some(list) = doc.get("components") {
        let list = list
            .as_array()
            .ok_or_else(|| ComplianceError::invalid(file, "components", "must be an array"))?;
        for (i, c) in list.iter().enumerate() {
            read_component(file, &format!("components[{i}]"), c, &mut components)?;
        }
    }
    let mut nested = Vec::new();
    let root = match meta.and_then(|m| m.get("component")) {
        Some(c) => {
            read_component(file, "metadata.component", c, &mut nested)?;
            let root = nested.remove(0);
            components.extend(nested);
            root
        }
        None => Component {
            bom_ref: "root".into(),
            kind: ComponentKind::Application,
            name: file.to_owned(),
            version: "unknown".into(),
            purl: None,
            supplier: None,
            authors: Vec::new(),
            license: None,
            hashes: Vec::new(),
            description: None,
            source_url: None,
            download_url: None,
            filename: None,
            dependencies_complete: Completeness::Unknown,
        },
    };
    let mut dependencies = Vec::new();
    if let Some(deps) = doc.get("dependencies") {
        let deps = deps
            .as_array()
            .ok_or_else(|| ComplianceError::invalid(file, "dependencies", "must be an array"))?;
        for (i, d) in deps.iter().enumerate() {
            let r = d.get("ref").and_then(Value::as_str).ok_or_else(|| {
                ComplianceError::invalid(file, format!("dependencies[{i}].ref"), "missing")
            })?;
            let on: Vec<String> = d
                .get("dependsOn")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            dependencies.push((r.to_owned(), on));
        }
    }
    let mut sbom = Sbom {
        root,
        components,
        dependencies,
        created: meta
            .and_then(|m| m.get("timestamp"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        author: meta
            .and_then(|m| m.get("manufacturer").or_else(|| m.get("supplier")))
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        tool: "unknown".into(),
        source_format: Some(format!("CycloneDX {spec}")),
    };
    if let Some(Value::Array(comps)) = doc.get("compositions") {
        for c in comps {
            let agg = match c.get("aggregate").and_then(Value::as_str) {
                Some("complete") => Completeness::Complete,
                Some(a) if a.starts_with("incomplete") => Completeness::Incomplete,
                _ => Completeness::Unknown,
            };
            for r in c
                .get("dependencies")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if sbom.root.bom_ref == r {
                    sbom.root.dependencies_complete = agg;
                }
                for comp in &mut sbom.components {
                    if comp.bom_ref == r {
                        comp.dependencies_complete = agg;
                    }
                }
            }
        }
    }
    Ok(sbom)
}

fn read_component(
    file: &str,
    place: &str,
    c: &Value,
    out: &mut Vec<Component>,
) -> Result<(), ComplianceError> {
    let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
    let name = s("name")
        .ok_or_else(|| ComplianceError::invalid(file, format!("{place}.name"), "missing"))?;
    let kind = s("type")
        .ok_or_else(|| ComplianceError::invalid(file, format!("{place}.type"), "missing"))?;
    let kind = ComponentKind::parse(&kind).unwrap_or(ComponentKind::Library);
    let version = s("version").unwrap_or_default();
    let purl = s("purl");
    let bom_ref = s("bom-ref")
        .or_else(|| purl.clone())
        .unwrap_or_else(|| format!("{name}@{version}"));
    let mut hashes = Vec::new();
    for (i, h) in c
        .get("hashes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let alg = h.get("alg").and_then(Value::as_str);
        let content = h.get("content").and_then(Value::as_str);
        match (alg, content) {
            (Some(a), Some(v)) => hashes.push(Hash {
                alg: a.to_owned(),
                value: v.to_ascii_lowercase(),
            }),
            _ => {
                return Err(ComplianceError::invalid(
                    file,
                    format!("{place}.hashes[{i}]"),
                    "a hash needs alg and content",
                ));
            }
        }
    }
    let mut licenses = Vec::new();
    for l in c
        .get("licenses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(e) = l.get("expression").and_then(Value::as_str) {
            licenses.push(e.to_owned());
        } else if let Some(lic) = l.get("license")
            && let Some(id) = lic
                .get("id")
                .or_else(|| lic.get("name"))
                .and_then(Value::as_str)
        {
            licenses.push(id.to_owned());
        }
    }
    let ext = |t: &str| {
        c.get("externalReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| r.get("type").and_then(Value::as_str) == Some(t))
            .and_then(|r| r.get("url"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut authors: Vec<String> = c
        .get("authors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    if let Some(a) = s("author") {
        authors.push(a);
    }
    let filename = c
        .get("properties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some("bsi:tr-03183:filename"))
        .and_then(|p| p.get("value"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    out.push(Component {
        bom_ref,
        kind,
        name,
        version,
        purl,
        supplier: c
            .get("supplier")
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        authors,
        license: (!licenses.is_empty()).then(|| licenses.join(" AND ")),
        hashes,
        description: s("description"),
        source_url: ext("vcs").or_else(|| ext("website")),
        download_url: ext("distribution"),
        filename,
        dependencies_complete: Completeness::Unknown,
    });
    if let Some(Value::Array(children)) = c.get("components") {
        for (i, child) in children.iter().enumerate() {
            read_component(file, &format!("{place}.components[{i}]"), child, out)?;
        }
    }
    Ok(())
}

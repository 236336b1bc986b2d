//! The Annex VII technical documentation and the Annex V EU declaration of conformity, filled
//! from the records, in Markdown and HTML.
//!
//! Every Annex I point gets a row with the evidence Rampart holds for it or a visible **GAP**
//! saying what is missing; nothing is claimed that the records do not show.

use std::fmt::Write as _;

use crate::classify::Classification;
use crate::product::Product;
use crate::vex::VexStatement;

/// A file the manufacturer attached (test report, risk assessment, photographs, ...).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub product: String,
    /// `test-report`, `risk-assessment`, `architecture`, `photo`, `standard`, `other`.
    pub kind: String,
    pub title: String,
    pub file_name: String,
    pub sha256: String,
    pub added_at: String,
}

/// Facts about one release's SBOM.
#[derive(Debug, Clone)]
pub struct SbomFacts {
    pub release: String,
    pub components: usize,
    pub format: String,
    pub complete: bool,
    /// Open (not VEX-suppressed) vulnerabilities, and suppressed ones.
    pub open_findings: Vec<String>,
    pub suppressed_findings: usize,
}

/// Everything the documents are filled from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub product: &'a Product,
    pub classification: Option<&'a Classification>,
    pub sboms: Vec<SbomFacts>,
    pub vex: &'a [VexStatement],
    pub attachments: &'a [Attachment],
    pub advisories_published: usize,
    pub reports: usize,
    pub generated_at: String,
    /// Signatory for the declaration: name, function, place.
    pub signatory: Option<(String, String, String)>,
}

/// A document block.
#[derive(Debug)]
enum Block {
    H(u8, String),
    P(String),
    List(Vec<String>),
    Table(Vec<String>, Vec<Vec<String>>),
}

#[derive(Debug, Default)]
struct Doc(Vec<Block>);

impl Doc {
    fn h(&mut self, level: u8, t: impl Into<String>) {
        self.0.push(Block::H(level, t.into()));
    }
    fn p(&mut self, t: impl Into<String>) {
        self.0.push(Block::P(t.into()));
    }
    fn list(&mut self, items: Vec<String>) {
        self.0.push(Block::List(items));
    }
    fn table(&mut self, head: &[&str], rows: Vec<Vec<String>>) {
        self.0.push(Block::Table(
            head.iter().map(|s| (*s).to_owned()).collect(),
            rows,
        ));
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        for b in &self.0 {
            match b {
                Block::H(l, t) => {
                    let _ = writeln!(s, "{} {t}\n", "#".repeat(*l as usize));
                }
                Block::P(t) => {
                    let _ = writeln!(s, "{t}\n");
                }
                Block::List(items) => {
                    for i in items {
                        let _ = writeln!(s, "- {i}");
                    }
                    s.push('\n');
                }
                Block::Table(head, rows) => {
                    let cell = |c: &str| c.replace('|', "\\|").replace('\n', " ");
                    let _ = writeln!(
                        s,
                        "| {} |",
                        head.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | ")
                    );
                    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
                    for r in rows {
                        let _ = writeln!(
                            s,
                            "| {} |",
                            r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
                        );
                    }
                    s.push('\n');
                }
            }
        }
        s
    }

    fn html(&self, title: &str) -> String {
        let e = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        // **bold** is the only inline markup the documents use.
        let inline = |t: &str| {
            let escaped = e(t);
            let mut out = String::new();
            for (i, part) in escaped.split("**").enumerate() {
                if i % 2 == 1 {
                    let _ = write!(out, "<strong>{part}</strong>");
                } else {
                    out.push_str(part);
                }
            }
            out
        };
        let mut s = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
             <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #999;padding:.3em;vertical-align:top}}strong{{color:#a00}}\
             @page{{size:A4;margin:2cm}}@media print{{body{{max-width:none;margin:0}}\
             h2{{break-before:page}}tr,li{{break-inside:avoid}}}}</style>\n</head>\n<body>\n",
            e(title)
        );
        for b in &self.0 {
            match b {
                Block::H(l, t) => {
                    let _ = writeln!(s, "<h{l}>{}</h{l}>", inline(t));
                }
                Block::P(t) => {
                    let _ = writeln!(s, "<p>{}</p>", inline(t));
                }
                Block::List(items) => {
                    s.push_str("<ul>\n");
                    for i in items {
                        let _ = writeln!(s, "<li>{}</li>", inline(i));
                    }
                    s.push_str("</ul>\n");
                }
                Block::Table(head, rows) => {
                    s.push_str("<table>\n<tr>");
                    for h in head {
                        let _ = write!(s, "<th>{}</th>", inline(h));
                    }
                    s.push_str("</tr>\n");
                    for r in rows {
                        s.push_str("<tr>");
                        for c in r {
                            let _ = write!(s, "<td>{}</td>", inline(c));
                        }
                        s.push_str("</tr>\n");
                    }
                    s.push_str("</table>\n");
                }
            }
        }
        s.push_str("</body>\n</html>\n");
        s
    }
}

const GAP: &str = "**GAP:**";

fn attachments_of<'a>(inputs: &'a Inputs<'_>, kind: &str) -> Vec<&'a Attachment> {
    inputs
        .attachments
        .iter()
        .filter(|a| a.kind == kind)
        .collect()
}

fn attachment_line(a: &Attachment) -> String {
    format!(
        "{} (`{}`, SHA-256 {}, attached {})",
        a.title, a.file_name, a.sha256, a.added_at
    )
}

/// The Annex I checklist: (point, requirement, evidence or gap).
pub fn checklist(inputs: &Inputs<'_>) -> Vec<(String, String, String)> {
    let p = inputs.product;
    let open: Vec<String> = inputs
        .sboms
        .iter()
        .flat_map(|s| {
            s.open_findings
                .iter()
                .map(move |f| format!("{f} in {}", s.release))
        })
        .collect();
    let sbom_evidence = if inputs.sboms.is_empty() {
        format!("{GAP} no SBOM is attached to any release (`rampart sbom ingest --product`)")
    } else {
        inputs
            .sboms
            .iter()
            .map(|s| {
                format!(
                    "SBOM of {} ({}, {} components, dependency graph {})",
                    s.release,
                    s.format,
                    s.components,
                    if s.complete {
                        "complete"
                    } else {
                        "not marked complete"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let vuln_evidence = if inputs.sboms.is_empty() {
        format!("{GAP} no SBOM to scan")
    } else if open.is_empty() {
        let suppressed: usize = inputs.sboms.iter().map(|s| s.suppressed_findings).sum();
        format!(
            "no open vulnerability in the SBOMs of the releases; {suppressed} finding(s) assessed by VEX"
        )
    } else {
        format!("{GAP} open vulnerabilities: {}", open.join(", "))
    };
    let risk = attachments_of(inputs, "risk-assessment");
    let risk_evidence = if risk.is_empty() {
        format!("{GAP} no risk assessment attached (`rampart cra attach --kind risk-assessment`)")
    } else {
        risk.iter()
            .map(|a| attachment_line(a))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let tests = attachments_of(inputs, "test-report");
    let tests_evidence = if tests.is_empty() {
        format!("{GAP} no test report attached (`rampart cra attach --kind test-report`)")
    } else {
        tests
            .iter()
            .map(|a| attachment_line(a))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let updates_gap = format!(
        "{GAP} Rampart does not distribute software updates yet (TUF updates are planned); describe the \
         product's own update mechanism in an attachment of kind `architecture`"
    );
    let row = |a: &str, b: &str, c: String| (a.to_owned(), b.to_owned(), c);
    vec![
        row("I(1)", "Cybersecurity appropriate to the risks", risk_evidence.clone()),
        row("I(2)(a)", "No known exploitable vulnerabilities", vuln_evidence.clone()),
        row("I(2)(b)", "Secure by default, reset to original state", "Devices authenticate with mutual TLS and per-device certificates; policies deny by default; `rampart-agent reset --factory` erases data, keys and credentials".into()),
        row("I(2)(c)", "Security updates, automatic by default", updates_gap.clone()),
        row("I(2)(d)", "Protection from unauthorised access, and its reporting", "Certificate identity bound to the MQTT client id, policy language with deny-by-default, live revocation and quarantine; refusals are logged, counted and in the audit log".into()),
        row("I(2)(e)", "Confidentiality of data", "TLS 1.2/1.3 in transit; the agent's outbox and credentials are encrypted at rest (ChaCha20-Poly1305)".into()),
        row("I(2)(f)", "Integrity of data, commands, programs, configuration", "TLS and signed certificates in transit; authenticated records in the outbox, tampered records reported and skipped; configuration validated at start".into()),
        row("I(2)(g)", "Data minimisation", "The agent's [[send]] groups list the fields that leave the device and their rate; nothing else is sent".into()),
        row("I(2)(h)", "Availability of essential functions, resilience against DoS", "Bounded queues with back-pressure in the hub; a durable bounded outbox on the device that reports what it drops".into()),
        row("I(2)(i)", "Minimise negative impact on other networks", "Reconnects with exponential backoff and jitter; batching bounded in size".into()),
        row("I(2)(j)", "Limit attack surfaces", "The agent opens no listening port; it calls home only".into()),
        row("I(2)(k)", "Exploitation mitigation", "Written in Rust with `unsafe` forbidden in every crate".into()),
        row("I(2)(l)", "Record and monitor internal activity", "Append-only audit log of registry changes; device events (BMS unreachable, data dropped); metrics".into()),
        row("I(2)(m)", "Remove data and settings; transfer data", "`rampart-agent reset --factory` overwrites then deletes data, keys and credentials".into()),
        row("II(1)", "Identify components; SBOM", sbom_evidence),
        row("II(2)", "Address vulnerabilities without delay; separate security updates", format!("{vuln_evidence}; {updates_gap}")),
        row("II(3)", "Regular security tests and reviews", tests_evidence.clone()),
        row("II(4)", "Disclose fixed vulnerabilities", if inputs.advisories_published > 0 { format!("{} CSAF advisories written (`rampart cra advisory`)", inputs.advisories_published) } else { "no fixed vulnerability to disclose yet; `rampart cra advisory` writes CSAF 2.0 advisories".into() }),
        row("II(5)", "Coordinated vulnerability disclosure policy", format!("Policy: {}", p.cvd.policy_url)),
        row("II(6)", "Contact address for vulnerability reports", format!("Contact: {} (also in security.txt)", p.cvd.contact)),
        row("II(7)", "Secure distribution of updates", updates_gap.clone()),
        row("II(8)", "Disseminate security updates without delay, free of charge", updates_gap),
    ]
}

/// Annex VII technical documentation: (Markdown, HTML).
pub fn technical_documentation(inputs: &Inputs<'_>) -> (String, String) {
    let p = inputs.product;
    let mut d = Doc::default();
    let title = format!(
        "Technical documentation: {} (Annex VII, Regulation (EU) 2024/2847)",
        p.name
    );
    d.h(1, &title);
    d.p(format!(
        "Generated by Rampart on {} from the records of the hub.",
        inputs.generated_at
    ));
    d.h(2, "1. General description");
    d.table(
        &["field", "value"],
        vec![
            vec!["Product".into(), p.name.clone()],
            vec!["Type".into(), p.product_type.clone()],
            vec![
                "Manufacturer".into(),
                format!("{}, {}", p.manufacturer.name, p.manufacturer.address),
            ],
            vec!["Intended purpose".into(), p.intended_purpose.clone()],
            vec!["Hardware versions".into(), p.hardware_versions.join(", ")],
            vec!["Software releases".into(), p.releases.join(", ")],
            vec!["Member States".into(), p.member_states.join(", ")],
            vec!["End of support".into(), p.end_of_support()],
        ],
    );
    let photos = attachments_of(inputs, "photo");
    if photos.is_empty() {
        d.p(format!(
            "{GAP} no photographs or illustrations of the hardware attached (`--kind photo`)."
        ));
    } else {
        d.list(photos.iter().map(|a| attachment_line(a)).collect());
    }
    d.h(2, "Classification");
    match inputs.classification {
        Some(c) => {
            d.p(format!(
                "Class: {} (decided {} by {}).",
                c.class.label(),
                c.decided_at,
                c.decided_by
            ));
            if !c.categories.is_empty() {
                d.p(format!("Categories: {}.", c.categories.join(", ")));
            }
            d.p(format!("Rationale: {}", c.rationale));
            d.p("Conformity assessment routes open to this class:");
            d.list(c.routes.clone());
        }
        None => d.p(format!(
            "{GAP} not classified yet (`rampart cra classify`)."
        )),
    }
    d.h(
        2,
        "2. Design, development, production and vulnerability handling",
    );
    let arch = attachments_of(inputs, "architecture");
    if arch.is_empty() {
        d.p(format!(
            "{GAP} no system architecture description attached (`--kind architecture`)."
        ));
    } else {
        d.list(arch.iter().map(|a| attachment_line(a)).collect());
    }
    d.p("Software bill of materials:");
    if inputs.sboms.is_empty() {
        d.p(format!("{GAP} no SBOM attached."));
    } else {
        d.table(
            &[
                "release",
                "format",
                "components",
                "graph",
                "open vulnerabilities",
            ],
            inputs
                .sboms
                .iter()
                .map(|s| {
                    vec![
                        s.release.clone(),
                        s.format.clone(),
                        s.components.to_string(),
                        if s.complete {
                            "complete".into()
                        } else {
                            "not marked complete".into()
                        },
                        if s.open_findings.is_empty() {
                            "none".into()
                        } else {
                            s.open_findings.join(", ")
                        },
                    ]
                })
                .collect(),
        );
    }
    d.p(format!(
        "Coordinated vulnerability disclosure policy: {}. Contact for reports: {}. Advisories are \
         published as CSAF 2.0 under {}/.well-known/csaf/.",
        p.cvd.policy_url,
        p.cvd.contact,
        p.cvd.advisories_url.trim_end_matches('/')
    ));
    d.p(format!(
        "Vulnerability handling: {} VEX statement(s) recorded; {} Article 14 report(s) on file.",
        inputs.vex.len(),
        inputs.reports
    ));
    d.h(2, "Annex I checklist");
    d.table(
        &["point", "requirement", "evidence"],
        checklist(inputs)
            .into_iter()
            .map(|(a, b, c)| vec![a, b, c])
            .collect(),
    );
    d.h(2, "3. Cybersecurity risk assessment");
    let risk = attachments_of(inputs, "risk-assessment");
    if risk.is_empty() {
        d.p(format!("{GAP} no risk assessment attached."));
    } else {
        d.list(risk.iter().map(|a| attachment_line(a)).collect());
    }
    d.h(2, "4. Support period");
    d.p(format!(
        "From {} to {} ({} months). {}",
        p.support.start,
        p.support.end,
        p.support_months().unwrap_or(0),
        p.support.rationale
    ));
    if let Some(j) = &p.support.shorter_use_justification {
        d.p(format!("Shorter than five years because: {j}"));
    }
    d.h(
        2,
        "5. Harmonised standards, common specifications or other solutions",
    );
    let standards = attachments_of(inputs, "standard");
    if standards.is_empty() {
        d.p(format!("{GAP} none recorded (`--kind standard`)."));
    } else {
        d.list(standards.iter().map(|a| attachment_line(a)).collect());
    }
    d.h(2, "6. Test reports");
    let tests = attachments_of(inputs, "test-report");
    if tests.is_empty() {
        d.p(format!("{GAP} no test report attached."));
    } else {
        d.list(tests.iter().map(|a| attachment_line(a)).collect());
    }
    d.h(2, "7. EU declaration of conformity");
    d.p("See declaration-of-conformity.md in the same directory.");
    d.h(2, "8. SBOM on request");
    d.p("The SBOMs listed in section 2 are kept by the hub and exported with `rampart sbom export`.");
    (d.markdown(), d.html(&title))
}

/// Annex V EU declaration of conformity: (Markdown, HTML).
pub fn declaration_of_conformity(inputs: &Inputs<'_>) -> (String, String) {
    let p = inputs.product;
    let mut d = Doc::default();
    let title = format!("EU declaration of conformity: {}", p.name);
    d.h(1, &title);
    d.list(vec![
        format!("1. Product: {}, {} (releases {}; hardware {}).", p.name, p.product_type, p.releases.join(", "), p.hardware_versions.join(", ")),
        format!("2. Manufacturer: {}, {}.", p.manufacturer.name, p.manufacturer.address),
        "3. This declaration of conformity is issued under the sole responsibility of the manufacturer.".into(),
        format!("4. Object of the declaration: {} {} as identified above, for: {}.", p.manufacturer.name, p.name, p.intended_purpose),
        "5. The object of the declaration described above is in conformity with Regulation (EU) 2024/2847 and other relevant Union harmonisation legislation.".into(),
        {
            let standards = attachments_of(inputs, "standard");
            if standards.is_empty() {
                format!("6. {GAP} no harmonised standard, common specification or certification recorded.")
            } else {
                format!("6. Standards and specifications applied: {}.", standards.iter().map(|a| a.title.clone()).collect::<Vec<_>>().join("; "))
            }
        },
        match inputs.classification {
            Some(c) if c.class == crate::classify::Class::Default => {
                "7. Notified body: not applicable (default category, internal control).".into()
            }
            Some(c) => format!("7. {GAP} {}: record the notified body, procedure and certificate.", c.class.label()),
            None => format!("7. {GAP} product not classified."),
        },
        match &inputs.signatory {
            Some((name, function, place)) => format!(
                "8. Signed for and on behalf of {}: {place}, {}; {name}, {function}; signature: ______________",
                p.manufacturer.name, inputs.generated_at.get(..10).unwrap_or(&inputs.generated_at)
            ),
            None => format!("8. {GAP} signatory not given (`--signatory NAME --function F --place P`)."),
        },
    ]);
    (d.markdown(), d.html(&title))
}

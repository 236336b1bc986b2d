//! Classification (Art. 7, Annexes III and IV) and the conformity assessment routes open to
//! each class (Art. 32).
//!
//! The questionnaire asks, category by category, whether the product's core functionality
//! is that of the category (Art. 7(1): integrating a product of a category does not by itself
//! make a product important). The highest class answered "yes" wins; no "yes" is the default
//! category. The answers and their rationale are stored with the result.

use serde::{Deserialize, Serialize};

use crate::ComplianceError;

/// The class of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Default,
    ImportantClassI,
    ImportantClassII,
    Critical,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Default => "default (not listed in Annex III or IV)",
            Class::ImportantClassI => "important product, class I (Annex III)",
            Class::ImportantClassII => "important product, class II (Annex III)",
            Class::Critical => "critical product (Annex IV)",
        }
    }

    /// The conformity assessment routes open to the class (Art. 32).
    pub fn routes(self) -> Vec<&'static str> {
        match self {
            Class::Default => vec![
                "Module A: internal control (Annex VIII Part I), self-assessment",
                "Module B + C: EU-type examination and conformity to type (Annex VIII Parts II-III)",
                "Module H: full quality assurance (Annex VIII Part IV)",
                "A European cybersecurity certification scheme under Art. 27(9), where available",
            ],
            Class::ImportantClassI => vec![
                "Module A, only if harmonised standards, common specifications or a European \
                 cybersecurity certification (assurance at least 'substantial') covering all \
                 essential requirements are applied in full (Art. 32(2))",
                "Module B + C: EU-type examination and conformity to type",
                "Module H: full quality assurance",
                "A European cybersecurity certification scheme under Art. 27(9)",
            ],
            Class::ImportantClassII => vec![
                "Module B + C: EU-type examination and conformity to type (Art. 32(3))",
                "Module H: full quality assurance",
                "A European cybersecurity certification scheme at assurance level at least \
                 'substantial' (Art. 27(9))",
                "Free and open-source products whose technical documentation is public: Module A \
                 (Art. 32(5))",
            ],
            Class::Critical => vec![
                "A European cybersecurity certification scheme at assurance level at least \
                 'substantial' where a delegated act under Art. 8(1) requires it",
                "Otherwise, as class II: Module B + C or Module H (Art. 32(4))",
            ],
        }
    }
}

/// One question of the questionnaire.
#[derive(Debug, Clone, Copy)]
pub struct Category {
    pub id: &'static str,
    pub class: Class,
    pub title: &'static str,
}

const fn c(id: &'static str, class: Class, title: &'static str) -> Category {
    Category { id, class, title }
}

/// Annex III class I (19), class II (4) and Annex IV (3) categories.
pub const CATEGORIES: [Category; 26] = [
    c(
        "I.1",
        Class::ImportantClassI,
        "Identity management systems and privileged access management software and hardware, including authentication and access control readers, including biometric readers",
    ),
    c(
        "I.2",
        Class::ImportantClassI,
        "Standalone and embedded browsers",
    ),
    c("I.3", Class::ImportantClassI, "Password managers"),
    c(
        "I.4",
        Class::ImportantClassI,
        "Software that searches for, removes, or quarantines malicious software",
    ),
    c(
        "I.5",
        Class::ImportantClassI,
        "Products with digital elements with the function of virtual private network (VPN)",
    ),
    c("I.6", Class::ImportantClassI, "Network management systems"),
    c(
        "I.7",
        Class::ImportantClassI,
        "Security information and event management (SIEM) systems",
    ),
    c("I.8", Class::ImportantClassI, "Boot managers"),
    c(
        "I.9",
        Class::ImportantClassI,
        "Public key infrastructure and digital certificate issuance software",
    ),
    c(
        "I.10",
        Class::ImportantClassI,
        "Physical and virtual network interfaces",
    ),
    c("I.11", Class::ImportantClassI, "Operating systems"),
    c(
        "I.12",
        Class::ImportantClassI,
        "Routers, modems intended for the connection to the internet, and switches",
    ),
    c(
        "I.13",
        Class::ImportantClassI,
        "Microprocessors with security-related functionalities",
    ),
    c(
        "I.14",
        Class::ImportantClassI,
        "Microcontrollers with security-related functionalities",
    ),
    c(
        "I.15",
        Class::ImportantClassI,
        "Application specific integrated circuits (ASIC) and field-programmable gate arrays (FPGA) with security-related functionalities",
    ),
    c(
        "I.16",
        Class::ImportantClassI,
        "Smart home general purpose virtual assistants",
    ),
    c(
        "I.17",
        Class::ImportantClassI,
        "Smart home products with security functionalities, including smart door locks, security cameras, baby monitoring systems and alarm systems",
    ),
    c(
        "I.18",
        Class::ImportantClassI,
        "Internet connected toys covered by Directive 2009/48/EC that have social interactive features or location tracking features",
    ),
    c(
        "I.19",
        Class::ImportantClassI,
        "Personal wearable products to be worn or placed on a human body that have a health monitoring purpose, or intended for the use by children",
    ),
    c(
        "II.1",
        Class::ImportantClassII,
        "Hypervisors and container runtime systems that support virtualised execution of operating systems and similar environments",
    ),
    c(
        "II.2",
        Class::ImportantClassII,
        "Firewalls, intrusion detection and prevention systems",
    ),
    c(
        "II.3",
        Class::ImportantClassII,
        "Tamper-resistant microprocessors",
    ),
    c(
        "II.4",
        Class::ImportantClassII,
        "Tamper-resistant microcontrollers",
    ),
    c(
        "IV.1",
        Class::Critical,
        "Hardware devices with security boxes",
    ),
    c(
        "IV.2",
        Class::Critical,
        "Smart meter gateways within smart metering systems and other devices for advanced security purposes, including for secure cryptoprocessing",
    ),
    c(
        "IV.3",
        Class::Critical,
        "Smartcards or similar devices, including secure elements",
    ),
];

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub category: String,
    pub yes: bool,
}

/// A stored classification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub product: String,
    pub class: Class,
    /// Categories answered "yes".
    pub categories: Vec<String>,
    pub answers: Vec<Answer>,
    pub rationale: String,
    pub routes: Vec<String>,
    /// RFC 3339.
    pub decided_at: String,
    pub decided_by: String,
}

/// Derives the classification from answers. Every category must be answered, and a rationale
/// is required.
pub fn classify(
    product: &str,
    answers: &[Answer],
    rationale: &str,
    decided_at: &str,
    decided_by: &str,
) -> Result<Classification, ComplianceError> {
    for a in answers {
        if !CATEGORIES.iter().any(|c| c.id == a.category) {
            return Err(ComplianceError::Rule(format!(
                "unknown category {:?}; see `rampart cra categories`",
                a.category
            )));
        }
    }
    let missing: Vec<&str> = CATEGORIES
        .iter()
        .filter(|c| !answers.iter().any(|a| a.category == c.id))
        .map(|c| c.id)
        .collect();
    if !missing.is_empty() {
        return Err(ComplianceError::Rule(format!(
            "unanswered categories: {}",
            missing.join(", ")
        )));
    }
    if rationale.trim().is_empty() {
        return Err(ComplianceError::Rule(
            "a classification needs its rationale (why the product's core functionality is or is not in each category)".into(),
        ));
    }
    let yes: Vec<&Category> = CATEGORIES
        .iter()
        .filter(|c| answers.iter().any(|a| a.category == c.id && a.yes))
        .collect();
    let class = yes.iter().map(|c| c.class).max().unwrap_or(Class::Default);
    Ok(Classification {
        product: product.to_owned(),
        class,
        categories: yes.iter().map(|c| c.id.to_owned()).collect(),
        answers: answers.to_vec(),
        rationale: rationale.to_owned(),
        routes: class.routes().into_iter().map(str::to_owned).collect(),
        decided_at: decided_at.to_owned(),
        decided_by: decided_by.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(yes: &[&str]) -> Vec<Answer> {
        CATEGORIES
            .iter()
            .map(|c| Answer {
                category: c.id.into(),
                yes: yes.contains(&c.id),
            })
            .collect()
    }

    #[test]
    fn highest_class_wins() {
        let t = "2026-11-23T00:00:00Z";
        let d = classify("p", &answers(&[]), "a battery gateway", t, "me").expect("ok");
        assert_eq!(d.class, Class::Default);
        assert!(d.routes[0].starts_with("Module A"));
        let d = classify("p", &answers(&["I.12", "II.2"]), "router+firewall", t, "me").expect("ok");
        assert_eq!(d.class, Class::ImportantClassII);
        assert_eq!(d.categories, vec!["I.12", "II.2"]);
        assert!(!d.routes.iter().any(|r| r.starts_with("Module A:")));
        let d = classify("p", &answers(&["IV.2"]), "smart meter gateway", t, "me").expect("ok");
        assert_eq!(d.class, Class::Critical);
    }

    #[test]
    fn incomplete_or_unjustified_answers_are_refused() {
        let t = "2026-11-23T00:00:00Z";
        let mut a = answers(&[]);
        a.pop();
        assert!(classify("p", &a, "x", t, "me").is_err());
        assert!(classify("p", &answers(&[]), " ", t, "me").is_err());
        let mut a = answers(&[]);
        a.push(Answer {
            category: "V.1".into(),
            yes: true,
        });
        assert!(classify("p", &a, "x", t, "me").is_err());
    }
}

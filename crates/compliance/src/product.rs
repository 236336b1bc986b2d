//! Product records: what a manufacturer places on the market, and the facts about it the
//! regulation asks for (Art. 13(8) and (19) support period, Annex II user information, the CVD
//! contact of Annex I Part II (5)-(6)).
//!
//! Read from TOML (every field documented in docs/configuration.md) and validated before
//! anything is stored.

use serde::{Deserialize, Serialize};

use crate::ComplianceError;

/// The EU Member States (ISO 3166-1 alpha-2; Greece also as `EL`, the EU's own code).
pub const MEMBER_STATES: [&str; 27] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manufacturer {
    pub name: String,
    /// Postal address.
    pub address: String,
    /// Web site or e-mail for users.
    pub contact: Option<String>,
}

/// The support period (Art. 13(8)): months as `YYYY-MM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Support {
    pub start: String,
    pub end: String,
    /// Why this period (Annex VII point 4): expected use time, user expectations, ...
    pub rationale: String,
    /// Required when the period is shorter than five years: why the product's expected use is
    /// shorter (Art. 13(8)).
    pub shorter_use_justification: Option<String>,
}

/// Coordinated vulnerability disclosure (Annex I Part II (5), (6)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cvd {
    /// Where to report vulnerabilities: `mailto:` or `https:` URI.
    pub contact: String,
    /// The published CVD policy.
    pub policy_url: String,
    /// Where advisories are published (the CSAF provider's base URL), e.g.
    /// `https://example.com`; `/.well-known/csaf/provider-metadata.json` is appended.
    pub advisories_url: String,
}

/// A product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Unique name (the key of the record).
    pub name: String,
    /// What kind of product it is, e.g. "battery monitoring gateway".
    #[serde(rename = "type")]
    pub product_type: String,
    pub manufacturer: Manufacturer,
    pub intended_purpose: String,
    #[serde(default)]
    pub hardware_versions: Vec<String>,
    /// Firmware/software releases, oldest first.
    #[serde(default)]
    pub releases: Vec<String>,
    /// Member States where the product is made available (ISO codes).
    pub member_states: Vec<String>,
    pub support: Support,
    pub cvd: Cvd,
}

fn month(s: &str, place: &str) -> Result<(i32, u8), ComplianceError> {
    let bad = || ComplianceError::invalid("product", place, format!("{s:?} is not YYYY-MM"));
    let (y, m) = s.split_once('-').ok_or_else(bad)?;
    let y: i32 = y.parse().map_err(|_| bad())?;
    let m: u8 = m.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || y < 2000 {
        return Err(bad());
    }
    Ok((y, m))
}

impl Product {
    /// Parses and validates a product TOML document.
    pub fn from_toml(file: &str, text: &str) -> Result<Product, ComplianceError> {
        let p: Product = toml::from_str(text).map_err(|e| ComplianceError::toml(file, text, &e))?;
        p.validate().map_err(|e| match e {
            ComplianceError::Invalid { place, message, .. } => {
                ComplianceError::invalid(file, place, message)
            }
            other => other,
        })?;
        Ok(p)
    }

    /// Support period length in months.
    pub fn support_months(&self) -> Result<i32, ComplianceError> {
        let (ys, ms) = month(&self.support.start, "support.start")?;
        let (ye, me) = month(&self.support.end, "support.end")?;
        Ok((ye - ys) * 12 + (me as i32 - ms as i32) + 1)
    }

    /// Checks the record's rules.
    pub fn validate(&self) -> Result<(), ComplianceError> {
        let bad = |place: &str, msg: &str| ComplianceError::invalid("product", place, msg);
        if self.name.trim().is_empty() {
            return Err(bad("name", "empty"));
        }
        if self.manufacturer.name.trim().is_empty() || self.manufacturer.address.trim().is_empty() {
            return Err(bad(
                "manufacturer",
                "name and address are required (Annex V point 2)",
            ));
        }
        if self.member_states.is_empty() {
            return Err(bad(
                "member_states",
                "list the Member States where the product is made available",
            ));
        }
        for (i, m) in self.member_states.iter().enumerate() {
            if !(MEMBER_STATES.contains(&m.as_str()) || m == "EL") {
                return Err(ComplianceError::invalid(
                    "product",
                    format!("member_states[{i}]"),
                    format!("{m:?} is not an EU Member State code (e.g. DE, FR, EL)"),
                ));
            }
        }
        let months = self.support_months()?;
        if months < 1 {
            return Err(bad(
                "support.end",
                "the support period ends before it starts",
            ));
        }
        if self.support.rationale.trim().is_empty() {
            return Err(bad(
                "support.rationale",
                "state how the support period was determined (Annex VII point 4)",
            ));
        }
        if months < 60
            && self
                .support
                .shorter_use_justification
                .as_deref()
                .is_none_or(|j| j.trim().is_empty())
        {
            return Err(ComplianceError::invalid(
                "product",
                "support",
                format!(
                    "the support period is {months} months; Art. 13(8) asks for at least five years \
                     unless the product's expected use is shorter: give shorter_use_justification"
                ),
            ));
        }
        if !(self.cvd.contact.starts_with("mailto:") || self.cvd.contact.starts_with("https://")) {
            return Err(bad("cvd.contact", "a mailto: or https: URI"));
        }
        for (place, url) in [
            ("cvd.policy_url", &self.cvd.policy_url),
            ("cvd.advisories_url", &self.cvd.advisories_url),
        ] {
            if !url.starts_with("https://") {
                return Err(bad(place, "an https: URL"));
            }
        }
        Ok(())
    }

    /// The last month of support as "MM/YYYY" (Art. 13(19): at least month and year).
    pub fn end_of_support(&self) -> String {
        match month(&self.support.end, "support.end") {
            Ok((y, m)) => format!("{m:02}/{y}"),
            Err(_) => self.support.end.clone(),
        }
    }

    /// The purl-like identifier of a release, used in VEX and advisories.
    pub fn release_id(&self, release: &str) -> String {
        format!(
            "pkg:generic/{}@{}",
            crate::sbom::purl_encode(&self.name),
            crate::sbom::purl_encode(release)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "BMS Gateway"
type = "battery monitoring gateway"
intended_purpose = "Reads a battery's BMS and sends its data to the operator's cloud"
hardware_versions = ["rev-B"]
releases = ["2.0.0", "2.1.0"]
member_states = ["DE", "FR"]
[manufacturer]
name = "Example Energy GmbH"
address = "Musterstrasse 1, 10115 Berlin, Germany"
[support]
start = "2026-01"
end = "2031-12"
rationale = "Batteries in the field last 10 years; gateways are replaced with the inverter"
[cvd]
contact = "mailto:security@example.com"
policy_url = "https://example.com/security/cvd"
advisories_url = "https://example.com"
"#;

    #[test]
    fn a_complete_record_validates() {
        let p = Product::from_toml("p.toml", GOOD).expect("valid");
        assert_eq!(p.support_months().expect("months"), 72);
        assert_eq!(p.end_of_support(), "12/2031");
    }

    #[test]
    fn short_support_needs_a_justification() {
        let t = GOOD.replace("2031-12", "2028-12");
        let e = Product::from_toml("p.toml", &t).expect_err("short");
        assert!(e.to_string().contains("36 months"), "{e}");
        let t = t.replace(
            "[cvd]",
            "shorter_use_justification = \"a 3-year pilot fleet\"\n[cvd]",
        );
        Product::from_toml("p.toml", &t).expect("justified");
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Product::from_toml("p.toml", &GOOD.replace("\"FR\"", "\"US\"")).expect_err("US");
        assert!(e.to_string().starts_with("p.toml: member_states[1]"), "{e}");
        let e = Product::from_toml("p.toml", &GOOD.replace("2026-01", "2026-13")).expect_err("m");
        assert!(e.to_string().contains("support.start"), "{e}");
        let e = Product::from_toml("p.toml", &GOOD.replace("mailto:", "smtp:")).expect_err("c");
        assert!(e.to_string().contains("cvd.contact"), "{e}");
        let e = Product::from_toml("p.toml", &format!("{GOOD}\ncolour = 1")).expect_err("u");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}

//! Sensitivity labels set from configured code lists: a resource coded with, say, an HIV or a
//! sexual-health SNOMED CT concept gets the matching `meta.security` label on write even when
//! the writing system did not set it, so the patient's withholding directives cover it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::fhir;

/// The code system of the labels Sharedcare sets (HL7 v3 ActCode sensitivity codes).
pub const LABEL_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// One configured code and the label it carries (`[[records.sensitive_codes]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelCode {
    /// Code system URI, e.g. `http://snomed.info/sct`.
    pub system: String,
    /// The code.
    pub code: String,
    /// The sensitivity label it implies, e.g. `HIV`, `STD`, `SEX`, `PSY`, `ETH`.
    pub label: String,
}

/// The default list: a few SNOMED CT concepts from the sensitive categories, to show the
/// mechanism. An ICS replaces it with its own (e.g. from the RCGP sensitive code set).
pub fn defaults() -> Vec<LabelCode> {
    let snomed = |code: &str, label: &str| LabelCode {
        system: crate::validate::SNOMED.into(),
        code: code.into(),
        label: label.into(),
    };
    vec![
        snomed("86406008", "HIV"),  // Human immunodeficiency virus infection
        snomed("105629000", "STD"), // Chlamydial infection
        snomed("35489007", "PSY"),  // Depressive disorder
        snomed("7200002", "ETH"),   // Alcoholism
    ]
}

/// Adds labels to resources whose codes are configured.
#[derive(Clone, Debug, Default)]
pub struct Labeller {
    labels: HashMap<String, String>,
}

impl Labeller {
    /// A labeller for `codes`.
    pub fn new(codes: &[LabelCode]) -> Labeller {
        Labeller {
            labels: codes
                .iter()
                .map(|c| (format!("{}|{}", c.system, c.code), c.label.clone()))
                .collect(),
        }
    }

    /// Adds to `body.meta.security` the label of every configured code it carries (once).
    pub fn apply(&self, body: &mut Map<String, Value>) {
        if self.labels.is_empty() {
            return;
        }
        let present = fhir::security_labels(body);
        let mut add: Vec<&str> = fhir::codes(body)
            .iter()
            .filter_map(|token| self.labels.get(token).map(String::as_str))
            .filter(|l| !present.iter().any(|p| p == l))
            .collect();
        add.sort_unstable();
        add.dedup();
        if add.is_empty() {
            return;
        }
        let meta = body.entry("meta").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else { return };
        let security = meta.entry("security").or_insert_with(|| json!([]));
        if let Some(list) = security.as_array_mut() {
            for label in add {
                list.push(json!({"system": LABEL_SYSTEM, "code": label}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_codes_add_their_label_once() {
        let l = Labeller::new(&defaults());
        let mut body = serde_json::json!({"resourceType": "Condition",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]},
            "meta": {"security": [{"system": LABEL_SYSTEM, "code": "R"}]}})
        .as_object()
        .cloned()
        .expect("object");
        l.apply(&mut body);
        l.apply(&mut body);
        assert_eq!(fhir::security_labels(&body), ["HIV", "R"]);
        for c in defaults() {
            assert!(crate::validate::sctid(&c.code), "{} is a valid SCTID", c.code);
        }
        let mut plain =
            serde_json::json!({"code": {"coding": [{"system": "http://snomed.info/sct", "code": "75367002"}]}})
                .as_object()
                .cloned()
                .expect("object");
        l.apply(&mut plain);
        assert!(fhir::security_labels(&plain).is_empty());
    }
}

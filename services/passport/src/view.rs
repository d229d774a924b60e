//! A passport as one caller sees it, built from the read model's entries and consent's
//! decision; converted to the gRPC message and to the JSON the web pages read.

use serde_json::{Value, json};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_proto::passport::v1 as api;

use crate::projection::{self, Section};
use crate::store::{Entry, is_demographics};

/// What one caller may see of one person.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// The person.
    pub nhs_number: String,
    /// Given name, family name, birth date, gender, postcode.
    pub demographics: [String; 5],
    /// Every section in display order, with its entries (newest first).
    pub sections: Vec<(Section, Vec<Entry>)>,
    /// The person's choices withhold something from this caller (from the decision alone).
    pub some_withheld: bool,
    /// When the model last changed for this person (µs), 0 when nothing is held.
    pub updated_us: i64,
}

impl View {
    /// The view of `entries` without those labelled with a `withheld` category.
    pub fn build(patient: &NhsNumber, entries: Vec<Entry>, withheld: &[String]) -> View {
        let updated_us = entries.iter().map(|e| e.updated_us).max().unwrap_or(0);
        let visible = |e: &Entry| !e.labels.iter().any(|l| withheld.contains(l));
        let demographics = entries
            .iter()
            .filter(|e| is_demographics(e) && visible(e))
            .find_map(|e| match serde_json::from_str::<Value>(&e.body) {
                Ok(Value::Object(body)) => Some(projection::demographics(&body)),
                _ => None,
            })
            .unwrap_or_default();
        let mut sections: Vec<(Section, Vec<Entry>)> = Section::ALL.iter().map(|s| (*s, Vec::new())).collect();
        for e in entries.into_iter().filter(|e| visible(e)) {
            if let Some(slot) = sections.iter_mut().find(|(s, _)| s.as_str() == e.place) {
                slot.1.push(e);
            }
        }
        View {
            nhs_number: patient.to_string(),
            demographics,
            sections,
            some_withheld: !withheld.is_empty(),
            updated_us,
        }
    }

    /// The JSON the passport's HTTP API answers (`/passport/v1/patients/{nhs}`).
    pub fn to_json(&self) -> Value {
        let [given, family, birth_date, gender, postcode] = &self.demographics;
        json!({
            "nhsNumber": self.nhs_number,
            "demographics": {
                "givenName": given, "familyName": family, "birthDate": birth_date,
                "gender": gender, "postcode": postcode,
            },
            "sections": self.sections.iter().map(|(s, entries)| json!({
                "kind": s.as_str(),
                "title": s.title(),
                "entries": entries.iter().map(|e| json!({
                    "resourceType": e.resource_type, "id": e.id, "version": e.version,
                    "summary": e.summary, "date": e.date, "status": e.status,
                    "sourceOrganisation": e.source_organisation,
                    "resource": serde_json::from_str::<Value>(&e.body).unwrap_or(Value::Null),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "someWithheld": self.some_withheld,
            "updated": (self.updated_us > 0).then(|| {
                chrono::DateTime::from_timestamp_micros(self.updated_us).map(|t| t.to_rfc3339())
            }).flatten(),
        })
    }
}

impl From<View> for api::PassportView {
    fn from(v: View) -> Self {
        let [given_name, family_name, birth_date, gender, postcode] = v.demographics;
        api::PassportView {
            nhs_number: v.nhs_number,
            demographics: Some(api::Demographics {
                given_name,
                family_name,
                birth_date,
                gender,
                postcode,
            }),
            sections: v
                .sections
                .into_iter()
                .map(|(s, entries)| api::Section {
                    kind: kind(s) as i32,
                    title: s.title().into(),
                    entries: entries
                        .into_iter()
                        .map(|e| api::Entry {
                            resource_type: e.resource_type,
                            id: e.id,
                            version: e.version,
                            summary: e.summary,
                            date: e.date,
                            status: e.status,
                            source_organisation: e.source_organisation,
                            resource_json: e.body,
                        })
                        .collect(),
                })
                .collect(),
            some_withheld: v.some_withheld,
            updated: (v.updated_us > 0).then(|| sharedcare_kit::db::timestamp(v.updated_us)),
        }
    }
}

fn kind(s: Section) -> api::SectionKind {
    match s {
        Section::Problems => api::SectionKind::Problems,
        Section::Medications => api::SectionKind::Medications,
        Section::Allergies => api::SectionKind::Allergies,
        Section::Alerts => api::SectionKind::Alerts,
        Section::CarePlans => api::SectionKind::CarePlans,
        Section::Encounters => api::SectionKind::Encounters,
        Section::Documents => api::SectionKind::Documents,
        Section::Observations => api::SectionKind::Observations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(place: &str, id: &str, labels: &[&str]) -> Entry {
        Entry {
            resource_type: "Condition".into(),
            id: id.into(),
            version: 1,
            place: place.into(),
            summary: id.into(),
            date: String::new(),
            status: String::new(),
            source_organisation: "A81001".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            body: "{}".into(),
            updated_us: 1,
        }
    }

    #[test]
    fn withheld_entries_leave_no_trace_and_every_section_is_listed() {
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        let entries = vec![entry("problems", "c1", &[]), entry("problems", "c2", &["SEX"])];
        let v = View::build(&nhs, entries.clone(), &["SEX".into()]);
        assert_eq!(v.sections.len(), Section::ALL.len());
        let problems = &v.sections[0].1;
        assert_eq!(problems.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["c1"]);
        assert!(v.some_withheld);
        let json = v.to_json().to_string();
        assert!(!json.contains("c2") && !json.contains("SEX"), "{json}");
        let open = View::build(&nhs, entries, &[]);
        assert_eq!(open.sections[0].1.len(), 2);
        assert!(!open.some_withheld);
    }

    #[test]
    fn the_notice_depends_on_the_decision_not_on_what_is_held() {
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        let nothing_sensitive = View::build(&nhs, vec![entry("problems", "c1", &[])], &["HIV".into()]);
        assert!(nothing_sensitive.some_withheld);
    }
}

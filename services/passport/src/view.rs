//! A passport as one caller sees it, built from the read model's entries and consent's
//! decision; converted to the gRPC message and to the JSON the web pages read.

use serde_json::{Value, json};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_proto::passport::v1 as api;

use sharedcare_proto::events::v1::SharingState;

use crate::projection::{self, Section};
use crate::store::{Entry, Held, is_demographics};

/// An organisation looking after the person now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// ODS code.
    pub ods_code: String,
    /// Its name, when the source resource gives it.
    pub organisation_name: String,
    /// The relationship's kind.
    pub kind: String,
    /// The people the source resource names.
    pub who: String,
    /// Since when (µs).
    pub since_us: i64,
    /// Consent's id for the relationship (the source resource, when there is one).
    pub source: String,
}

impl Member {
    /// The relationship in plain words.
    pub fn role(&self) -> String {
        match self.kind.as_str() {
            "gp_registration" => "Registered GP practice".into(),
            "encounter" => "Seen in an appointment or visit".into(),
            "episode_of_care" => "Providing ongoing care".into(),
            "care_package" => "Providing a care package".into(),
            "referral" => "Referred for care".into(),
            other => format!("Care relationship ({other})"),
        }
    }
}

/// A protobuf time in µs, when set.
pub fn micros(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(sharedcare_kit::db::micros)
}

/// The care team a viewer sees when the categories `withheld` are withheld from them: current
/// relationships (not ended by `now_us`), newest first. A relationship whose source resource is withheld from the viewer is left out whole
/// (a visit to a sexual health clinic would say what the withheld record holds); one whose
/// source is held lends its names.
pub fn care_team(sharing: Option<&SharingState>, entries: &[Entry], withheld: &[String], now_us: i64) -> Vec<Member> {
    let Some(sharing) = sharing else {
        return Vec::new();
    };
    let mut team: Vec<Member> = Vec::new();
    for r in &sharing.relationships {
        if micros(&r.end).is_some_and(|end| end <= now_us) {
            continue;
        }
        let source = entries
            .iter()
            .find(|e| r.id.split_once('/') == Some((e.resource_type.as_str(), e.id.as_str())));
        let hidden_kind = matches!(r.kind.as_str(), "encounter" | "episode_of_care" | "referral");
        let (organisation_name, who) = match source {
            Some(e) if e.labels.iter().any(|l| withheld.contains(l)) => continue,
            Some(e) => match serde_json::from_str::<Value>(&e.body) {
                Ok(Value::Object(body)) => projection::care_names(&body),
                _ => Default::default(),
            },
            // Its source is not held (yet, or entered in error): name the organisation only
            // to those nothing is withheld from, since its label is unknown.
            None if hidden_kind && !withheld.is_empty() => continue,
            None => Default::default(),
        };
        team.push(Member {
            ods_code: r.ods_code.clone(),
            organisation_name,
            kind: r.kind.clone(),
            who,
            since_us: micros(&r.start).unwrap_or_default(),
            source: r.id.clone(),
        });
    }
    team.sort_by(|a, b| b.since_us.cmp(&a.since_us).then_with(|| a.source.cmp(&b.source)));
    team
}

/// What one caller may see of one person.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// The person.
    pub nhs_number: String,
    /// Who the person is (empty when their Patient resource is withheld or absent).
    pub demographics: projection::Demographics,
    /// Every section in display order, with its entries (newest first).
    pub sections: Vec<(Section, Vec<Entry>)>,
    /// The person's choices withhold something from this caller (from the decision alone).
    pub some_withheld: bool,
    /// When the model last changed for this person (µs), 0 when nothing is held.
    pub updated_us: i64,
    /// Who looks after the person now.
    pub care_team: Vec<Member>,
}

impl View {
    /// The view of what is `held` without what is labelled with a `withheld` category, as of
    /// `now_us`.
    pub fn build(patient: &NhsNumber, held: Held, withheld: &[String], now_us: i64) -> View {
        let care_team = care_team(held.sharing.as_ref(), &held.entries, withheld, now_us);
        let entries = held.entries;
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
            care_team,
        }
    }

    /// The JSON the passport's HTTP API answers (`/passport/v1/patients/{nhs}`).
    pub fn to_json(&self) -> Value {
        let projection::Demographics {
            given_name: given,
            family_name: family,
            birth_date,
            gender,
            postcode,
        } = &self.demographics;
        json!({
            "nhsNumber": self.nhs_number,
            "demographics": {
                "givenName": given, "familyName": family, "birthDate": birth_date,
                "gender": gender, "postcode": postcode,
            },
            "sections": self.sections.iter().map(|(s, entries)| json!({
                "kind": s.as_str(),
                "title": s.title(),
                "withheld": self.some_withheld,
                "entries": entries.iter().map(|e| json!({
                    "resourceType": e.resource_type, "id": e.id, "version": e.version,
                    "summary": e.summary, "date": e.date, "status": e.status,
                    "sourceOrganisation": e.source_organisation,
                    "resource": serde_json::from_str::<Value>(&e.body).unwrap_or(Value::Null),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "careTeam": self.care_team.iter().map(|m| json!({
                "odsCode": m.ods_code, "organisationName": m.organisation_name, "role": m.role(),
                "kind": m.kind, "who": m.who, "since": rfc3339(m.since_us), "source": m.source,
            })).collect::<Vec<_>>(),
            "someWithheld": self.some_withheld,
            "updated": rfc3339(self.updated_us),
        })
    }
}

/// A time in µs as RFC 3339, or null when unset (0).
pub fn rfc3339(us: i64) -> Value {
    match chrono::DateTime::from_timestamp_micros(us).filter(|_| us > 0) {
        Some(t) => Value::String(t.to_rfc3339()),
        None => Value::Null,
    }
}

impl From<View> for api::PassportView {
    fn from(v: View) -> Self {
        let projection::Demographics {
            given_name,
            family_name,
            birth_date,
            gender,
            postcode,
        } = v.demographics;
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
                    withheld: v.some_withheld,
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
            care_team: v
                .care_team
                .into_iter()
                .map(|m| api::CareTeamMember {
                    role: m.role(),
                    ods_code: m.ods_code,
                    organisation_name: m.organisation_name,
                    kind: m.kind,
                    who: m.who,
                    contact: String::new(),
                    since: (m.since_us > 0).then(|| sharedcare_kit::db::timestamp(m.since_us)),
                    source: m.source,
                })
                .collect(),
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
        Section::Referrals => api::SectionKind::Referrals,
        Section::Immunisations => api::SectionKind::Immunisations,
        Section::Procedures => api::SectionKind::Procedures,
        Section::Assessments => api::SectionKind::Assessments,
        Section::Documents => api::SectionKind::Documents,
        Section::Observations => api::SectionKind::Observations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharedcare_proto::events::v1::CareRelationship;

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
        let v = View::build(&nhs, held(entries.clone()), &["SEX".into()], 0);
        assert_eq!(v.sections.len(), Section::ALL.len());
        let problems = &v.sections[0].1;
        assert_eq!(problems.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["c1"]);
        assert!(v.some_withheld);
        let json = v.to_json();
        assert!(
            json["sections"]
                .as_array()
                .expect("sections")
                .iter()
                .all(|s| s["withheld"] == true)
        );
        let json = json.to_string();
        assert!(!json.contains("c2") && !json.contains("SEX"), "{json}");
        let open = View::build(&nhs, held(entries), &[], 0);
        assert_eq!(open.sections[0].1.len(), 2);
        assert!(!open.some_withheld);
    }

    #[test]
    fn the_notice_depends_on_the_decision_not_on_what_is_held() {
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        let nothing_sensitive = View::build(&nhs, held(vec![entry("problems", "c1", &[])]), &["HIV".into()], 0);
        assert!(nothing_sensitive.some_withheld);
    }

    fn held(entries: Vec<Entry>) -> Held {
        Held { entries, sharing: None }
    }

    fn relationship(id: &str, ods: &str, kind: &str, start_s: i64, end_s: i64) -> CareRelationship {
        let at = |s: i64| (s > 0).then(|| sharedcare_kit::db::timestamp(s * 1_000_000));
        CareRelationship {
            id: id.into(),
            ods_code: ods.into(),
            kind: kind.into(),
            start: at(start_s),
            end: at(end_s),
        }
    }

    #[test]
    fn the_care_team_is_current_relationships_named_from_their_source_newest_first() {
        let sharing = SharingState {
            relationships: vec![
                relationship("demo-0", "A81001", "gp_registration", 100, 0),
                relationship("Encounter/e1", "RXX01", "encounter", 200, 0),
                relationship("Encounter/old", "RYY02", "encounter", 50, 60),
            ],
            ..Default::default()
        };
        let mut visit = entry("encounters", "e1", &[]);
        visit.resource_type = "Encounter".into();
        visit.body =
            r#"{"serviceProvider":{"display":"St Elsewhere"},"participant":[{"individual":{"display":"Dr Who"}}]}"#
                .into();
        let team = care_team(Some(&sharing), &[visit], &[], 1_000 * 1_000_000);
        let got: Vec<(&str, &str, &str)> = team
            .iter()
            .map(|m| (m.ods_code.as_str(), m.organisation_name.as_str(), m.who.as_str()))
            .collect();
        assert_eq!(got, [("RXX01", "St Elsewhere", "Dr Who"), ("A81001", "", "")]);
        assert_eq!(team[1].role(), "Registered GP practice");
        assert!(care_team(None, &[], &[], 0).is_empty());
    }

    #[test]
    fn a_relationship_whose_source_is_withheld_leaves_the_care_team_whole() {
        let sharing = SharingState {
            relationships: vec![
                relationship("Encounter/gum", "RSH01", "encounter", 200, 0),
                relationship("Encounter/unknown", "RZZ01", "encounter", 200, 0),
                relationship("demo-0", "A81001", "gp_registration", 100, 0),
            ],
            ..Default::default()
        };
        let mut clinic = entry("encounters", "gum", &["SEX"]);
        clinic.resource_type = "Encounter".into();
        let withheld = ["SEX".to_string()];
        let team = care_team(Some(&sharing), std::slice::from_ref(&clinic), &withheld, 0);
        assert_eq!(team.iter().map(|m| m.ods_code.as_str()).collect::<Vec<_>>(), ["A81001"]);
        // The patient, from whom nothing is withheld, sees all three.
        assert_eq!(care_team(Some(&sharing), &[clinic], &[], 0).len(), 3);
    }
}

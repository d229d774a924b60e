//! What the passport shows of a stored resource: its section, a plain-words summary, its
//! clinical date and status (the domain core: no I/O). The read model keeps one row per
//! resource, its newest version; a version entered in error leaves the view.

use serde_json::{Map, Value};

/// The sections of a passport, in the order they are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// Conditions.
    Problems,
    /// MedicationStatement and MedicationRequest.
    Medications,
    /// AllergyIntolerance.
    Allergies,
    /// Flags (safeguarding, DNACPR, reasonable adjustments).
    Alerts,
    /// CarePlan.
    CarePlans,
    /// Encounters and Appointments.
    Encounters,
    /// Referrals (ServiceRequest).
    Referrals,
    /// Immunization.
    Immunisations,
    /// Procedure.
    Procedures,
    /// Assessments (QuestionnaireResponse).
    Assessments,
    /// DocumentReference.
    Documents,
    /// Observations.
    Observations,
}

impl Section {
    /// Every section, in display order.
    pub const ALL: [Section; 12] = [
        Section::Problems,
        Section::Medications,
        Section::Allergies,
        Section::Alerts,
        Section::CarePlans,
        Section::Encounters,
        Section::Referrals,
        Section::Immunisations,
        Section::Procedures,
        Section::Assessments,
        Section::Documents,
        Section::Observations,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Problems => "problems",
            Section::Medications => "medications",
            Section::Allergies => "allergies",
            Section::Alerts => "alerts",
            Section::CarePlans => "care_plans",
            Section::Encounters => "encounters",
            Section::Referrals => "referrals",
            Section::Immunisations => "immunisations",
            Section::Procedures => "procedures",
            Section::Assessments => "assessments",
            Section::Documents => "documents",
            Section::Observations => "observations",
        }
    }

    /// The heading shown to people.
    pub fn title(self) -> &'static str {
        match self {
            Section::Problems => "Problems",
            Section::Medications => "Medicines",
            Section::Allergies => "Allergies and intolerances",
            Section::Alerts => "Alerts and flags",
            Section::CarePlans => "Care plans",
            Section::Encounters => "Appointments and visits",
            Section::Referrals => "Referrals",
            Section::Immunisations => "Vaccinations",
            Section::Procedures => "Operations and procedures",
            Section::Assessments => "Assessments",
            Section::Documents => "Documents",
            Section::Observations => "Test results and measurements",
        }
    }

    /// The section a resource type belongs to (`None`: not shown in the passport).
    pub fn of(resource_type: &str) -> Option<Section> {
        Some(match resource_type {
            "Condition" => Section::Problems,
            "MedicationStatement" | "MedicationRequest" => Section::Medications,
            "AllergyIntolerance" => Section::Allergies,
            "Flag" => Section::Alerts,
            "CarePlan" => Section::CarePlans,
            "Encounter" | "Appointment" => Section::Encounters,
            "ServiceRequest" => Section::Referrals,
            "Immunization" => Section::Immunisations,
            "Procedure" => Section::Procedures,
            "QuestionnaireResponse" => Section::Assessments,
            "DocumentReference" => Section::Documents,
            "Observation" => Section::Observations,
            _ => return None,
        })
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Where a resource goes in the read model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// The person's Patient resource: the demographics.
    Demographics,
    /// An entry of a section.
    Section(Section),
}

impl Place {
    /// The stored name of the place.
    pub fn as_str(&self) -> &'static str {
        match self {
            Place::Demographics => "demographics",
            Place::Section(s) => s.as_str(),
        }
    }
}

/// What the read model keeps of one resource version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Projected {
    /// Where it is shown.
    pub place: Place,
    /// Plain words for it.
    pub summary: String,
    /// Its clinical date (as written), or "".
    pub date: String,
    /// Its status, or "".
    pub status: String,
    /// Whether this version leaves the view (entered in error).
    pub hidden: bool,
}

/// What the passport makes of `body` (a `resource_type` resource); `None` for types it does
/// not show.
pub fn project(resource_type: &str, body: &Map<String, Value>) -> Option<Projected> {
    let place = if resource_type == "Patient" {
        Place::Demographics
    } else {
        Place::Section(Section::of(resource_type)?)
    };
    let summary = match resource_type {
        "MedicationStatement" | "MedicationRequest" => concept(body.get("medicationCodeableConcept")),
        "Encounter" => {
            let typed = body.get("type").and_then(Value::as_array).and_then(|t| t.first());
            let class = body
                .get("class")
                .map(|c| text(c, "display").or_else(|| text(c, "code")));
            concept(typed).or(class.flatten())
        }
        "CarePlan" => text_of(body, "title").or_else(|| text_of(body, "description")),
        "Immunization" => concept(body.get("vaccineCode")),
        "Appointment" => {
            let service = body
                .get("serviceType")
                .and_then(Value::as_array)
                .and_then(|t| t.first());
            concept(service)
                .or_else(|| concept(body.get("appointmentType")))
                .or_else(|| text_of(body, "description"))
        }
        "QuestionnaireResponse" => body
            .get("item")
            .and_then(Value::as_array)
            .and_then(|items| items.first())
            .and_then(|i| text(i, "text"))
            .map(|t| format!("Assessment: {t}")),
        "DocumentReference" => concept(body.get("type")).or_else(|| text_of(body, "description")),
        "Patient" => None,
        _ => concept(body.get("code")),
    };
    let date = [
        "onsetDateTime",
        "effectiveDateTime",
        "occurrenceDateTime",
        "performedDateTime",
        "start",
        "authoredOn",
        "authored",
        "recordedDate",
        "issued",
        "date",
        "created",
    ]
    .iter()
    .find_map(|k| text_of(body, k))
    .or_else(|| body.get("period").and_then(|p| text(p, "start")))
    .or_else(|| body.get("effectivePeriod").and_then(|p| text(p, "start")))
    .or_else(|| body.get("performedPeriod").and_then(|p| text(p, "start")));
    let status = concept(body.get("clinicalStatus")).or_else(|| text_of(body, "status"));
    let verification = concept(body.get("verificationStatus"));
    let hidden = [status.as_deref(), verification.as_deref()].contains(&Some("entered-in-error"));
    Some(Projected {
        place,
        summary: summary.unwrap_or_else(|| resource_type.to_string()),
        date: date.unwrap_or_default(),
        status: status.unwrap_or_default(),
        hidden,
    })
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn text_of(body: &Map<String, Value>, key: &str) -> Option<String> {
    body.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A CodeableConcept in plain words: its text, else its first coding's display, else its code.
fn concept(v: Option<&Value>) -> Option<String> {
    let v = v?;
    let coding = v.get("coding").and_then(Value::as_array).and_then(|c| c.first());
    text(v, "text")
        .or_else(|| coding.and_then(|c| text(c, "display")))
        .or_else(|| coding.and_then(|c| text(c, "code")))
}

/// Who an Encounter, EpisodeOfCare or referral names: the providing organisation's name
/// (`serviceProvider` / `managingOrganization` display, or a referral's first `performer` named
/// by identifier) and the people taking part (`participant.individual` / `careManager`
/// displays), for the care team.
pub fn care_names(body: &Map<String, Value>) -> (String, String) {
    let referred_to = || {
        body.get("performer")
            .and_then(Value::as_array)?
            .iter()
            .find(|p| p.get("identifier").is_some())
            .and_then(|p| text(p, "display"))
    };
    let organisation = ["serviceProvider", "managingOrganization"]
        .iter()
        .find_map(|k| body.get(*k).and_then(|o| text(o, "display")))
        .or_else(referred_to)
        .unwrap_or_default();
    let mut people: Vec<String> = body
        .get("participant")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("individual").and_then(|i| text(i, "display")))
                .collect()
        })
        .unwrap_or_default();
    if let Some(manager) = body.get("careManager").and_then(|m| text(m, "display")) {
        people.push(manager);
    }
    (organisation, people.join(", "))
}

/// Who the person is, as their Patient resource says (empty where it says nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Demographics {
    /// Given names, space separated.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Birth date, as recorded (`YYYY-MM-DD`).
    pub birth_date: String,
    /// Administrative gender.
    pub gender: String,
    /// Postcode of the first address.
    pub postcode: String,
}

/// Demographics from a Patient resource: the first name and the first address.
pub fn demographics(body: &Map<String, Value>) -> Demographics {
    let name = body.get("name").and_then(Value::as_array).and_then(|n| n.first());
    let given = name
        .and_then(|n| n.get("given"))
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let family = name.and_then(|n| text(n, "family")).unwrap_or_default();
    let postcode = body
        .get("address")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| text(a, "postalCode"))
        .unwrap_or_default();
    Demographics {
        given_name: given,
        family_name: family,
        birth_date: text_of(body, "birthDate").unwrap_or_default(),
        gender: text_of(body, "gender").unwrap_or_default(),
        postcode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn of(v: Value) -> Option<Projected> {
        let m = v.as_object().expect("object").clone();
        let t = m["resourceType"].as_str().expect("type").to_string();
        project(&t, &m)
    }

    #[test]
    fn an_encounter_names_its_provider_and_the_people_in_it() {
        let body = json!({
            "resourceType": "Encounter",
            "serviceProvider": {"identifier": {"value": "RXX01"}, "display": "St Elsewhere Hospital"},
            "participant": [
                {"individual": {"display": "Dr A Patel"}},
                {"type": [{"text": "nurse"}]},
                {"individual": {"display": "Nurse B Jones"}}
            ]
        });
        let m = body.as_object().expect("object");
        assert_eq!(
            care_names(m),
            (
                "St Elsewhere Hospital".to_string(),
                "Dr A Patel, Nurse B Jones".to_string()
            )
        );
        assert_eq!(care_names(&Map::new()), (String::new(), String::new()));
        let referral = json!({"resourceType": "ServiceRequest", "performer": [
            {"display": "Dr X"},
            {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "VH2D7"},
             "display": "Homeward Care Services"}]});
        assert_eq!(
            care_names(referral.as_object().expect("object")).0,
            "Homeward Care Services"
        );
    }

    #[test]
    fn a_condition_is_a_problem_in_plain_words_with_its_onset_and_status() {
        let p = of(json!({
            "resourceType": "Condition",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Type 2 diabetes mellitus"}]},
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "onsetDateTime": "2019-04-01"
        }))
        .expect("shown");
        assert_eq!(p.place, Place::Section(Section::Problems));
        assert_eq!(
            (p.summary.as_str(), p.date.as_str(), p.status.as_str()),
            ("Type 2 diabetes mellitus", "2019-04-01", "active")
        );
        assert!(!p.hidden);
    }

    #[test]
    fn each_type_goes_to_its_section_and_unknown_types_to_none() {
        let cases = [
            ("MedicationStatement", Some(Section::Medications)),
            ("MedicationRequest", Some(Section::Medications)),
            ("AllergyIntolerance", Some(Section::Allergies)),
            ("Flag", Some(Section::Alerts)),
            ("CarePlan", Some(Section::CarePlans)),
            ("Encounter", Some(Section::Encounters)),
            ("Appointment", Some(Section::Encounters)),
            ("ServiceRequest", Some(Section::Referrals)),
            ("Immunization", Some(Section::Immunisations)),
            ("Procedure", Some(Section::Procedures)),
            ("QuestionnaireResponse", Some(Section::Assessments)),
            ("RelatedPerson", None),
            ("Medication", None),
            ("DocumentReference", Some(Section::Documents)),
            ("Observation", Some(Section::Observations)),
            ("Organization", None),
        ];
        for (t, want) in cases {
            let got = of(json!({"resourceType": t})).map(|p| p.place);
            assert_eq!(got, want.map(Place::Section), "{t}");
        }
        assert_eq!(
            of(json!({"resourceType": "Patient"})).map(|p| p.place),
            Some(Place::Demographics)
        );
    }

    #[test]
    fn medicines_encounters_and_plans_take_their_own_words() {
        let med = of(json!({
            "resourceType": "MedicationStatement", "status": "active",
            "medicationCodeableConcept": {"text": "Metformin 500mg tablets"},
            "effectiveDateTime": "2024-01-02"
        }))
        .expect("shown");
        assert_eq!(
            (med.summary.as_str(), med.status.as_str()),
            ("Metformin 500mg tablets", "active")
        );
        let enc = of(json!({
            "resourceType": "Encounter", "status": "finished",
            "class": {"code": "AMB", "display": "ambulatory"},
            "period": {"start": "2026-11-20T09:00:00Z"}
        }))
        .expect("shown");
        assert_eq!(
            (enc.summary.as_str(), enc.date.as_str()),
            ("ambulatory", "2026-11-20T09:00:00Z")
        );
        let plan =
            of(json!({"resourceType": "CarePlan", "status": "active", "title": "Falls prevention"})).expect("shown");
        assert_eq!(plan.summary, "Falls prevention");
        let jab = of(json!({"resourceType": "Immunization", "status": "completed",
            "vaccineCode": {"text": "Influenza vaccine"}, "occurrenceDateTime": "2026-10-01"}))
        .expect("shown");
        assert_eq!(
            (jab.summary.as_str(), jab.date.as_str(), jab.status.as_str()),
            ("Influenza vaccine", "2026-10-01", "completed")
        );
        let visit = of(json!({"resourceType": "Appointment", "status": "booked",
            "serviceType": [{"text": "Memory clinic"}], "start": "2026-12-01T10:00:00Z"}))
        .expect("shown");
        assert_eq!(
            (visit.summary.as_str(), visit.date.as_str()),
            ("Memory clinic", "2026-12-01T10:00:00Z")
        );
        let op = of(json!({"resourceType": "Procedure", "status": "completed",
            "code": {"text": "Hip replacement"}, "performedPeriod": {"start": "2026-09-01"}}))
        .expect("shown");
        assert_eq!(
            (op.summary.as_str(), op.date.as_str()),
            ("Hip replacement", "2026-09-01")
        );
        let assessment = of(json!({"resourceType": "QuestionnaireResponse", "status": "completed",
            "authored": "2026-11-20", "item": [{"linkId": "1", "text": "Falls risk"}]}))
        .expect("shown");
        assert_eq!(
            (assessment.summary.as_str(), assessment.date.as_str()),
            ("Assessment: Falls risk", "2026-11-20")
        );
        let bare = of(json!({"resourceType": "Observation"})).expect("shown");
        assert_eq!(
            bare.summary, "Observation",
            "a resource with no words is named by its type"
        );
    }

    #[test]
    fn a_version_entered_in_error_leaves_the_view() {
        let by_status = of(json!({"resourceType": "Observation", "status": "entered-in-error"})).expect("known");
        assert!(by_status.hidden);
        let by_verification = of(json!({
            "resourceType": "Condition",
            "verificationStatus": {"coding": [{"code": "entered-in-error"}]}
        }))
        .expect("known");
        assert!(by_verification.hidden);
    }

    #[test]
    fn demographics_come_from_the_patient_resource() {
        let body = json!({
            "resourceType": "Patient",
            "name": [{"family": "Evans", "given": ["Margaret", "Ann"]}],
            "birthDate": "1941-03-12", "gender": "female",
            "address": [{"postalCode": "LS1 4AP"}]
        });
        assert_eq!(
            demographics(body.as_object().expect("object")),
            Demographics {
                given_name: "Margaret Ann".into(),
                family_name: "Evans".into(),
                birth_date: "1941-03-12".into(),
                gender: "female".into(),
                postcode: "LS1 4AP".into(),
            }
        );
    }
}

//! What a storable FHIR R4 resource is. Pure: no I/O.
//!
//! Checks the elements this service relies on (`resourceType`, `id`, `meta`, Patient NHS
//! number identifiers); every other element is kept exactly as given.

use serde_json::{Map, Value};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::nhs::{NHS_NUMBER_SYSTEM, NhsNumber};

use crate::RecordsError;
pub use crate::validate::check_id;

/// Resource types the shared care record stores (UK Core profiles of these R4 types).
/// `Consent` is the consent service's, not ours.
pub const RESOURCE_TYPES: &[&str] = &[
    "Patient",
    "Condition",
    "AllergyIntolerance",
    "MedicationStatement",
    "MedicationRequest",
    "Medication",
    "Immunization",
    "Procedure",
    "ServiceRequest",
    "Appointment",
    "QuestionnaireResponse",
    "RelatedPerson",
    "Observation",
    "DiagnosticReport",
    "Encounter",
    "EpisodeOfCare",
    "CarePlan",
    "CareTeam",
    "DocumentReference",
    "Flag",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Group",
];

/// Resource types that are not about one patient (directory and reference data, such as a
/// Medication product): reading or writing them needs no consent decision.
/// A Group (a cohort for Bulk Data `$export`) lists patients by reference only.
pub const DIRECTORY_TYPES: &[&str] = &[
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Medication",
    "Group",
];

/// Directory data needs no consent decision, but a Group lists patients (a cohort, whose
/// name or membership can say something about them): only systems read or write one.
pub fn directory_access(resource_type: &str, actor_kind: &str) -> Result<(), RecordsError> {
    if resource_type == "Group" && actor_kind != "service" {
        return Err(RecordsError::forbidden(
            "a Group (a cohort of patients) is read and written by systems only",
        ));
    }
    Ok(())
}

/// Whether resources of this type are a patient's data (and so need a consent decision).
pub fn is_patient_data(resource_type: &str) -> bool {
    !DIRECTORY_TYPES.contains(&resource_type)
}

/// The sensitivity labels on a resource: the codes in `meta.security` (e.g. the RCGP
/// sensitive set, or `SEX`, `MH`, `ETH`, `SAFEGUARDING`), deduplicated and sorted.
pub fn security_labels(body: &Map<String, Value>) -> Vec<String> {
    let mut labels: Vec<String> = body
        .get("meta")
        .and_then(|m| m.get("security"))
        .and_then(Value::as_array)
        .map(|codings| {
            codings
                .iter()
                .filter_map(|c| c.get("code").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    labels.sort();
    labels.dedup();
    labels
}

pub use sharedcare_kit::pdp::SENSITIVE_LABELS;

/// The clinical date of a resource (µs since the epoch), from the first element it has of:
/// `effective[x]`, `onset[x]`, `occurrence[x]`, `performed[x]`, recordedDate, authoredOn,
/// authored, start, date, issued, then the start of a period.
pub fn clinical_date(body: &Map<String, Value>) -> Option<i64> {
    let direct = [
        "effectiveDateTime",
        "effectiveInstant",
        "onsetDateTime",
        "occurrenceDateTime",
        "performedDateTime",
        "recordedDate",
        "authoredOn",
        "authored",
        "start",
        "date",
        "issued",
    ];
    for element in direct {
        if let Some(t) = body.get(element).and_then(fhir_time) {
            return Some(t);
        }
    }
    for element in ["effectivePeriod", "onsetPeriod", "performedPeriod", "period"] {
        if let Some(t) = body.get(element).and_then(|p| p.get("start")).and_then(fhir_time) {
            return Some(t);
        }
    }
    None
}

/// The codes a resource is searched by, as `system|code` tokens: from `code`,
/// `medicationCodeableConcept` and `vaccineCode`.
pub use sharedcare_kit::pdp::fhir_codes as codes;

/// The categories consent's directives can name for a stored resource: its labels, its class
/// and its codes.
pub fn categories(resource_type: &str, body: &Map<String, Value>) -> Vec<String> {
    let codes = codes(body);
    sharedcare_kit::pdp::categories(resource_type, security_labels(body), codes.iter().map(String::as_str))
}

/// Checks `meta.security`: an array of Codings, each with a `code`.
fn check_security(body: &Map<String, Value>) -> Result<(), RecordsError> {
    let Some(security) = body.get("meta").and_then(|m| m.get("security")) else {
        return Ok(());
    };
    let Value::Array(codings) = security else {
        return Err(RecordsError::invalid("meta.security", "must be an array of Codings"));
    };
    for (i, c) in codings.iter().enumerate() {
        if !c.get("code").is_some_and(Value::is_string) {
            return Err(RecordsError::invalid(
                format!("meta.security[{i}].code"),
                "is required (a sensitivity label code, e.g. \"SEX\")",
            ));
        }
    }
    Ok(())
}

/// A resource that passed validation, ready to be versioned and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// `resourceType`.
    pub resource_type: String,
    /// Logical id (assigned when the writer gave none).
    pub id: String,
    /// The whole resource, unknown elements included.
    pub body: Map<String, Value>,
    /// For a Patient: its NHS number identifier, if it has one.
    pub nhs_number: Option<NhsNumber>,
    /// For other resources: the `Patient/{id}` they are about (`subject` or `patient`).
    pub patient_ref: Option<String>,
    /// For a Patient: the id of the Patient it is `link`ed to as `replaced-by` (a merge).
    pub replaced_by: Option<String>,
}

/// Checks a resource type name (`resource_type` in requests, `resourceType` in bodies).
pub fn check_type(field: &str, t: &str) -> Result<(), RecordsError> {
    if t.is_empty() {
        return Err(RecordsError::invalid(field, "is required"));
    }
    if t == "Consent" {
        return Err(RecordsError::invalid(
            field,
            "Consent resources are managed by the consent service",
        ));
    }
    if !RESOURCE_TYPES.contains(&t) {
        return Err(RecordsError::invalid(
            field,
            format!(
                "{t:?} is not a resource type the shared care record stores (expected one of {})",
                RESOURCE_TYPES.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Parses and validates a resource given as JSON text.
pub fn parse(json: &str) -> Result<Resource, RecordsError> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| RecordsError::invalid("resource_json", format!("not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(RecordsError::invalid(
            "resource_json",
            "must be a JSON object (a FHIR resource)",
        ));
    };
    let resource_type = match body.get("resourceType") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(RecordsError::invalid("resourceType", "must be a string")),
        None => return Err(RecordsError::invalid("resourceType", "is required")),
    };
    check_type("resourceType", &resource_type)?;
    let id = match body.get("id") {
        Some(Value::String(s)) => {
            check_id("id", s)?;
            s.clone()
        }
        Some(_) => return Err(RecordsError::invalid("id", "must be a string")),
        None => uuid::Uuid::new_v4().to_string(),
    };
    if let Some(meta) = body.get("meta")
        && !meta.is_object()
    {
        return Err(RecordsError::invalid("meta", "must be an object"));
    }
    check_security(&body)?;
    crate::validate::resource(&resource_type, &body)?;
    let nhs_number = if resource_type == "Patient" {
        nhs_identifier(&body)?
    } else {
        None
    };
    let (patient_ref, replaced_by) = if resource_type == "Patient" {
        (None, replaced_by(&body, &id)?)
    } else {
        (patient_reference(&body)?, None)
    };
    Ok(Resource {
        resource_type,
        id,
        body,
        nhs_number,
        patient_ref,
        replaced_by,
    })
}

/// The Patient a Patient is merged into: its one `link` of type `replaced-by`, whose `other`
/// must reference another Patient. (`replaces`, `refer` and `seealso` links are kept as
/// written and change nothing.)
fn replaced_by(body: &Map<String, Value>, id: &str) -> Result<Option<String>, RecordsError> {
    let Some(links) = body.get("link") else {
        return Ok(None);
    };
    let Value::Array(links) = links else {
        return Err(RecordsError::invalid("link", "must be an array"));
    };
    let mut found: Option<String> = None;
    for (i, link) in links.iter().enumerate() {
        if link.get("type").and_then(Value::as_str) != Some("replaced-by") {
            continue;
        }
        let field = format!("link[{i}].other.reference");
        let reference = link
            .get("other")
            .and_then(|o| o.get("reference"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RecordsError::invalid(&field, "is required for a replaced-by link (e.g. \"Patient/123\")")
            })?;
        let other = reference.strip_prefix("Patient/").ok_or_else(|| {
            RecordsError::invalid(
                &field,
                format!("{reference:?}: a Patient is replaced by another Patient (\"Patient/<id>\")"),
            )
        })?;
        check_id(&field, other)?;
        if other == id {
            return Err(RecordsError::invalid(&field, "a Patient cannot be replaced by itself"));
        }
        if found.is_some() {
            return Err(RecordsError::invalid(
                &field,
                "a Patient is replaced by one other Patient; found two replaced-by links",
            ));
        }
        found = Some(other.to_string());
    }
    Ok(found)
}

fn nhs_identifier(body: &Map<String, Value>) -> Result<Option<NhsNumber>, RecordsError> {
    let Some(ids) = body.get("identifier") else {
        return Ok(None);
    };
    let Value::Array(ids) = ids else {
        return Err(RecordsError::invalid("identifier", "must be an array"));
    };
    let mut found = None;
    for (i, ident) in ids.iter().enumerate() {
        if ident.get("system").and_then(Value::as_str) != Some(NHS_NUMBER_SYSTEM) {
            continue;
        }
        let field = format!("identifier[{i}].value");
        let value = ident
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| RecordsError::invalid(&field, "is required for an NHS number identifier"))?;
        let n = NhsNumber::parse(value).map_err(|e| RecordsError::invalid(&field, e.to_string()))?;
        if found.as_ref().is_some_and(|f| f != &n) {
            return Err(RecordsError::invalid(
                &field,
                "a Patient has one NHS number; found two different ones",
            ));
        }
        found = Some(n);
    }
    Ok(found)
}

fn patient_reference(body: &Map<String, Value>) -> Result<Option<String>, RecordsError> {
    if body.get("resourceType").and_then(Value::as_str) == Some("Appointment") {
        // An Appointment is about the patient among its participants.
        let participants = body.get("participant").and_then(Value::as_array).into_iter().flatten();
        for (i, p) in participants.enumerate() {
            let reference = p.get("actor").and_then(|a| a.get("reference")).and_then(Value::as_str);
            if let Some(id) = reference.and_then(|r| r.strip_prefix("Patient/")) {
                check_id(&format!("participant[{i}].actor.reference"), id)?;
                return Ok(Some(id.to_string()));
            }
        }
        return Ok(None);
    }
    for element in ["subject", "patient"] {
        if let Some(r) = body.get(element) {
            let field = format!("{element}.reference");
            let reference = r
                .get("reference")
                .and_then(Value::as_str)
                .ok_or_else(|| RecordsError::invalid(&field, "is required (e.g. \"Patient/123\")"))?;
            if let Some(id) = reference.strip_prefix("Patient/") {
                check_id(&field, id)?;
                return Ok(Some(id.to_string()));
            }
        }
    }
    Ok(None)
}

/// Sets `meta.versionId` and `meta.lastUpdated` (RFC 3339) on a body.
pub fn stamp(body: &mut Map<String, Value>, id: &str, version: i64, last_updated_us: i64) {
    body.insert("id".into(), Value::String(id.to_string()));
    let meta = body.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert("versionId".into(), Value::String(version.to_string()));
        let t = chrono::DateTime::from_timestamp_micros(last_updated_us).unwrap_or_default();
        meta.insert(
            "lastUpdated".into(),
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse(json).expect_err("should be rejected").to_string()
    }

    #[test]
    fn a_patient_with_a_valid_nhs_number_parses() {
        let r = parse(r#"{"resourceType":"Patient","id":"p1","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}],
            "extension":[{"url":"https://example.org/local","valueString":"kept"}],"_birthDate":{"id":"b"},"name":[{"family":"Evans","x-inner":1}]}"#)
            .expect("valid");
        assert_eq!(r.nhs_number.map(|n| n.to_string()), Some("9434765919".into()));
        assert_eq!(r.body["extension"][0]["valueString"], "kept", "extensions are kept");
        assert_eq!(r.body["name"][0]["x-inner"], 1, "elements inside are kept as given");
        assert_eq!(
            parse(r#"{"resourceType":"Patient","colour":"blue"}"#)
                .expect_err("unknown")
                .to_string(),
            "colour: is not an element of Patient in FHIR R4 (use an extension for local data)"
        );
    }

    #[test]
    fn rejections_name_the_element() {
        assert_eq!(
            err("{"),
            "resource_json: not valid JSON: EOF while parsing an object at line 1 column 1"
        );
        assert_eq!(err("[]"), "resource_json: must be a JSON object (a FHIR resource)");
        assert_eq!(err("{}"), "resourceType: is required");
        assert!(err(r#"{"resourceType":"Banana"}"#).starts_with("resourceType: \"Banana\" is not a resource type"));
        assert_eq!(
            err(r#"{"resourceType":"Patient","id":"a b"}"#),
            "id: \"a b\" is not a FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')"
        );
        assert_eq!(
            err(
                r#"{"resourceType":"Patient","identifier":[{"system":"x"},{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765918"}]}"#
            ),
            "identifier[1].value: \"9434765918\" is not a valid NHS number (check digit)"
        );
        assert_eq!(
            err(r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{}}"#),
            "subject.reference: is required (e.g. \"Patient/123\")"
        );
        assert!(err(r#"{"resourceType":"Consent"}"#).contains("consent service"));
    }

    #[test]
    fn ids_are_assigned_and_meta_is_stamped() {
        let mut r = parse(r#"{"resourceType":"Observation","status":"final","code":{"text":"bp"},"subject":{"reference":"Patient/p1"}}"#).expect("valid");
        assert_eq!(r.patient_ref.as_deref(), Some("p1"));
        assert_eq!(r.id.len(), 36);
        stamp(&mut r.body, "o1", 3, 1_700_000_000_000_000);
        assert_eq!(r.body["meta"]["versionId"], "3");
        assert_eq!(r.body["meta"]["lastUpdated"], "2023-11-14T22:13:20.000000Z");
    }
}

/// The ODS organisation code identifier system.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// The care relationship an Encounter, EpisodeOfCare or referral (ServiceRequest) shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CareRelationship {
    /// "encounter", "episode_of_care" or "referral".
    pub kind: &'static str,
    /// ODS code of the organisation providing the care.
    pub organisation: String,
    /// Start (µs since the epoch).
    pub start_us: i64,
    /// End (µs), `None` while ongoing.
    pub end_us: Option<i64>,
}

/// A FHIR `date` or `dateTime` as µs since the epoch (dates at midnight UTC).
fn fhir_time(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

/// For an Encounter (`serviceProvider`) or EpisodeOfCare (`managingOrganization`): who cares
/// for the patient and when (`period`); a finished or cancelled one has ended (at `period.end`,
/// else `now_us`). `writer` is the organisation used when the resource names none.
pub fn care_relationship(r: &Resource, writer: &str, now_us: i64) -> Option<CareRelationship> {
    if r.resource_type == "ServiceRequest" {
        return referral(r, now_us);
    }
    let (kind, org_element) = match r.resource_type.as_str() {
        "Encounter" => ("encounter", "serviceProvider"),
        "EpisodeOfCare" => ("episode_of_care", "managingOrganization"),
        _ => return None,
    };
    let named = r.body.get(org_element).and_then(ods_code);
    let organisation = named.unwrap_or(writer).to_ascii_uppercase();
    if organisation.is_empty() {
        return None;
    }
    let period = r.body.get("period");
    let start_us = period
        .and_then(|p| p.get("start"))
        .and_then(fhir_time)
        .unwrap_or(now_us);
    let status = r.body.get("status").and_then(Value::as_str).unwrap_or("");
    let closed = matches!(status, "finished" | "cancelled" | "entered-in-error");
    let end_us = period
        .and_then(|p| p.get("end"))
        .and_then(fhir_time)
        .or(closed.then_some(now_us));
    Some(CareRelationship {
        kind,
        organisation,
        start_us,
        end_us,
    })
}

/// The ODS code a Reference names by identifier.
fn ods_code(reference: &Value) -> Option<&str> {
    let i = reference.get("identifier")?;
    (i.get("system").and_then(Value::as_str) == Some(ODS_SYSTEM))
        .then(|| i.get("value").and_then(Value::as_str))
        .flatten()
}

/// A referral to an organisation (the first `performer` named by ODS code) starts a care
/// relationship with it from `authoredOn` while the request is active or on hold; a completed,
/// revoked or mistaken one ends it. A draft, or a referral to a person only, starts none (the
/// writer is the referrer, not the one who will care).
fn referral(r: &Resource, now_us: i64) -> Option<CareRelationship> {
    let status = r.body.get("status").and_then(Value::as_str).unwrap_or("");
    if matches!(status, "draft" | "unknown") {
        return None;
    }
    let performers = r.body.get("performer").and_then(Value::as_array)?;
    let organisation = performers.iter().find_map(ods_code)?.to_ascii_uppercase();
    if organisation.is_empty() {
        return None;
    }
    let start_us = r.body.get("authoredOn").and_then(fhir_time).unwrap_or(now_us);
    let closed = matches!(status, "completed" | "revoked" | "entered-in-error");
    Some(CareRelationship {
        kind: "referral",
        organisation,
        start_us,
        end_us: closed.then_some(now_us.max(start_us)),
    })
}

#[cfg(test)]
mod care_tests {
    use super::*;

    fn encounter(json: &str) -> Resource {
        parse(json).expect("valid")
    }

    #[test]
    fn encounters_and_episodes_show_who_cares_and_when() {
        let open = encounter(
            r#"{"resourceType":"Encounter","id":"e1","status":"in-progress","class":{"code":"AMB"},"subject":{"reference":"Patient/p"},
            "serviceProvider":{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"rx1"}},
            "period":{"start":"2026-11-20T09:00:00Z"}}"#,
        );
        let c = care_relationship(&open, "A81001", 5).expect("care");
        assert_eq!((c.kind, c.organisation.as_str(), c.end_us), ("encounter", "RX1", None));
        assert_eq!(c.start_us, 1_795_165_200_000_000, "2026-11-20T09:00:00Z");
        let finished = encounter(
            r#"{"resourceType":"EpisodeOfCare","id":"x","status":"finished","patient":{"reference":"Patient/p"}}"#,
        );
        let c = care_relationship(&finished, "VH2D7", 7).expect("care");
        assert_eq!(
            (c.kind, c.organisation.as_str(), c.start_us, c.end_us),
            ("episode_of_care", "VH2D7", 7, Some(7))
        );
        let obs = encounter(
            r#"{"resourceType":"Observation","id":"o","status":"final","code":{"text":"bp"},"subject":{"reference":"Patient/p"}}"#,
        );
        assert!(care_relationship(&obs, "A81001", 1).is_none());
    }

    #[test]
    fn a_referral_to_an_organisation_is_a_relationship_until_it_completes() {
        let json = |status: &str| {
            format!(
                r#"{{"resourceType":"ServiceRequest","id":"r1","status":"{status}","intent":"order","subject":{{"reference":"Patient/p"}},
                "authoredOn":"2026-11-20","performer":[{{"display":"Dr X"}},{{"identifier":{{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"rrv"}}}}]}}"#
            )
        };
        let active = care_relationship(&encounter(&json("active")), "A81001", 1_900_000_000_000_000).expect("care");
        assert_eq!(
            (
                active.kind,
                active.organisation.as_str(),
                active.start_us,
                active.end_us
            ),
            ("referral", "RRV", 1_795_132_800_000_000, None),
            "the receiving organisation, not the referring writer"
        );
        let done = care_relationship(&encounter(&json("completed")), "A81001", 1_900_000_000_000_000).expect("care");
        assert_eq!(done.end_us, Some(1_900_000_000_000_000));
        assert!(care_relationship(&encounter(&json("draft")), "A81001", 1).is_none());
        let to_nobody = encounter(
            r#"{"resourceType":"ServiceRequest","status":"active","intent":"order","subject":{"reference":"Patient/p"}}"#,
        );
        assert!(care_relationship(&to_nobody, "A81001", 1).is_none());
    }

    #[test]
    fn an_appointment_is_about_the_patient_among_its_participants() {
        let a = encounter(
            r#"{"resourceType":"Appointment","status":"booked","start":"2026-12-01T10:00:00Z","end":"2026-12-01T10:15:00Z",
            "participant":[{"actor":{"reference":"Practitioner/d1"},"status":"accepted"},{"actor":{"reference":"Patient/p9"},"status":"accepted"}]}"#,
        );
        assert_eq!(a.patient_ref.as_deref(), Some("p9"));
        assert_eq!(clinical_date(&a.body), Some(1_796_119_200_000_000));
    }
}

//! The elements of each stored resource type that Sharedcare checks on write (R4 base
//! cardinalities and datatypes, UK Core's SNOMED CT and NHS number conventions). A top-level
//! element R4 does not define is refused (from the R4 StructureDefinitions,
//! `sharedcare_kit::fhir_elements`); elements inside that are not listed are kept as given.
//! Pure: no I/O. Errors name the element by its path.

use serde_json::{Map, Value};
use sharedcare_kit::edge::Refuse;

use crate::RecordsError;

/// The SNOMED CT code system URI (UK Core binds clinical codes to it).
pub const SNOMED: &str = "http://snomed.info/sct";

/// What an element must be.
#[derive(Clone, Copy)]
enum Kind {
    /// A `code` from a fixed set.
    Code(&'static [&'static str]),
    /// A `CodeableConcept`.
    Concept,
    /// A `Coding`.
    Coding,
    /// A `Reference`.
    Reference,
    /// A `date` or `dateTime`.
    DateTime,
    /// A `Period`.
    Period,
    /// Any JSON object (a complex datatype we do not look inside).
    Object,
    /// A `string`.
    Text,
    /// A `boolean`.
    Bool,
}

/// One element rule: name, kind, whether required (min 1), whether a list (max *).
struct Rule(&'static str, Kind, bool, bool);

const DIAGNOSTIC_REPORT_STATUS: &[&str] = &[
    "registered",
    "partial",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "appended",
    "cancelled",
    "entered-in-error",
    "unknown",
];
const OBSERVATION_STATUS: &[&str] = &[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
];
const MEDICATION_STATEMENT_STATUS: &[&str] = &[
    "active",
    "completed",
    "entered-in-error",
    "intended",
    "stopped",
    "on-hold",
    "unknown",
    "not-taken",
];
const ENCOUNTER_STATUS: &[&str] = &[
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
];
const EPISODE_STATUS: &[&str] = &[
    "planned",
    "waitlist",
    "active",
    "onhold",
    "finished",
    "cancelled",
    "entered-in-error",
];
const REQUEST_STATUS: &[&str] = &[
    "draft",
    "active",
    "on-hold",
    "revoked",
    "completed",
    "entered-in-error",
    "unknown",
];
const CARE_PLAN_INTENT: &[&str] = &["proposal", "plan", "order", "option"];
const CARE_TEAM_STATUS: &[&str] = &["proposed", "active", "suspended", "inactive", "entered-in-error"];
const DOCUMENT_STATUS: &[&str] = &["current", "superseded", "entered-in-error"];
const FLAG_STATUS: &[&str] = &["active", "inactive", "entered-in-error"];
const GENDER: &[&str] = &["male", "female", "other", "unknown"];
const MEDICATION_REQUEST_STATUS: &[&str] = &[
    "active",
    "on-hold",
    "cancelled",
    "completed",
    "entered-in-error",
    "stopped",
    "draft",
    "unknown",
];
const MEDICATION_REQUEST_INTENT: &[&str] = &[
    "proposal",
    "plan",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
];
const MEDICATION_STATUS: &[&str] = &["active", "inactive", "entered-in-error"];
const IMMUNIZATION_STATUS: &[&str] = &["completed", "entered-in-error", "not-done"];
const PROCEDURE_STATUS: &[&str] = &[
    "preparation",
    "in-progress",
    "not-done",
    "on-hold",
    "stopped",
    "completed",
    "entered-in-error",
    "unknown",
];
const SERVICE_REQUEST_INTENT: &[&str] = &[
    "proposal",
    "plan",
    "directive",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
];
const REQUEST_PRIORITY: &[&str] = &["routine", "urgent", "asap", "stat"];
const APPOINTMENT_STATUS: &[&str] = &[
    "proposed",
    "pending",
    "booked",
    "arrived",
    "fulfilled",
    "cancelled",
    "noshow",
    "entered-in-error",
    "checked-in",
    "waitlist",
];
const QUESTIONNAIRE_RESPONSE_STATUS: &[&str] = &["in-progress", "completed", "amended", "entered-in-error", "stopped"];
const GROUP_TYPE: &[&str] = &["person", "animal", "practitioner", "device", "medication", "substance"];
const PARTICIPATION_STATUS: &[&str] = &["accepted", "declined", "tentative", "needs-action"];

/// The rules for `resource_type` (R4 cardinalities of the elements used).
fn rules(resource_type: &str) -> &'static [Rule] {
    use Kind::*;
    match resource_type {
        "Patient" => &[
            Rule("identifier", Object, false, true),
            Rule("name", Object, false, true),
            Rule("gender", Code(GENDER), false, false),
            Rule("birthDate", DateTime, false, false),
            Rule("generalPractitioner", Reference, false, true),
        ],
        "Observation" => &[
            Rule("status", Code(OBSERVATION_STATUS), true, false),
            Rule("category", Concept, false, true),
            Rule("code", Concept, true, false),
            Rule("subject", Reference, false, false),
            Rule("encounter", Reference, false, false),
            Rule("effectiveDateTime", DateTime, false, false),
            Rule("effectivePeriod", Period, false, false),
            Rule("issued", DateTime, false, false),
            Rule("performer", Reference, false, true),
        ],
        "DiagnosticReport" => &[
            Rule("status", Code(DIAGNOSTIC_REPORT_STATUS), true, false),
            Rule("category", Concept, false, true),
            Rule("code", Concept, true, false),
            Rule("subject", Reference, false, false),
            Rule("encounter", Reference, false, false),
            Rule("effectiveDateTime", DateTime, false, false),
            Rule("effectivePeriod", Period, false, false),
            Rule("issued", DateTime, false, false),
            Rule("performer", Reference, false, true),
            Rule("result", Reference, false, true),
        ],
        "Condition" => &[
            Rule("clinicalStatus", Concept, false, false),
            Rule("verificationStatus", Concept, false, false),
            Rule("category", Concept, false, true),
            Rule("code", Concept, false, false),
            Rule("subject", Reference, true, false),
            Rule("encounter", Reference, false, false),
            Rule("onsetDateTime", DateTime, false, false),
            Rule("recordedDate", DateTime, false, false),
        ],
        "AllergyIntolerance" => &[
            Rule("clinicalStatus", Concept, false, false),
            Rule("verificationStatus", Concept, false, false),
            Rule("code", Concept, false, false),
            Rule("patient", Reference, true, false),
            Rule("onsetDateTime", DateTime, false, false),
            Rule("recordedDate", DateTime, false, false),
        ],
        "MedicationStatement" => &[
            Rule("status", Code(MEDICATION_STATEMENT_STATUS), true, false),
            Rule("medicationCodeableConcept", Concept, false, false),
            Rule("medicationReference", Reference, false, false),
            Rule("subject", Reference, true, false),
            Rule("effectiveDateTime", DateTime, false, false),
            Rule("effectivePeriod", Period, false, false),
            Rule("dosage", Object, false, true),
        ],
        "Encounter" => &[
            Rule("status", Code(ENCOUNTER_STATUS), true, false),
            Rule("class", Coding, true, false),
            Rule("type", Concept, false, true),
            Rule("subject", Reference, false, false),
            Rule("period", Period, false, false),
            Rule("serviceProvider", Reference, false, false),
        ],
        "EpisodeOfCare" => &[
            Rule("status", Code(EPISODE_STATUS), true, false),
            Rule("type", Concept, false, true),
            Rule("patient", Reference, true, false),
            Rule("managingOrganization", Reference, false, false),
            Rule("period", Period, false, false),
        ],
        "CarePlan" => &[
            Rule("status", Code(REQUEST_STATUS), true, false),
            Rule("intent", Code(CARE_PLAN_INTENT), true, false),
            Rule("category", Concept, false, true),
            Rule("title", Text, false, false),
            Rule("subject", Reference, true, false),
            Rule("period", Period, false, false),
            Rule("author", Reference, false, false),
        ],
        "CareTeam" => &[
            Rule("status", Code(CARE_TEAM_STATUS), false, false),
            Rule("name", Text, false, false),
            Rule("subject", Reference, false, false),
            Rule("period", Period, false, false),
            Rule("participant", Object, false, true),
            Rule("managingOrganization", Reference, false, true),
        ],
        "DocumentReference" => &[
            Rule("status", Code(DOCUMENT_STATUS), true, false),
            Rule("type", Concept, false, false),
            Rule("category", Concept, false, true),
            Rule("subject", Reference, false, false),
            Rule("date", DateTime, false, false),
            Rule("author", Reference, false, true),
            Rule("content", Object, true, true),
        ],
        "Flag" => &[
            Rule("status", Code(FLAG_STATUS), true, false),
            Rule("category", Concept, false, true),
            Rule("code", Concept, true, false),
            Rule("subject", Reference, true, false),
            Rule("period", Period, false, false),
            Rule("author", Reference, false, false),
        ],
        "Organization" => &[
            Rule("identifier", Object, false, true),
            Rule("name", Text, false, false),
        ],
        "Practitioner" => &[
            Rule("identifier", Object, false, true),
            Rule("name", Object, false, true),
        ],
        "PractitionerRole" => &[
            Rule("practitioner", Reference, false, false),
            Rule("organization", Reference, false, false),
            Rule("code", Concept, false, true),
        ],
        "MedicationRequest" => &[
            Rule("status", Code(MEDICATION_REQUEST_STATUS), true, false),
            Rule("intent", Code(MEDICATION_REQUEST_INTENT), true, false),
            Rule("medicationCodeableConcept", Concept, false, false),
            Rule("medicationReference", Reference, false, false),
            Rule("subject", Reference, true, false),
            Rule("encounter", Reference, false, false),
            Rule("authoredOn", DateTime, false, false),
            Rule("requester", Reference, false, false),
            Rule("dosageInstruction", Object, false, true),
        ],
        "Medication" => &[
            Rule("code", Concept, false, false),
            Rule("status", Code(MEDICATION_STATUS), false, false),
            Rule("form", Concept, false, false),
            Rule("ingredient", Object, false, true),
        ],
        "Immunization" => &[
            Rule("status", Code(IMMUNIZATION_STATUS), true, false),
            Rule("vaccineCode", Concept, true, false),
            Rule("patient", Reference, true, false),
            Rule("occurrenceDateTime", DateTime, false, false),
            Rule("occurrenceString", Text, false, false),
            Rule("recorded", DateTime, false, false),
            Rule("lotNumber", Text, false, false),
            Rule("site", Concept, false, false),
            Rule("route", Concept, false, false),
            Rule("performer", Object, false, true),
        ],
        "Procedure" => &[
            Rule("status", Code(PROCEDURE_STATUS), true, false),
            Rule("code", Concept, false, false),
            Rule("subject", Reference, true, false),
            Rule("encounter", Reference, false, false),
            Rule("performedDateTime", DateTime, false, false),
            Rule("performedPeriod", Period, false, false),
            Rule("performer", Object, false, true),
        ],
        "ServiceRequest" => &[
            Rule("status", Code(REQUEST_STATUS), true, false),
            Rule("intent", Code(SERVICE_REQUEST_INTENT), true, false),
            Rule("category", Concept, false, true),
            Rule("priority", Code(REQUEST_PRIORITY), false, false),
            Rule("code", Concept, false, false),
            Rule("subject", Reference, true, false),
            Rule("authoredOn", DateTime, false, false),
            Rule("requester", Reference, false, false),
            Rule("performer", Reference, false, true),
            Rule("reasonCode", Concept, false, true),
        ],
        "Appointment" => &[
            Rule("status", Code(APPOINTMENT_STATUS), true, false),
            Rule("serviceType", Concept, false, true),
            Rule("appointmentType", Concept, false, false),
            Rule("description", Text, false, false),
            Rule("start", DateTime, false, false),
            Rule("end", DateTime, false, false),
            Rule("participant", Object, true, true),
        ],
        "QuestionnaireResponse" => &[
            Rule("status", Code(QUESTIONNAIRE_RESPONSE_STATUS), true, false),
            Rule("questionnaire", Text, false, false),
            Rule("subject", Reference, false, false),
            Rule("encounter", Reference, false, false),
            Rule("authored", DateTime, false, false),
            Rule("author", Reference, false, false),
            Rule("item", Object, false, true),
        ],
        "Group" => &[
            Rule("type", Code(GROUP_TYPE), true, false),
            Rule("actual", Bool, true, false),
            Rule("name", Text, false, false),
            Rule("member", Object, false, true),
        ],
        "RelatedPerson" => &[
            Rule("patient", Reference, true, false),
            Rule("relationship", Concept, false, true),
            Rule("name", Object, false, true),
            Rule("telecom", Object, false, true),
            Rule("period", Period, false, false),
        ],
        _ => &[],
    }
}

/// Refuses a string (or property name) anywhere in `v` that holds a control character: FHIR
/// strings may not, and Postgres would refuse a NUL that SQLite stores.
fn storable_text(path: &str, v: &Value) -> Result<(), RecordsError> {
    let check = |path: &str, s: &str| sharedcare_kit::text::storable(s).map_err(|e| invalid(path, e.to_string()));
    match v {
        Value::String(s) => check(path, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                storable_text(&format!("{path}[{i}]"), item)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                let at = format!("{path}.{k}");
                check(&at, k)?;
                storable_text(&at, item)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn invalid(path: &str, reason: impl Into<String>) -> RecordsError {
    RecordsError::invalid(path, reason)
}

/// Checks `body` (of `resource_type`) against its rules, every reference in it, and every
/// coding that claims to be SNOMED CT.
pub fn resource(resource_type: &str, body: &Map<String, Value>) -> Result<(), RecordsError> {
    for (name, v) in body {
        if !sharedcare_kit::fhir_elements::allowed(resource_type, name) {
            return Err(invalid(
                name,
                format!("is not an element of {resource_type} in FHIR R4 (use an extension for local data)"),
            ));
        }
        storable_text(name, v)?;
    }
    for Rule(name, kind, required, list) in rules(resource_type) {
        match body.get(*name) {
            None | Some(Value::Null) if *required => {
                return Err(invalid(name, format!("is required in every {resource_type}")));
            }
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if *list => {
                if *required && items.is_empty() {
                    return Err(invalid(name, "needs at least one item"));
                }
                for (i, item) in items.iter().enumerate() {
                    element(&format!("{name}[{i}]"), *kind, item)?;
                }
            }
            Some(_) if *list => return Err(invalid(name, "must be an array (it repeats)")),
            Some(Value::Array(_)) => return Err(invalid(name, "must be a single value, not an array")),
            Some(v) => element(name, *kind, v)?,
        }
    }
    choice(resource_type, body)?;
    if resource_type == "AllergyIntolerance" {
        allergy_status(body)?;
    }
    if resource_type == "Appointment" {
        appointment_participants(body)?;
    }
    if resource_type == "Group" {
        group_members(body)?;
    }
    walk("", &Value::Object(body.clone()))
}

/// The required choice element of `resource_type` and the forms the record accepts.
fn choice_forms(resource_type: &str) -> Option<(&'static str, &'static [&'static str])> {
    match resource_type {
        "MedicationStatement" | "MedicationRequest" => {
            Some(("medication[x]", &["medicationCodeableConcept", "medicationReference"]))
        }
        "Immunization" => Some(("occurrence[x]", &["occurrenceDateTime", "occurrenceString"])),
        _ => None,
    }
}

/// The choice elements (`x[x]`) R4 makes required: exactly one of their forms must be given.
fn choice(resource_type: &str, body: &Map<String, Value>) -> Result<(), RecordsError> {
    let Some((name, forms)) = choice_forms(resource_type) else {
        return Ok(());
    };
    match forms.iter().filter(|f| body.contains_key(**f)).count() {
        1 => Ok(()),
        0 => Err(invalid(name, format!("is required ({})", forms.join(" or ")))),
        _ => Err(invalid(
            name,
            format!("takes one form only, not both {}", forms.join(" and ")),
        )),
    }
}

/// R4 invariants ait-1 and ait-2: an AllergyIntolerance states its `clinicalStatus` unless it
/// was entered in error, and then it states none.
fn allergy_status(body: &Map<String, Value>) -> Result<(), RecordsError> {
    let mistaken = body
        .get("verificationStatus")
        .and_then(|v| v.get("coding"))
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.get("code").and_then(Value::as_str) == Some("entered-in-error"))
        });
    match (body.contains_key("clinicalStatus"), mistaken) {
        (false, false) => Err(invalid(
            "clinicalStatus",
            "is required unless verificationStatus is entered-in-error (R4 invariant ait-1)",
        )),
        (true, true) => Err(invalid(
            "clinicalStatus",
            "must be absent when verificationStatus is entered-in-error (R4 invariant ait-2)",
        )),
        _ => Ok(()),
    }
}

/// Each `Group.member` names its `entity` (R4 1..1), a Reference.
fn group_members(body: &Map<String, Value>) -> Result<(), RecordsError> {
    let members = body.get("member").and_then(Value::as_array).into_iter().flatten();
    for (i, m) in members.enumerate() {
        if !m.get("entity").is_some_and(Value::is_object) {
            return Err(invalid(
                &format!("member[{i}].entity"),
                "is required (a Reference, e.g. to a Patient)",
            ));
        }
    }
    Ok(())
}

/// Each `Appointment.participant` needs a `status` (R4 1..1) and an `actor` or a `type`
/// (invariant app-1).
fn appointment_participants(body: &Map<String, Value>) -> Result<(), RecordsError> {
    let participants = body.get("participant").and_then(Value::as_array).into_iter().flatten();
    for (i, p) in participants.enumerate() {
        let at = |k: &str| format!("participant[{i}].{k}");
        match p.get("status") {
            None => return Err(invalid(&at("status"), "is required in every Appointment participant")),
            Some(v) => element(&at("status"), Kind::Code(PARTICIPATION_STATUS), v)?,
        }
        if !p.get("actor").is_some_and(Value::is_object) && !p.get("type").is_some_and(Value::is_array) {
            return Err(invalid(&at("actor"), "is required when the participant has no type"));
        }
    }
    Ok(())
}

/// Checks one value against its kind.
fn element(path: &str, kind: Kind, v: &Value) -> Result<(), RecordsError> {
    match kind {
        Kind::Code(allowed) => match v.as_str() {
            Some(c) if allowed.contains(&c) => Ok(()),
            Some(c) => Err(invalid(path, format!("{c:?} is not one of {}", allowed.join(", ")))),
            None => Err(invalid(path, "must be a code (a string)")),
        },
        Kind::Text => v
            .is_string()
            .then_some(())
            .ok_or_else(|| invalid(path, "must be a string")),
        Kind::Bool => v
            .is_boolean()
            .then_some(())
            .ok_or_else(|| invalid(path, "must be true or false")),
        Kind::DateTime => match v.as_str() {
            Some(s) if date_time(s) => Ok(()),
            _ => Err(invalid(
                path,
                "must be a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone)",
            )),
        },
        Kind::Period => {
            let Some(p) = v.as_object() else {
                return Err(invalid(path, "must be a Period (an object with start and/or end)"));
            };
            for end in ["start", "end"] {
                if let Some(t) = p.get(end) {
                    element(&format!("{path}.{end}"), Kind::DateTime, t)?;
                }
            }
            Ok(())
        }
        Kind::Concept => {
            let Some(c) = v.as_object() else {
                return Err(invalid(
                    path,
                    "must be a CodeableConcept (an object with coding and/or text)",
                ));
            };
            match c.get("coding") {
                None => {}
                Some(Value::Array(codings)) => {
                    for (i, coding) in codings.iter().enumerate() {
                        element(&format!("{path}.coding[{i}]"), Kind::Coding, coding)?;
                    }
                }
                Some(_) => return Err(invalid(&format!("{path}.coding"), "must be an array of Codings")),
            }
            if let Some(t) = c.get("text")
                && !t.is_string()
            {
                return Err(invalid(&format!("{path}.text"), "must be a string"));
            }
            if !c.contains_key("coding") && !c.contains_key("text") {
                return Err(invalid(path, "needs a coding or text"));
            }
            Ok(())
        }
        Kind::Coding => {
            let Some(c) = v.as_object() else {
                return Err(invalid(path, "must be a Coding (an object with system and code)"));
            };
            for part in ["system", "code", "display", "version"] {
                if let Some(x) = c.get(part)
                    && !x.is_string()
                {
                    return Err(invalid(&format!("{path}.{part}"), "must be a string"));
                }
            }
            Ok(())
        }
        Kind::Reference => {
            if !v.is_object() {
                return Err(invalid(
                    path,
                    "must be a Reference (an object with reference, identifier or display)",
                ));
            }
            Ok(())
        }
        Kind::Object => v
            .is_object()
            .then_some(())
            .ok_or_else(|| invalid(path, "must be an object")),
    }
}

/// A FHIR `date` or `dateTime`: a year, a year and month, a date, or a date and time with a
/// time zone.
pub fn date_time(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match s.len() {
        4 => digits(s),
        7 => chrono::NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").is_ok(),
        10 => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        _ => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
    }
}

/// Checks every `reference` (well-formed) and every SNOMED-looking `coding` anywhere in `v`.
fn walk(path: &str, v: &Value) -> Result<(), RecordsError> {
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("reference") {
                reference(&at("reference"), r)?;
            }
            if let (Some(Value::String(system)), true) = (m.get("system"), m.contains_key("code")) {
                snomed(path, system, m.get("code"))?;
            }
            for (k, child) in m {
                if k != "reference" {
                    walk(&at(k), child)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(&format!("{path}[{i}]"), item)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A literal reference: `Type/id`, `Type/id/_history/n`, an absolute URL, or `#contained`.
fn reference(path: &str, r: &Value) -> Result<(), RecordsError> {
    let Some(s) = r.as_str() else {
        return Err(invalid(path, "must be a string such as \"Patient/123\""));
    };
    let ok = if let Some(local) = s.strip_prefix('#') {
        !local.is_empty()
    } else if s.starts_with("http://") || s.starts_with("https://") {
        s.len() > 8
    } else {
        let parts: Vec<&str> = s.split('/').collect();
        let type_ok = |t: &str| {
            t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && t.chars().all(|c| c.is_ascii_alphabetic())
        };
        let id_ok = |id: &str| check_id("reference", id).is_ok();
        match parts.as_slice() {
            [t, id] => type_ok(t) && id_ok(id),
            [t, id, "_history", v] => type_ok(t) && id_ok(id) && v.parse::<u64>().is_ok(),
            _ => false,
        }
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{s:?} is not a FHIR reference (Type/id, an absolute URL or #contained)"),
        ))
    }
}

/// A coding whose system means SNOMED CT must use the canonical URI and a valid SCTID.
fn snomed(path: &str, system: &str, code: Option<&Value>) -> Result<(), RecordsError> {
    let lower = system.to_ascii_lowercase();
    let looks_snomed = lower.contains("snomed") || lower == "urn:oid:2.16.840.1.113883.6.96";
    if !looks_snomed {
        return Ok(());
    }
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if system != SNOMED {
        return Err(invalid(
            &at("system"),
            format!("{system:?}: SNOMED CT's system URI is {SNOMED}"),
        ));
    }
    let code = code.and_then(Value::as_str).unwrap_or("");
    if !sctid(code) {
        return Err(invalid(
            &at("code"),
            format!("{code:?} is not a SNOMED CT identifier (6-18 digits with a valid check digit)"),
        ));
    }
    Ok(())
}

/// A SNOMED CT identifier: 6–18 digits, no leading zero, Verhoeff check digit.
pub fn sctid(code: &str) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    if !(6..=18).contains(&code.len()) || code.starts_with('0') || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let mut c = 0u8;
    for (i, b) in code.bytes().rev().enumerate() {
        // Verhoeff: every index is below 10 (digits checked above, tables are 10 wide).
        #[allow(clippy::indexing_slicing)]
        let next = D[c as usize][P[i % 8][(b - b'0') as usize] as usize];
        c = next;
    }
    c == 0
}

/// Checks a logical id: 1–64 of `A-Z a-z 0-9 - .` (FHIR `id` datatype).
pub fn check_id(field: &str, id: &str) -> Result<(), RecordsError> {
    if id.is_empty() {
        return Err(RecordsError::invalid(field, "is required"));
    }
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(RecordsError::invalid(
            field,
            format!("{id:?} is not a FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(json).expect("json");
        let m = v.as_object().expect("object");
        resource(m["resourceType"].as_str().expect("type"), m).map_err(|e| e.to_string())
    }

    #[test]
    fn a_nul_anywhere_is_refused_by_its_path_on_every_back_end() {
        let err = check(
            r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://example.org","code":"A8\u00001001"}]}}"#,
        )
        .expect_err("NUL in a code");
        assert!(
            err.starts_with("code.coding[0].code: contains the control character U+0000"),
            "{err}"
        );
    }

    #[test]
    fn snomed_identifiers_have_a_verhoeff_check_digit() {
        for good in ["75367002", "27113001", "38341003", "44054006", "8098009", "22298006"] {
            assert!(sctid(good), "{good}");
        }
        for bad in ["75367003", "12345", "075367002", "7536700x", ""] {
            assert!(!sctid(bad), "{bad}");
        }
    }

    #[test]
    fn each_type_names_its_missing_or_mistyped_element() {
        let cases = [
            (
                r#"{"resourceType":"Observation","code":{"text":"bp"}}"#,
                "status: is required in every Observation",
            ),
            (
                r#"{"resourceType":"Observation","status":"done","code":{"text":"bp"}}"#,
                "status: \"done\" is not one of",
            ),
            (
                r#"{"resourceType":"Observation","status":"final"}"#,
                "code: is required",
            ),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"category":{"text":"vital"}}"#,
                "category: must be an array",
            ),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"SNOMED-CT","code":"75367002"}]}}"#,
                "code.coding[0].system: \"SNOMED-CT\": SNOMED CT's system URI is http://snomed.info/sct",
            ),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://snomed.info/sct","code":"75367003"}]}}"#,
                "code.coding[0].code: \"75367003\" is not a SNOMED CT identifier",
            ),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"20/11/2026"}"#,
                "effectiveDateTime: must be a FHIR date or dateTime",
            ),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"performer":[{"reference":"not a reference"}]}"#,
                "performer[0].reference: \"not a reference\" is not a FHIR reference",
            ),
            (
                r#"{"resourceType":"Condition","code":{"text":"x"}}"#,
                "subject: is required in every Condition",
            ),
            (
                r#"{"resourceType":"MedicationStatement","status":"active","subject":{"reference":"Patient/p"}}"#,
                "medication[x]: is required",
            ),
            (
                r#"{"resourceType":"Encounter","status":"finished","class":[{"code":"AMB"}]}"#,
                "class: must be a single value, not an array",
            ),
            (
                r#"{"resourceType":"DocumentReference","status":"current","content":[]}"#,
                "content: needs at least one item",
            ),
            (
                r#"{"resourceType":"CarePlan","status":"active","subject":{"reference":"Patient/p"}}"#,
                "intent: is required",
            ),
            (
                r#"{"resourceType":"Flag","status":"active","subject":{"reference":"Patient/p"}}"#,
                "code: is required",
            ),
            (
                r#"{"resourceType":"Patient","gender":"F"}"#,
                "gender: \"F\" is not one of",
            ),
            (
                r#"{"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/p"}}"#,
                "medication[x]: is required",
            ),
            (
                r#"{"resourceType":"MedicationRequest","status":"active","intent":"prescribe","subject":{"reference":"Patient/p"},"medicationCodeableConcept":{"text":"x"}}"#,
                "intent: \"prescribe\" is not one of",
            ),
            (
                r#"{"resourceType":"Immunization","status":"completed","vaccineCode":{"text":"flu"},"patient":{"reference":"Patient/p"}}"#,
                "occurrence[x]: is required",
            ),
            (
                r#"{"resourceType":"Immunization","status":"completed","vaccineCode":{"text":"flu"},"patient":{"reference":"Patient/p"},"occurrenceDateTime":"2026-10-01","occurrenceString":"autumn"}"#,
                "occurrence[x]: takes one form only",
            ),
            (
                r#"{"resourceType":"Procedure","status":"done","subject":{"reference":"Patient/p"}}"#,
                "status: \"done\" is not one of",
            ),
            (
                r#"{"resourceType":"ServiceRequest","status":"active","intent":"order","subject":{"reference":"Patient/p"},"performer":{"display":"x"}}"#,
                "performer: must be an array",
            ),
            (
                r#"{"resourceType":"Appointment","status":"booked","participant":[{"actor":{"reference":"Patient/p"}}]}"#,
                "participant[0].status: is required",
            ),
            (
                r#"{"resourceType":"Appointment","status":"booked","participant":[]}"#,
                "participant: needs at least one item",
            ),
            (
                r#"{"resourceType":"QuestionnaireResponse","status":"done"}"#,
                "status: \"done\" is not one of",
            ),
            (
                r#"{"resourceType":"RelatedPerson","relationship":[{"text":"daughter"}]}"#,
                "patient: is required in every RelatedPerson",
            ),
            (
                r#"{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/p"},"code":{"text":"Penicillin"}}"#,
                "clinicalStatus: is required unless verificationStatus is entered-in-error",
            ),
            (
                r#"{"resourceType":"Medication","code":{"coding":[{"system":"http://snomed.info/sct","code":"123"}]}}"#,
                "code.coding[0].code: \"123\" is not a SNOMED CT identifier",
            ),
        ];
        for (json, want) in cases {
            let got = check(json).expect_err(json);
            assert!(got.starts_with(want), "{json}\n  got:  {got}\n  want: {want}…");
        }
    }

    #[test]
    fn every_element_r4_requires_is_required_on_write() {
        for t in crate::fhir::RESOURCE_TYPES {
            for element in sharedcare_kit::fhir_elements::required(t) {
                let ruled = rules(t)
                    .iter()
                    .any(|Rule(name, _, required, _)| name == element && *required);
                let chosen = element.ends_with("[x]") && choice_forms(t).is_some_and(|(name, _)| name == *element);
                assert!(ruled || chosen, "{t}.{element} is required by R4 but not on write");
            }
        }
    }

    #[test]
    fn valid_uk_core_shaped_resources_pass() {
        let ok = [
            r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://snomed.info/sct","code":"75367002"}]},
               "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2026-11-20T09:30:00+00:00","valueQuantity":{"value":128}}"#,
            r#"{"resourceType":"Condition","subject":{"reference":"Patient/p1"},"recordedDate":"2026-11",
               "code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]}}"#,
            r#"{"resourceType":"Encounter","status":"in-progress","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"},
               "subject":{"reference":"Patient/p1"},"period":{"start":"2026-11-20"}}"#,
            r#"{"resourceType":"MedicationStatement","status":"active","subject":{"reference":"Patient/p1"},
               "medicationCodeableConcept":{"text":"Amlodipine 5mg tablets"}}"#,
            r#"{"resourceType":"Patient","birthDate":"1941","gender":"female","generalPractitioner":[{"reference":"https://ods.example/A81001"}]}"#,
            r#"{"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/p1"},
               "medicationCodeableConcept":{"coding":[{"system":"http://snomed.info/sct","code":"319283006"}]},"authoredOn":"2026-11-20",
               "dosageInstruction":[{"text":"One tablet daily"}]}"#,
            r#"{"resourceType":"Medication","code":{"text":"Amlodipine 5mg tablets"},"status":"active"}"#,
            r#"{"resourceType":"Immunization","status":"completed","vaccineCode":{"text":"Influenza vaccine"},"patient":{"reference":"Patient/p1"},
               "occurrenceDateTime":"2026-10-01"}"#,
            r#"{"resourceType":"Procedure","status":"completed","subject":{"reference":"Patient/p1"},"code":{"text":"Hip replacement"},
               "performedPeriod":{"start":"2026-09-01","end":"2026-09-02"}}"#,
            r#"{"resourceType":"ServiceRequest","status":"active","intent":"order","subject":{"reference":"Patient/p1"},"priority":"urgent",
               "performer":[{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"RRV"}}]}"#,
            r#"{"resourceType":"Appointment","status":"booked","start":"2026-12-01T10:00:00Z","end":"2026-12-01T10:15:00Z",
               "participant":[{"actor":{"reference":"Patient/p1"},"status":"accepted"},{"type":[{"text":"GP"}],"status":"needs-action"}]}"#,
            r#"{"resourceType":"QuestionnaireResponse","status":"completed","subject":{"reference":"Patient/p1"},"authored":"2026-11-20",
               "item":[{"linkId":"1","answer":[{"valueBoolean":true}]}]}"#,
            r#"{"resourceType":"RelatedPerson","patient":{"reference":"Patient/p1"},"relationship":[{"text":"daughter"}],"name":[{"family":"Jones"}]}"#,
        ];
        for json in ok {
            check(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        }
    }
}

//! A GP Connect Access Record: Structured response (a FHIR STU3 `collection` Bundle of
//! CareConnect-GPC resources) as FHIR R4 for the shared care record: the Patient, their
//! allergies and their medication (statements and the medications they name). Elements R4
//! renamed are renamed (`assertedDate` → `recordedDate`, a Dosage's `dose[x]` →
//! `doseAndRate`, an ingredient's `amount` → `strength`), codes R4 made CodeableConcepts are
//! wrapped, and elements R4 dropped (`taken`, `isBrand`) or references to what the record does
//! not keep (the practice's Practitioners, Lists, MedicationRequests) are left out. Each
//! resource carries where and when it was fetched in `meta`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use sharedcare_kit::nhs::NhsNumber;

use crate::adt::{NHS_NUMBER_SYSTEM, ODS_SYSTEM, resource_id};

/// `meta.tag` system of the time a resource was fetched from the GP practice.
pub const FETCHED_SYSTEM: &str = "https://sharedcare.nhs.uk/CodeSystem/gp-connect-fetched";

/// Why a response cannot be taken in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// Not a Bundle of the expected shape.
    #[error("{0}")]
    Shape(String),
    /// About a different patient than asked.
    #[error("the GP practice answered about NHS number {got}, not {asked}")]
    OtherPatient { asked: String, got: String },
}

/// Where the record came from: the practice and when it was fetched.
#[derive(Clone, Debug)]
pub struct Source {
    /// The practice's ODS code (writes are authored by it).
    pub ods_code: String,
    /// `meta.source`: the provider endpoint and the request's `Ssp-TraceID`.
    pub source: String,
    /// When it was fetched (RFC 3339).
    pub fetched_at: String,
}

/// The R4 resources of `bundle` about `nhs`, the Patient first (so the others can name it).
pub fn structured(bundle: &Value, nhs: &NhsNumber, from: &Source) -> Result<Vec<Value>, MapError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(MapError::Shape("the response is not a FHIR Bundle".into()));
    }
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| MapError::Shape("the Bundle has no entries".into()))?;
    let resources: Vec<&Map<String, Value>> = entries
        .iter()
        .filter_map(|e| e.get("resource").and_then(Value::as_object))
        .collect();
    let patient = resources
        .iter()
        .find(|r| text(r, "resourceType") == "Patient")
        .ok_or_else(|| MapError::Shape("the Bundle holds no Patient".into()))?;
    let got = patient_nhs(patient).unwrap_or_default();
    if got != nhs.as_str() {
        return Err(MapError::OtherPatient {
            asked: nhs.to_string(),
            got,
        });
    }
    let ods = from.ods_code.to_ascii_uppercase();
    let patient_id = resource_id(&ods, "patient", nhs.as_str());
    let subject = json!({"reference": format!("Patient/{patient_id}")});
    // Source ids of what is mapped, to point references at the mapped copies.
    let mut ids: HashMap<String, String> = HashMap::new();
    for r in &resources {
        let t = text(r, "resourceType");
        if matches!(t.as_str(), "Medication" | "AllergyIntolerance" | "MedicationStatement") {
            let id = resource_id(&ods, &format!("gpc-{}", t.to_ascii_lowercase()), &text(r, "id"));
            ids.insert(format!("{t}/{}", text(r, "id")), id);
        }
    }
    let first = stamp(self::patient(patient, &patient_id, nhs, &ods), from);
    let mut out = Vec::with_capacity(resources.len());
    for r in &resources {
        let t = text(r, "resourceType");
        let Some(id) = ids.get(&format!("{t}/{}", text(r, "id"))) else {
            continue;
        };
        let mapped = match t.as_str() {
            "AllergyIntolerance" => allergy(r, id, &subject),
            "MedicationStatement" => statement(r, id, &subject, &ids),
            _ => medication(r, id),
        };
        out.push(stamp(mapped, from));
    }
    // Medications first among the rest, so a statement's reference is to something written.
    out.sort_by_key(|r| r.get("resourceType").and_then(Value::as_str) != Some("Medication"));
    out.insert(0, first);
    Ok(out)
}

fn text(r: &Map<String, Value>, key: &str) -> String {
    r.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn patient_nhs(p: &Map<String, Value>) -> Option<String> {
    p.get("identifier")?
        .as_array()?
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM))
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Copies `keys` of `from` that are present.
fn keep(from: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| from.get(*k).map(|v| ((*k).to_string(), v.clone())))
        .collect()
}

fn stamp(mut r: Map<String, Value>, from: &Source) -> Value {
    r.insert(
        "meta".into(),
        json!({
            "source": from.source,
            "tag": [{"system": FETCHED_SYSTEM, "code": from.fetched_at, "display": format!("fetched from GP practice {} by GP Connect", from.ods_code)}],
        }),
    );
    Value::Object(r)
}

fn practice(ods: &str) -> Value {
    json!({"identifier": {"system": ODS_SYSTEM, "value": ods}})
}

fn patient(p: &Map<String, Value>, id: &str, nhs: &NhsNumber, ods: &str) -> Map<String, Value> {
    let mut out = keep(
        p,
        &[
            "extension",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "deceasedBoolean",
            "deceasedDateTime",
            "address",
            "maritalStatus",
            "multipleBirthBoolean",
            "multipleBirthInteger",
        ],
    );
    out.insert("resourceType".into(), json!("Patient"));
    out.insert("id".into(), json!(id));
    out.insert(
        "identifier".into(),
        json!([{"system": NHS_NUMBER_SYSTEM, "value": nhs.as_str()}]),
    );
    out.insert("generalPractitioner".into(), json!([practice(ods)]));
    out.insert("managingOrganization".into(), practice(ods));
    out
}

/// An STU3 code that R4 made a CodeableConcept of `system`.
fn concept(code: Option<&Value>, system: &str) -> Option<Value> {
    let code = code?.as_str()?;
    Some(json!({"coding": [{"system": system, "code": code}]}))
}

fn allergy(a: &Map<String, Value>, id: &str, subject: &Value) -> Map<String, Value> {
    let mut out = keep(
        a,
        &[
            "extension",
            "identifier",
            "type",
            "category",
            "criticality",
            "code",
            "onsetDateTime",
            "onsetPeriod",
            "onsetString",
            "lastOccurrence",
            "note",
        ],
    );
    out.insert("resourceType".into(), json!("AllergyIntolerance"));
    out.insert("id".into(), json!(id));
    out.insert("patient".into(), subject.clone());
    if let Some(c) = concept(
        a.get("clinicalStatus"),
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
    ) {
        out.insert("clinicalStatus".into(), c);
    }
    if let Some(c) = concept(
        a.get("verificationStatus"),
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
    ) {
        out.insert("verificationStatus".into(), c);
    }
    if let Some(d) = a.get("assertedDate") {
        out.insert("recordedDate".into(), d.clone());
    }
    if let Some(Value::Array(reactions)) = a.get("reaction") {
        let reactions: Vec<Value> = reactions
            .iter()
            .filter_map(Value::as_object)
            .map(|r| {
                Value::Object(keep(
                    r,
                    &[
                        "substance",
                        "manifestation",
                        "description",
                        "onset",
                        "severity",
                        "exposureRoute",
                        "note",
                    ],
                ))
            })
            .collect();
        out.insert("reaction".into(), Value::Array(reactions));
    }
    out
}

fn statement(s: &Map<String, Value>, id: &str, subject: &Value, ids: &HashMap<String, String>) -> Map<String, Value> {
    let mut out = keep(
        s,
        &[
            "extension",
            "identifier",
            "status",
            "medicationCodeableConcept",
            "effectiveDateTime",
            "effectivePeriod",
            "dateAsserted",
            "reasonCode",
            "note",
        ],
    );
    out.insert("resourceType".into(), json!("MedicationStatement"));
    out.insert("id".into(), json!(id));
    out.insert("subject".into(), subject.clone());
    let named = s
        .get("medicationReference")
        .and_then(|m| m.get("reference"))
        .and_then(Value::as_str)
        .and_then(|r| ids.get(r));
    if let Some(m) = named {
        out.insert(
            "medicationReference".into(),
            json!({"reference": format!("Medication/{m}")}),
        );
    }
    if let Some(Value::Array(dosage)) = s.get("dosage") {
        out.insert("dosage".into(), Value::Array(dosage.iter().map(self::dosage).collect()));
    }
    out
}

/// An STU3 Dosage as R4's: `dose[x]` and `rate[x]` move into `doseAndRate`.
fn dosage(d: &Value) -> Value {
    let Some(d) = d.as_object() else {
        return d.clone();
    };
    let mut out = keep(
        d,
        &[
            "extension",
            "sequence",
            "text",
            "additionalInstruction",
            "patientInstruction",
            "timing",
            "asNeededBoolean",
            "asNeededCodeableConcept",
            "site",
            "route",
            "method",
            "maxDosePerPeriod",
            "maxDosePerAdministration",
            "maxDosePerLifetime",
        ],
    );
    let rate: Map<String, Value> = keep(
        d,
        &["doseQuantity", "doseRange", "rateRatio", "rateRange", "rateQuantity"],
    );
    if !rate.is_empty() {
        out.insert("doseAndRate".into(), json!([rate]));
    }
    Value::Object(out)
}

fn medication(m: &Map<String, Value>, id: &str) -> Map<String, Value> {
    let mut out = keep(m, &["extension", "code", "status", "form"]);
    out.insert("resourceType".into(), json!("Medication"));
    out.insert("id".into(), json!(id));
    if let Some(Value::Array(ingredients)) = m.get("ingredient") {
        let ingredients: Vec<Value> = ingredients
            .iter()
            .filter_map(Value::as_object)
            .map(|i| {
                let mut o = keep(i, &["itemCodeableConcept", "isActive"]);
                if let Some(a) = i.get("amount") {
                    o.insert("strength".into(), a.clone());
                }
                Value::Object(o)
            })
            .collect();
        out.insert("ingredient".into(), Value::Array(ingredients));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GP Connect demonstrator's answer for its test patient 2, recorded from the
    /// demonstrator (nhsconnect/gpconnect-demonstrator 1.2.7) built and run on this machine.
    const DEMONSTRATOR: &str = include_str!("../../tests/fixtures/gpconnect/structured-9658218873.json");

    fn source() -> Source {
        Source {
            ods_code: "a20047".into(),
            source: "https://gp.example/fhir#trace-1".into(),
            fetched_at: "2026-12-07T06:13:00Z".into(),
        }
    }

    fn nhs(n: &str) -> NhsNumber {
        NhsNumber::parse(n).expect("valid")
    }

    #[test]
    fn the_demonstrators_record_maps_to_r4_patient_allergies_and_medication() {
        let bundle: Value = serde_json::from_str(DEMONSTRATOR).expect("json");
        let out = structured(&bundle, &nhs("9658218873"), &source()).expect("maps");
        let count = |t: &str| out.iter().filter(|r| r["resourceType"] == t).count();
        assert_eq!(out[0]["resourceType"], "Patient");
        assert_eq!(out[0]["id"], "a20047-patient-9658218873");
        assert_eq!(out[0]["generalPractitioner"][0]["identifier"]["value"], "A20047");
        assert_eq!(
            (
                count("AllergyIntolerance"),
                count("MedicationStatement"),
                count("Medication")
            ),
            (1, 5, 5)
        );
        let allergy = out
            .iter()
            .find(|r| r["resourceType"] == "AllergyIntolerance")
            .expect("allergy");
        assert_eq!(allergy["clinicalStatus"]["coding"][0]["code"], "active");
        assert_eq!(allergy["verificationStatus"]["coding"][0]["code"], "unconfirmed");
        assert_eq!(allergy["recordedDate"], "1963-07-27T12:00:00+00:00");
        assert!(allergy.get("assertedDate").is_none() && allergy.get("recorder").is_none());
        assert_eq!(allergy["patient"]["reference"], "Patient/a20047-patient-9658218873");
        let statement = out
            .iter()
            .find(|r| r["resourceType"] == "MedicationStatement")
            .expect("statement");
        assert!(statement.get("taken").is_none() && statement.get("basedOn").is_none());
        let named = statement["medicationReference"]["reference"]
            .as_str()
            .expect("a medication");
        let medication = named.strip_prefix("Medication/").expect("reference");
        let first_statement = out
            .iter()
            .position(|r| r["resourceType"] == "MedicationStatement")
            .expect("one");
        let its_medication = out.iter().position(|r| r["id"] == medication).expect("mapped");
        assert!(
            its_medication < first_statement,
            "medications are written before the statements naming them"
        );
        for r in &out {
            assert_eq!(r["meta"]["tag"][0]["code"], "2026-12-07T06:13:00Z", "{}", r["id"]);
            assert_eq!(r["meta"]["source"], "https://gp.example/fhir#trace-1");
            assert!(r["meta"].get("profile").is_none(), "no STU3 profile is claimed");
        }
    }

    #[test]
    fn a_response_about_someone_else_or_of_another_shape_is_refused() {
        let bundle: Value = serde_json::from_str(DEMONSTRATOR).expect("json");
        assert_eq!(
            structured(&bundle, &nhs("9434765919"), &source()),
            Err(MapError::OtherPatient {
                asked: "9434765919".into(),
                got: "9658218873".into()
            })
        );
        let outcome = json!({"resourceType": "OperationOutcome"});
        assert!(matches!(
            structured(&outcome, &nhs("9658218873"), &source()),
            Err(MapError::Shape(_))
        ));
    }

    #[test]
    fn an_stu3_dose_moves_into_dose_and_rate() {
        let d = json!({"text": "2 puffs", "doseQuantity": {"value": 2, "unit": "puff"}});
        let r4 = dosage(&d);
        assert_eq!(r4["doseAndRate"][0]["doseQuantity"]["value"], 2);
        assert!(r4.get("doseQuantity").is_none());
    }
}

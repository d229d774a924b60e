//! The demo ICS's clinical record: a plausible story for each demo patient, written by the
//! organisations that would have written each part (the GP practice, the acute trust, the
//! community trust, the care home, the home care provider and the council's adult social
//! care), coded as those systems code it — SNOMED CT UK for problems, procedures and findings,
//! dm+d for medicines, LOINC for results and measurements. Dates count back from `today`, so
//! the demo always looks current. Pure: [`crate::demo_seed`] writes it through records.

use sharedcare_kit::json::Fields;
use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate};
use serde_json::{Value, json};
use sharedcare_identity::demo::{organisations, patients};
use sharedcare_identity::model::Patient;

const SNOMED: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const NHS_NUMBER: &str = "https://fhir.nhs.uk/Id/nhs-number";
const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// The demo organisations by role.
pub const GP: &str = "A81001";
/// The acute trust.
pub const HOSPITAL: &str = "RX1";
/// The community trust.
pub const COMMUNITY: &str = "RVC";
/// The care home.
pub const CARE_HOME: &str = "VN1C4";
/// The home care provider.
pub const HOME_CARE: &str = "VH2D7";
/// The council's adult social care.
pub const COUNCIL: &str = "LA101";

/// One organisation's part of a patient's record, in the order it is written.
#[derive(Debug, Clone)]
pub struct Part {
    /// The writing organisation's ODS code.
    pub org: &'static str,
    /// The resources (a Patient first when the part has one).
    pub resources: Vec<Value>,
}

/// One demo patient's record: their NHS number and the parts each organisation writes.
#[derive(Debug, Clone)]
pub struct Record {
    /// The patient's NHS number.
    pub nhs_number: String,
    /// Their Patient resource's id.
    pub patient_id: String,
    /// Parts in writing order (the GP's, with the Patient, first).
    pub parts: Vec<Part>,
    /// Categories the patient withholds (v3 ActCode sensitivity codes, e.g. `PSY`).
    pub withholds: Vec<&'static str>,
    /// A representative: (their NHS number, kind).
    pub representative: Option<(String, &'static str)>,
}

impl Record {
    /// How many resources the record holds.
    pub fn resources(&self) -> usize {
        self.parts.iter().map(|p| p.resources.len()).sum()
    }
}

/// A patient's record being written: ids, dates and references in one place.
pub(crate) struct Story {
    today: NaiveDate,
    key: String,
    subject: Value,
    n: usize,
    parts: BTreeMap<&'static str, Vec<Value>>,
    order: Vec<&'static str>,
}

/// A reference to a demo organisation by ODS code, with its name.
fn org_ref(ods: &str) -> Value {
    static NAMES: std::sync::OnceLock<std::collections::HashMap<String, String>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| organisations().into_iter().map(|o| (o.ods_code, o.name)).collect());
    json!({"identifier": {"system": ODS, "value": ods}, "display": names.get(ods).cloned().unwrap_or_default()})
}

/// A person as the record's Patient names them.
pub struct Person<'a> {
    /// Their Patient resource's id; every other resource's id starts with it.
    pub id: String,
    /// NHS number.
    pub nhs_number: &'a str,
    /// Given name.
    pub given: &'a str,
    /// Family name.
    pub family: &'a str,
    /// `YYYY-MM-DD`.
    pub born: &'a str,
    /// FHIR administrative gender.
    pub gender: &'a str,
    /// Their postcode.
    pub postcode: &'a str,
}

fn snomed(code: &str, display: &str) -> Value {
    if code.is_empty() {
        return json!({"text": display});
    }
    json!({"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display})
}

fn loinc(code: &str, display: &str) -> Value {
    json!({"coding": [{"system": LOINC, "code": code, "display": display}], "text": display})
}

fn category(system: &str, code: &str, display: &str) -> Value {
    json!([{"coding": [{"system": system, "code": code, "display": display}]}])
}

impl Story {
    fn new(today: NaiveDate, p: &Patient, gender: &str, postcode: &str) -> Story {
        let id = format!("demo-{}", p.given_name.to_ascii_lowercase());
        Story::of(
            today,
            &Person {
                id,
                nhs_number: &p.nhs_number,
                given: &p.given_name,
                family: &p.family_name,
                born: &p.birthdate,
                gender,
                postcode,
            },
        )
    }

    /// A story for `p`, starting with their Patient (written by their GP practice).
    pub(crate) fn of(today: NaiveDate, p: &Person<'_>) -> Story {
        let mut s = Story {
            today,
            key: p.id.clone(),
            subject: json!({"reference": format!("Patient/{}", p.id), "display": format!("{} {}", p.given, p.family)}),
            n: 0,
            parts: BTreeMap::new(),
            order: Vec::new(),
        };
        s.add(
            GP,
            json!({
                "resourceType": "Patient", "id": p.id,
                "identifier": [{"system": NHS_NUMBER, "value": p.nhs_number}],
                "name": [{"use": "official", "family": p.family, "given": [p.given]}],
                "gender": p.gender, "birthDate": p.born,
                "address": [{"use": "home", "city": "Northbridge", "postalCode": p.postcode}],
                "generalPractitioner": [org_ref(GP)],
            }),
        );
        s
    }

    /// `days` ago (negative: ahead) as a FHIR date.
    pub(crate) fn date(&self, days: i64) -> String {
        (self.today - Duration::days(days)).format("%Y-%m-%d").to_string()
    }

    /// `days` ago at `time` (HH:MM, UTC) as a FHIR dateTime.
    fn at(&self, days: i64, time: &str) -> String {
        format!("{}T{time}:00Z", self.date(days))
    }

    /// A new id for a resource of this patient: `<patient id>-<kind>-<n>`.
    fn id(&mut self, kind: &str) -> String {
        self.n += 1;
        format!("{}-{kind}-{}", self.key, self.n)
    }

    fn add(&mut self, org: &'static str, mut r: Value) -> String {
        if r.get("id").is_none() {
            let kind = r.at("resourceType").as_str().unwrap_or("r").to_ascii_lowercase();
            r.put("id", self.id(&kind).into());
        }
        let reference = format!(
            "{}/{}",
            r.at("resourceType").as_str().unwrap_or(""),
            r.at("id").as_str().unwrap_or("")
        );
        if !self.order.contains(&org) {
            self.order.push(org);
        }
        self.parts.entry(org).or_default().push(r);
        reference
    }

    pub(crate) fn problem(&mut self, org: &'static str, code: &str, display: &str, onset_days: i64) -> String {
        let r = json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": category("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item"),
            "code": snomed(code, display), "subject": self.subject,
            "onsetDateTime": self.date(onset_days), "recordedDate": self.date(onset_days),
        });
        self.add(org, r)
    }

    pub(crate) fn diagnosis(
        &mut self,
        org: &'static str,
        code: &str,
        display: &str,
        days: i64,
        encounter: &str,
    ) -> String {
        let r = json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": category("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", "Encounter Diagnosis"),
            "code": snomed(code, display), "subject": self.subject, "encounter": {"reference": encounter},
            "onsetDateTime": self.date(days), "recordedDate": self.date(days),
        });
        self.add(org, r)
    }

    /// A repeat prescription (dm+d code) with its dosage.
    pub(crate) fn repeat(&mut self, code: &str, display: &str, dosage: &str, since_days: i64) -> String {
        let r = json!({
            "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": snomed(code, display), "subject": self.subject,
            "authoredOn": self.date(since_days), "requester": org_ref(GP),
            "dosageInstruction": [{"text": dosage}],
        });
        self.add(GP, r)
    }

    pub(crate) fn allergy(&mut self, code: &str, display: &str, reaction: &str, days: i64) -> String {
        let r = json!({
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}]},
            "code": snomed(code, display), "patient": self.subject, "recordedDate": self.date(days),
            "reaction": [{"description": reaction}],
        });
        self.add(GP, r)
    }

    pub(crate) fn vaccination(&mut self, code: &str, display: &str, days: i64) -> String {
        let r = json!({
            "resourceType": "Immunization", "status": "completed",
            "vaccineCode": snomed(code, display), "patient": self.subject,
            "occurrenceDateTime": self.at(days, "10:00"), "recorded": self.date(days),
        });
        self.add(GP, r)
    }

    pub(crate) fn blood_pressure(&mut self, org: &'static str, days: i64, systolic: u32, diastolic: u32) -> String {
        let mm = |v: u32| json!({"value": v, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"});
        let r = json!({
            "resourceType": "Observation", "status": "final",
            "category": category("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs"),
            "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"},
                                {"system": SNOMED, "code": "75367002", "display": "Blood pressure"}], "text": "Blood pressure"},
            "subject": self.subject, "effectiveDateTime": self.at(days, "09:40"), "performer": [org_ref(org)],
            "component": [
                {"code": loinc("8480-6", "Systolic blood pressure"), "valueQuantity": mm(systolic)},
                {"code": loinc("8462-4", "Diastolic blood pressure"), "valueQuantity": mm(diastolic)},
            ],
        });
        self.add(org, r)
    }

    /// A body weight (kg) measured at `org`, part of `encounter`.
    pub(crate) fn weight(&mut self, org: &'static str, days: i64, kg: f64, encounter: &str) -> String {
        let r = json!({
            "resourceType": "Observation", "status": "final",
            "category": category("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs"),
            "code": loinc("29463-7", "Body weight"), "subject": self.subject,
            "encounter": {"reference": encounter}, "effectiveDateTime": self.at(days, "10:05"),
            "performer": [org_ref(org)],
            "valueQuantity": {"value": kg, "unit": "kg", "system": UCUM, "code": "kg"},
        });
        self.add(org, r)
    }

    /// A laboratory result (LOINC) in UCUM units, optionally part of an encounter.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn result(
        &mut self,
        org: &'static str,
        code: &str,
        display: &str,
        value: f64,
        unit: &str,
        ucum: &str,
        days: i64,
        encounter: Option<&str>,
    ) -> String {
        let mut r = json!({
            "resourceType": "Observation", "status": "final",
            "category": category("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory"),
            "code": loinc(code, display), "subject": self.subject,
            "effectiveDateTime": self.at(days, "08:15"), "issued": self.at(days, "11:30"), "performer": [org_ref(org)],
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": ucum},
        });
        if let Some(e) = encounter {
            r.put("encounter", json!({"reference": e}));
        }
        self.add(org, r)
    }

    /// An encounter: `class` is v3 ActCode (AMB, IMP, HH, EMER); `until` days ago it ended
    /// (`None`: still going on).
    pub(crate) fn encounter(
        &mut self,
        org: &'static str,
        class: &str,
        kind: (&str, &str),
        from: i64,
        until: Option<i64>,
    ) -> String {
        let mut period = json!({"start": self.at(from, "11:20")});
        if let Some(u) = until {
            period.put("end", self.at(u, "15:00").into());
        }
        let r = json!({
            "resourceType": "Encounter", "status": if until.is_some() { "finished" } else { "in-progress" },
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
            "type": [snomed(kind.0, kind.1)], "subject": self.subject,
            "period": period, "serviceProvider": org_ref(org),
        });
        self.add(org, r)
    }

    pub(crate) fn procedure(
        &mut self,
        org: &'static str,
        code: &str,
        display: &str,
        days: i64,
        encounter: &str,
    ) -> String {
        let r = json!({
            "resourceType": "Procedure", "status": "completed", "code": snomed(code, display),
            "subject": self.subject, "encounter": {"reference": encounter},
            "performedDateTime": self.at(days, "14:00"),
        });
        self.add(org, r)
    }

    /// A letter (a discharge summary, a clinic letter) as a DocumentReference with its text.
    pub(crate) fn letter(
        &mut self,
        org: &'static str,
        kind: (&str, &str),
        title: &str,
        text: &str,
        days: i64,
        encounter: Option<&str>,
    ) -> String {
        use base64::Engine;
        let mut r = json!({
            "resourceType": "DocumentReference", "status": "current", "type": snomed(kind.0, kind.1),
            "subject": self.subject, "date": self.at(days, "16:00"), "author": [org_ref(org)],
            "description": title,
            "content": [{"attachment": {"contentType": "text/plain", "language": "en-GB", "title": title,
                "data": base64::engine::general_purpose::STANDARD.encode(text)}}],
        });
        if let Some(e) = encounter {
            r.put("context", json!({"encounter": [{"reference": e}]}));
        }
        self.add(org, r)
    }

    /// A referral from `from` to organisation `to`.
    pub(crate) fn referral(
        &mut self,
        from: &'static str,
        to: &str,
        code: (&str, &str),
        reason: &str,
        days: i64,
    ) -> String {
        let r = json!({
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "category": [snomed("3457005", "Patient referral")], "priority": "routine",
            "code": snomed(code.0, code.1), "subject": self.subject, "authoredOn": self.date(days),
            "requester": org_ref(from), "performer": [org_ref(to)], "reasonCode": [{"text": reason}],
        });
        self.add(from, r)
    }

    pub(crate) fn care_plan(&mut self, org: &'static str, title: &str, activities: &[&str], since: i64) -> String {
        let r = json!({
            "resourceType": "CarePlan", "status": "active", "intent": "plan",
            "category": [snomed("734163000", "Care plan")], "title": title, "subject": self.subject,
            "period": {"start": self.date(since)}, "author": org_ref(org),
            "activity": activities.iter().map(|a| json!({"detail": {"status": "in-progress", "description": a}})).collect::<Vec<_>>(),
        });
        self.add(org, r)
    }

    /// An assessment (a QuestionnaireResponse) with question and answer pairs.
    pub(crate) fn assessment(&mut self, org: &'static str, title: &str, answers: &[(&str, &str)], days: i64) -> String {
        let items: Vec<Value> = answers
            .iter()
            .enumerate()
            .map(|(i, (q, a))| json!({"linkId": format!("{}", i + 1), "text": q, "answer": [{"valueString": a}]}))
            .collect();
        let r = json!({
            "resourceType": "QuestionnaireResponse", "status": "completed",
            "questionnaire": format!("https://fhir.example-ics.nhs.uk/Questionnaire/{}", title.to_ascii_lowercase().replace(' ', "-")),
            "subject": self.subject, "authored": self.at(days, "13:00"), "author": org_ref(org),
            "item": items,
        });
        self.add(org, r)
    }

    /// A booked appointment `ahead` days from today.
    pub(crate) fn appointment(
        &mut self,
        org: &'static str,
        service: (&str, &str),
        description: &str,
        ahead: i64,
    ) -> String {
        let r = json!({
            "resourceType": "Appointment", "status": "booked",
            "serviceType": [snomed(service.0, service.1)], "description": description,
            "start": self.at(-ahead, "10:30"), "end": self.at(-ahead, "11:00"),
            "participant": [{"actor": self.subject, "status": "accepted"},
                            {"actor": org_ref(org), "status": "accepted"}],
        });
        self.add(org, r)
    }

    /// An ongoing episode of care at `org` since `since` days ago (a GP registration, a
    /// caseload): from a feed, it starts the care relationship.
    pub(crate) fn episode(&mut self, org: &'static str, kind: &str, since: i64) -> String {
        let r = json!({
            "resourceType": "EpisodeOfCare", "status": "active", "type": [{"text": kind}],
            "patient": self.subject, "managingOrganization": org_ref(org),
            "period": {"start": self.date(since)},
        });
        self.add(org, r)
    }

    pub(crate) fn alert(&mut self, org: &'static str, code: &str, display: &str, since: i64) -> String {
        let r = json!({
            "resourceType": "Flag", "status": "active",
            "category": category("http://terminology.hl7.org/CodeSystem/flag-category", "clinical", "Clinical"),
            "code": snomed(code, display), "subject": self.subject,
            "period": {"start": self.date(since)}, "author": org_ref(org),
        });
        self.add(org, r)
    }

    fn done(self, p: &Patient, withholds: Vec<&'static str>, representative: Option<(String, &'static str)>) -> Record {
        let mut r = self.finish(&p.nhs_number);
        r.withholds = withholds;
        r.representative = representative;
        r
    }

    /// The record written so far, for the patient with `nhs_number`.
    pub(crate) fn finish(self, nhs_number: &str) -> Record {
        let Story {
            mut parts, order, key, ..
        } = self;
        Record {
            nhs_number: nhs_number.to_string(),
            patient_id: key,
            parts: order
                .into_iter()
                .map(|org| Part {
                    org,
                    resources: parts.remove(org).unwrap_or_default(),
                })
                .collect(),
            withholds: Vec::new(),
            representative: None,
        }
    }
}

/// Margaret Evans, 85: hypertension, type 2 diabetes, Alzheimer's disease and hip
/// osteoarthritis, in Willow House care home; admitted to hospital six weeks ago with a
/// urinary tract infection and delirium, then referred to the community falls service. She
/// withholds her mental health record (a depressive disorder her GP recorded); Aisha Rahman
/// holds a lasting power of attorney for her health and welfare.
fn margaret(today: NaiveDate, p: &Patient, attorney: &Patient) -> Record {
    let mut s = Story::new(today, p, "female", "NB1 4QT");
    s.problem(GP, "59621000", "Essential hypertension", 6_200);
    s.problem(GP, "44054006", "Type 2 diabetes mellitus", 5_100);
    s.problem(GP, "239872002", "Osteoarthritis of hip", 3_300);
    s.problem(GP, "26929004", "Alzheimer's disease", 900);
    s.problem(GP, "35489007", "Depressive disorder", 600);
    s.repeat("319283006", "Amlodipine 5mg tablets", "One tablet each morning", 2_000);
    s.repeat(
        "325278007",
        "Metformin 500mg tablets",
        "One tablet twice a day with food",
        1_800,
    );
    s.repeat("320000009", "Atorvastatin 20mg tablets", "One tablet at night", 1_800);
    s.repeat(
        "322236009",
        "Paracetamol 500mg tablets",
        "Two tablets up to four times a day when needed for hip pain",
        700,
    );
    s.allergy("91936005", "Allergy to penicillin", "Widespread rash", 9_000);
    s.vaccination("1181000221105", "Influenza vaccine", 60);
    s.vaccination("1119349007", "COVID-19 mRNA vaccine", 75);
    s.blood_pressure(GP, 210, 148, 84);
    s.blood_pressure(GP, 20, 138, 78);
    s.result(
        GP,
        "59261-8",
        "Haemoglobin A1c (IFCC)",
        58.0,
        "mmol/mol",
        "mmol/mol",
        200,
        None,
    );
    s.result(
        GP,
        "59261-8",
        "Haemoglobin A1c (IFCC)",
        54.0,
        "mmol/mol",
        "mmol/mol",
        25,
        None,
    );
    s.result(
        GP,
        "62238-1",
        "eGFR (CKD-EPI)",
        52.0,
        "mL/min/1.73m2",
        "mL/min/{1.73_m2}",
        25,
        None,
    );
    // The admission: six weeks ago, five nights on the care of the elderly ward.
    let stay = s.encounter(HOSPITAL, "IMP", ("32485007", "Hospital admission"), 45, Some(40));
    s.diagnosis(HOSPITAL, "68566005", "Urinary tract infectious disease", 45, &stay);
    s.diagnosis(HOSPITAL, "2776000", "Delirium", 45, &stay);
    s.result(
        HOSPITAL,
        "1988-5",
        "C reactive protein",
        96.0,
        "mg/L",
        "mg/L",
        45,
        Some(&stay),
    );
    s.result(
        HOSPITAL,
        "6690-2",
        "White blood cell count",
        14.2,
        "10*9/L",
        "10*9/L",
        45,
        Some(&stay),
    );
    s.result(HOSPITAL, "2951-2", "Sodium", 133.0, "mmol/L", "mmol/L", 45, Some(&stay));
    s.result(
        HOSPITAL,
        "1988-5",
        "C reactive protein",
        12.0,
        "mg/L",
        "mg/L",
        41,
        Some(&stay),
    );
    s.letter(
        HOSPITAL,
        ("373942005", "Discharge summary"),
        "Discharge summary: care of the elderly",
        "Admitted from Willow House with confusion and a urinary tract infection. Treated with \
         intravenous then oral antibiotics (not penicillin: allergy). Confusion settled by day 4. \
         Mobility below her usual; one fall on the ward without injury. Discharged back to Willow \
         House. GP: please recheck sodium in 2 weeks. Referred to the community falls service.",
        40,
        Some(&stay),
    );
    s.referral(
        HOSPITAL,
        COMMUNITY,
        ("1097151000000103", "Referral to falls service"),
        "A fall on the ward; reduced mobility after delirium",
        40,
    );
    s.care_plan(
        CARE_HOME,
        "Willow House care plan",
        &[
            "Walking frame at all times; staff walk with her to the dining room",
            "Encourage 1.5 litres of fluid a day; record intake",
            "Capillary blood glucose before breakfast on Mondays and Thursdays",
            "Familiar routine and daily call with her family to reduce confusion",
        ],
        420,
    );
    s.blood_pressure(CARE_HOME, 6, 142, 80);
    s.assessment(
        COUNCIL,
        "Care Act needs assessment",
        &[
            (
                "Eligible needs under the Care Act 2014",
                "Yes: personal care, nutrition, safety at home",
            ),
            ("Outcome", "Residential care at Willow House, reviewed yearly"),
            ("Carer involved", "Aisha Rahman (attorney for health and welfare)"),
        ],
        430,
    );
    s.appointment(HOSPITAL, ("", "Memory clinic"), "Memory clinic review", 18);
    s.alert(CARE_HOME, "129839007", "At risk for falls", 40);
    s.done(
        p,
        vec!["PSY"],
        Some((attorney.nhs_number.clone(), "lpa_health_welfare")),
    )
}

/// David Nowak, 68: COPD and hypertension; an emergency admission with an exacerbation last
/// month, home with a package of care and a referral to pulmonary rehabilitation.
fn david(today: NaiveDate, p: &Patient) -> Record {
    let mut s = Story::new(today, p, "male", "NB3 7HD");
    s.problem(GP, "13645005", "Chronic obstructive lung disease", 2_900);
    s.problem(GP, "59621000", "Essential hypertension", 4_000);
    s.problem(GP, "8517006", "Ex-smoker", 2_900);
    s.repeat(
        "320176004",
        "Salbutamol 100micrograms/dose inhaler",
        "Two puffs when needed for breathlessness",
        2_900,
    );
    s.repeat("319283006", "Amlodipine 5mg tablets", "One tablet each morning", 4_000);
    s.vaccination("1181000221105", "Influenza vaccine", 64);
    s.vaccination("12866006", "Pneumococcal vaccine", 800);
    s.blood_pressure(GP, 90, 152, 90);
    s.blood_pressure(GP, 12, 136, 82);
    s.result(
        GP,
        "59261-8",
        "Haemoglobin A1c (IFCC)",
        39.0,
        "mmol/mol",
        "mmol/mol",
        90,
        None,
    );
    let stay = s.encounter(
        HOSPITAL,
        "EMER",
        ("4525004", "Emergency department patient visit"),
        30,
        Some(26),
    );
    s.diagnosis(
        HOSPITAL,
        "195951007",
        "Acute exacerbation of chronic obstructive airways disease",
        30,
        &stay,
    );
    s.result(
        HOSPITAL,
        "59408-5",
        "Oxygen saturation by pulse oximetry",
        88.0,
        "%",
        "%",
        30,
        Some(&stay),
    );
    s.result(
        HOSPITAL,
        "1988-5",
        "C reactive protein",
        48.0,
        "mg/L",
        "mg/L",
        30,
        Some(&stay),
    );
    s.procedure(HOSPITAL, "399208008", "Plain chest X-ray", 30, &stay);
    s.letter(
        HOSPITAL,
        ("373942005", "Discharge summary"),
        "Discharge summary: respiratory medicine",
        "Four nights with an infective exacerbation of COPD. Nebulisers, steroids and \
         doxycycline. Saturations 94% on air at discharge. Home with a short package of care \
         from Homeward Care; referred for pulmonary rehabilitation.",
        26,
        Some(&stay),
    );
    s.referral(
        HOSPITAL,
        COMMUNITY,
        ("", "Referral to pulmonary rehabilitation service"),
        "COPD with an exacerbation needing admission",
        26,
    );
    // Homeward Care's package starts next week: until its first visit is recorded, Homeward
    // has no care relationship with him (a plan alone starts none).
    s.care_plan(
        HOME_CARE,
        "Homeward Care support plan",
        &[
            "Morning visit: help to wash and dress; check inhaler use",
            "Evening visit: prepare a hot meal",
        ],
        -7,
    );
    s.assessment(
        COUNCIL,
        "Hospital discharge assessment",
        &[
            (
                "Needs on discharge",
                "Help with personal care and meals for up to 6 weeks",
            ),
            ("Service arranged", "Homeward Care, two visits a day from next week"),
        ],
        26,
    );
    s.appointment(
        COMMUNITY,
        ("", "Pulmonary rehabilitation"),
        "Pulmonary rehabilitation: first session",
        9,
    );
    s.done(p, Vec::new(), None)
}

/// Aisha Rahman, 36: asthma and a peanut allergy; an asthma review at the practice.
fn aisha(today: NaiveDate, p: &Patient) -> Record {
    let mut s = Story::new(today, p, "female", "NB2 9LP");
    s.problem(GP, "195967001", "Asthma", 7_000);
    s.repeat(
        "320176004",
        "Salbutamol 100micrograms/dose inhaler",
        "Two puffs when needed",
        3_000,
    );
    s.allergy("91935009", "Allergy to peanuts", "Swelling of lips and tongue", 8_000);
    s.vaccination("1181000221105", "Influenza vaccine", 58);
    s.blood_pressure(GP, 40, 118, 72);
    let review = s.encounter(GP, "AMB", ("390872009", "Asthma monitoring"), 40, Some(40));
    s.result(
        GP,
        "33452-4",
        "Peak expiratory flow",
        420.0,
        "L/min",
        "L/min",
        40,
        Some(&review),
    );
    s.appointment(GP, ("390872009", "Asthma monitoring"), "Annual asthma review", 150);
    s.done(p, Vec::new(), None)
}

/// Tom Baker, 41: low back pain, seen at the practice (his NHS login is P5, so the passport
/// tells him what is needed before it shows his record).
fn tom(today: NaiveDate, p: &Patient) -> Record {
    let mut s = Story::new(today, p, "male", "NB5 2RS");
    s.problem(GP, "279039007", "Low back pain", 120);
    s.repeat(
        "322236009",
        "Paracetamol 500mg tablets",
        "Two tablets up to four times a day when needed",
        120,
    );
    s.blood_pressure(GP, 120, 126, 80);
    s.referral(
        GP,
        COMMUNITY,
        ("183545006", "Referral to physiotherapy service"),
        "Low back pain for three months",
        100,
    );
    s.done(p, Vec::new(), None)
}

/// Every demo patient's record, as of `today`.
pub fn records(today: NaiveDate) -> Vec<Record> {
    let ps: Vec<Patient> = patients().into_iter().map(|(p, _)| p).collect();
    let [margaret_, david_, aisha_, tom_] = ps.as_slice() else {
        return Vec::new(); // identity's demo names these four
    };
    vec![
        margaret(today, margaret_, aisha_),
        david(today, david_),
        aisha(today, aisha_),
        tom(today, tom_),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 6).expect("date")
    }

    #[test]
    fn every_resource_is_one_records_accepts() {
        for r in records(today()) {
            for part in &r.parts {
                for res in &part.resources {
                    sharedcare_records::fhir::parse(&res.to_string())
                        .unwrap_or_else(|e| panic!("{} {}: {e}", part.org, res["id"]));
                }
            }
        }
    }

    #[test]
    fn each_part_is_written_by_a_demo_organisation_and_ids_are_unique() {
        let known: Vec<String> = organisations().into_iter().map(|o| o.ods_code).collect();
        let mut ids = std::collections::HashSet::new();
        for r in records(today()) {
            assert_eq!(r.parts[0].org, GP, "the GP's part, with the Patient, comes first");
            assert_eq!(r.parts[0].resources[0]["resourceType"], "Patient");
            for part in &r.parts {
                assert!(known.iter().any(|k| k == part.org), "{}", part.org);
                for res in &part.resources {
                    let id = format!("{}/{}", res["resourceType"], res["id"]);
                    assert!(ids.insert(id.clone()), "{id} twice");
                }
            }
        }
    }

    #[test]
    fn dates_follow_today() {
        let a = records(today());
        let b = records(today() + Duration::days(10));
        let when = |r: &[Record]| r[0].parts[0].resources[1]["onsetDateTime"].as_str().map(str::to_string);
        assert_eq!(when(&a).as_deref(), Some("2009-12-15"));
        assert_eq!(when(&b).as_deref(), Some("2009-12-25"));
    }

    #[test]
    fn margaret_withholds_mental_health_and_has_an_attorney() {
        let all = records(today());
        let m = &all[0];
        assert_eq!(m.withholds, ["PSY"]);
        assert_eq!(m.representative.as_ref().map(|r| r.1), Some("lpa_health_welfare"));
        let depression = m.parts[0]
            .resources
            .iter()
            .any(|r| r["code"]["coding"][0]["code"] == "35489007");
        assert!(depression, "an entry in the category she withholds");
        let orgs: Vec<&str> = m.parts.iter().map(|p| p.org).collect();
        assert_eq!(orgs, [GP, HOSPITAL, CARE_HOME, COUNCIL]);
    }
}

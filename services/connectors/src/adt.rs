//! ADT messages as FHIR R4 (UK Core shape): PID becomes the sender's Patient, PV1 its
//! Encounter. Ids are derived from the sender's organisation and the message's own keys (the
//! NHS number, the visit number PV1-19), so every message about the same visit writes a new
//! version of the same Encounter, and a message applied twice changes nothing but its
//! version.
//!
//! | event | writes |
//! |---|---|
//! | A01 admit, A04 register | Patient; Encounter `in-progress` from the admit time |
//! | A02 transfer | Patient; Encounter with the new location, the old one `completed` |
//! | A03 discharge | Patient; Encounter `finished`, ended at the discharge time |
//! | A08 update | Patient; the Encounter too when PV1-19 is given |
//! | A11 cancel admit | Patient; Encounter `entered-in-error` (ends the relationship) |
//! | A13 cancel discharge | Patient; Encounter `in-progress` again, no end |
//! | A28 add person, A31 update person | Patient |
//! | A40 merge patient | the survivor's Patient (PID); the merged one's (MRG-1, type NH) `inactive`, linked `replaced-by` the survivor |
//!
//! A37 (unlink) is refused with AR: the shared care record does not undo a merge.

use serde_json::{Map, Value, json};
use sharedcare_kit::nhs::NhsNumber;
use std::collections::HashMap;

use crate::config::SenderConfig;
use crate::hl7::{ErrorCode, Hl7, LocalTime, Location, Problem, Seg, fhir_time};

/// The NHS number identifier system.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// The ODS organisation code identifier system.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// The ADT trigger events this connector applies.
pub const EVENTS: &[&str] = &["A01", "A02", "A03", "A04", "A08", "A11", "A13", "A28", "A31", "A40"];

/// What a message comes to: the patient it is about and the resources to write, in order
/// (the Patient first).
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The patient's NHS number (PID-3, identifier type NH).
    pub nhs_number: NhsNumber,
    /// FHIR resources as JSON, the Patient first.
    pub resources: Vec<Value>,
    /// The segment each resource came from, in the same order (where a refusal of it points).
    pub sources: Vec<Location>,
    /// Positions of resources to write only when the record holds none of that id (a
    /// laboratory's Patient: its sparse PID must not replace the PAS's fuller one).
    pub only_if_absent: Vec<u32>,
}

impl Mapped {
    /// `Type/id` of each resource, in order.
    pub fn references(&self) -> Vec<String> {
        self.resources
            .iter()
            .map(|r| {
                let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
                format!("{}/{}", text("resourceType"), text("id"))
            })
            .collect()
    }
}

/// The NHS number a message is about (PID-3 with identifier type NH), or the AE that says why
/// there is none. Every message the connector applies has a PID.
pub fn nhs_number(m: &Hl7<'_>) -> Result<NhsNumber, Problem> {
    let pid = m.require(
        "PID",
        "every message applied to the shared care record names its patient",
    )?;
    let nh = pid
        .repeats(3)
        .into_iter()
        .find(|r| r.text(5).eq_ignore_ascii_case("NH"));
    let Some(nh) = nh else {
        return Err(Problem::error(
            pid.at(3),
            ErrorCode::RequiredField,
            "no NHS number: the shared care record holds patients by NHS number, given in PID-3 with identifier type (PID-3.5) NH",
        ));
    };
    let value = nh.text(1);
    NhsNumber::parse(&value).map_err(|e| {
        Problem::error(
            pid.at(3).component(1),
            ErrorCode::DataType,
            format!("{value:?} is not an NHS number: {e}"),
        )
    })
}

/// `event` of `m`, from `sender`, as the resources to write. `received` is when the message
/// arrived (the fallback for times it does not give).
pub fn map(m: &Hl7<'_>, event: &str, sender: &SenderConfig, received: &str) -> Result<Mapped, Problem> {
    map_with(m, event, sender, received, &HashMap::new())
}

/// The sender's own patient numbers in PID-3 (every identifier but the NHS number).
pub fn local_numbers(m: &Hl7<'_>) -> Vec<String> {
    let Some(pid) = m.segment("PID") else {
        return Vec::new();
    };
    pid.repeats(3)
        .into_iter()
        .filter(|r| !r.text(5).eq_ignore_ascii_case("NH"))
        .map(|r| r.text(1))
        .filter(|v| !v.is_empty())
        .collect()
}

/// The local patient numbers an A40 names the merged patient by, when MRG-1 gives no NHS
/// number (empty when it does, or there is no MRG): the numbers to resolve before mapping.
pub fn merged_local_numbers(m: &Hl7<'_>) -> Vec<String> {
    let Some(mrg) = m.segment("MRG") else {
        return Vec::new();
    };
    let repeats = mrg.repeats(1);
    if repeats.iter().any(|r| r.text(5).eq_ignore_ascii_case("NH")) {
        return Vec::new();
    }
    repeats
        .into_iter()
        .map(|r| r.text(1))
        .filter(|v| !v.is_empty())
        .collect()
}

/// [`map`], with `known`: the NHS number each of the sender's local patient numbers was last
/// applied with (what an A40 naming the merged patient by local number alone is resolved by).
pub fn map_with(
    m: &Hl7<'_>,
    event: &str,
    sender: &SenderConfig,
    received: &str,
    known: &HashMap<String, String>,
) -> Result<Mapped, Problem> {
    let nhs_number = nhs_number(m)?;
    let pid = m.require("PID", "every message names its patient")?;
    let ods = sender.ods_code.to_ascii_uppercase();
    let local = sender.local_time();
    let patient = patient(&pid, &nhs_number, &ods, local)?;
    let patient_id = resource_id(&ods, "patient", nhs_number.as_str());
    let mut resources = vec![patient];
    let mut sources = vec![pid.at(0)];
    if event == "A40" {
        let (merged, at) = merged_patient(m, &nhs_number, &ods, &patient_id, known)?;
        resources.push(merged);
        sources.push(at);
        return Ok(Mapped {
            nhs_number,
            resources,
            sources,
            only_if_absent: Vec::new(),
        });
    }
    let needs_visit = !matches!(event, "A28" | "A31" | "A08");
    let pv1 = m.segment("PV1");
    if needs_visit && pv1.is_none() {
        return Err(Problem::error(
            Location::at("PV1", 0),
            ErrorCode::SegmentSequence,
            format!("the PV1 segment is missing; an {event} is about a visit"),
        ));
    }
    if let Some(pv1) = pv1.filter(|_| !matches!(event, "A28" | "A31")) {
        let visit = pv1.text(19, 1);
        if visit.is_empty() && needs_visit {
            return Err(Problem::required(pv1.at(19).component(1), "the visit number"));
        }
        if !visit.is_empty() {
            let times = Times {
                evn: m.segment("EVN"),
                msh_time: m.segment("MSH").map(|s| s.text(7, 1)).unwrap_or_default(),
                received: received.to_string(),
                local,
            };
            resources.push(encounter(&pv1, event, &visit, &patient_id, &ods, &times)?);
            sources.push(pv1.at(0));
        }
    }
    Ok(Mapped {
        nhs_number,
        resources,
        sources,
        only_if_absent: Vec::new(),
    })
}

/// The Patient an A40 merges into the survivor `survivor_id` (NHS number `survivor`): MRG-1's
/// NHS number (identifier type NH) — or, when MRG-1 names the merged patient by the sender's
/// local numbers alone, the NHS number one of them was last applied with (`known`) —, written
/// as the sender's Patient of that number with MRG-1's local numbers, inactive and linked
/// `replaced-by` the survivor. A local number never applied with an NHS number is refused:
/// the shared care record holds people by NHS number.
fn merged_patient(
    m: &Hl7<'_>,
    survivor: &NhsNumber,
    ods: &str,
    survivor_id: &str,
    known: &HashMap<String, String>,
) -> Result<(Value, Location), Problem> {
    let mrg = m.require("MRG", "an A40 names the merged patient in MRG")?;
    let repeats = mrg.repeats(1);
    let local: Vec<String> = repeats
        .iter()
        .filter(|r| !r.text(5).eq_ignore_ascii_case("NH"))
        .map(|r| r.text(1))
        .filter(|v| !v.is_empty())
        .collect();
    let value = match repeats.iter().find(|r| r.text(5).eq_ignore_ascii_case("NH")) {
        Some(nh) => nh.text(1),
        None => match local.iter().find_map(|l| known.get(l)) {
            Some(n) => n.clone(),
            None if local.is_empty() => {
                return Err(Problem::error(
                    mrg.at(1),
                    ErrorCode::RequiredField,
                    "no NHS number of the merged patient: give it in MRG-1 with identifier type (MRG-1.5) NH",
                ));
            }
            None => {
                return Err(Problem::error(
                    mrg.at(1),
                    ErrorCode::UnknownKey,
                    format!(
                        "no NHS number of the merged patient: MRG-1 names it by local number {} alone, \
                         which {ods} has not sent here with an NHS number; give MRG-1 with identifier \
                         type (MRG-1.5) NH (the shared care record merges people by NHS number)",
                        local.join(", ")
                    ),
                ));
            }
        },
    };
    let merged = NhsNumber::parse(&value).map_err(|e| {
        Problem::error(
            mrg.at(1).component(1),
            ErrorCode::DataType,
            format!("{value:?} is not an NHS number: {e}"),
        )
    })?;
    if &merged == survivor {
        return Err(Problem::error(
            mrg.at(1).component(1),
            ErrorCode::DataType,
            format!(
                "the merged patient's NHS number is the survivor's ({survivor}, PID-3): a merge joins two NHS numbers"
            ),
        ));
    }
    let mut identifier = vec![json!({"system": NHS_NUMBER_SYSTEM, "value": merged.as_str()})];
    for l in &local {
        identifier.push(json!({"system": local_system(ods, "patient-number"), "value": l}));
    }
    let patient = json!({
        "resourceType": "Patient",
        "id": resource_id(ods, "patient", merged.as_str()),
        "identifier": identifier,
        "active": false,
        "link": [{"other": {"reference": format!("Patient/{survivor_id}")}, "type": "replaced-by"}],
    });
    Ok((patient, mrg.at(0)))
}

/// Sets `key` of the JSON object `v` (built here, so always an object).
pub(crate) fn put(v: &mut Value, key: &str, value: Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert(key.to_string(), value);
    }
}

/// A FHIR id for `key` within `ods`'s namespace: `[a-z0-9.-]`, at most 64 characters; a key
/// that had to be changed to fit gets a short hash of itself, so two keys never meet.
pub fn resource_id(ods: &str, kind: &str, key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut id = format!("{}-{kind}-{clean}", ods.to_ascii_lowercase());
    if clean != key || id.len() > 64 {
        // FNV-1a: stable across builds and platforms.
        let mut h: u32 = 0x811c_9dc5;
        for b in key.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        id.truncate(55);
        id = format!("{id}-{h:08x}");
    }
    id
}

/// The system of a local identifier `kind` (e.g. `patient-number`) issued by `ods`, in the
/// pattern UK Core uses for local identifiers.
pub fn local_system(ods: &str, kind: &str) -> String {
    format!("https://fhir.{}.nhs.uk/Id/{kind}", ods.to_ascii_lowercase())
}

pub(crate) fn patient(pid: &Seg<'_, '_>, nhs: &NhsNumber, ods: &str, local: LocalTime) -> Result<Value, Problem> {
    let mut identifier = vec![json!({"system": NHS_NUMBER_SYSTEM, "value": nhs.as_str()})];
    for r in pid.repeats(3) {
        let (value, kind) = (r.text(1), r.text(5));
        if !value.is_empty() && !kind.eq_ignore_ascii_case("NH") {
            identifier.push(json!({"system": local_system(ods, "patient-number"), "value": value}));
        }
    }
    let mut p = Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    p.insert("id".into(), json!(resource_id(ods, "patient", nhs.as_str())));
    p.insert("identifier".into(), Value::Array(identifier));
    let names: Vec<Value> = pid
        .repeats(5)
        .iter()
        .filter_map(|n| {
            let family = n.text(1);
            let given: Vec<String> = [n.text(2), n.text(3)].into_iter().filter(|g| !g.is_empty()).collect();
            if family.is_empty() && given.is_empty() {
                return None;
            }
            let mut name = json!({"use": if matches!(n.text(7).as_str(), "" | "L") { "official" } else { "usual" }});
            if !family.is_empty() {
                put(&mut name, "family", json!(family));
            }
            if !given.is_empty() {
                put(&mut name, "given", json!(given));
            }
            if !n.text(5).is_empty() {
                put(&mut name, "prefix", json!([n.text(5)]));
            }
            Some(name)
        })
        .collect();
    if !names.is_empty() {
        p.insert("name".into(), Value::Array(names));
    }
    let sex = pid.text(8, 1);
    if !sex.is_empty() {
        let gender = match sex.to_ascii_uppercase().as_str() {
            "M" => "male",
            "F" => "female",
            "O" | "A" => "other",
            "U" | "N" => "unknown",
            _ => {
                return Err(Problem::error(
                    pid.at(8),
                    ErrorCode::TableValue,
                    format!("{sex:?} is not an administrative sex (table 0001: M, F, O, U, A, N)"),
                ));
            }
        };
        p.insert("gender".into(), json!(gender));
    }
    let born = pid.text(7, 1);
    if !born.is_empty() {
        let date = born
            .get(..8.min(born.len()))
            .and_then(|d| fhir_time(d, local))
            .ok_or_else(|| {
                Problem::error(
                    pid.at(7),
                    ErrorCode::DataType,
                    format!("{born:?} is not a date of birth (YYYYMMDD)"),
                )
            })?;
        p.insert("birthDate".into(), json!(date));
    }
    let addresses: Vec<Value> = pid
        .repeats(11)
        .iter()
        .filter_map(|a| {
            let line: Vec<String> = [a.text(1), a.text(2)].into_iter().filter(|l| !l.is_empty()).collect();
            let mut v = Map::new();
            if !line.is_empty() {
                v.insert("line".into(), json!(line));
            }
            for (k, c) in [("city", 3), ("district", 4), ("postalCode", 5), ("country", 6)] {
                let t = a.text(c);
                if !t.is_empty() {
                    v.insert(k.into(), json!(t));
                }
            }
            (!v.is_empty()).then(|| {
                v.insert("use".into(), json!("home"));
                Value::Object(v)
            })
        })
        .collect();
    if !addresses.is_empty() {
        p.insert("address".into(), Value::Array(addresses));
    }
    let phones: Vec<Value> = pid
        .repeats(13)
        .iter()
        .filter_map(|t| {
            let n = if t.text(1).is_empty() { t.text(12) } else { t.text(1) };
            (!n.is_empty()).then(|| json!({"system": "phone", "value": n, "use": "home"}))
        })
        .collect();
    if !phones.is_empty() {
        p.insert("telecom".into(), Value::Array(phones));
    }
    let died = pid.text(29, 1);
    if !died.is_empty() {
        let at = fhir_time(&died, local).ok_or_else(|| {
            Problem::error(
                pid.at(29),
                ErrorCode::DataType,
                format!("{died:?} is not a date and time of death"),
            )
        })?;
        p.insert("deceasedDateTime".into(), json!(at));
    } else if pid.text(30, 1).eq_ignore_ascii_case("Y") {
        p.insert("deceasedBoolean".into(), json!(true));
    }
    p.insert(
        "managingOrganization".into(),
        json!({"identifier": {"system": ODS_SYSTEM, "value": ods}}),
    );
    Ok(Value::Object(p))
}

/// Where the times of an event come from when PV1 does not give them.
struct Times<'a, 'm> {
    evn: Option<Seg<'a, 'm>>,
    msh_time: String,
    received: String,
    local: LocalTime,
}

impl Times<'_, '_> {
    /// The time the event happened: `given` (a PV1 field) if set, else EVN-6 (event
    /// occurred), EVN-2 (recorded), MSH-7, and last when the message arrived.
    fn of(&self, given: (String, Location)) -> Result<String, Problem> {
        let (value, at) = given;
        let evn = |f: usize| {
            self.evn
                .map(|e| (e.text(f, 1), e.at(f)))
                .unwrap_or_else(|| (String::new(), Location::at("EVN", f)))
        };
        for (v, at) in [
            (value, at),
            evn(6),
            evn(2),
            (self.msh_time.clone(), Location::at("MSH", 7)),
        ] {
            if v.is_empty() {
                continue;
            }
            return fhir_time(&v, self.local)
                .ok_or_else(|| Problem::error(at, ErrorCode::DataType, format!("{v:?} is not a date and time")));
        }
        Ok(self.received.clone())
    }
}

fn encounter(
    pv1: &Seg<'_, '_>,
    event: &str,
    visit: &str,
    patient_id: &str,
    ods: &str,
    times: &Times<'_, '_>,
) -> Result<Value, Problem> {
    let class = pv1.text(2, 1);
    let (code, display) = match class.to_ascii_uppercase().as_str() {
        "" if event == "A04" => ("AMB", "ambulatory"),
        "" | "I" | "B" => ("IMP", "inpatient encounter"),
        "O" | "R" => ("AMB", "ambulatory"),
        "E" => ("EMER", "emergency"),
        "P" => ("PRENC", "pre-admission"),
        _ => {
            return Err(Problem::error(
                pv1.at(2),
                ErrorCode::TableValue,
                format!("{class:?} is not a patient class (table 0004: I, O, E, P, R, B)"),
            ));
        }
    };
    let start = times.of((pv1.text(44, 1), pv1.at(44)))?;
    let discharged = pv1.text(45, 1);
    let (status, end) = match event {
        "A03" => ("finished", Some(times.of((discharged, pv1.at(45)))?)),
        "A08" if !discharged.is_empty() => ("finished", Some(times.of((discharged, pv1.at(45)))?)),
        "A11" => ("entered-in-error", None),
        _ => ("in-progress", None),
    };
    let mut period = json!({"start": start});
    if let Some(end) = end {
        put(&mut period, "end", json!(end));
    }
    let mut e = json!({
        "resourceType": "Encounter",
        "id": resource_id(ods, "encounter", visit),
        "identifier": [{"system": local_system(ods, "visit-number"), "value": visit}],
        "status": status,
        "class": {"system": ACT_CODE, "code": code, "display": display},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "period": period,
        "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": ods}},
    });
    let mut locations = Vec::new();
    let place = |field: usize| {
        let parts: Vec<String> = (1..=3).map(|c| pv1.text(field, c)).filter(|p| !p.is_empty()).collect();
        parts.join(" / ")
    };
    let here = place(3);
    if !here.is_empty() {
        let state = if status == "in-progress" { "active" } else { "completed" };
        locations.push(json!({"location": {"display": here}, "status": state}));
    }
    let before = place(6);
    if event == "A02" && !before.is_empty() {
        locations.push(json!({"location": {"display": before}, "status": "completed"}));
    }
    if !locations.is_empty() {
        put(&mut e, "location", Value::Array(locations));
    }
    let attending: Vec<Value> = pv1
        .repeats(7)
        .iter()
        .filter_map(|d| {
            let name: Vec<String> = [d.text(6), d.text(3), d.text(2)]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            if name.is_empty() && d.text(1).is_empty() {
                return None;
            }
            let mut individual = json!({"display": name.join(" ")});
            if !d.text(1).is_empty() {
                put(&mut individual, "identifier", json!({"value": d.text(1)}));
            }
            Some(json!({
                "type": [{"coding": [{"system": PARTICIPATION, "code": "ATND", "display": "attender"}]}],
                "individual": individual,
            }))
        })
        .collect();
    if !attending.is_empty() {
        put(&mut e, "participant", Value::Array(attending));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::AckCode;
    use crate::hl7::tests::segment;

    fn sender() -> SenderConfig {
        SenderConfig {
            application: "PAS".into(),
            facility: "RX1".into(),
            ods_code: "RX1".into(),
            client_id: "rx1-pas".into(),
            client_secret: "s".into(),
            client_secret_file: String::new(),
            local_time: "uk".into(),
        }
    }

    fn message(event: &str, pid3: &str, pv1: &str) -> String {
        format!(
            "MSH|^~\\&|PAS|RX1|SHAREDCARE|QN1|20261206101500||ADT^{event}|M1|P|2.4\r\
             EVN|{event}|20261206101500\r\
             PID|1||{pid3}||Smith^Jane^Anne^^Mrs||19800101|F|||1 High St^^Northbridge^^NB1 2AA||01234 567890\r{pv1}"
        )
    }

    fn pv1() -> String {
        segment(
            "PV1",
            &[
                (1, "1"),
                (2, "I"),
                (3, "WARD7^BAY2^BED3"),
                (7, "C123^Jones^Anna^^^Dr"),
                (19, "V0001"),
                (44, "20261206100000"),
            ],
        )
    }

    #[test]
    fn an_admission_writes_the_patient_and_an_in_progress_encounter() {
        let text = message("A01", "RX1000123^^^RX1^MR~9434765919^^^NHS^NH", &pv1());
        let m = Hl7::parse(&text).expect("parses");
        let out = map(&m, "A01", &sender(), "2026-12-06T10:15:00Z").expect("maps");
        assert_eq!(out.nhs_number.as_str(), "9434765919");
        assert_eq!(
            out.references(),
            vec!["Patient/rx1-patient-9434765919", "Encounter/rx1-encounter-V0001"]
        );
        let p = &out.resources[0];
        assert_eq!(p["name"][0]["family"], "Smith");
        assert_eq!(p["name"][0]["given"], json!(["Jane", "Anne"]));
        assert_eq!(p["gender"], "female");
        assert_eq!(p["birthDate"], "1980-01-01");
        assert_eq!(p["address"][0]["postalCode"], "NB1 2AA");
        assert_eq!(p["identifier"][1]["value"], "RX1000123");
        let e = &out.resources[1];
        assert_eq!(e["status"], "in-progress");
        assert_eq!(e["class"]["code"], "IMP");
        assert_eq!(e["period"]["start"], "2026-12-06T10:00:00Z");
        assert_eq!(e["subject"]["reference"], "Patient/rx1-patient-9434765919");
        assert_eq!(e["serviceProvider"]["identifier"]["value"], "RX1");
        assert_eq!(e["location"][0]["location"]["display"], "WARD7 / BAY2 / BED3");
        assert_eq!(e["participant"][0]["individual"]["display"], "Dr Anna Jones");
    }

    #[test]
    fn a_discharge_finishes_the_same_encounter() {
        let pv1 = segment(
            "PV1",
            &[
                (2, "I"),
                (3, "WARD7"),
                (19, "V0001"),
                (44, "20261206100000"),
                (45, "20261208120000"),
            ],
        );
        let text = message("A03", "9434765919^^^NHS^NH", &pv1);
        let m = Hl7::parse(&text).expect("parses");
        let out = map(&m, "A03", &sender(), "now").expect("maps");
        let e = &out.resources[1];
        assert_eq!(e["id"], "rx1-encounter-V0001");
        assert_eq!(e["status"], "finished");
        assert_eq!(e["period"]["end"], "2026-12-08T12:00:00Z");
        assert_eq!(e["location"][0]["status"], "completed");
    }

    #[test]
    fn a_merge_writes_the_survivor_and_the_merged_patient_replaced_by_it() {
        let mrg = |mrg1: &str| format!("{}\r", segment("MRG", &[(1, mrg1)]));
        let text = message(
            "A40",
            "9434765919^^^NHS^NH",
            &mrg("RX1000999^^^RX1^MR~9434765013^^^NHS^NH"),
        );
        let m = Hl7::parse(&text).expect("parses");
        let out = map(&m, "A40", &sender(), "now").expect("maps");
        assert_eq!(
            out.references(),
            vec!["Patient/rx1-patient-9434765919", "Patient/rx1-patient-9434765013"]
        );
        let merged = &out.resources[1];
        assert_eq!(merged["active"], false);
        assert_eq!(merged["identifier"][0]["value"], "9434765013");
        assert_eq!(merged["link"][0]["type"], "replaced-by");
        assert_eq!(
            merged["link"][0]["other"]["reference"],
            "Patient/rx1-patient-9434765919"
        );
        assert_eq!(out.sources[1].to_string(), "MRG");

        // Local identifiers alone, the survivor's own number, or a bad one: AE at MRG-1.
        for (mrg1, why) in [
            ("RX1000999^^^RX1^MR", "no NHS number of the merged patient"),
            ("9434765919^^^NHS^NH", "is the survivor's"),
            ("9434765014^^^NHS^NH", "is not an NHS number"),
        ] {
            let text = message("A40", "9434765919^^^NHS^NH", &mrg(mrg1));
            let m = Hl7::parse(&text).expect("parses");
            let p = map(&m, "A40", &sender(), "now").expect_err("refused");
            assert_eq!(p.ack, AckCode::Error, "{mrg1}");
            assert!(p.location.to_string().starts_with("MRG-1"), "{mrg1}: {}", p.location);
            assert!(p.reason.contains(why), "{mrg1}: {}", p.reason);
        }
        let without = message("A40", "9434765919^^^NHS^NH", "");
        let m = Hl7::parse(&without).expect("parses");
        let p = map(&m, "A40", &sender(), "now").expect_err("refused");
        assert!(p.location.to_string().starts_with("MRG"), "{}", p.location);
    }

    #[test]
    fn a_merge_by_local_number_alone_takes_the_nhs_number_it_was_applied_with() {
        let text = message(
            "A40",
            "9434765919^^^NHS^NH~RX1000111^^^RX1^MR",
            &format!("{}\r", segment("MRG", &[(1, "RX1000999^^^RX1^MR")])),
        );
        let m = Hl7::parse(&text).expect("parses");
        assert_eq!(merged_local_numbers(&m), ["RX1000999"]);
        assert_eq!(local_numbers(&m), ["RX1000111"]);
        let known = HashMap::from([("RX1000999".to_string(), "9434765013".to_string())]);
        let out = map_with(&m, "A40", &sender(), "now", &known).expect("maps");
        let merged = &out.resources[1];
        assert_eq!(merged["id"], "rx1-patient-9434765013");
        assert_eq!(
            merged["identifier"],
            json!([
                {"system": NHS_NUMBER_SYSTEM, "value": "9434765013"},
                {"system": "https://fhir.rx1.nhs.uk/Id/patient-number", "value": "RX1000999"},
            ]),
            "the local number stays findable"
        );
        assert_eq!(
            merged["link"][0]["other"]["reference"],
            "Patient/rx1-patient-9434765919"
        );

        // Never applied with an NHS number: AE 204 at MRG-1, naming the number.
        let p = map_with(&m, "A40", &sender(), "now", &HashMap::new()).expect_err("unknown");
        assert_eq!((p.ack, p.code), (AckCode::Error, ErrorCode::UnknownKey));
        assert_eq!(p.location.to_string(), "MRG-1");
        assert!(p.reason.contains("local number RX1000999 alone"), "{}", p.reason);
        // With an NHS number in MRG-1, nothing needs resolving.
        let text = message(
            "A40",
            "9434765919^^^NHS^NH",
            &format!("{}\r", segment("MRG", &[(1, "RX1000999^^^RX1^MR~9434765013^^^NHS^NH")])),
        );
        assert!(merged_local_numbers(&Hl7::parse(&text).expect("parses")).is_empty());
    }

    #[test]
    fn a_person_update_writes_only_the_patient() {
        let text = message("A31", "9434765919^^^NHS^NH", "");
        let m = Hl7::parse(&text).expect("parses");
        let out = map(&m, "A31", &sender(), "now").expect("maps");
        assert_eq!(out.references(), vec!["Patient/rx1-patient-9434765919"]);
    }

    #[test]
    fn a_bad_nhs_number_is_an_error_at_pid_3() {
        let text = message("A01", "9434765918^^^NHS^NH", &pv1());
        let e = map(&Hl7::parse(&text).expect("parses"), "A01", &sender(), "now").expect_err("bad");
        assert_eq!((e.ack, e.code), (AckCode::Error, ErrorCode::DataType));
        assert_eq!(e.location.to_string(), "PID-3.1");
        assert!(e.reason.contains("9434765918"), "{}", e.reason);
    }

    #[test]
    fn no_nhs_number_no_pid_and_no_visit_are_errors_that_say_where() {
        let text = message("A01", "RX1000123^^^RX1^MR", &pv1());
        let e = map(&Hl7::parse(&text).expect("parses"), "A01", &sender(), "now").expect_err("no NH");
        assert_eq!(
            (e.code, e.location.to_string()),
            (ErrorCode::RequiredField, "PID-3".into())
        );
        let text = "MSH|^~\\&|PAS|RX1|||20261206101500||ADT^A01|M1|P|2.4\rEVN|A01\r";
        let e = map(&Hl7::parse(text).expect("parses"), "A01", &sender(), "now").expect_err("no PID");
        assert_eq!(
            (e.code, e.location.to_string()),
            (ErrorCode::SegmentSequence, "PID".into())
        );
        let text = message("A01", "9434765919^^^NHS^NH", "PV1|1|I|WARD7\r");
        let e = map(&Hl7::parse(&text).expect("parses"), "A01", &sender(), "now").expect_err("no visit");
        assert_eq!(e.location.to_string(), "PV1-19.1");
        let text = message(
            "A01",
            "9434765919^^^NHS^NH",
            &segment("PV1", &[(2, "Q"), (3, "WARD7"), (19, "V1")]),
        );
        let e = map(&Hl7::parse(&text).expect("parses"), "A01", &sender(), "now").expect_err("bad class");
        assert_eq!(
            (e.code, e.location.to_string()),
            (ErrorCode::TableValue, "PV1-2".into())
        );
    }

    #[test]
    fn ids_fit_fhir_and_keys_that_had_to_change_do_not_meet() {
        assert_eq!(resource_id("RX1", "encounter", "V0001"), "rx1-encounter-V0001");
        let a = resource_id("RX1", "encounter", "V/1");
        let b = resource_id("RX1", "encounter", "V-1");
        assert_ne!(a, b);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "{a}"
        );
        let long = resource_id("RX1", "encounter", &"9".repeat(80));
        assert!(long.len() <= 64, "{long}");
    }
}

//! ORU^R01 (unsolicited results) as FHIR R4: the sender's Patient (PID) and one laboratory
//! Observation per OBX, under the order (OBR) it reports. Ids come from the order's filler
//! number (OBR-3, else the placer's, OBR-2) and the OBX set id, so a corrected result
//! (OBX-11 `C`) writes a new version of the same Observation.
//!
//! - OBX-3 the code (`LN` → LOINC, `SCT`/`SNM` → SNOMED CT, else the sender's local code
//!   system), OBX-2 and OBX-5 the value (`NM` a quantity with OBX-6 units, `SN` a quantity
//!   with its comparator, `ST`/`TX`/`FT` text, `CE`/`CWE` a code), OBX-7 the reference range,
//!   OBX-8 the interpretation (HL7 v3 ObservationInterpretation), OBX-11 the status, OBX-14
//!   the time (else OBR-7, else MSH-7), NTE after an OBX its notes; OBR-22 `issued`.
//! - Each order is a laboratory DiagnosticReport (`<ods>-report-<order>`), written after its
//!   Observations and naming them in `result`: OBR-4 its code, OBR-25 its status (table
//!   0123), OBR-7 its effective time, OBR-22 `issued`.

use serde_json::{Value, json};

use crate::adt::{Mapped, ODS_SYSTEM, local_system, patient, put, resource_id};
use crate::config::SenderConfig;
use crate::hl7::{ErrorCode, Hl7, Location, Problem, Seg, fhir_time};

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const UCUM: &str = "http://unitsofmeasure.org";
const DIAGNOSTIC_SECTION: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";

/// An ORU^R01 from `sender` as the Patient and its Observations. The Patient is written only
/// when the record holds none of its id: a laboratory's PID is often sparse, and the trust's
/// Patient from its PAS (ADT) is the fuller one.
pub fn map(m: &Hl7<'_>, sender: &SenderConfig, received: &str) -> Result<Mapped, Problem> {
    let nhs_number = crate::adt::nhs_number(m)?;
    let pid = m.require("PID", "every message names its patient")?;
    let ods = sender.ods_code.to_ascii_uppercase();
    let local = sender.local_time();
    let patient_id = resource_id(&ods, "patient", nhs_number.as_str());
    let mut out = Mapped {
        nhs_number: nhs_number.clone(),
        resources: vec![patient(&pid, &nhs_number, &ods, local)?],
        sources: vec![pid.at(0)],
        only_if_absent: vec![0],
    };
    let msh_time = m.segment("MSH").map(|s| s.text(7, 1)).unwrap_or_default();
    let mut order: Option<(Seg<'_, '_>, String)> = None;
    // Each order with the references of its results, in message order.
    let mut orders: Vec<(Seg<'_, '_>, String, Vec<String>)> = Vec::new();
    for seg in m.all() {
        match seg.name() {
            "OBR" => {
                let filler = seg.text(3, 1);
                let id = if filler.is_empty() { seg.text(2, 1) } else { filler };
                if id.is_empty() {
                    return Err(Problem::required(
                        seg.at(3),
                        "the order's filler number (OBR-3), or its placer number (OBR-2)",
                    ));
                }
                orders.push((seg, id.clone(), Vec::new()));
                order = Some((seg, id));
            }
            "OBX" => {
                let Some((obr, id)) = &order else {
                    return Err(Problem::error(
                        seg.at(0),
                        ErrorCode::SegmentSequence,
                        "an OBX comes after the OBR of the order it reports",
                    ));
                };
                let at = Times {
                    obr,
                    msh_time: &msh_time,
                    received,
                    local,
                };
                let o = observation(&seg, id, &patient_id, &ods, &at)?;
                if let (Some((_, _, results)), Some(oid)) = (orders.last_mut(), o.get("id").and_then(Value::as_str)) {
                    results.push(format!("Observation/{oid}"));
                }
                out.resources.push(o);
                out.sources.push(seg.at(0));
            }
            "NTE" => {
                if let (Some(last), Some(source)) = (out.resources.last_mut(), out.sources.last())
                    && source.segment == "OBX"
                {
                    note(last, &seg);
                }
            }
            _ => {}
        }
    }
    if order.is_none() {
        return Err(Problem::error(
            Location::at("OBR", 0),
            ErrorCode::SegmentSequence,
            "the OBR segment is missing; an ORU^R01 reports its results under their order",
        ));
    }
    if out.resources.len() == 1 {
        return Err(Problem::error(
            Location::at("OBX", 0),
            ErrorCode::SegmentSequence,
            "no OBX: the message carries no result",
        ));
    }
    for (obr, id, results) in orders.into_iter().filter(|(_, _, r)| !r.is_empty()) {
        let at = Times {
            obr: &obr,
            msh_time: &msh_time,
            received,
            local,
        };
        out.resources.push(report(&obr, &id, results, &patient_id, &ods, &at)?);
        out.sources.push(obr.at(0));
    }
    Ok(out)
}

/// The DiagnosticReport of the order `obr` (id `order`), whose results are `results`.
fn report(
    obr: &Seg<'_, '_>,
    order: &str,
    results: Vec<String>,
    patient_id: &str,
    ods: &str,
    t: &Times<'_, '_, '_>,
) -> Result<Value, Problem> {
    let status = match obr.text(25, 1).to_ascii_uppercase().as_str() {
        "F" | "" => "final",
        "C" => "corrected",
        "A" => "partial",
        "P" | "R" => "preliminary",
        "O" | "I" | "S" => "registered",
        "X" => "cancelled",
        other => {
            return Err(Problem::error(
                obr.at(25),
                ErrorCode::TableValue,
                format!("{other:?} is not an order's result status (table 0123: F, C, A, P, R, O, I, S, X)"),
            ));
        }
    };
    let code =
        coding(obr, 4, ods).ok_or_else(|| Problem::required(obr.at(4), "the order's service (what was tested)"))?;
    let effective = t.effective(None)?;
    let mut r = json!({
        "resourceType": "DiagnosticReport",
        "id": resource_id(ods, "report", order),
        "identifier": [{"system": local_system(ods, "order-id"), "value": order}],
        "status": status,
        "category": [{"coding": [{"system": DIAGNOSTIC_SECTION, "code": "LAB", "display": "Laboratory"}]}],
        "code": {"coding": [code]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": effective,
        "performer": [{"identifier": {"system": ODS_SYSTEM, "value": ods}}],
        "result": results.into_iter().map(|r| json!({"reference": r})).collect::<Vec<_>>(),
    });
    if let Some(issued) = t.issued() {
        put(&mut r, "issued", json!(issued));
    }
    Ok(r)
}

/// Where a result's times come from.
struct Times<'a, 'b, 'm> {
    obr: &'a Seg<'b, 'm>,
    msh_time: &'a str,
    received: &'a str,
    local: crate::hl7::LocalTime,
}

impl Times<'_, '_, '_> {
    /// The first time given of `own` (a result's OBX-14), OBR-7 and MSH-7, as FHIR; when the
    /// message arrived if none is.
    fn effective(&self, own: Option<(String, Location)>) -> Result<String, Problem> {
        let order = [
            (self.obr.text(7, 1), self.obr.at(7)),
            (self.msh_time.to_string(), Location::at("MSH", 7)),
        ];
        match own.into_iter().chain(order).find(|(v, _)| !v.is_empty()) {
            Some((v, at)) => fhir_time(&v, self.local)
                .ok_or_else(|| Problem::error(at, ErrorCode::DataType, format!("{v:?} is not a date and time"))),
            None => Ok(self.received.to_string()),
        }
    }

    /// When the order's results were reported (OBR-22), when it gives one to the minute.
    fn issued(&self) -> Option<String> {
        Some(self.obr.text(22, 1))
            .filter(|v| v.len() >= 12)
            .and_then(|v| fhir_time(&v, self.local))
    }
}

fn observation(
    obx: &Seg<'_, '_>,
    order: &str,
    patient_id: &str,
    ods: &str,
    t: &Times<'_, '_, '_>,
) -> Result<Value, Problem> {
    let set = obx.text(1, 1);
    let key = if set.is_empty() {
        format!("{order}-{}", obx.at(0).sequence)
    } else {
        format!("{order}-{set}")
    };
    let status = match obx.text(11, 1).to_ascii_uppercase().as_str() {
        "F" | "" => "final",
        "C" => "corrected",
        "P" | "R" | "S" => "preliminary",
        "I" | "O" => "registered",
        "X" => "cancelled",
        "W" | "D" => "entered-in-error",
        other => {
            return Err(Problem::error(
                obx.at(11),
                ErrorCode::TableValue,
                format!("{other:?} is not a result status (table 0085: F, C, P, R, S, I, O, X, W, D)"),
            ));
        }
    };
    let code = coding(obx, 3, ods).ok_or_else(|| Problem::required(obx.at(3), "the observation's code"))?;
    let effective = t.effective(Some((obx.text(14, 1), obx.at(14))))?;
    let mut o = json!({
        "resourceType": "Observation",
        "id": resource_id(ods, "observation", &key),
        "identifier": [{"system": local_system(ods, "result-id"), "value": key}],
        "status": status,
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [code]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": effective,
        "performer": [{"identifier": {"system": ODS_SYSTEM, "value": ods}}],
    });
    if let Some(issued) = t.issued() {
        put(&mut o, "issued", json!(issued));
    }
    if let Some((key, value)) = value(obx, ods)? {
        put(&mut o, key, value);
    }
    let range = obx.text(7, 1);
    if !range.is_empty() {
        put(&mut o, "referenceRange", json!([{"text": range}]));
    }
    let flags: Vec<Value> = obx
        .repeats(8)
        .iter()
        .map(|r| r.text(1).to_ascii_uppercase())
        .filter(|f| !f.is_empty())
        .map(|f| json!({"coding": [{"system": INTERPRETATION, "code": f}]}))
        .collect();
    if !flags.is_empty() {
        put(&mut o, "interpretation", Value::Array(flags));
    }
    Ok(o)
}

/// The value of an OBX by its value type (OBX-2): the element and its JSON, or none.
fn value(obx: &Seg<'_, '_>, ods: &str) -> Result<Option<(&'static str, Value)>, Problem> {
    let kind = obx.text(2, 1).to_ascii_uppercase();
    let raw = obx.whole(5);
    if raw.is_empty() {
        return Ok(None);
    }
    let quantity = |number: &str, comparator: Option<&str>| -> Result<Value, Problem> {
        let v: f64 = number.trim().parse().map_err(|_| {
            Problem::error(
                obx.at(5),
                ErrorCode::DataType,
                format!("{number:?} is not a number (OBX-2 says {kind})"),
            )
        })?;
        let mut q = json!({"value": v});
        let (unit, text, system) = (obx.text(6, 1), obx.text(6, 2), obx.text(6, 3));
        if !unit.is_empty() || !text.is_empty() {
            put(&mut q, "unit", json!(if text.is_empty() { &unit } else { &text }));
        }
        if !unit.is_empty() && (system.eq_ignore_ascii_case("UCUM") || system.is_empty()) {
            put(&mut q, "system", json!(UCUM));
            put(&mut q, "code", json!(unit));
        }
        if let Some(c) = comparator {
            put(&mut q, "comparator", json!(c));
        }
        Ok(q)
    };
    Ok(Some(match kind.as_str() {
        "NM" => ("valueQuantity", quantity(&obx.text(5, 1), None)?),
        "SN" => {
            let (comparator, number) = (obx.text(5, 1), obx.text(5, 2));
            match comparator.as_str() {
                "<" | "<=" | ">" | ">=" => ("valueQuantity", quantity(&number, Some(&comparator))?),
                "" | "=" if obx.text(5, 3).is_empty() => ("valueQuantity", quantity(&number, None)?),
                _ => ("valueString", json!(raw.replace('^', " "))),
            }
        }
        "ST" | "TX" | "FT" => {
            let text: Vec<String> = obx.repeats(5).iter().map(|r| r.text(1)).collect();
            ("valueString", json!(text.join("\n")))
        }
        "CE" | "CWE" | "CNE" => match coding(obx, 5, ods) {
            Some(c) => ("valueCodeableConcept", json!({"coding": [c]})),
            None => return Ok(None),
        },
        other => {
            return Err(Problem::error(
                obx.at(2),
                ErrorCode::TableValue,
                format!("value type {other:?} is not applied (NM, SN, ST, TX, FT, CE, CWE, CNE are)"),
            ));
        }
    }))
}

/// The coding of a CE/CWE field: `code^text^system`, the system named as FHIR names it.
fn coding(seg: &Seg<'_, '_>, field: usize, ods: &str) -> Option<Value> {
    let (code, text, system) = (seg.text(field, 1), seg.text(field, 2), seg.text(field, 3));
    if code.is_empty() && text.is_empty() {
        return None;
    }
    let system = match system.to_ascii_uppercase().as_str() {
        "LN" | "LOINC" => "http://loinc.org".to_string(),
        "SCT" | "SNM" | "SNOMED" | "SNOMEDCT" | "SNM3" => "http://snomed.info/sct".to_string(),
        "" => local_system(ods, "local-code").replace("/Id/", "/CodeSystem/"),
        other => local_system(ods, &other.to_ascii_lowercase()).replace("/Id/", "/CodeSystem/"),
    };
    let mut c = json!({"system": system});
    if !code.is_empty() {
        put(&mut c, "code", json!(code));
    }
    if !text.is_empty() {
        put(&mut c, "display", json!(text));
    }
    Some(c)
}

/// Adds an NTE's comment (NTE-3) to the result before it.
fn note(observation: &mut Value, nte: &Seg<'_, '_>) {
    let text: Vec<String> = nte
        .repeats(3)
        .iter()
        .map(|r| r.text(1))
        .filter(|t| !t.is_empty())
        .collect();
    if text.is_empty() {
        return;
    }
    let entry = json!({"text": text.join("\n")});
    match observation.get_mut("note").and_then(Value::as_array_mut) {
        Some(notes) => notes.push(entry),
        None => put(observation, "note", json!([entry])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::tests::segment;

    fn sender() -> SenderConfig {
        SenderConfig {
            application: "LAB".into(),
            facility: "RX1".into(),
            ods_code: "RX1".into(),
            client_id: "rx1-lab".into(),
            client_secret: "s".into(),
            client_secret_file: String::new(),
            local_time: "utc".into(),
        }
    }

    fn oru(results: &str) -> String {
        format!(
            "MSH|^~\\&|LAB|RX1|SHAREDCARE|QN1|20261206101500||ORU^R01^ORU_R01|L1|P|2.4\r\
             PID|1||9434765919^^^NHS^NH||Smith^Jane||19800101|F\r\
             {}{results}",
            segment(
                "OBR",
                &[
                    (1, "1"),
                    (3, "ORD123"),
                    (4, "U&E^Urea and electrolytes^L"),
                    (7, "20261206090000"),
                    (22, "20261206100000"),
                    (25, "F")
                ]
            )
        )
    }

    #[test]
    fn each_result_is_a_laboratory_observation_with_its_value_units_and_flags() {
        let text = oru(&(segment(
            "OBX",
            &[
                (1, "1"),
                (2, "NM"),
                (3, "2823-3^Potassium^LN"),
                (5, "5.9"),
                (6, "mmol/L^^UCUM"),
                (7, "3.5-5.3"),
                (8, "H"),
                (11, "F"),
            ],
        ) + "NTE|1||Haemolysed sample\r"
            + &segment(
                "OBX",
                &[
                    (1, "2"),
                    (2, "ST"),
                    (3, "COMM^Comment"),
                    (5, "Repeat advised"),
                    (11, "P"),
                ],
            )));
        let m = Hl7::parse(&text).expect("parses");
        let out = map(&m, &sender(), "now").expect("maps");
        assert_eq!(
            out.references(),
            vec![
                "Patient/rx1-patient-9434765919",
                "Observation/rx1-observation-ORD123-1",
                "Observation/rx1-observation-ORD123-2",
                "DiagnosticReport/rx1-report-ORD123",
            ]
        );
        let report = &out.resources[3];
        assert_eq!(report["status"], "final");
        assert_eq!(report["code"]["coding"][0]["code"], "U&E");
        assert_eq!(report["category"][0]["coding"][0]["code"], "LAB");
        assert_eq!(
            report["result"],
            json!([{"reference": "Observation/rx1-observation-ORD123-1"}, {"reference": "Observation/rx1-observation-ORD123-2"}])
        );
        assert_eq!(
            (report["effectiveDateTime"].as_str(), report["issued"].as_str()),
            (Some("2026-12-06T09:00:00Z"), Some("2026-12-06T10:00:00Z"))
        );
        assert_eq!(out.sources[3].to_string(), "OBR");
        let k = &out.resources[1];
        assert_eq!(
            k["code"]["coding"][0],
            json!({"system": "http://loinc.org", "code": "2823-3", "display": "Potassium"})
        );
        assert_eq!(
            k["valueQuantity"],
            json!({"value": 5.9, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"})
        );
        assert_eq!(k["referenceRange"][0]["text"], "3.5-5.3");
        assert_eq!(k["interpretation"][0]["coding"][0]["code"], "H");
        assert_eq!(
            k["effectiveDateTime"], "2026-12-06T09:00:00Z",
            "OBR-7 when OBX-14 is empty"
        );
        assert_eq!(k["issued"], "2026-12-06T10:00:00Z");
        assert_eq!(k["note"][0]["text"], "Haemolysed sample");
        assert_eq!(k["category"][0]["coding"][0]["code"], "laboratory");
        let c = &out.resources[2];
        assert_eq!(
            (c["status"].as_str(), c["valueString"].as_str()),
            (Some("preliminary"), Some("Repeat advised"))
        );
        assert_eq!(
            c["code"]["coding"][0]["system"], "https://fhir.rx1.nhs.uk/CodeSystem/local-code",
            "a code without a system is the sender's own"
        );
        assert_eq!(out.sources[2].to_string(), "OBX[2]");
    }

    #[test]
    fn a_bad_value_a_result_without_an_order_and_an_empty_report_say_where() {
        let text = oru(&segment(
            "OBX",
            &[(1, "1"), (2, "NM"), (3, "2823-3^Potassium^LN"), (5, "high")],
        ));
        let e = map(&Hl7::parse(&text).expect("parses"), &sender(), "now").expect_err("not a number");
        assert_eq!((e.code, e.location.to_string()), (ErrorCode::DataType, "OBX-5".into()));
        let text = "MSH|^~\\&|LAB|RX1|||2026||ORU^R01|L2|P|2.4\rPID|1||9434765919^^^NHS^NH\rOBX|1|NM|X^Y|1|2\r";
        let e = map(&Hl7::parse(text).expect("parses"), &sender(), "now").expect_err("no order");
        assert_eq!(
            (e.code, e.location.to_string()),
            (ErrorCode::SegmentSequence, "OBX".into())
        );
        let e = map(&Hl7::parse(&oru("")).expect("parses"), &sender(), "now").expect_err("no result");
        assert_eq!(e.location.to_string(), "OBX");
        let text = oru(&segment("OBX", &[(1, "1"), (2, "ED"), (3, "PDF^Report"), (5, "abc")]));
        let e = map(&Hl7::parse(&text).expect("parses"), &sender(), "now").expect_err("value type");
        assert_eq!(
            (e.code, e.location.to_string()),
            (ErrorCode::TableValue, "OBX-2".into())
        );
    }
}

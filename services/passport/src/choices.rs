//! A person's sharing choices as they read them in the NHS App, from the `SharingState`
//! consent last published: directives in plain words, the national data opt-out and GP
//! dissent explained, representatives, and break-glass access to their record.

use serde_json::{Value, json};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_proto::events::v1::SharingState;
use sharedcare_proto::passport::v1 as api;

use crate::view::rfc3339;

/// The national data opt-out in plain words.
pub fn opt_out_words(on: bool) -> &'static str {
    if on {
        "You have opted out: your confidential patient information is not used for research and planning. It is still used for your individual care."
    } else {
        "You have not opted out: your confidential patient information may be used for research and planning, as well as for your care."
    }
}

/// GP dissent (the type 1 opt-out) in plain words.
pub fn dissent_words(on: bool) -> &'static str {
    if on {
        "You have asked your GP practice not to share your GP record for purposes beyond your individual care."
    } else {
        "Your GP practice may share your GP record for purposes beyond your care where the law allows."
    }
}

/// A representative's authority in plain words.
pub fn representative_words(kind: &str) -> String {
    match kind {
        "lpa_health_welfare" => "Lasting power of attorney for health and welfare".into(),
        "court_deputy" => "Deputy appointed by the Court of Protection".into(),
        "parental_responsibility" => "Parent or guardian with parental responsibility".into(),
        other => format!("Representative ({other})"),
    }
}

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    crate::view::micros(t).unwrap_or_default()
}

/// The gRPC answer for `patient`, from `state` (none yet: nothing chosen, no flags).
pub fn to_proto(patient: &NhsNumber, state: Option<&SharingState>) -> api::SharingChoices {
    let s = state.cloned().unwrap_or_default();
    api::SharingChoices {
        nhs_number: patient.to_string(),
        directives: s
            .directives
            .into_iter()
            .map(|d| api::SharingChoice {
                id: d.id,
                status: d.status,
                summary: d.summary,
                provision_json: d.provision_json,
                updated: d.updated,
            })
            .collect(),
        national_opt_out: s.national_opt_out,
        gp_dissent: s.gp_dissent,
        national_opt_out_words: opt_out_words(s.national_opt_out).into(),
        gp_dissent_words: dissent_words(s.gp_dissent).into(),
        representatives: s
            .representatives
            .into_iter()
            .map(|r| api::Representative {
                kind_words: representative_words(&r.kind),
                id: r.id,
                representative_nhs_number: r.representative_nhs_number,
                kind: r.kind,
                start: r.start,
                end: r.end,
            })
            .collect(),
        break_glass: s
            .break_glass
            .into_iter()
            .map(|g| api::BreakGlassNotice {
                ods_code: g.ods_code,
                reason_code: g.reason_code,
                reason_text: g.reason_text,
                start: g.start,
                end: g.end,
                reviewed: g.reviewed,
            })
            .collect(),
        updated: s.time,
    }
}

/// The JSON the HTTP API answers: the same fields, camelCase.
pub fn to_json(c: &api::SharingChoices) -> Value {
    json!({
        "nhsNumber": c.nhs_number,
        "directives": c.directives.iter().map(|d| json!({
            "id": d.id, "status": d.status, "summary": d.summary,
            "provision": serde_json::from_str::<Value>(&d.provision_json).unwrap_or(Value::Null),
            "updated": rfc3339(micros(&d.updated)),
        })).collect::<Vec<_>>(),
        "nationalOptOut": c.national_opt_out,
        "nationalOptOutWords": c.national_opt_out_words,
        "gpDissent": c.gp_dissent,
        "gpDissentWords": c.gp_dissent_words,
        "representatives": c.representatives.iter().map(|r| json!({
            "id": r.id, "representativeNhsNumber": r.representative_nhs_number, "kind": r.kind,
            "kindWords": r.kind_words, "start": rfc3339(micros(&r.start)), "end": rfc3339(micros(&r.end)),
        })).collect::<Vec<_>>(),
        "breakGlass": c.break_glass.iter().map(|g| json!({
            "odsCode": g.ods_code, "reasonCode": g.reason_code, "reasonText": g.reason_text,
            "start": rfc3339(micros(&g.start)), "end": rfc3339(micros(&g.end)), "reviewed": g.reviewed,
        })).collect::<Vec<_>>(),
        "updated": rfc3339(micros(&c.updated)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharedcare_proto::events::v1::{BreakGlassUse, SharingDirective};

    #[test]
    fn choices_carry_plain_words_and_no_staff_identity_for_break_glass() {
        let nhs = NhsNumber::parse("9434765919").expect("valid");
        let state = SharingState {
            nhs_number: nhs.to_string(),
            national_opt_out: true,
            directives: vec![SharingDirective {
                id: "d1".into(),
                status: "active".into(),
                summary: "Do not share my mental health records with anyone.".into(),
                provision_json: r#"{"type":"deny","securityLabel":["MH"]}"#.into(),
                updated: None,
            }],
            break_glass: vec![BreakGlassUse {
                id: "g1".into(),
                person_id: "staff-555".into(),
                ods_code: "RXX01".into(),
                reason_code: "unconscious-patient".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = to_proto(&nhs, Some(&state));
        assert!(c.national_opt_out_words.starts_with("You have opted out"));
        assert!(c.gp_dissent_words.contains("may share"));
        let json = to_json(&c);
        assert_eq!(json["directives"][0]["provision"]["securityLabel"][0], "MH");
        assert_eq!(json["breakGlass"][0]["odsCode"], "RXX01");
        assert!(!json.to_string().contains("staff-555"), "{json}");
        let none = to_proto(&nhs, None);
        assert!(none.directives.is_empty() && !none.national_opt_out && none.updated.is_none());
    }
}

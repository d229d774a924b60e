//! A person's sharing choices and care team after a change, as one `SharingState` event on
//! [`STATE_TOPIC`] (state transfer for read models such as the passport), written in the
//! change's own transaction; and the plain words a person reads for each directive.

use sharedcare_kit::bus::envelope;
use sharedcare_kit::db::{self, Tx};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::outbox;
use sharedcare_proto::events::v1::{
    BreakGlassUse, CareRelationship, SharingDirective, SharingRepresentative, SharingState,
};
use sqlx::Row;

use crate::ConsentError;
use crate::policy::{Action, Effect, Provision};

/// Consent's state-transfer topic: each person's whole sharing state after every change,
/// keyed by NHS number, which only read models consume.
pub const STATE_TOPIC: &str = "sharedcare.consent.state.v1";

/// The protobuf type of the events on [`STATE_TOPIC`].
pub const SHARING_STATE: &str = "sharedcare.events.v1.SharingState";

/// Reads `patient`'s state inside `tx` (after its change, under the per-patient outbox lock,
/// so concurrent changes to one person publish in the order they commit, each seeing the one
/// before) and enqueues it.
pub async fn publish(tx: &mut Tx, patient: &NhsNumber) -> Result<(), ConsentError> {
    let state = read(tx, patient).await?;
    let nhs = patient.as_str();
    let env = envelope(SHARING_STATE, crate::NAME, nhs, nhs, &state);
    outbox::enqueue(tx, STATE_TOPIC, &env).await?;
    Ok(())
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    (seconds != 0).then(|| db::timestamp(seconds.saturating_mul(1_000_000)))
}

/// Everything consent holds about `patient` except decisions: one statement over the five
/// tables, rows as (kind, id, four texts, three numbers).
async fn read(tx: &mut Tx, patient: &NhsNumber) -> Result<SharingState, ConsentError> {
    let nhs = patient.as_str().to_string();
    let sql = "SELECT 'd', id, status, provision, '', '', updated_at, 0, 0 FROM directives WHERE nhs_number = $1 \
         UNION ALL SELECT 'f', '', '', '', '', '', national_opt_out, gp_dissent, 0 FROM patient_flags WHERE nhs_number = $2 \
         UNION ALL SELECT 'r', id, ods_code, kind, '', '', start_at, end_at, 0 FROM relationships WHERE nhs_number = $3 \
         UNION ALL SELECT 'p', id, representative_nhs, kind, '', '', start_at, end_at, 0 FROM representatives WHERE nhs_number = $4 \
         UNION ALL SELECT 'g', id, person_id, ods_code, reason_code, reason_text, start_at, end_at, reviewed FROM break_glass WHERE nhs_number = $5";
    let mut q = sqlx::query(sql);
    for _ in 0..5 {
        q = q.bind(nhs.clone());
    }
    let rows = q.fetch_all(&mut **tx).await?;
    let mut s = SharingState {
        nhs_number: nhs.clone(),
        time: Some(db::timestamp(db::now_us())),
        ..Default::default()
    };
    for r in &rows {
        let kind: String = r.try_get(0)?;
        let text = |i: usize| r.try_get::<String, _>(i);
        let (n1, n2, n3): (i64, i64, i64) = (r.try_get(6)?, r.try_get(7)?, r.try_get(8)?);
        match kind.as_str() {
            "d" => {
                let json = text(3)?;
                let provision: Provision = serde_json::from_str(&json)
                    .map_err(|e| ConsentError::Corrupt(format!("directive provision for {nhs}: {e}")))?;
                s.directives.push(SharingDirective {
                    id: text(1)?,
                    status: text(2)?,
                    summary: describe(&provision),
                    provision_json: json,
                    updated: at(n1),
                });
            }
            "f" => {
                s.national_opt_out = n1 != 0;
                s.gp_dissent = n2 != 0;
            }
            "r" => s.relationships.push(CareRelationship {
                id: text(1)?,
                ods_code: text(2)?,
                kind: text(3)?,
                start: at(n1),
                end: at(n2),
            }),
            "p" => s.representatives.push(SharingRepresentative {
                id: text(1)?,
                representative_nhs_number: text(2)?,
                kind: text(3)?,
                start: at(n1),
                end: at(n2),
            }),
            _ => s.break_glass.push(BreakGlassUse {
                id: text(1)?,
                person_id: text(2)?,
                ods_code: text(3)?,
                reason_code: text(4)?,
                reason_text: text(5)?,
                start: at(n1),
                end: at(n2),
                reviewed: n3 != 0,
            }),
        }
    }
    // A stable order, so equal states are equal events (and a rebuild equals the live model).
    s.directives.sort_by(|a, b| a.id.cmp(&b.id));
    s.relationships.sort_by(|a, b| a.id.cmp(&b.id));
    s.representatives.sort_by(|a, b| a.id.cmp(&b.id));
    s.break_glass.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(s)
}

/// A sensitivity label in plain words.
pub fn label_words(code: &str) -> String {
    if let Some(class) = code.strip_prefix(sharedcare_kit::pdp::CLASS_PREFIX) {
        return class_words(class);
    }
    if let Some(coded) = code.strip_prefix(sharedcare_kit::pdp::CODE_PREFIX) {
        let (system, code) = coded.split_once('|').unwrap_or(("", coded));
        return match system {
            "http://snomed.info/sct" => format!("SNOMED CT {code}"),
            _ => format!("code {code}"),
        };
    }
    let words = match code {
        "SEX" => "sexual and reproductive health",
        "STD" => "sexually transmitted infections",
        "HIV" => "HIV",
        "SDV" => "sexual and domestic violence",
        "PSY" => "psychiatry",
        "MH" => "mental health",
        "BH" => "behavioural health",
        "ETH" => "alcohol and substance misuse",
        "SUD" => "substance use",
        "GDIS" => "genetic conditions",
        "SAFEGUARDING" => "safeguarding",
        other => return format!("records labelled {other}"),
    };
    words.to_string()
}

/// A resource type (a directive's `class`) in plain words.
fn class_words(resource_type: &str) -> String {
    let words = match resource_type {
        "Condition" => "problem",
        "MedicationRequest" | "MedicationStatement" => "medicine",
        "AllergyIntolerance" => "allergy",
        "Immunization" => "vaccination",
        "Procedure" => "operation and procedure",
        "ServiceRequest" => "referral",
        "Appointment" | "Encounter" => "appointment and visit",
        "QuestionnaireResponse" => "assessment",
        "Observation" | "DiagnosticReport" => "test result",
        "DocumentReference" => "document",
        "CarePlan" => "care plan",
        "Flag" => "alert",
        other => return other.to_string(),
    };
    words.to_string()
}

fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn date(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|d| d.format("%-d %B %Y").to_string())
        .unwrap_or_else(|| seconds.to_string())
}

/// What a directive does, in words a person reads in the NHS App: "Do not share my mental
/// health records with organisation RXX01 for any purpose", with its exceptions.
pub fn describe(p: &Provision) -> String {
    let mut s = match p.kind {
        Some(Effect::Deny) => "Do not share".to_string(),
        Some(Effect::Permit) => "Share".to_string(),
        None => "About sharing".to_string(),
    };
    s.push(' ');
    s.push_str(&what(p));
    s.push_str(&whom(p));
    if !p.purposes.is_empty() {
        s.push_str(&format!(
            " for {}",
            list(&p.purposes.iter().map(|x| purpose_words(x)).collect::<Vec<_>>())
        ));
    }
    if !p.actions.is_empty() {
        let actions: Vec<String> = p.actions.iter().map(|a| action_words(*a).to_string()).collect();
        s.push_str(&format!(" (when {})", list(&actions)));
    }
    if let Some((start, end)) = p.period {
        match end {
            Some(end) => s.push_str(&format!(", from {} until {}", date(start), date(end))),
            None => s.push_str(&format!(", from {}", date(start))),
        }
    }
    s.push('.');
    for (n, exception) in p.provision.iter().enumerate() {
        let lead = if n == 0 { " Except: " } else { " Also except: " };
        s.push_str(lead);
        let inner = describe(exception);
        s.push_str(&inner[..1].to_ascii_lowercase());
        s.push_str(&inner[1..]);
    }
    s
}

fn what(p: &Provision) -> String {
    if p.security_labels.is_empty() {
        "my whole record".to_string()
    } else {
        let labels: Vec<String> = p.security_labels.iter().map(|l| label_words(l)).collect();
        format!("my {} records", list(&labels))
    }
}

fn whom(p: &Provision) -> String {
    let mut parts = Vec::new();
    if !p.organisations.is_empty() {
        let noun = if p.organisations.len() == 1 {
            "organisation"
        } else {
            "organisations"
        };
        parts.push(format!("{noun} {}", list(&p.organisations)));
    }
    if !p.roles.is_empty() {
        let noun = if p.roles.len() == 1 {
            "staff in role"
        } else {
            "staff in roles"
        };
        parts.push(format!("{noun} {}", list(&p.roles)));
    }
    match parts.as_slice() {
        [] => " with anyone".to_string(),
        _ => format!(" with {}", parts.join(" and ")),
    }
}

fn purpose_words(code: &str) -> String {
    match code {
        "TREAT" => "my care".into(),
        "ETREAT" => "emergency care".into(),
        "BTG" => "emergency (break-glass) access".into(),
        "HRESCH" => "research".into(),
        "HOPERAT" => "running health services".into(),
        "PATRQT" => "my own requests".into(),
        other => format!("purpose {other}"),
    }
}

fn action_words(a: Action) -> &'static str {
    match a {
        Action::Read => "reading",
        Action::Search => "searching",
        Action::Create => "adding",
        Action::Update => "changing",
        Action::Delete => "deleting",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(labels: &[&str]) -> Provision {
        Provision {
            kind: Some(Effect::Deny),
            security_labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_withheld_category_reads_as_plain_words() {
        assert_eq!(
            describe(&deny(&["MH"])),
            "Do not share my mental health records with anyone."
        );
        assert_eq!(
            describe(&deny(&["SEX", "HIV", "PSY"])),
            "Do not share my sexual and reproductive health, HIV and psychiatry records with anyone."
        );
        assert_eq!(
            describe(&deny(&["class:Immunization", "code:http://snomed.info/sct|35489007"])),
            "Do not share my vaccination and SNOMED CT 35489007 records with anyone."
        );
    }

    #[test]
    fn organisations_roles_purposes_and_periods_are_named() {
        let p = Provision {
            kind: Some(Effect::Deny),
            organisations: vec!["RXX01".into()],
            roles: vec!["R8000".into(), "R8001".into()],
            purposes: vec!["HRESCH".into()],
            actions: vec![Action::Read],
            period: Some((1_767_225_600, Some(1_798_761_600))),
            ..Default::default()
        };
        assert_eq!(
            describe(&p),
            "Do not share my whole record with organisation RXX01 and staff in roles R8000 and R8001 \
             for research (when reading), from 1 January 2026 until 1 January 2027."
        );
    }

    #[test]
    fn exceptions_follow_the_rule() {
        let mut p = deny(&[]);
        p.provision.push(Provision {
            kind: Some(Effect::Permit),
            organisations: vec!["A81001".into()],
            ..Default::default()
        });
        assert_eq!(
            describe(&p),
            "Do not share my whole record with anyone. Except: share my whole record with organisation A81001."
        );
    }

    #[test]
    fn an_unknown_label_is_named_not_dropped() {
        assert_eq!(label_words("XYZ"), "records labelled XYZ");
    }
}

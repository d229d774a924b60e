//! The scenario table the decision is checked against: each row a situation (who asks, for
//! what, with which consent facts) and the decision a person would expect.

use super::*;
use crate::fhir;
use serde_json::{Value, json};

const NHS: &str = "9434765919";
const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;
const GP: &str = "A81001";
const TRUST: &str = "RX1";
const CARE_HOME: &str = "VN1C4";

fn staff(org: &str) -> Who {
    Who::Staff {
        person: format!("person-at-{org}"),
        org: org.into(),
        role: "S8000:G8000:R8000".into(),
    }
}

fn nurse(org: &str) -> Who {
    Who::Staff {
        person: format!("nurse-at-{org}"),
        org: org.into(),
        role: "S8000:G8000:R8001".into(),
    }
}

fn system() -> Who {
    Who::Service {
        client_id: "ics-integration".into(),
        org: String::new(),
    }
}

fn patient(nhs: &str, level: &str) -> Who {
    Who::Patient {
        nhs_number: nhs.into(),
        proofing: sharedcare_kit::nhs::ProofingLevel::parse(level).expect("a proofing level"),
    }
}

fn ask(who: Who, action: Action, purpose: &str, categories: &[&str]) -> Ask {
    Ask {
        who,
        nhs_number: NHS.into(),
        action,
        categories: categories.iter().map(|c| c.to_string()).collect(),
        purpose: purpose.into(),
        now: NOW,
    }
}

fn rel(org: &str, kind: &str, start: i64, end: Option<i64>) -> Relationship {
    Relationship {
        org: org.into(),
        kind: kind.into(),
        start,
        end,
    }
}

/// The usual facts: registered at the GP, an open episode at the trust.
fn cared_for() -> Facts {
    Facts {
        relationships: vec![
            rel(GP, "gp_registration", NOW - 365 * DAY, None),
            rel(TRUST, "episode_of_care", NOW - DAY, None),
        ],
        ..Facts::default()
    }
}

/// A directive written as a FHIR R4 Consent with `provision`, through the parser every
/// directive goes through: the scenarios run on what a FHIR client writes.
fn directive(id: &str, provision: Value) -> Directive {
    let consent = json!({
        "resourceType": "Consent", "id": id, "status": "active",
        "scope": {"coding": [{"system": fhir::SCOPE_SYSTEM, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": sharedcare_kit::nhs::NHS_NUMBER_SYSTEM, "value": NHS}},
        "policyRule": {"coding": [{"system": fhir::ACT_CODE_SYSTEM, "code": "OPTIN"}]},
        "provision": provision,
    });
    let parsed = fhir::parse(&consent.to_string()).unwrap_or_else(|e| panic!("{id}: {e}"));
    Directive {
        id: id.into(),
        status: parsed.status,
        provision: parsed.provision,
    }
}

fn deny_all() -> Value {
    json!({"type": "deny"})
}

fn permit_all_but(nested: Vec<Value>) -> Value {
    json!({"type": "permit", "provision": nested})
}

fn labels(labels: &[&str]) -> Value {
    labels
        .iter()
        .map(|l| json!({"system": fhir::ACT_CODE_SYSTEM, "code": l}))
        .collect()
}

fn withhold(l: &[&str]) -> Value {
    json!({"type": "deny", "securityLabel": labels(l)})
}

/// A recipient named by ODS code (`Organization`) or job role code (`PractitionerRole`).
fn recipient(kind: &str, system: &str, value: &str) -> Value {
    json!([{"role": {"coding": [{"system": fhir::PARTICIPATION_SYSTEM, "code": "PRCP"}]},
            "reference": {"type": kind, "identifier": {"system": system, "value": value}}}])
}

fn deny_org(org: &str) -> Value {
    permit_all_but(vec![
        json!({"type": "deny", "actor": recipient("Organization", fhir::ODS_SYSTEM, org)}),
    ])
}

fn only_org(org: &str) -> Value {
    json!({"type": "deny", "provision": [{"type": "permit", "actor": recipient("Organization", fhir::ODS_SYSTEM, org)}]})
}

fn deny_role(role: &str) -> Value {
    permit_all_but(vec![
        json!({"type": "deny", "actor": recipient("PractitionerRole", fhir::JOB_ROLE_SYSTEM, role)}),
    ])
}

/// A FHIR dateTime for unix seconds.
fn at(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn with(mut f: Facts, change: impl FnOnce(&mut Facts)) -> Facts {
    change(&mut f);
    f
}

struct Case {
    name: &'static str,
    ask: Ask,
    facts: Facts,
    want: Decision,
    rule: &'static str,
    glass: bool,
}

fn case(name: &'static str, ask: Ask, facts: Facts, want: Decision, rule: &'static str) -> Case {
    Case {
        name,
        ask,
        facts,
        want,
        rule,
        glass: false,
    }
}

fn glass_grant(person: &str, org: &str, start: i64, end: i64) -> BreakGlass {
    BreakGlass {
        person: person.into(),
        org: org.into(),
        start,
        end,
    }
}

fn cases() -> Vec<Case> {
    use Action::*;
    let w = |v: &[&str]| Decision::Withhold(v.iter().map(|s| s.to_string()).collect());
    vec![
        case(
            "GP reads within registration",
            ask(staff(GP), Read, "TREAT", &[]),
            cared_for(),
            Decision::Permit,
            "relationship:gp_registration:A81001",
        ),
        case(
            "trust reads during an episode",
            ask(staff(TRUST), Read, "TREAT", &[]),
            cared_for(),
            Decision::Permit,
            "relationship:episode_of_care:RX1",
        ),
        case(
            "trust writes during an episode",
            ask(staff(TRUST), Create, "TREAT", &[]),
            cared_for(),
            Decision::Permit,
            "relationship:episode_of_care:RX1",
        ),
        case(
            "care home without a relationship",
            ask(staff(CARE_HOME), Read, "TREAT", &[]),
            cared_for(),
            Decision::Deny,
            "relationship:none",
        ),
        case(
            "care home with a care package",
            ask(staff(CARE_HOME), Search, "TREAT", &[]),
            with(cared_for(), |f| {
                f.relationships
                    .push(rel(CARE_HOME, "care_package", NOW - 10 * DAY, None))
            }),
            Decision::Permit,
            "relationship:care_package:VN1C4",
        ),
        case(
            "relationship ended",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| f.relationships[1].end = Some(NOW - 1)),
            Decision::Deny,
            "relationship:ended",
        ),
        case(
            "relationship not started yet",
            ask(staff(CARE_HOME), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.relationships.push(rel(CARE_HOME, "referral", NOW + DAY, None))
            }),
            Decision::Deny,
            "relationship:none",
        ),
        case(
            "opted out of the shared record",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
            Decision::Deny,
            "directive:optout",
        ),
        case(
            "opt-out that is no longer active",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                let mut d = directive("old", deny_all());
                d.status = "inactive".into();
                f.directives.push(d);
            }),
            Decision::Permit,
            "relationship:episode_of_care:RX1",
        ),
        case(
            "mental health withheld, present in the data",
            ask(staff(TRUST), Read, "TREAT", &["MH", "N"]),
            with(cared_for(), |f| {
                f.directives
                    .push(directive("mh", permit_all_but(vec![withhold(&["MH"])])))
            }),
            w(&["MH"]),
            "directive:mh",
        ),
        case(
            "mental health withheld, not in the data",
            ask(staff(TRUST), Read, "TREAT", &["N"]),
            with(cared_for(), |f| {
                f.directives
                    .push(directive("mh", permit_all_but(vec![withhold(&["MH"])])))
            }),
            Decision::Permit,
            "directive:mh",
        ),
        case(
            "several categories withheld by one root-level label directive",
            ask(staff(TRUST), Search, "TREAT", &[]),
            with(cared_for(), |f| {
                f.directives.push(directive("sens", withhold(&["SEX", "ETH"])))
            }),
            w(&["ETH", "SEX"]),
            "directive:sens",
        ),
        case(
            "organisation named and denied",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.directives.push(directive("no-trust", deny_org(TRUST)))
            }),
            Decision::Deny,
            "directive:no-trust",
        ),
        case(
            "another organisation unaffected by that denial",
            ask(staff(GP), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.directives.push(directive("no-trust", deny_org(TRUST)))
            }),
            Decision::Permit,
            "directive:no-trust",
        ),
        case(
            "deny everyone except the GP",
            ask(staff(GP), Read, "TREAT", &[]),
            with(cared_for(), |f| f.directives.push(directive("gp-only", only_org(GP)))),
            Decision::Permit,
            "directive:gp-only",
        ),
        case(
            "deny everyone except the GP, trust asks",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| f.directives.push(directive("gp-only", only_org(GP)))),
            Decision::Deny,
            "directive:gp-only",
        ),
        case(
            "a role denied (nurses), a doctor unaffected",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.directives.push(directive("no-nurses", deny_role("R8001")))
            }),
            Decision::Permit,
            "directive:no-nurses",
        ),
        case(
            "a role denied (nurses), a nurse asks",
            ask(nurse(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.directives.push(directive("no-nurses", deny_role("R8001")))
            }),
            Decision::Deny,
            "directive:no-nurses",
        ),
        case(
            "a time-limited opt-out in force",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "for-a-month",
                    json!({"type": "deny", "period": {"start": at(NOW - DAY), "end": at(NOW + 29 * DAY)}}),
                ))
            }),
            Decision::Deny,
            "directive:for-a-month",
        ),
        case(
            "a time-limited opt-out that has lapsed",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "last-year",
                    json!({"type": "deny", "period": {"start": at(NOW - 400 * DAY), "end": at(NOW - 35 * DAY)}}),
                ))
            }),
            Decision::Permit,
            "relationship:episode_of_care:RX1",
        ),
        Case {
            glass: true,
            ..case(
                "break-glass granted, no relationship",
                ask(staff(CARE_HOME), Read, "ETREAT", &[]),
                with(cared_for(), |f| {
                    f.break_glass
                        .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 60, NOW + 3600))
                }),
                Decision::Permit,
                "break-glass",
            )
        },
        case(
            "break-glass expired",
            ask(staff(CARE_HOME), Read, "ETREAT", &[]),
            with(cared_for(), |f| {
                f.break_glass
                    .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 7200, NOW - 3600))
            }),
            Decision::Deny,
            "relationship:none",
        ),
        case(
            "break-glass is personal: a colleague cannot use it",
            ask(nurse(CARE_HOME), Read, "ETREAT", &[]),
            with(cared_for(), |f| {
                f.break_glass
                    .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 60, NOW + 3600))
            }),
            Decision::Deny,
            "relationship:none",
        ),
        case(
            "break-glass needs an emergency purpose",
            ask(staff(CARE_HOME), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.break_glass
                    .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 60, NOW + 3600))
            }),
            Decision::Deny,
            "relationship:none",
        ),
        case(
            "national opt-out: research refused",
            ask(staff(TRUST), Search, "HRESCH", &[]),
            with(cared_for(), |f| f.national_opt_out = true),
            Decision::Deny,
            "national-data-opt-out",
        ),
        case(
            "national opt-out: direct care unaffected",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| f.national_opt_out = true),
            Decision::Permit,
            "relationship:episode_of_care:RX1",
        ),
        case(
            "research without an opt-out",
            ask(staff(TRUST), Search, "HRESCH", &[]),
            cared_for(),
            Decision::Permit,
            "purpose:HRESCH",
        ),
        case(
            "GP dissent: the trust is refused",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| f.gp_dissent = true),
            Decision::Deny,
            "gp-dissent",
        ),
        case(
            "GP dissent: consent at the point of care cannot lift it",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.gp_dissent = true;
                f.directives.push(directive("verbal-consent", permit_all_but(vec![])));
            }),
            Decision::Deny,
            "gp-dissent",
        ),
        case(
            "GP dissent: the practice itself still reads",
            ask(staff(GP), Read, "TREAT", &[]),
            with(cared_for(), |f| f.gp_dissent = true),
            Decision::Permit,
            "relationship:gp_registration:A81001",
        ),
        Case {
            glass: true,
            ..case(
                "GP dissent: break-glass in an emergency",
                ask(staff(CARE_HOME), Read, "ETREAT", &[]),
                with(cared_for(), |f| {
                    f.gp_dissent = true;
                    f.break_glass
                        .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 60, NOW + 3600));
                }),
                Decision::Permit,
                "break-glass",
            )
        },
        case(
            "patient at P9 reads their own record",
            ask(patient(NHS, "P9"), Read, "PATRQT", &[]),
            Facts::default(),
            Decision::Permit,
            "patient:self",
        ),
        case(
            "patient at P5 is refused",
            ask(patient(NHS, "P5"), Read, "PATRQT", &[]),
            Facts::default(),
            Decision::Deny,
            "proofing:P5",
        ),
        case(
            "patient at P9 cannot write",
            ask(patient(NHS, "P9"), Update, "PATRQT", &[]),
            Facts::default(),
            Decision::Deny,
            "patient:self",
        ),
        case(
            "a patient's own opt-out does not hide the record from them",
            ask(patient(NHS, "P9"), Read, "PATRQT", &[]),
            with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
            Decision::Permit,
            "patient:self",
        ),
        case(
            "another patient is refused",
            ask(patient("9000000009", "P9"), Read, "PATRQT", &[]),
            Facts::default(),
            Decision::Deny,
            "patient:not-self",
        ),
        case(
            "an authorised representative at P9",
            ask(patient("9000000009", "P9"), Read, "PATRQT", &[]),
            with(Facts::default(), |f| {
                f.representatives.push(Representative {
                    nhs_number: "9000000009".into(),
                    start: NOW - DAY,
                    end: None,
                })
            }),
            Decision::Permit,
            "patient:representative",
        ),
        case(
            "a representative whose authority ended",
            ask(patient("9000000009", "P9"), Read, "PATRQT", &[]),
            with(Facts::default(), |f| {
                f.representatives.push(Representative {
                    nhs_number: "9000000009".into(),
                    start: NOW - 30 * DAY,
                    end: Some(NOW - DAY),
                })
            }),
            Decision::Deny,
            "patient:not-self",
        ),
        case(
            "released categories only: a deny base with sexual health released to the clinic",
            ask(staff(TRUST), Read, "TREAT", &["SEX", "MH"]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "sex-only",
                    json!({"type": "deny", "provision": [{"type": "permit", "securityLabel": labels(&["SEX"])}]}),
                ))
            }),
            w(&["MH"]),
            "directive:sex-only",
        ),
        case(
            "a class withheld: vaccinations kept from the trust",
            ask(staff(TRUST), Read, "TREAT", &["class:Immunization"]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "no-jabs",
                    permit_all_but(vec![json!({"type": "deny",
                    "class": [{"system": fhir::RESOURCE_TYPE_SYSTEM, "code": "Immunization"}]})]),
                ))
            }),
            w(&["class:Immunization"]),
            "directive:no-jabs",
        ),
        case(
            "a code withheld is reported whatever the caller names (it cannot name every code)",
            ask(staff(TRUST), Search, "TREAT", &["SEX"]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "no-depression",
                    permit_all_but(vec![json!({"type": "deny",
                    "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]}]})]),
                ))
            }),
            w(&["code:http://snomed.info/sct|35489007"]),
            "directive:no-depression",
        ),
        case(
            "released by class: a deny base with vaccinations released",
            ask(staff(TRUST), Read, "TREAT", &["class:Immunization"]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "jabs-only",
                    json!({"type": "deny", "provision": [{"type": "permit",
                    "class": [{"system": fhir::RESOURCE_TYPE_SYSTEM, "code": "Immunization"}]}]}),
                ))
            }),
            Decision::Permit,
            "directive:jabs-only",
        ),
        case(
            "released by class: other classes stay denied",
            ask(staff(TRUST), Read, "TREAT", &["class:Condition", "MH"]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "jabs-only",
                    json!({"type": "deny", "provision": [{"type": "permit",
                    "class": [{"system": fhir::RESOURCE_TYPE_SYSTEM, "code": "Immunization"}]}]}),
                ))
            }),
            w(&["MH"]),
            "directive:jabs-only",
        ),
        case(
            "released by label: a labelled record of a class named nowhere is still released",
            ask(staff(TRUST), Read, "TREAT", &["SEX", "class:Observation"]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "sex-only",
                    json!({"type": "deny", "provision": [{"type": "permit", "securityLabel": labels(&["SEX"])}]}),
                ))
            }),
            Decision::Permit,
            "directive:sex-only",
        ),
        case(
            "a system reads for direct care by its scope",
            ask(system(), Read, "TREAT", &[]),
            cared_for(),
            Decision::Permit,
            "system",
        ),
        case(
            "a system is held to the patient's opt-out of sharing",
            ask(system(), Read, "TREAT", &[]),
            with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
            Decision::Deny,
            "directive:optout",
        ),
        case(
            "a system is refused research under the national data opt-out",
            ask(system(), Search, "HRESCH", &[]),
            with(cared_for(), |f| f.national_opt_out = true),
            Decision::Deny,
            "national-data-opt-out",
        ),
        case(
            "a system records care although the record is opted out of sharing",
            ask(system(), Create, "TREAT", &[]),
            with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
            Decision::Permit,
            "system",
        ),
        case(
            "a clinician records care although the patient withholds the record",
            ask(staff(TRUST), Update, "TREAT", &["MH"]),
            with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
            Decision::Permit,
            "relationship:episode_of_care:RX1",
        ),
        case(
            "staff without a relationship cannot write",
            ask(staff(CARE_HOME), Create, "TREAT", &[]),
            cared_for(),
            Decision::Deny,
            "relationship:none",
        ),
        case(
            "released categories only: uncategorised data stays denied",
            ask(staff(TRUST), Read, "TREAT", &[]),
            with(cared_for(), |f| {
                f.directives.push(directive(
                    "sex-only",
                    json!({"type": "deny", "provision": [{"type": "permit", "securityLabel": labels(&["SEX"])}]}),
                ))
            }),
            Decision::Deny,
            "directive:sex-only",
        ),
    ]
}

#[test]
fn the_consent_scenarios_decide_as_the_rules_say() {
    let all = cases();
    assert!(all.len() >= 30, "{} scenarios", all.len());
    let mut failures = Vec::new();
    for c in &all {
        let got = decide(&c.ask, &c.facts);
        if got.decision != c.want || !got.rules.iter().any(|r| r == c.rule) || got.break_glass != c.glass {
            failures.push(format!(
                "{}: got {:?} via {:?} (break-glass {})",
                c.name, got.decision, got.rules, got.break_glass
            ));
        }
        assert!(!got.reason.is_empty(), "{}: a reason is always given", c.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parsed_directives_keep_their_stored_form() {
    let d = directive("mh", permit_all_but(vec![withhold(&["MH"])])).provision;
    let json = serde_json::to_value(&d).expect("json");
    assert_eq!(json["type"], "permit");
    assert_eq!(json["provision"][0]["securityLabel"][0], "MH");
    let back: Provision = serde_json::from_value(json).expect("parse");
    assert_eq!(back, d);
}

//! Consent enforced on the shared care record, end to end in `sharedcare up`: real staff,
//! patient and service tokens from identity, decisions from consent, entries in the audit log.

use std::time::Duration;

use serde_json::Value;
use sharedcare_proto::audit::v1::audit_client::AuditClient;
use sharedcare_proto::audit::v1::{ListAlertsRequest, ListByPatientRequest, QueryRequest};
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::{BreakGlassRequest, Directive, PutDirectiveRequest};
use sharedcare_proto::records::v1::records_client::RecordsClient;
use sharedcare_proto::records::v1::{GetRequest, PutRequest};
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{service_token_for, up, user_token, with_token};

fn get(resource_type: &str, id: &str, purpose: &str) -> GetRequest {
    GetRequest {
        resource_type: resource_type.into(),
        id: id.into(),
        purpose: purpose.into(),
    }
}

async fn put(records: &mut RecordsClient<Channel>, token: &str, resource: Value) {
    records
        .put(with_token(
            PutRequest {
                resource_json: resource.to_string(),
                source_organisation: "A81001".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("the GP system writes");
}

async fn directive(consent: &mut ConsentClient<Channel>, patient: &str, nhs: &str, id: &str, provision: Value) {
    consent
        .put_directive(with_token(
            PutDirectiveRequest {
                directive: Some(Directive {
                    resource_json: crate::harness::fhir_consent(id, nhs, "active", provision).to_string(),
                    ..Default::default()
                }),
            },
            patient,
        ))
        .await
        .expect("the patient's own directive");
}

#[tokio::test]
async fn staff_see_what_consent_permits_and_the_patient_sees_every_access() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    // Margaret Evans: registered at Riverside (A81001), care package at Willow House (VN1C4).
    let nhs = demo["patients"][0]["nhs_number"].as_str().expect("nhs").to_string();
    let mut records = RecordsClient::new(p.channel().await);
    let mut consent = ConsentClient::new(p.channel().await);

    let system = service_token_for(&p.http, "records.write records.read").await;
    put(
        &mut records,
        &system,
        serde_json::json!({"resourceType": "Patient", "id": "margaret",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]}),
    )
    .await;
    put(
        &mut records,
        &system,
        serde_json::json!({"resourceType": "Observation", "id": "bp", "status": "final",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "75367002"}]},
            "subject": {"reference": "Patient/margaret"}}),
    )
    .await;
    put(
        &mut records,
        &system,
        serde_json::json!({"resourceType": "Condition", "id": "clinic",
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SEX"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "8098009"}]},
            "subject": {"reference": "Patient/margaret"}}),
    )
    .await;

    // Her GP reads; the home care worker (no relationship) is refused, with consent's reason.
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    records
        .get(with_token(get("Observation", "bp", ""), &gp))
        .await
        .expect("the registered GP reads");
    let carer = user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let refused = records
        .get(with_token(get("Observation", "bp", ""), &carer))
        .await
        .expect_err("no relationship");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("no legitimate care relationship"),
        "{}",
        refused.message()
    );

    // In an emergency the care worker breaks the glass, stating why, and reads for ETREAT.
    consent
        .break_glass(with_token(
            BreakGlassRequest {
                nhs_number: nhs.clone(),
                reason_code: "patient-collapsed".into(),
                reason_text: "found on the floor at home, paramedics on the way".into(),
            },
            &carer,
        ))
        .await
        .expect("break-glass");
    records
        .get(with_token(get("Observation", "bp", "ETREAT"), &carer))
        .await
        .expect("break-glass lets the care worker read");

    // Margaret withholds sexual health: the GP is refused that condition without it being
    // named, and still reads the rest.
    let margaret = user_token(&p, "patient1", "demo-patient1-password", "nhs_number").await;
    directive(
        &mut consent,
        &margaret,
        &nhs,
        "no-sexual-health",
        serde_json::json!({"type": "deny", "securityLabel": crate::harness::labels(&["SEX"])}),
    )
    .await;
    let withheld = records
        .get(with_token(get("Condition", "clinic", ""), &gp))
        .await
        .expect_err("withheld");
    assert_eq!(withheld.code(), Code::PermissionDenied);
    assert!(withheld.message().contains("withheld"), "{}", withheld.message());
    assert!(!withheld.message().contains("SEX"), "{}", withheld.message());
    records
        .get(with_token(get("Observation", "bp", ""), &gp))
        .await
        .expect("the rest is readable");
    // Over FHIR REST a search leaves the condition out and says information may be withheld.
    let bundle: Value = reqwest::Client::new()
        .get(format!("{}/fhir/R4/Condition?patient=margaret", p.http))
        .bearer_auth(&gp)
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("a Bundle");
    let entries = bundle["entry"].as_array().expect("entries");
    assert!(entries.iter().all(|e| e["resource"]["id"] != "clinic"), "{bundle}");
    assert!(
        entries
            .iter()
            .any(|e| e["search"]["mode"] == "outcome" && e["resource"]["issue"][0]["code"] == "suppressed"),
        "{bundle}"
    );

    // She opts out of sharing altogether: the very next read is refused.
    directive(
        &mut consent,
        &margaret,
        &nhs,
        "opt-out",
        serde_json::json!({"type": "deny"}),
    )
    .await;
    let after = records
        .get(with_token(get("Observation", "bp", ""), &gp))
        .await
        .expect_err("the opt-out binds the next request");
    assert_eq!(after.code(), Code::PermissionDenied);

    // Her audit trail shows every access: who, why and what came of it.
    let audit = AuditClient::new(p.channel().await);
    let trail = crate::harness::eventually(Duration::from_secs(20), "the record accesses", || {
        let (mut audit, token, nhs) = (audit.clone(), margaret.clone(), nhs.clone());
        async move {
            let entries = audit
                .list_by_patient(with_token(
                    ListByPatientRequest {
                        nhs_number: nhs,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .ok()?
                .into_inner()
                .entries;
            let reads: Vec<_> = entries
                .into_iter()
                .filter(|e| e.service == "records" && e.action == "read")
                .collect();
            (reads.len() >= 6).then_some(reads)
        }
    })
    .await;
    let outcomes: Vec<(&str, &str, &str)> = trail
        .iter()
        .rev()
        .map(|e| (e.actor_organisation.as_str(), e.purpose.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("A81001", "TREAT", "success"),
            ("VH2D7", "TREAT", "denied"),
            ("VH2D7", "BTG", "success"),
            ("A81001", "TREAT", "withheld"),
            ("A81001", "TREAT", "success"),
            ("A81001", "TREAT", "denied"),
        ]
    );
    let glass = &trail[trail.len() - 3];
    assert!(glass.reason.contains("patient-collapsed"), "{glass:?}");
    let withheld = &trail[trail.len() - 4];
    assert!(
        withheld.reason.contains("SEX"),
        "the IG lead sees what was withheld: {withheld:?}"
    );

    // Information governance: the denial and the break-glass raised alerts; the care worker's
    // organisation's activity exports as FHIR AuditEvents.
    let ig = service_token_for(&p.http, "audit.read").await;
    let alerts = crate::harness::eventually(Duration::from_secs(20), "alerts", || {
        let (mut audit, ig) = (audit.clone(), ig.clone());
        async move {
            let a = audit
                .list_alerts(with_token(
                    ListAlertsRequest {
                        actor_organisation: "VH2D7".into(),
                        page_size: 10,
                    },
                    &ig,
                ))
                .await
                .ok()?
                .into_inner()
                .alerts;
            (a.len() >= 2).then_some(a)
        }
    })
    .await;
    let mut kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds, ["access-denied", "break-glass"]);
    let export = audit
        .clone()
        .export_audit_events(with_token(
            QueryRequest {
                actor_organisation: "VH2D7".into(),
                nhs_number: nhs.clone(),
                ..Default::default()
            },
            &ig,
        ))
        .await
        .expect("export")
        .into_inner();
    let bundle: Value = serde_json::from_str(&export.bundle_json).expect("bundle");
    let outcomes: Vec<&str> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["resource"]["outcome"].as_str().unwrap_or(""))
        .collect();
    assert!(outcomes.contains(&"4") && outcomes.contains(&"0"), "{outcomes:?}");
    // Staff may query their own organisation's activity, not another's.
    let nosy = audit
        .clone()
        .query(with_token(
            QueryRequest {
                actor_organisation: "A81001".into(),
                ..Default::default()
            },
            &carer,
        ))
        .await
        .expect_err("another organisation");
    assert_eq!(nosy.code(), Code::PermissionDenied);
}

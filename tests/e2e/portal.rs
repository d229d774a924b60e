//! The web in a real browser (Debian's Chromium through playwright-core, `tests/node/portal.mjs`,
//! axe-core on every page, screenshots under `target/screenshots/portal`), and the pages'
//! security over plain HTTP.
//!
//! The browser test runs three processes: `up` (the platform, its identity brokering patients to
//! NHS login), a second `up` playing NHS login (the same protocol; the national service cannot
//! run here), and `sharedcare sample-app` (the second ICS app).

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::{Directive, PutDirectiveRequest};
use sharedcare_proto::identity::v1::CreatePatientRequest;
use sharedcare_proto::records::v1::PutRequest;
use sharedcare_proto::records::v1::records_client::RecordsClient;

use crate::harness::{
    Proc, admin, browser, eventually, fhir_consent, get_json, labels, register_app, service_token_for, user_token,
    with_token,
};
use crate::oidc_node::{free_port, run_node};

const LABELS: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `resources` as `org`'s system would.
async fn write(p: &Proc, org: &str, resources: &[Value]) {
    let mut records = RecordsClient::new(p.channel().await);
    let system = service_token_for(&p.http, "records.write records.read").await;
    for r in resources {
        records
            .put(with_token(
                PutRequest {
                    resource_json: r.to_string(),
                    source_organisation: org.into(),
                    ..Default::default()
                },
                &system,
            ))
            .await
            .expect("the system writes");
    }
}

#[tokio::test]
async fn clinicians_and_patients_use_the_web_in_chromium_with_one_login() {
    // The ICS, its identity brokering patients to NHS login (played by a second `up`).
    let pair = crate::harness::with_nhs_login().await;
    let (upstream, p) = (&pair.nhs_login, &pair.ics);

    // Margaret's GP record: a mental health problem and a sexual health one she withholds.
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    let margaret = demo["patients"][0]["nhs_number"].as_str().expect("nhs").to_string();
    let subject = json!({"reference": "Patient/margaret"});
    let psy_text = "Generalised anxiety disorder";
    let sex_text = "Chlamydia infection";
    write(
        p,
        "A81001",
        &[
            json!({"resourceType": "Patient", "id": "margaret",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": margaret}],
                "name": [{"family": "Evans", "given": ["Margaret"]}], "birthDate": "1941-03-12", "gender": "female"}),
            json!({"resourceType": "Condition", "id": "diabetes", "subject": subject,
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Type 2 diabetes mellitus"}]},
                "clinicalStatus": {"coding": [{"code": "active"}]}, "onsetDateTime": "2019-04-01"}),
            json!({"resourceType": "Condition", "id": "anxiety", "subject": subject,
                "meta": {"security": [{"system": LABELS, "code": "PSY"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "21897009", "display": psy_text}]},
                "onsetDateTime": "2024-02-01"}),
            json!({"resourceType": "Condition", "id": "clinic", "subject": subject,
                "meta": {"security": [{"system": LABELS, "code": "SEX"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "240589008", "display": sex_text}]}}),
            json!({"resourceType": "MedicationStatement", "id": "metformin", "status": "active", "subject": subject,
                "medicationCodeableConcept": {"text": "Metformin 500mg tablets"}}),
            json!({"resourceType": "Encounter", "id": "review", "status": "finished", "subject": subject,
                "class": {"code": "AMB", "display": "ambulatory"}, "period": {"start": "2026-11-20T09:00:00Z"},
                "type": [{"text": "Diabetes review"}]}),
        ],
    )
    .await;
    // The hospital holds its own Patient for her too, as its HL7 feed writes one: the portal's
    // search shows her once.
    write(
        p,
        "RX1",
        &[json!({"resourceType": "Patient", "id": "rx1-patient-margaret",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": margaret}],
            "name": [{"family": "Evans", "given": ["Margaret"]}], "birthDate": "1941-03-12", "gender": "female"})],
    )
    .await;
    let token = user_token(p, "patient1", "demo-patient1-password", "nhs_number").await;
    ConsentClient::new(p.channel().await)
        .put_directive(with_token(
            PutDirectiveRequest {
                directive: Some(Directive {
                    resource_json: fhir_consent(
                        "no-sexual-health",
                        &margaret,
                        "active",
                        json!({"type": "deny", "securityLabel": labels(&["SEX"])}),
                    )
                    .to_string(),
                    ..Default::default()
                }),
            },
            &token,
        ))
        .await
        .expect("her directive");

    // Noor, known only to the hospital (an encounter there), with her own NHS login account.
    let noor = crate::harness::nhs_number();
    let noor_subject = json!({"reference": "Patient/noor"});
    write(
        p,
        "RX1",
        &[
            json!({"resourceType": "Patient", "id": "noor",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": noor}],
                "name": [{"family": "Hassan", "given": ["Noor"]}], "birthDate": "1979-08-14", "gender": "female"}),
            json!({"resourceType": "Encounter", "id": "noor-ae", "status": "finished", "subject": noor_subject,
                "class": {"code": "EMER", "display": "emergency"}, "period": {"start": "2026-11-25T22:00:00Z"},
                "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RX1"}}}),
        ],
    )
    .await;
    admin(p)
        .await
        .create_patient(CreatePatientRequest {
            nhs_number: noor.clone(),
            username: "noor".into(),
            given_name: "Noor".into(),
            family_name: "Hassan".into(),
            birthdate: "1979-08-14".into(),
            identity_proofing_level: "P9".into(),
            password: "noor-password-2026".into(),
        })
        .await
        .expect("Noor's account");
    // The passport has both patients' records before the browser looks.
    let gp = user_token(p, "gp", "demo-gp-password", "selectedrole").await;
    eventually(Duration::from_secs(20), "the passport holds the writes", || async {
        let (status, v) = get_json(&format!("{}/passport/v1/patients/{margaret}", p.http), &gp, &[]).await;
        (status == 200 && v.to_string().contains(psy_text)).then_some(())
    })
    .await;

    // The sample ICS app: its own client, its own process.
    let port = free_port();
    let sample = format!("http://127.0.0.1:{port}");
    let (id, secret) = register_app(
        p,
        "Care home handover",
        &format!("{sample}/callback"),
        &format!("{sample}/backchannel-logout"),
    )
    .await;
    let _sample_app = Killed(
        crate::harness::command(
            &[
                "sample-app",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--issuer",
                &p.http,
                "--client-id",
                &id,
            ],
            &[("SAMPLE_APP_CLIENT_SECRET", secret)],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sample app"),
    );
    eventually(Duration::from_secs(20), "the sample app serves", || async {
        browser()
            .get(&sample)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;

    let shots = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/portal");
    let out = run_node(
        "portal.mjs",
        &[
            ("BASE", p.http.clone()),
            ("SAMPLE", sample),
            ("UPSTREAM", upstream.http.clone()),
            ("MARGARET_NHS", margaret.clone()),
            ("NOOR_NHS", noor.clone()),
            ("NOOR_USER", "noor".into()),
            ("NOOR_PASS", "noor-password-2026".into()),
            ("PSY_TEXT", psy_text.into()),
            ("SEX_TEXT", sex_text.into()),
            ("SHOTS", shots.to_string_lossy().into_owned()),
        ],
    );
    assert!(out.contains("portal: all checks passed"), "{out}");

    // What the processes logged through all of that (info level, as deployed): no NHS number,
    // no token and no break-glass free text for an operator or a log pipeline to hold.
    let logs = format!("{}{}", p.stderr(), upstream.stderr());
    assert!(logs.contains("break-glass granted"), "the logs were read: {logs}");
    for (what, needle) in [
        ("Margaret's NHS number", margaret.as_str()),
        ("Noor's NHS number", noor.as_str()),
        ("the break-glass reason's free text", "Brought in unconscious"),
        ("a JWT", "eyJ"),
    ] {
        let at = logs
            .find(needle)
            .map(|i| &logs[i.saturating_sub(300)..(i + 100).min(logs.len())]);
        assert!(at.is_none(), "{what} is in the logs: …{}…", at.unwrap_or_default());
    }
}

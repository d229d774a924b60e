//! The patient passport in `sharedcare up`: built from what the GP system writes, seen by the
//! patient at P9 over the JSON API the web pages use, filtered by consent for staff (withheld
//! categories left out, break-glass), refused at P5, and every view in the patient's trail.

use std::time::Duration;

use serde_json::{Value, json};
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::{BreakGlassRequest, Directive, PutDirectiveRequest};
use sharedcare_proto::passport::v1::GetPassportRequest;
use sharedcare_proto::passport::v1::passport_client::PassportClient;
use sharedcare_proto::records::v1::PutRequest;
use sharedcare_proto::records::v1::records_client::RecordsClient;

use crate::harness::{audit_trail, eventually, get_json, service_token_for, up, user_token, with_token};

/// `GET /passport/v1/patients/{nhs}` as `token`, with a purpose of use; (status, body).
async fn passport(base: &str, token: &str, nhs: &str, purpose: &str) -> (u16, Value) {
    let url = format!("{base}/passport/v1/patients/{nhs}");
    match purpose {
        "" => get_json(&url, token, &[]).await,
        p => get_json(&url, token, &[("x-purpose-of-use", p)]).await,
    }
}

/// `GET /passport/v1/patients/{nhs}/{what}` as `token`; (status, body).
async fn get(base: &str, token: &str, nhs: &str, what: &str) -> (u16, Value) {
    get_json(&format!("{base}/passport/v1/patients/{nhs}/{what}"), token, &[]).await
}

/// Runs the independent verifier (`tests/python/verify_access_log.py`, pyca/cryptography) on
/// an access-log page; (passed, its output).
fn verify_independently(page: &Value) -> (bool, String) {
    use std::io::Write;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "tests/python/.venv is missing: run the README's test command (infra/test.sh)"
    );
    let mut child = std::process::Command::new(python)
        .arg(dir.join("verify_access_log.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the verifier");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.to_string().as_bytes())
        .expect("write the page");
    let out = child.wait_with_output().expect("verifier output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The ids in section `kind` of a passport.
pub(crate) fn section(view: &Value, kind: &str) -> Vec<String> {
    view["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .find(|s| s["kind"] == kind)
        .map(|s| {
            s["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| e["id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_passport_shows_the_record_to_the_patient_and_what_consent_permits_to_staff() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    let nhs = demo["patients"][0]["nhs_number"].as_str().expect("nhs").to_string();
    let mut records = RecordsClient::new(p.channel().await);
    let system = service_token_for(&p.http, "records.write records.read").await;
    let subject = json!({"reference": "Patient/margaret"});
    for resource in [
        json!({"resourceType": "Patient", "id": "margaret",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"family": "Evans", "given": ["Margaret"]}], "birthDate": "1941-03-12", "gender": "female"}),
        json!({"resourceType": "Condition", "id": "diabetes", "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Type 2 diabetes mellitus"}]},
            "clinicalStatus": {"coding": [{"code": "active"}]}, "onsetDateTime": "2019-04-01"}),
        json!({"resourceType": "MedicationStatement", "id": "metformin", "status": "active", "subject": subject,
            "medicationCodeableConcept": {"text": "Metformin 500mg tablets"}}),
        json!({"resourceType": "Encounter", "id": "review", "status": "in-progress", "subject": subject,
            "class": {"code": "IMP", "display": "inpatient encounter"}, "period": {"start": "2026-11-20T09:00:00Z"},
            "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RXX01"},
                                "display": "St Elsewhere Hospital"},
            "participant": [{"individual": {"display": "Dr A Patel"}}]}),
        json!({"resourceType": "Condition", "id": "clinic", "subject": subject,
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SEX"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "8098009"}]}}),
    ] {
        records
            .put(with_token(
                PutRequest {
                    resource_json: resource.to_string(),
                    source_organisation: "A81001".into(),
                    ..Default::default()
                },
                &system,
            ))
            .await
            .expect("the GP system writes");
    }

    // Margaret (P9) sees her whole record, by section, within moments of the writes.
    let margaret = user_token(&p, "patient1", "demo-patient1-password", "nhs_number").await;
    let mine = eventually(Duration::from_secs(10), "the passport to show the writes", || async {
        let (status, view) = passport(&p.http, &margaret, &nhs, "").await;
        (status == 200 && section(&view, "problems").len() == 2 && section(&view, "encounters").len() == 1)
            .then_some(view)
    })
    .await;
    assert_eq!(section(&mine, "medications"), ["metformin"]);
    assert_eq!(mine["demographics"]["familyName"], "Evans");
    let diabetes = &mine["sections"][0]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["id"] == "diabetes")
        .cloned()
        .expect("diabetes");
    assert_eq!(diabetes["summary"], "Type 2 diabetes mellitus");
    assert_eq!(diabetes["sourceOrganisation"], "A81001");
    assert_eq!(mine["someWithheld"], false);

    // She withholds sexual health: her GP's view leaves it out, says something is withheld,
    // and names nothing; she still sees it herself.
    let mut consent = ConsentClient::new(p.channel().await);
    consent
        .put_directive(with_token(
            PutDirectiveRequest {
                directive: Some(Directive {
                    resource_json: crate::harness::fhir_consent(
                        "no-sexual-health",
                        &nhs,
                        "active",
                        json!({"type": "deny", "securityLabel": crate::harness::labels(&["SEX"])}),
                    )
                    .to_string(),
                    ..Default::default()
                }),
            },
            &margaret,
        ))
        .await
        .expect("her directive");
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    let (status, gp_view) = passport(&p.http, &gp, &nhs, "").await;
    assert_eq!(status, 200, "{gp_view}");
    assert_eq!(section(&gp_view, "problems"), ["diabetes"]);
    assert_eq!(gp_view["someWithheld"], true);
    assert!(
        !gp_view.to_string().contains("8098009"),
        "nothing hints at what is withheld"
    );
    let (_, mine) = passport(&p.http, &margaret, &nhs, "").await;
    assert_eq!(
        section(&mine, "problems").len(),
        2,
        "the patient sees her own record whole"
    );

    // The same over gRPC, for the GP.
    let mut grpc = PassportClient::new(p.channel().await);
    let view = grpc
        .get_passport(with_token(
            GetPassportRequest {
                nhs_number: nhs.clone(),
                purpose: String::new(),
            },
            &gp,
        ))
        .await
        .expect("gRPC passport")
        .into_inner();
    assert!(view.some_withheld);
    assert_eq!(view.sections[0].entries.len(), 1);

    // The home care worker has no relationship: refused, then breaks the glass and sees it.
    let carer = user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let (status, refused) = passport(&p.http, &carer, &nhs, "").await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused.to_string().contains("no legitimate care relationship"),
        "{refused}"
    );
    consent
        .break_glass(with_token(
            BreakGlassRequest {
                nhs_number: nhs.clone(),
                reason_code: "patient-collapsed".into(),
                reason_text: "found on the floor at home".into(),
            },
            &carer,
        ))
        .await
        .expect("break-glass");
    let (status, glass) = passport(&p.http, &carer, &nhs, "ETREAT").await;
    assert_eq!(status, 200, "{glass}");
    assert_eq!(section(&glass, "medications"), ["metformin"]);

    // A patient may not see someone else's passport (without an authority to act for them).
    let david = demo["patients"][1]["nhs_number"].as_str().expect("nhs").to_string();
    let (status, other) = passport(&p.http, &margaret, &david, "").await;
    assert_eq!(status, 403, "{other}");

    // A patient proofed at P5 is told which level is needed; a bad NHS number is named.
    let tom_nhs = demo["patients"][3]["nhs_number"].as_str().expect("nhs").to_string();
    let tom = user_token(&p, "patient4", "demo-patient4-password", "nhs_number").await;
    let (status, p5) = passport(&p.http, &tom, &tom_nhs, "").await;
    assert_eq!(status, 403, "{p5}");
    assert!(p5.to_string().contains("P9"), "{p5}");
    let (status, bad) = passport(&p.http, &gp, "9434765918", "").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["issue"][0]["expression"][0], "nhs_number");

    // Every view is in Margaret's audit trail, the refusal and the break-glass included.
    let views = eventually(Duration::from_secs(20), "the passport views in the trail", || async {
        let trail = audit_trail(&p, &nhs).await;
        let views: Vec<String> = trail
            .into_iter()
            .filter(|(action, _, resources)| action == "read" && resources.iter().any(|r| r.starts_with("Passport/")))
            .map(|(_, outcome, _)| outcome)
            .collect();
        (views.len() >= 6).then_some(views)
    })
    .await;
    assert!(views.contains(&"denied".to_string()), "{views:?}");
    assert!(views.iter().filter(|o| *o == "success").count() >= 5, "{views:?}");

    // The care team: her GP practice (registration) and the hospital whose encounter the GP
    // recorded, named from that encounter, as the GP sees it.
    let team = eventually(Duration::from_secs(10), "the hospital in the care team", || async {
        let (_, view) = passport(&p.http, &gp, &nhs, "").await;
        let team = view["careTeam"].as_array().cloned().unwrap_or_default();
        team.iter().any(|m| m["odsCode"] == "RXX01").then_some(team)
    })
    .await;
    let hospital = team.iter().find(|m| m["odsCode"] == "RXX01").expect("hospital");
    assert_eq!(hospital["organisationName"], "St Elsewhere Hospital");
    assert_eq!(hospital["who"], "Dr A Patel");
    assert_eq!(hospital["source"], "Encounter/review");
    let practice = team.iter().find(|m| m["odsCode"] == "A81001").expect("GP practice");
    assert_eq!(practice["role"], "Registered GP practice");

    // Her sharing choices, in plain words, with the break-glass on her record; staff may not
    // read them.
    let choices = eventually(Duration::from_secs(10), "the break-glass in her choices", || async {
        let (status, c) = get(&p.http, &margaret, &nhs, "sharing-choices").await;
        (status == 200 && c["breakGlass"].as_array().is_some_and(|g| !g.is_empty())).then_some(c)
    })
    .await;
    assert_eq!(choices["directives"][0]["id"], "no-sexual-health");
    assert_eq!(
        choices["directives"][0]["summary"],
        "Do not share my sexual and reproductive health records with anyone."
    );
    assert_eq!(choices["breakGlass"][0]["reasonCode"], "patient-collapsed");
    assert_eq!(choices["nationalOptOut"], false);
    assert!(
        choices["nationalOptOutWords"]
            .as_str()
            .expect("words")
            .starts_with("You have not opted out")
    );
    let (status, refused) = get(&p.http, &gp, &nhs, "sharing-choices").await;
    assert_eq!(status, 403, "{refused}");
    let (status, refused) = get(&p.http, &margaret, &david, "access-log").await;
    assert_eq!(status, 403, "{refused}");

    // Who has looked at her record: the GP's view and the care worker's break-glass view, each
    // proved against the signed tree head, checked by an independent verifier.
    let page = eventually(Duration::from_secs(20), "the views in her access log", || async {
        let (status, page) = get(&p.http, &margaret, &nhs, "access-log?page_size=100").await;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        let gp_view = entries
            .iter()
            .any(|e| e["organisation"] == "A81001" && e["outcome"] == "success");
        let glass = entries
            .iter()
            .any(|e| e["purpose"] == "BTG" && e["outcome"] == "success");
        (status == 200 && gp_view && glass).then_some(page)
    })
    .await;
    let (ok, out) = verify_independently(&page);
    assert!(ok, "{out}");
    assert!(out.contains("verified"), "{out}");
    // The verifier is not a formality: an entry shown differently from what was logged fails.
    let mut forged = page.clone();
    forged["entries"][0]["organisation"] = json!("X99999");
    let (ok, out) = verify_independently(&forged);
    assert!(!ok && out.contains("organisation shown as"), "{out}");
    let mut forged = page.clone();
    let data = forged["entries"][0]["proof"]["leafData"]
        .as_str()
        .expect("leaf")
        .to_string();
    forged["entries"][0]["proof"]["leafData"] = json!(data.replacen(",\"", ", \"", 1));
    let (ok, out) = verify_independently(&forged);
    assert!(!ok && out.contains("leaf hash"), "{out}");
    // Paging: one entry at a time, the next page older than the first.
    let (_, first) = get(&p.http, &margaret, &nhs, "access-log?page_size=1").await;
    let next = first["nextBeforeSequence"].as_u64().expect("next");
    assert!(next > 0, "{first}");
    let (_, second) = get(
        &p.http,
        &margaret,
        &nhs,
        &format!("access-log?page_size=1&before_sequence={next}"),
    )
    .await;
    assert!(second["entries"][0]["sequence"].as_u64() < first["entries"][0]["sequence"].as_u64());
    let (status, bad) = get(&p.http, &margaret, &nhs, "access-log?page_size=many").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["issue"][0]["expression"][0], "page_size");

    // David holds a lasting power of attorney for Margaret: he sees her passport, her choices
    // (with him in them) and her access log; when it ends, he no longer does.
    use sharedcare_proto::consent::v1::{AddRepresentativeRequest, EndRepresentativeRequest, Representative};
    let david_token = user_token(&p, "patient2", "demo-patient2-password", "nhs_number").await;
    let (status, _) = passport(&p.http, &david_token, &nhs, "").await;
    assert_eq!(status, 403, "not yet her representative");
    let service = service_token_for(&p.http, "consent.write").await;
    let lpa = consent
        .add_representative(with_token(
            AddRepresentativeRequest {
                representative: Some(Representative {
                    nhs_number: nhs.clone(),
                    representative_nhs_number: david.clone(),
                    kind: "lpa_health_welfare".into(),
                    start: 1_600_000_000,
                    ..Default::default()
                }),
            },
            &service,
        ))
        .await
        .expect("representative")
        .into_inner();
    let (status, hers) = passport(&p.http, &david_token, &nhs, "").await;
    assert_eq!(status, 200, "{hers}");
    assert_eq!(section(&hers, "medications"), ["metformin"]);
    let choices = eventually(Duration::from_secs(10), "David in her sharing choices", || async {
        let (status, c) = get(&p.http, &david_token, &nhs, "sharing-choices").await;
        (status == 200 && c["representatives"].as_array().is_some_and(|r| !r.is_empty())).then_some(c)
    })
    .await;
    assert_eq!(choices["representatives"][0]["representativeNhsNumber"], david.as_str());
    assert_eq!(
        choices["representatives"][0]["kindWords"],
        "Lasting power of attorney for health and welfare"
    );
    let (status, log) = get(&p.http, &david_token, &nhs, "access-log").await;
    assert_eq!(status, 200, "{log}");
    consent
        .end_representative(with_token(EndRepresentativeRequest { id: lpa.id, end: 0 }, &service))
        .await
        .expect("ended");
    let (status, _) = passport(&p.http, &david_token, &nhs, "").await;
    assert_eq!(status, 403, "his authority has ended");
    let (status, _) = get(&p.http, &david_token, &nhs, "sharing-choices").await;
    assert_eq!(status, 403);

    // The GP system deletes the medicine (FHIR delete): reads answer 410 Gone, its history
    // keeps both versions, and it leaves Margaret's passport.
    let deleted = reqwest::Client::new()
        .delete(format!("{}/fhir/R4/MedicationStatement/metformin", p.http))
        .bearer_auth(&system)
        .header("x-source-organisation", "A81001")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(deleted.headers()["etag"], "W/\"2\"");
    let (status, gone) = get_json(
        &format!("{}/fhir/R4/MedicationStatement/metformin", p.http),
        &system,
        &[],
    )
    .await;
    assert_eq!(status, 410, "{gone}");
    assert_eq!(gone["issue"][0]["code"], "deleted");
    let (_, history) = get_json(
        &format!("{}/fhir/R4/MedicationStatement/metformin/_history", p.http),
        &system,
        &[],
    )
    .await;
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE");
    assert!(history["entry"][0].get("resource").is_none());
    assert_eq!(history["entry"][1]["resource"]["id"], "metformin");
    eventually(
        Duration::from_secs(10),
        "the medicine to leave the passport",
        || async {
            let (_, view) = passport(&p.http, &margaret, &nhs, "").await;
            section(&view, "medications").is_empty().then_some(())
        },
    )
    .await;
}

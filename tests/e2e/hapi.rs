//! HAPI FHIR's own tools against `sharedcare up`, with no network: its `FhirInstanceValidator`
//! (base R4 StructureDefinitions) checks what the facade returns, and what it rejects the
//! facade rejects too; its generic client writes, reads, searches and deletes. The Java side is
//! `tests/java` (built by the README's test command with Maven).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{fhir_consent, get_json, labels, put_fhir, service_token_for, up, user_token};

/// Runs `HapiChecks` with `args`; (succeeded, stdout).
fn hapi(args: &[&str]) -> (bool, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("java/target");
    let classpath = std::fs::read_to_string(dir.join("classpath.txt")).unwrap_or_else(|_| {
        panic!("tests/java/target/classpath.txt is missing: run the README's test command (infra/test.sh), which builds tests/java with Maven")
    });
    let out = Command::new("java")
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=error")
        .arg("-cp")
        .arg(format!("{}:{}", dir.join("classes").display(), classpath.trim()))
        .arg("uk.nhs.sharedcare.HapiChecks")
        .args(args)
        .output()
        .expect("run java");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), format!("{stdout}{stderr}"))
}

fn save(dir: &Path, name: &str, v: &Value) {
    std::fs::write(dir.join(format!("{name}.json")), v.to_string()).expect("write");
}

#[tokio::test]
async fn what_the_facade_returns_validates_with_hapi_and_what_hapi_rejects_is_refused() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let nhs = crate::harness::demo_nhs_numbers()[0].clone();
    let system = service_token_for(&p.http, "records.write records.read").await;
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    let margaret = user_token(&p, "patient1", "demo-patient1-password", "nhs_number").await;
    let subject = json!({"reference": "Patient/margaret"});
    let mut record = crate::harness::sample_record(&nhs);
    record.extend([
        json!({"resourceType": "Condition", "id": "diabetes", "subject": subject,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"}]},
            "recordedDate": "2020-05-01"}),
        json!({"resourceType": "Observation", "id": "bp", "status": "final", "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "75367002", "display": "Blood pressure"}]},
            "effectiveDateTime": "2026-11-20T09:30:00Z",
            "valueQuantity": {"value": 128, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}),
        json!({"resourceType": "Encounter", "id": "visit", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject, "period": {"start": "2026-11-20T09:00:00Z", "end": "2026-11-20T09:20:00Z"}}),
        json!({"resourceType": "AllergyIntolerance", "id": "penicillin", "patient": subject,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "code": {"text": "Penicillin"}}),
        json!({"resourceType": "Organization", "id": "riverside", "name": "Riverside Medical Practice",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A81001"}]}),
    ]);
    for r in &record {
        let (status, body) = put_fhir(&p.http, &system, "A81001", r).await;
        assert!(status == 200 || status == 201, "{}: {status} {body}", r["id"]);
    }
    let consent = fhir_consent(
        "",
        &nhs,
        "active",
        json!({"type": "permit", "provision": [{"type": "deny", "securityLabel": labels(&["SEX"])}]}),
    );
    let created = crate::harness::http()
        .post(format!("{}/fhir/R4/Consent", p.http))
        .bearer_auth(&margaret)
        .header("content-type", "application/fhir+json")
        .body(consent.to_string())
        .send()
        .await
        .expect("POST Consent");
    assert_eq!(created.status().as_u16(), 201);
    let consent_id = created.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Everything the facade answers, saved for HAPI.
    let good = tempfile::tempdir().expect("tmp");
    let base = format!("{}/fhir/R4", p.http);
    let mut n = 0;
    let mut keep = |name: &str, v: &Value| {
        n += 1;
        save(good.path(), &format!("{n:03}-{name}"), v);
    };
    for r in &record {
        let (t, id) = (r["resourceType"].as_str().expect("type"), r["id"].as_str().expect("id"));
        let (status, read) = get_json(&format!("{base}/{t}/{id}"), &gp, &[]).await;
        assert_eq!(status, 200, "{t}/{id}: {read}");
        keep(&format!("{t}-{id}"), &read);
        if t != "Patient" && t != "Medication" && t != "Organization" {
            let (_, found) = get_json(&format!("{base}/{t}?patient=margaret"), &gp, &[]).await;
            keep(&format!("{t}-search"), &found);
        }
    }
    for (name, url, token) in [
        ("metadata", format!("{base}/metadata"), &gp),
        ("history", format!("{base}/Observation/bp/_history"), &gp),
        ("everything", format!("{base}/Patient/margaret/$everything"), &gp),
        (
            "patient-search",
            format!("{base}/Patient?family=evans&birthdate=1941-03-12"),
            &gp,
        ),
        (
            "sorted",
            format!("{base}/Observation?patient=margaret&_sort=-date"),
            &gp,
        ),
        (
            "elements",
            format!("{base}/Condition?patient=margaret&_elements=code"),
            &gp,
        ),
        ("provenance", format!("{base}/Provenance?target=Observation/bp"), &gp),
        (
            "include",
            format!(
                "{base}/MedicationRequest?patient=margaret&_include=MedicationRequest:medication&_revinclude=Provenance:target"
            ),
            &gp,
        ),
        ("consent", format!("{base}/Consent/{consent_id}"), &margaret),
        ("consent-search", format!("{base}/Consent?patient={nhs}"), &margaret),
        (
            "consent-history",
            format!("{base}/Consent/{consent_id}/_history"),
            &margaret,
        ),
        (
            "outcome-invalid",
            format!("{base}/Observation?patient=margaret&date=yesterday"),
            &gp,
        ),
        ("outcome-missing", format!("{base}/Observation/nope"), &gp),
    ] {
        let (_, body) = get_json(&url, token, &[]).await;
        keep(name, &body);
    }
    let (ok, out) = hapi(&["validate", &good.path().display().to_string()]);
    assert!(ok, "HAPI's validator found errors in what the facade returned:\n{out}");
    assert!(out.contains(&format!("validated {n} files, 0 with errors")), "{out}");

    // Resources HAPI's validator rejects: each is rejected on write too, naming the element.
    let bad = tempfile::tempdir().expect("tmp");
    let cases = [
        (
            json!({"resourceType": "Observation", "id": "b1", "status": "done", "code": {"text": "x"}, "subject": subject}),
            "status",
        ),
        (
            json!({"resourceType": "Observation", "id": "b2", "status": "final", "subject": subject}),
            "code",
        ),
        (
            json!({"resourceType": "Observation", "id": "b3", "status": "final", "code": {"text": "x"}, "subject": subject,
            "effectiveDateTime": "20/11/2026"}),
            "effectiveDateTime",
        ),
        (
            json!({"resourceType": "Observation", "id": "b4", "status": "final", "code": {"text": "x"}, "subject": subject,
            "colour": "blue"}),
            "colour",
        ),
        (
            json!({"resourceType": "Encounter", "id": "b5", "status": "finished", "class": [{"code": "AMB"}], "subject": subject}),
            "class",
        ),
        (
            json!({"resourceType": "Patient", "id": "b6", "gender": "F",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]}),
            "gender",
        ),
        (
            json!({"resourceType": "Immunization", "id": "b7", "status": "completed", "vaccineCode": {"text": "flu"}, "patient": subject}),
            "occurrence[x]",
        ),
        (
            json!({"resourceType": "MedicationRequest", "id": "b8", "status": "active", "subject": subject,
            "medicationCodeableConcept": {"text": "x"}}),
            "intent",
        ),
        (
            json!({"resourceType": "Condition", "id": "b9", "code": {"text": "x"}}),
            "subject",
        ),
        (
            json!({"resourceType": "Procedure", "id": "b10", "status": "completed", "subject": subject, "performer": {"actor": subject}}),
            "performer",
        ),
        (
            json!({"resourceType": "Appointment", "id": "b11", "status": "booked", "participant": [{"actor": subject}]}),
            "participant[0].status",
        ),
    ];
    for (i, (r, _)) in cases.iter().enumerate() {
        save(bad.path(), &format!("{i:02}-{}", r["id"].as_str().expect("id")), r);
    }
    let mut bad_consent = fhir_consent("", &nhs, "active", json!({"type": "deny"}));
    bad_consent.as_object_mut().expect("object").remove("scope");
    save(bad.path(), "99-consent-without-scope", &bad_consent);
    let (ok, out) = hapi(&["validate", &bad.path().display().to_string()]);
    assert!(!ok, "HAPI accepted a bad resource:\n{out}");
    assert!(out.contains("error 99-consent-without-scope.json:"), "{out}");
    for (i, (r, field)) in cases.iter().enumerate() {
        let name = format!("{i:02}-{}.json", r["id"].as_str().expect("id"));
        assert!(
            out.contains(&format!("error {name}:")),
            "HAPI should reject {name}:\n{out}"
        );
        let (status, outcome) = put_fhir(&p.http, &system, "A81001", r).await;
        assert_eq!(status, 400, "{name}: {outcome}");
        assert_eq!(outcome["issue"][0]["expression"][0], *field, "{name}: {outcome}");
    }
    let refused = crate::harness::http()
        .post(format!("{base}/Consent"))
        .bearer_auth(&margaret)
        .header("content-type", "application/fhir+json")
        .body(bad_consent.to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status().as_u16(), 400);
    assert_eq!(
        refused.json::<Value>().await.expect("json")["issue"][0]["expression"][0],
        "scope"
    );
}

#[tokio::test]
async fn hapis_generic_client_writes_reads_searches_deletes_and_exports() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo = crate::harness::demo_nhs_numbers();
    let nhs = demo[1].clone();
    let system = service_token_for(&p.http, "records.write records.read").await;
    let (ok, out) = hapi(&["client", &format!("{}/fhir/R4", p.http), &system, &nhs]);
    assert!(ok && out.contains("hapi client: all checks passed"), "{out}");

    // A Bulk Data export, kicked off by HAPI's client, polled and downloaded.
    let margaret = demo[0].clone();
    for r in crate::harness::sample_record(&margaret) {
        let (status, body) = put_fhir(&p.http, &system, "A81001", &r).await;
        assert!(status < 300, "{status} {body}");
    }
    let bulk = service_token_for(&p.http, "records.bulk").await;
    let (ok, out) = hapi(&["bulk", &format!("{}/fhir/R4", p.http), &bulk]);
    assert!(ok && out.contains("hapi bulk: all checks passed"), "{out}");
    for line in ["exported Immunization 1", "exported Patient 1", "exported Medication 1"] {
        assert!(out.contains(line), "{line}: {out}");
    }
}

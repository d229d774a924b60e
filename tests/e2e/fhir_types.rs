//! The resource types GP Connect's structured record and care-planning systems exchange
//! (prescriptions, vaccinations, procedures, referrals, appointments, assessments, carers),
//! written and read through the FHIR facade of `sharedcare up`: each validated by name, each
//! readable by those who care for the patient, and a referral to an organisation letting its
//! staff see the record.

use std::time::Duration;

use serde_json::json;

use crate::harness::{get_json, put_fhir, service_token_for, up, user_token};

const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

#[tokio::test]
async fn new_resource_types_are_stored_validated_and_a_referral_opens_the_record_to_its_provider() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let nhs = crate::harness::demo_nhs_numbers()[0].clone();
    let system = service_token_for(&p.http, "records.write records.read").await;
    let subject = json!({"reference": "Patient/margaret"});
    let resources = crate::harness::sample_record(&nhs);
    for r in &resources {
        let (status, body) = put_fhir(&p.http, &system, "A81001", r).await;
        assert!(status == 201 || status == 200, "{}: {status} {body}", r["resourceType"]);
    }

    // The GP reads each back as written, and finds the vaccination by patient.
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    for r in &resources {
        let url = format!(
            "{}/fhir/R4/{}/{}",
            p.http,
            r["resourceType"].as_str().expect("type"),
            r["id"].as_str().expect("id")
        );
        let (status, got) = get_json(&url, &gp, &[]).await;
        assert_eq!(status, 200, "{url}: {got}");
        for (k, v) in r.as_object().expect("object") {
            assert_eq!(&got[k], v, "{url}: {k}");
        }
    }
    let (_, found) = get_json(&format!("{}/fhir/R4/Immunization?patient=margaret", p.http), &gp, &[]).await;
    assert_eq!(found["entry"][0]["resource"]["id"], "flu26", "{found}");
    // `_sort` by clinical date, newest first, in pages that keep the order.
    let (_, first) = get_json(
        &format!("{}/fhir/R4/Procedure?patient=margaret&_sort=-date&_count=1", p.http),
        &gp,
        &[],
    )
    .await;
    assert_eq!(first["entry"][0]["resource"]["id"], "hip", "{first}");
    let (status, bad) = get_json(
        &format!("{}/fhir/R4/Procedure?patient=margaret&_sort=colour", p.http),
        &gp,
        &[],
    )
    .await;
    assert_eq!(
        (status, bad["issue"][0]["expression"][0].as_str()),
        (400, Some("_sort")),
        "{bad}"
    );
    // `_include` follows a reference; `_revinclude=Provenance:target` says who wrote each match.
    let (_, rx) = get_json(
        &format!(
            "{}/fhir/R4/MedicationRequest?patient=margaret&_include=MedicationRequest:medication&_revinclude=Provenance:target",
            p.http
        ),
        &gp,
        &[],
    )
    .await;
    let modes: Vec<(String, String)> = rx["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["search"]["mode"].as_str().unwrap_or_default().to_string(),
                e["resource"]["resourceType"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for want in [
        ("match", "MedicationRequest"),
        ("include", "Medication"),
        ("include", "Provenance"),
    ] {
        assert!(
            modes.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?}: {rx}"
        );
    }
    let (_, provenance) = get_json(&format!("{}/fhir/R4/Provenance?target=Procedure/hip", p.http), &gp, &[]).await;
    let written = &provenance["entry"][0]["resource"];
    assert_eq!(
        written["target"][0]["reference"], "Procedure/hip/_history/1",
        "{provenance}"
    );
    assert_eq!(written["activity"]["coding"][0]["code"], "CREATE");
    assert_eq!(written["agent"][0]["onBehalfOf"]["identifier"]["value"], "A81001");
    let one = format!("{}/fhir/R4/Provenance/{}", p.http, written["id"].as_str().expect("id"));
    let (status, read) = get_json(&one, &gp, &[]).await;
    assert_eq!((status, &read), (200, written));

    // The passport files each in its section, in plain words.
    let url = format!("{}/passport/v1/patients/{nhs}", p.http);
    let view = crate::harness::eventually(Duration::from_secs(20), "the passport has them", || {
        let (url, gp) = (url.clone(), gp.clone());
        async move {
            let (_, view) = get_json(&url, &gp, &[]).await;
            (crate::passport::section(&view, "assessments").len() == 1).then_some(view)
        }
    })
    .await;
    for (kind, ids) in [
        ("medications", vec!["rx1"]),
        ("immunisations", vec!["flu26"]),
        ("procedures", vec!["hip"]),
        ("encounters", vec!["memory"]),
        ("assessments", vec!["falls"]),
    ] {
        assert_eq!(crate::passport::section(&view, kind), ids, "{kind}: {view}");
    }

    // Bad input is named, and nothing is stored.
    for (bad, field) in [
        (
            json!({"resourceType": "Immunization", "id": "bad1", "status": "completed", "vaccineCode": {"text": "x"}, "patient": subject}),
            "occurrence[x]",
        ),
        (
            json!({"resourceType": "Appointment", "id": "bad2", "status": "booked", "participant": [{"actor": {"reference": "Patient/margaret"}}]}),
            "participant[0].status",
        ),
        (
            json!({"resourceType": "ServiceRequest", "id": "bad3", "status": "active", "intent": "referral", "subject": subject}),
            "intent",
        ),
    ] {
        let (status, err) = put_fhir(&p.http, &system, "A81001", &bad).await;
        assert_eq!(status, 400, "{bad}: {err}");
        assert_eq!(err["issue"][0]["expression"][0], field, "{err}");
        let url = format!(
            "{}/fhir/R4/{}/{}",
            p.http,
            bad["resourceType"].as_str().expect("type"),
            bad["id"].as_str().expect("id")
        );
        assert_eq!(get_json(&url, &gp, &[]).await.0, 404, "{url} was not stored");
    }

    // Homeward Care has no relationship with Margaret until her GP refers her to them.
    let carer = user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let hip = format!("{}/fhir/R4/Procedure/hip", p.http);
    assert_eq!(get_json(&hip, &carer, &[]).await.0, 403, "no relationship yet");
    assert_eq!(get_json(&one, &carer, &[]).await.0, 403, "nor who wrote it");
    let referral = |status: &str| {
        json!({"resourceType": "ServiceRequest", "id": "homecare", "status": status, "intent": "order",
            "subject": subject, "authoredOn": "2026-11-22", "code": {"text": "Home care after discharge"},
            "requester": {"reference": "Practitioner/gp1"},
            "performer": [{"identifier": {"system": ODS, "value": "VH2D7"}, "display": "Homeward Care Services"}]})
    };
    let (status, body) = put_fhir(&p.http, &system, "A81001", &referral("active")).await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let read = crate::harness::eventually(Duration::from_secs(20), "the referral opens the record", || {
        let (hip, carer) = (hip.clone(), carer.clone());
        async move {
            let (status, body) = get_json(&hip, &carer, &[]).await;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert_eq!(read["code"]["text"], "Total hip replacement");

    // The referral completes: the relationship it made ends.
    put_fhir(&p.http, &system, "A81001", &referral("completed")).await;
    crate::harness::eventually(Duration::from_secs(20), "the completed referral closes it", || {
        let (hip, carer) = (hip.clone(), carer.clone());
        async move { (get_json(&hip, &carer, &[]).await.0 == 403).then_some(()) }
    })
    .await;
}

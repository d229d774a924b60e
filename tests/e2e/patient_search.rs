//! Finding a patient by name and date of birth through the FHIR facade of `sharedcare up`, as
//! a clinician's app does: the GP finds her patient; a care worker with no care relationship
//! finds nobody, not even a hint; bad parameters are named.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{get_json, service_token_for, up, user_token};

/// `GET {base}/fhir/R4/{query}` as `token`; (status, body).
async fn fhir_get(base: &str, token: &str, query: &str) -> (u16, Value) {
    get_json(&format!("{base}/fhir/R4/{query}"), token, &[]).await
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_gp_finds_her_patient_by_name_and_birth_date_and_a_stranger_finds_nobody() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    let nhs = |i: usize| demo["patients"][i]["nhs_number"].as_str().expect("nhs").to_string();
    let system = service_token_for(&p.http, "records.write records.read").await;
    let client = reqwest::Client::new();
    for (id, n, family, given, born) in [
        ("margaret", nhs(0), "Evans", "Margaret", "1941-03-12"),
        ("david", nhs(1), "Evans", "David", "1968-07-01"),
    ] {
        let patient = json!({"resourceType": "Patient", "id": id,
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": n}],
            "name": [{"family": family, "given": [given]}], "birthDate": born, "gender": "female"});
        let r = client
            .put(format!("{}/fhir/R4/Patient/{id}", p.http))
            .bearer_auth(&system)
            .header("content-type", "application/fhir+json")
            .header("x-source-organisation", "A81001")
            .body(patient.to_string())
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
    }

    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    let (status, found) = fhir_get(&p.http, &gp, "Patient?family=evans&birthdate=1941-03-12").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["type"], "searchset");
    assert_eq!(ids(&found), ["margaret"]);
    let (_, both) = fhir_get(&p.http, &gp, "Patient?family:exact=Evans").await;
    assert_eq!(ids(&both), ["david", "margaret"], "both are her registered patients");

    // The care worker has no relationship with Margaret: nothing comes back, and nothing in
    // the answer differs from a search that matched nobody.
    let carer = user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let (status, none) = fhir_get(&p.http, &carer, "Patient?family=evans&birthdate=1941-03-12").await;
    assert_eq!(status, 200, "{none}");
    assert!(ids(&none).is_empty(), "{none}");
    let (_, nobody) = fhir_get(&p.http, &carer, "Patient?family=nosuchname").await;
    assert_eq!(none.get("total"), nobody.get("total"));
    assert_eq!(none.get("entry"), nobody.get("entry"));

    // Bad parameters are named.
    for (query, field) in [
        ("Patient?birthdate=12/03/1941", "birthdate"),
        ("Patient?family:sounds=evans", "family:sounds"),
        ("Patient?gender=f", "gender"),
        ("Patient?family=evans&_id=margaret", "_id"),
    ] {
        let (status, err) = fhir_get(&p.http, &gp, query).await;
        assert_eq!(status, 400, "{query}: {err}");
        assert_eq!(err["issue"][0]["expression"][0], field, "{query}: {err}");
    }

    // `_elements` returns a subset, tagged so; `_lastUpdated` filters on when it was stored.
    let (_, subset) = fhir_get(
        &p.http,
        &gp,
        "Patient?family=evans&birthdate=1941-03-12&_elements=birthDate",
    )
    .await;
    let r = &subset["entry"][0]["resource"];
    assert_eq!(r["birthDate"], "1941-03-12");
    assert!(r.get("name").is_none() && r.get("identifier").is_none(), "{r}");
    assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
    let by_nhs = format!("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{}", nhs(0));
    let (_, recent) = fhir_get(&p.http, &gp, &format!("{by_nhs}&_lastUpdated=ge2020-01-01")).await;
    assert_eq!(ids(&recent), ["margaret"]);
    let (_, future) = fhir_get(&p.http, &gp, &format!("{by_nhs}&_lastUpdated=gt2100-01-01")).await;
    assert!(ids(&future).is_empty(), "{future}");
    for (query, field) in [
        (format!("{by_nhs}&_lastUpdated=yesterday"), "_lastUpdated"),
        ("Patient?family=evans&_elements=na-me".to_string(), "_elements"),
        ("Patient?family=evans&_lastUpdated=ge2020-01-01".to_string(), "_id"),
    ] {
        let (status, err) = fhir_get(&p.http, &gp, &query).await;
        assert_eq!(status, 400, "{query}: {err}");
        assert_eq!(err["issue"][0]["expression"][0], field, "{query}: {err}");
    }

    // `_summary=count`: how many the caller may see, no entries.
    let (_, count) = fhir_get(&p.http, &gp, "Patient?family=evans&_summary=count").await;
    assert_eq!(
        (count["total"].as_u64(), count.get("entry")),
        (Some(2), None),
        "{count}"
    );
    let (_, count) = fhir_get(&p.http, &carer, "Patient?family=evans&_summary=count").await;
    assert_eq!(count["total"], 0, "the care worker may see neither");
    let (_, count) = fhir_get(&p.http, &gp, &format!("{by_nhs}&_summary=count")).await;
    assert_eq!(count["total"], 1);
    let (status, err) = fhir_get(&p.http, &gp, "Patient?family=evans&_summary=true").await;
    assert_eq!(
        (status, err["issue"][0]["expression"][0].as_str()),
        (400, Some("_summary"))
    );

    // Conditional create: the GP system writes Margaret again only if she is not there.
    let create = |condition: &str, family: &str| {
        let body = json!({"resourceType": "Patient",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs(2)}],
            "name": [{"family": family}], "birthDate": "1980-01-01"});
        client
            .post(format!("{}/fhir/R4/Patient", p.http))
            .bearer_auth(&system)
            .header("content-type", "application/fhir+json")
            .header("x-source-organisation", "A81001")
            .header("if-none-exist", condition)
            .body(body.to_string())
    };
    let there = create(
        &format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{}", nhs(0)),
        "Evans",
    )
    .send()
    .await
    .expect("POST");
    assert_eq!(there.status().as_u16(), 200, "found, not created");
    let existing: Value = there.json().await.expect("JSON");
    assert_eq!(
        (existing["id"].as_str(), existing["meta"]["versionId"].as_str()),
        (Some("margaret"), Some("1"))
    );
    let ambiguous = create("family=evans", "Evans").send().await.expect("POST");
    assert_eq!(ambiguous.status().as_u16(), 412);
    let outcome: Value = ambiguous.json().await.expect("JSON");
    assert_eq!(outcome["issue"][0]["expression"][0], "If-None-Exist");
    let fresh = create("family=Newcomer", "Newcomer").send().await.expect("POST");
    assert_eq!(fresh.status().as_u16(), 201, "nothing matched: created");
    let bad = create("colour=blue", "Newcomer").send().await.expect("POST");
    assert_eq!(bad.status().as_u16(), 400);

    // Conditional update: the GP system updates Margaret by NHS number, not knowing her id.
    let update = |condition: &str, body: Value| {
        client
            .put(format!("{}/fhir/R4/Patient?{condition}", p.http))
            .bearer_auth(&system)
            .header("content-type", "application/fhir+json")
            .header("x-source-organisation", "A81001")
            .body(body.to_string())
    };
    let margaret = |id: Option<&str>| {
        let mut b = json!({"resourceType": "Patient",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs(0)}],
            "name": [{"family": "Evans", "given": ["Margaret", "Rose"]}], "birthDate": "1941-03-12"});
        if let Some(id) = id {
            b["id"] = json!(id);
        }
        b
    };
    let by_nhs = format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{}", nhs(0));
    let updated = update(&by_nhs, margaret(None)).send().await.expect("PUT");
    assert_eq!(updated.status().as_u16(), 200);
    let updated: Value = updated.json().await.expect("JSON");
    assert_eq!(
        (updated["id"].as_str(), updated["meta"]["versionId"].as_str()),
        (Some("margaret"), Some("2")),
        "the one match is updated"
    );
    assert_eq!(updated["name"][0]["given"][1], "Rose");
    let wrong_id = update(&by_nhs, margaret(Some("someone-else")))
        .send()
        .await
        .expect("PUT");
    assert_eq!(wrong_id.status().as_u16(), 400);
    let outcome: Value = wrong_id.json().await.expect("JSON");
    assert_eq!(outcome["issue"][0]["expression"][0], "id");
    let two = update("family=evans", margaret(None)).send().await.expect("PUT");
    assert_eq!(two.status().as_u16(), 412, "two match: nothing changes");
    let outcome: Value = two.json().await.expect("JSON");
    assert_eq!(outcome["issue"][0]["expression"][0], "search");
    let newcomer = json!({"resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs(3)}], "name": [{"family": "Okafor"}]});
    let created = update(
        &format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{}", nhs(3)),
        newcomer,
    )
    .send()
    .await
    .expect("PUT");
    assert_eq!(created.status().as_u16(), 201, "no match: created");
    let (_, still) = fhir_get(&p.http, &gp, "Patient/margaret/_history").await;
    assert_eq!(
        still["entry"].as_array().map(Vec::len),
        Some(2),
        "the refused updates wrote nothing: {still}"
    );

    // The same over gRPC.
    use sharedcare_proto::records::v1::records_client::RecordsClient;
    use sharedcare_proto::records::v1::{FindPatientsRequest, SearchParameter};
    let param = |name: &str, value: &str| SearchParameter {
        name: name.into(),
        value: value.into(),
    };
    let mut grpc = RecordsClient::new(p.channel().await);
    let found = grpc
        .find_patients(crate::harness::with_token(
            FindPatientsRequest {
                parameters: vec![param("family", "EVANS"), param("birthdate", "le1950")],
                ..Default::default()
            },
            &gp,
        ))
        .await
        .expect("FindPatients")
        .into_inner();
    let ids: Vec<&str> = found.resources.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["margaret"]);
    let err = grpc
        .find_patients(crate::harness::with_token(
            FindPatientsRequest {
                parameters: vec![param("family", "evans"), param("phone", "0113")],
                ..Default::default()
            },
            &gp,
        ))
        .await
        .expect_err("unknown parameter");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("parameters[1]: "), "{}", err.message());

    // The CapabilityStatement says so.
    let (_, cap) = fhir_get(&p.http, &gp, "metadata").await;
    let patient = cap["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "Patient")
        .expect("Patient")
        .clone();
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .expect("params")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in [
        "family",
        "given",
        "name",
        "birthdate",
        "gender",
        "address-postalcode",
        "_lastUpdated",
    ] {
        assert!(params.contains(&name), "{params:?}");
    }
}

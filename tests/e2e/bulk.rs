//! FHIR Bulk Data `$export` from `sharedcare up`, as a population health platform runs it:
//! kick-off with `Prefer: respond-async`, poll `Content-Location`, download NDJSON. Consent
//! decides each patient (the national data opt-out applies to research), a directive's
//! withheld category stays out, and every patient's part is in their audit trail.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::{Directive, PutDirectiveRequest, SetFlagsRequest};

use crate::harness::{fhir_consent, http, labels, put_fhir, service_token_for, up, user_token, with_token};

/// Kick-off `path` (e.g. `$export?_type=Observation`) as `token`; the response.
async fn kick_off(base: &str, token: &str, path: &str, purpose: &str) -> reqwest::Response {
    http()
        .get(format!("{base}/fhir/R4/{path}"))
        .bearer_auth(token)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .header("x-purpose-of-use", purpose)
        .send()
        .await
        .expect("kick-off")
}

/// Polls `url` until the manifest comes; (manifest, the progress headers seen).
async fn manifest(url: &str, token: &str) -> Value {
    for _ in 0..200 {
        let r = http().get(url).bearer_auth(token).send().await.expect("poll");
        match r.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(50)).await,
            200 => return r.json().await.expect("manifest"),
            other => panic!("poll answered {other}: {}", r.text().await.unwrap_or_default()),
        }
    }
    panic!("the export did not finish");
}

/// Every line of every file in `manifest`, parsed, by resource type.
async fn download(manifest: &Value, token: &str) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for o in manifest["output"].as_array().expect("output") {
        let r = http()
            .get(o["url"].as_str().expect("url"))
            .bearer_auth(token)
            .send()
            .await
            .expect("file");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
        let text = r.text().await.expect("ndjson");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one resource per line"))
            .collect();
        assert_eq!(lines.len() as u64, o["count"].as_u64().expect("count"), "{}", o["type"]);
        out.entry(o["type"].as_str().expect("type").to_string())
            .or_default()
            .extend(lines);
    }
    out
}

fn ids(found: &HashMap<String, Vec<Value>>, t: &str) -> Vec<String> {
    let mut v: Vec<String> = found
        .get(t)
        .map(|rs| {
            rs.iter()
                .map(|r| r["id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn a_research_export_leaves_out_opted_out_patients_and_withheld_categories_and_is_audited() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo = crate::harness::demo_nhs_numbers();
    let nhs = |i: usize| demo[i].clone();
    let writer = service_token_for(&p.http, "records.write records.read consent.write").await;
    for (i, pid) in ["ann", "bob", "cat"].iter().enumerate() {
        let patient = json!({"resourceType": "Patient", "id": pid,
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs(i)}]});
        assert!(put_fhir(&p.http, &writer, "A81001", &patient).await.0 < 300);
        for (n, label) in [(1, ""), (2, "SEX")] {
            let mut obs = json!({"resourceType": "Observation", "id": format!("{pid}-{n}"), "status": "final",
                "code": {"text": "blood pressure"}, "subject": {"reference": format!("Patient/{pid}")}});
            if !label.is_empty() {
                obs["meta"] = json!({"security": labels(&[label])});
            }
            assert!(put_fhir(&p.http, &writer, "A81001", &obs).await.0 < 300);
        }
    }
    let org = json!({"resourceType": "Organization", "id": "riverside", "name": "Riverside Medical Practice"});
    assert!(put_fhir(&p.http, &writer, "A81001", &org).await.0 < 300);
    // Bob has registered the national data opt-out; Ann withholds sexual health.
    let mut consent = ConsentClient::new(p.channel().await);
    consent
        .set_flags(with_token(
            SetFlagsRequest {
                nhs_number: nhs(1),
                national_opt_out: true,
                gp_dissent: false,
            },
            &writer,
        ))
        .await
        .expect("opt-out");
    let ann = user_token(&p, "patient1", "demo-patient1-password", "nhs_number").await;
    consent
        .put_directive(with_token(
            PutDirectiveRequest {
                directive: Some(Directive {
                    resource_json: fhir_consent(
                        "",
                        &nhs(0),
                        "active",
                        json!({"type": "permit", "provision": [{"type": "deny", "securityLabel": labels(&["SEX"])}]}),
                    )
                    .to_string(),
                    ..Default::default()
                }),
            },
            &ann,
        ))
        .await
        .expect("Ann's directive");

    let bulk = service_token_for(&p.http, "records.bulk").await;
    let r = kick_off(&p.http, &bulk, "$export", "HRESCH").await;
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
    let poll = r.headers()["content-location"].to_str().expect("ascii").to_string();
    let m = manifest(&poll, &bulk).await;
    assert_eq!(m["requiresAccessToken"], true);
    assert!(
        m["request"].as_str().expect("request").ends_with("/fhir/R4/$export"),
        "{m}"
    );
    let found = download(&m, &bulk).await;
    assert_eq!(
        ids(&found, "Patient"),
        ["ann", "cat"],
        "Bob's opt-out keeps him out of research"
    );
    assert_eq!(
        ids(&found, "Observation"),
        ["ann-1", "cat-1", "cat-2"],
        "Ann's sexual health result stays out"
    );
    assert_eq!(
        ids(&found, "Organization"),
        ["riverside"],
        "directory data is exported too"
    );

    // Each patient's part is in their audit trail, the opt-out as a refusal.
    let trail = crate::harness::eventually(Duration::from_secs(20), "audited", || {
        let p = &p;
        let n = nhs(1);
        async move {
            let t = crate::harness::audit_trail(p, &n).await;
            t.iter().any(|(a, _, _)| a == "export").then_some(t)
        }
    })
    .await;
    let export = trail.iter().find(|(a, _, _)| a == "export").expect("export entry");
    assert_eq!((export.1.as_str(), export.2.len()), ("denied", 0), "{trail:?}");
    let ann_trail = crate::harness::audit_trail(&p, &nhs(0)).await;
    let ann_export = ann_trail
        .iter()
        .find(|(a, _, _)| a == "export")
        .expect("Ann's export entry");
    assert_eq!(ann_export.1, "withheld");
    assert!(
        ann_export.2.contains(&"Observation/ann-1".to_string()),
        "{ann_export:?}"
    );

    // Group and type: only the Group's members, only Observations.
    let group = json!({"resourceType": "Group", "id": "cohort", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/cat"}}]});
    assert!(put_fhir(&p.http, &writer, "A81001", &group).await.0 < 300);
    // A cohort is read by systems only: its membership can say something about its members.
    let cohort = format!("{}/fhir/R4/Group/cohort", p.http);
    assert_eq!(crate::harness::get_json(&cohort, &writer, &[]).await.0, 200);
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    assert_eq!(crate::harness::get_json(&cohort, &gp, &[]).await.0, 403);
    let staff_write = put_fhir(&p.http, &gp, "A81001", &group).await;
    assert_eq!(staff_write.0, 403, "{}", staff_write.1);
    let r = kick_off(&p.http, &bulk, "Group/cohort/$export?_type=Observation", "TREAT").await;
    assert_eq!(r.status().as_u16(), 202);
    let poll = r.headers()["content-location"].to_str().expect("ascii").to_string();
    let found = download(&manifest(&poll, &bulk).await, &bulk).await;
    assert_eq!(found.keys().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(ids(&found, "Observation"), ["cat-1", "cat-2"]);

    // A system without the bulk scope is refused; an export can be cancelled; bad kick-offs
    // name the problem.
    let weak = service_token_for(&p.http, "records.read").await;
    assert_eq!(
        kick_off(&p.http, &weak, "$export", "HRESCH").await.status().as_u16(),
        403
    );
    let cancelled = http().delete(&poll).bearer_auth(&bulk).send().await.expect("DELETE");
    assert_eq!(cancelled.status().as_u16(), 202);
    assert_eq!(
        http()
            .get(&poll)
            .bearer_auth(&bulk)
            .send()
            .await
            .expect("poll")
            .status()
            .as_u16(),
        404
    );
    for (path, purpose, field) in [
        ("$export?_type=Banana", "HRESCH", "_type"),
        ("$export?_since=yesterday", "HRESCH", "_since"),
        ("$export?_typeFilter=Observation%3Fcode%3Dx", "HRESCH", "_typeFilter"),
        ("$export?_outputFormat=text/csv", "HRESCH", "_outputFormat"),
        ("$export", "", "X-Purpose-Of-Use"),
    ] {
        let r = kick_off(&p.http, &bulk, path, purpose).await;
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let outcome: Value = r.json().await.expect("OperationOutcome");
        assert_eq!(outcome["issue"][0]["expression"][0], field, "{path}: {outcome}");
    }
    let no_prefer = http()
        .get(format!("{}/fhir/R4/$export", p.http))
        .bearer_auth(&bulk)
        .header("x-purpose-of-use", "HRESCH")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(no_prefer.status().as_u16(), 400);
    let outcome: Value = no_prefer.json().await.expect("OperationOutcome");
    assert_eq!(outcome["issue"][0]["expression"][0], "Prefer");
    let missing = kick_off(&p.http, &bulk, "Group/nobody/$export", "TREAT").await;
    assert_eq!(missing.status().as_u16(), 404);
}

//! The demo ICS as `up` ships it: every demo patient's clinical record, written through records
//! by the organisations that hold it (as the demo's integration engine, a trusted feed), with
//! her sharing choice and attorney in consent, audited from the first write, seeded once and
//! only into an empty record.

use std::collections::BTreeSet;
use std::time::Duration;

use sharedcare_proto::consent::v1::ListDirectivesRequest;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::records::v1::SearchRequest;
use sharedcare_proto::records::v1::records_client::RecordsClient;

use crate::harness::{
    Proc, demo_nhs_numbers, eventually, put_fhir, run, service_token_for, up_as_shipped, user_token, with_token,
};

/// Every current resource about `nhs` that `token`'s caller may see, and whether some are
/// withheld from them.
pub(crate) async fn record(p: &Proc, token: &str, nhs: &str) -> (Vec<serde_json::Value>, bool) {
    let found = RecordsClient::new(p.channel().await)
        .search(with_token(
            SearchRequest {
                nhs_number: nhs.into(),
                page_size: 500,
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("search")
        .into_inner();
    let resources = found
        .resources
        .iter()
        .map(|r| serde_json::from_str(&r.resource_json).expect("json"))
        .collect();
    (resources, found.some_withheld)
}

fn types(resources: &[serde_json::Value]) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|r| r["resourceType"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn up_seeds_every_demo_patient_s_record_through_records_once() {
    let data = tempfile::tempdir().expect("tmp");
    let nhs = demo_nhs_numbers();
    let p = up_as_shipped(data.path());
    // The GP sees Margaret's whole story, from every organisation that holds part of it, but
    // not the mental health entry she withholds.
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    let (margaret, withheld) = record(&p, &gp, &nhs[0]).await;
    assert!(withheld, "the GP is told something is withheld");
    let want = [
        "AllergyIntolerance",
        "Appointment",
        "CarePlan",
        "Condition",
        "DocumentReference",
        "Encounter",
        "Flag",
        "Immunization",
        "MedicationRequest",
        "Observation",
        "Patient",
        "QuestionnaireResponse",
        "ServiceRequest",
    ];
    assert_eq!(types(&margaret), want.iter().map(|s| s.to_string()).collect());
    let text = serde_json::to_string(&margaret).expect("json");
    for seen in [
        "Alzheimer's disease",
        "Amlodipine 5mg tablets",
        "Discharge summary",
        "Willow House care plan",
    ] {
        assert!(text.contains(seen), "{seen} is in the GP's view");
    }
    assert!(
        !text.contains("35489007"),
        "the depressive disorder she withholds is left out"
    );
    let patient = margaret
        .iter()
        .find(|r| r["resourceType"] == "Patient")
        .expect("Patient");
    assert_eq!(patient["name"][0]["family"], "Evans");
    assert_eq!(patient["birthDate"], "1941-03-12");
    // Every patient has a record, and dates follow today: the latest blood pressure is recent.
    let records_reader = service_token_for(&p.http, "records.read").await;
    for n in &nhs {
        let (all, _) = record(&p, &records_reader, n).await;
        assert!(all.len() >= 5, "{n}: {}", all.len());
    }
    let (all, withheld) = record(&p, &records_reader, &nhs[0]).await;
    assert!(withheld, "her choice holds for systems too");
    let today = chrono::Utc::now().date_naive();
    let latest = all
        .iter()
        .filter(|r| r["code"]["text"] == "Blood pressure")
        .filter_map(|r| r["effectiveDateTime"].as_str())
        .filter_map(|d| chrono::NaiveDate::parse_from_str(&d[..10], "%Y-%m-%d").ok())
        .max()
        .expect("a blood pressure");
    assert!(
        (today - latest).num_days() <= 30,
        "the latest blood pressure is recent: {latest}"
    );
    // Her choice and her attorney are in consent, as a GP system would have sent them.
    let consent_reader = service_token_for(&p.http, "consent.write").await;
    let directives = ConsentClient::new(p.channel().await)
        .list_directives(with_token(
            ListDirectivesRequest {
                nhs_number: nhs[0].clone(),
            },
            &consent_reader,
        ))
        .await
        .expect("directives")
        .into_inner()
        .directives;
    assert_eq!(directives.len(), 1, "{directives:?}");
    assert!(directives[0].resource_json.contains("\"PSY\""));
    // Her record in the audit log starts with its writes, by the integration engine.
    let trail = eventually(
        Duration::from_secs(20),
        "the seeded writes in the audit log",
        || async {
            let entries = p
                .audit()
                .await
                .list_by_patient(sharedcare_proto::audit::v1::ListByPatientRequest {
                    nhs_number: nhs[0].clone(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .expect("audit")
                .into_inner()
                .entries;
            let writes = entries.iter().filter(|e| e.actor == "ics-integration").count();
            (writes >= 4).then_some(entries)
        },
    )
    .await;
    let oldest = trail
        .iter()
        .rev()
        .find(|e| e.service == "records")
        .expect("a records entry");
    assert_eq!(
        (oldest.actor.as_str(), oldest.action.as_str()),
        ("ics-integration", "create"),
        "{oldest:?}"
    );
    assert!(
        oldest.resources.iter().any(|r| r.starts_with("Patient/demo-margaret/")),
        "{oldest:?}"
    );
    drop(p);

    // A second start changes nothing; `demo seed` says so.
    let p = up_as_shipped(data.path());
    let (again, _) = record(&p, &records_reader_for(&p).await, &nhs[0]).await;
    assert_eq!(again.len(), all.len(), "nothing added on a second start");
    let (status, out, err) = run(
        &["demo", "--issuer", &p.http, "seed", "--grpc", &p.grpc],
        &[],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("already there: nothing to do"), "{out}");

    // A record holding anything else is refused, saying what it holds; nothing is written.
    let writer = service_token_for(&p.http, "records.write").await;
    let stranger = serde_json::json!({"resourceType": "Observation", "id": "not-the-demo", "status": "final",
        "code": {"text": "Weight"}, "subject": {"reference": "Patient/demo-tom"}});
    assert!(put_fhir(&p.http, &writer, "A81001", &stranger).await.0 < 300);
    let (status, out, err) = run(
        &["demo", "--issuer", &p.http, "seed", "--grpc", &p.grpc],
        &[],
        Duration::from_secs(30),
    );
    assert!(!status.success(), "{out}");
    assert!(
        err.contains("the record already holds 4 patients and") && err.contains("only into an empty record"),
        "{err}"
    );
}

async fn records_reader_for(p: &Proc) -> String {
    service_token_for(&p.http, "records.read").await
}

/// The README's "Run it" walk-through, followed in Chromium word for word against `up` as it
/// ships (`tests/node/walkthrough.mjs` reads the names, numbers and promises from the README).
#[tokio::test]
async fn the_readme_walk_through_is_true_in_chromium() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up_as_shipped(data.path());
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let out = crate::oidc_node::run_node(
        "walkthrough.mjs",
        &[
            ("BASE", p.http.clone()),
            ("README", readme.to_str().expect("utf-8").to_string()),
        ],
    );
    assert!(out.contains("walkthrough: all checks passed"), "{out}");
}

/// No page scrolls sideways on a phone (320 and 390 px), as staff or as a patient, with or
/// without the NHS App's user agent, with the demo's full records (`tests/node/widths.mjs`).
#[tokio::test]
async fn no_page_scrolls_sideways_on_a_phone() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up_as_shipped(data.path());
    let nhs = demo_nhs_numbers();
    let out = crate::oidc_node::run_node(
        "widths.mjs",
        &[
            ("BASE", p.http.clone()),
            ("MARGARET_NHS", nhs[0].clone()),
            ("DAVID_NHS", nhs[1].clone()),
        ],
    );
    assert!(out.contains("none scrolls sideways"), "{out}");
}

/// `sharedcare demo population`: the same seed gives the same files; imported with `sharedcare
/// import` by the demo's integration engine (a feed), each organisation's file as that
/// organisation, the people's GP practice sees their records through the relationships their
/// records start, and an organisation that never cared for someone does not.
#[tokio::test]
async fn a_synthetic_population_is_deterministic_and_imports_with_its_care_relationships() {
    let dirs = [tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp")];
    for d in &dirs {
        let (status, out, err) = run(
            &[
                "demo",
                "population",
                "--patients",
                "40",
                "--seed",
                "7",
                "--today",
                "2026-12-06",
                "--out",
                d.path().to_str().expect("utf-8"),
            ],
            &[],
            Duration::from_secs(60),
        );
        assert!(status.success() && out.starts_with("wrote 40 people"), "{out}{err}");
    }
    let orgs = ["A81001", "RX1", "RVC", "VN1C4", "VH2D7", "LA101"];
    for org in orgs {
        let file = |d: &tempfile::TempDir| std::fs::read(d.path().join(format!("{org}.ndjson"))).expect("file");
        assert_eq!(file(&dirs[0]), file(&dirs[1]), "{org}: the same seed, the same file");
    }
    let (status, _, err) = run(&["demo", "population", "--patients", "0"], &[], Duration::from_secs(30));
    assert!(!status.success() && err.contains("--patients: must be 1 to"), "{err}");

    let data = tempfile::tempdir().expect("tmp");
    let p = crate::harness::up(data.path());
    let feed = service_token_for(&p.http, "records.write").await;
    for org in orgs {
        let file = dirs[0].path().join(format!("{org}.ndjson"));
        let (status, out, err) = run(
            &[
                "import",
                file.to_str().expect("utf-8"),
                "--grpc",
                &p.grpc,
                "--token",
                &feed,
                "--source",
                org,
            ],
            &[],
            Duration::from_secs(120),
        );
        assert!(status.success(), "{org}: {out}{err}");
    }
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dirs[0].path().join("A81001.ndjson"))
            .expect("file")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    assert_eq!(first["resourceType"], "Patient");
    let nhs = first["identifier"][0]["value"]
        .as_str()
        .expect("NHS number")
        .to_string();
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    let (seen, _) = eventually(
        Duration::from_secs(20),
        "the GP registration reaches consent",
        || async {
            let r = RecordsClient::new(p.channel().await)
                .search(with_token(
                    SearchRequest {
                        nhs_number: nhs.clone(),
                        page_size: 500,
                        ..Default::default()
                    },
                    &gp,
                ))
                .await;
            r.ok().map(|r| (r.into_inner().resources.len(), ()))
        },
    )
    .await;
    assert!(seen >= 10, "the GP sees their whole record: {seen}");
    let careworker = user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let refused = RecordsClient::new(p.channel().await)
        .search(with_token(
            SearchRequest {
                nhs_number: nhs,
                ..Default::default()
            },
            &careworker,
        ))
        .await;
    // Person 0 of seed 7 has no home care package (were that to change, pick another).
    assert_eq!(
        refused.expect_err("no relationship with home care").code(),
        tonic::Code::PermissionDenied
    );
}

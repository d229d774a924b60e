//! The records store, run on SQLite and on Postgres.

use prost::Message;
use sharedcare_consent::policy::{BreakGlass, Directive, Effect, Provision, Relationship};
use sharedcare_kit::bus::Envelope;
use sharedcare_kit::db::Db;
use sharedcare_kit::outbox::{Outbox, OutboxConfig};
use sharedcare_kit::testing;
use sharedcare_proto::consent::v1::{DecideRequest, DecideResponse};
use sharedcare_proto::events::v1::{AccessRecorded, RecordChanged};
use sharedcare_records::RecordsError;
use sharedcare_records::consent::Pdp;
use sharedcare_records::fhir;
use sharedcare_records::store::{Actor, Store};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

const NHS: &str = "9434765919";

/// The consent service's own decision code over its own tables (a second database of the same
/// kind), standing where the gRPC client stands in a running platform.
struct ConsentPdp {
    store: sharedcare_consent::store::Store,
    _dir: Option<tempfile::TempDir>,
}

#[tonic::async_trait]
impl Pdp for ConsentPdp {
    async fn decide(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, String> {
        sharedcare_consent::grpc::decide_many(&self.store, &asks)
            .await
            .map_err(|s| s.message().to_string())
    }
}

/// The records store with consent deciding on its own tables (a second database of the same
/// kind); returns consent's store too, to change the facts.
async fn stores(db: &Db) -> (Store, sharedcare_consent::store::Store) {
    let (cdb, dir) = match db.backend() {
        sharedcare_kit::db::Backend::Sqlite => {
            let (d, dir) = testing::sqlite_db("consent").await;
            (d, Some(dir))
        }
        sharedcare_kit::db::Backend::Postgres => (testing::postgres_db("consent").await, None),
    };
    sharedcare_consent::migrate(&cdb).await.expect("migrate consent");
    let consent = sharedcare_consent::store::Store::new(cdb);
    let pdp = Arc::new(ConsentPdp {
        store: consent.clone(),
        _dir: dir,
    });
    (store_with(db, pdp).await, consent)
}

async fn store_with(db: &Db, pdp: Arc<dyn Pdp>) -> Store {
    sharedcare_records::migrate(db).await.expect("migrate");
    Store::new(db.clone(), Outbox::new(db.clone(), OutboxConfig::default()), pdp)
}

async fn store(db: &Db) -> Store {
    stores(db).await.0
}

/// A system with records scopes (client credentials), for direct care.
fn system() -> Actor {
    Actor {
        kind: "service",
        id: "gp-system".into(),
        purpose: "TREAT".into(),
        ..Actor::default()
    }
}

/// A nurse at the trust RX1.
fn trust_nurse(purpose: &str) -> Actor {
    Actor {
        kind: "staff",
        id: "nurse-1".into(),
        organisation: "RX1".into(),
        role: "S8000:G8000:R8001".into(),
        role_profile: "rp-1".into(),
        purpose: purpose.into(),
    }
}

fn patient(id: &str) -> fhir::Resource {
    fhir::parse(&format!(
        r#"{{"resourceType":"Patient","id":"{id}","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{NHS}"}}]}}"#
    ))
    .expect("valid patient")
}

async fn outbox_events(db: &Db) -> Vec<Envelope> {
    sqlx::query("SELECT payload FROM kit_outbox ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .expect("outbox")
        .into_iter()
        .map(|r| Envelope::decode(r.get::<Vec<u8>, _>(0).as_slice()).expect("envelope"))
        .collect()
}

async fn every_put_is_a_new_version_and_get_returns_the_newest(db: Db) {
    let s = store(&db).await;
    let a = system();
    assert_eq!(s.put(patient("p1"), "A81001", &a).await.expect("put").version, 1);
    assert_eq!(s.put(patient("p1"), "A81001", &a).await.expect("put").version, 2);
    let got = s.get("Patient", "p1", &a).await.expect("get");
    assert_eq!((got.version, got.nhs_number.as_str()), (2, NHS));
    let body: serde_json::Value = serde_json::from_str(&got.body).expect("json");
    assert_eq!(body["meta"]["versionId"], "2");
}

async fn changes_and_accesses_leave_events_keyed_by_nhs_number(db: Db) {
    let s = store(&db).await;
    let a = system();
    s.put(patient("p1"), "A81001", &a).await.expect("put patient");
    let obs =
        fhir::parse(r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#).expect("obs");
    assert_eq!(
        s.put(obs, "RXX01", &a).await.expect("put obs").nhs_number,
        NHS,
        "keyed by the subject's NHS number"
    );
    s.get("Observation", "o1", &a).await.expect("get");
    let events = outbox_events(&db).await;
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "sharedcare.events.v1.RecordChanged",
            "sharedcare.events.v1.AccessRecorded",
            "sharedcare.events.v1.RecordChanged",
            "sharedcare.events.v1.AccessRecorded",
            "sharedcare.events.v1.AccessRecorded",
        ]
    );
    assert!(
        events.iter().all(|e| e.key == NHS),
        "every event about the patient is keyed by the NHS number"
    );
    let changed = RecordChanged::decode(events[2].data.as_slice()).expect("RecordChanged");
    assert_eq!(
        (changed.resource_type.as_str(), changed.source_organisation.as_str()),
        ("Observation", "RXX01")
    );
    let read = AccessRecorded::decode(events[4].data.as_slice()).expect("AccessRecorded");
    assert_eq!(
        (read.action.as_str(), read.resources[0].as_str()),
        ("read", "Observation/o1/_history/1")
    );
}

async fn an_unknown_resource_is_not_found_and_the_attempt_is_audited(db: Db) {
    let s = store(&db).await;
    let err = s.get("Patient", "nobody", &system()).await.expect_err("not found");
    assert!(
        matches!(err, RecordsError::NotFound(ref r) if r == "Patient/nobody"),
        "{err}"
    );
    let events = outbox_events(&db).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        AccessRecorded::decode(events[0].data.as_slice())
            .expect("decode")
            .outcome,
        "not-found"
    );
}

async fn concurrent_puts_never_lose_or_repeat_a_version(db: Db) {
    let s = store(&db).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.put(patient("race"), "", &system()).await })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(stored) => versions.push(stored.version),
            Err(RecordsError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    versions.sort();
    assert!(!versions.is_empty());
    assert_eq!(
        versions,
        (1..=versions.len() as i64).collect::<Vec<_>>(),
        "versions are 1..n with no gap or repeat"
    );
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM resources WHERE id = 'race'")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, versions.len() as i64, "a refused put stores nothing");
}

async fn concurrent_reads_each_get_their_own_answer_and_audit(db: Db) {
    let s = store(&db).await;
    let a = system();
    for i in 0..5 {
        s.put(patient(&format!("p{i}")), "", &a).await.expect("put");
        s.put(patient(&format!("p{i}")), "", &a).await.expect("put again");
    }
    let before = outbox_events(&db).await.len();
    let reads: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { (i, s.get("Patient", &format!("p{i}"), &system()).await) })
        })
        .collect();
    for r in reads {
        let (i, got) = r.await.expect("join");
        match got {
            Ok(stored) => {
                assert!(i < 5, "p{i} does not exist");
                assert_eq!((stored.id, stored.version), (format!("p{i}"), 2), "the newest version");
            }
            Err(RecordsError::NotFound(r)) => {
                assert!(i >= 5, "p{i} exists");
                assert_eq!(r, format!("Patient/p{i}"));
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let reads: Vec<AccessRecorded> = outbox_events(&db).await[before..]
        .iter()
        .map(|e| AccessRecorded::decode(e.data.as_slice()).expect("decode"))
        .collect();
    assert_eq!(reads.len(), 20, "every read is audited once");
    assert_eq!(reads.iter().filter(|r| r.outcome == "success").count(), 5);
}

/// A put the database refuses (Postgres rejects NUL in text) must not take the other puts of
/// its group commit down with it: the batch is retried put by put.
async fn a_refused_put_does_not_fail_the_others_in_its_batch(db: Db) {
    let s = store(&db).await;
    let puts: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            let org = if i == 7 {
                "A\u{0}B01".to_string()
            } else {
                "A81001".to_string()
            };
            tokio::spawn(async move { (i, s.put(patient(&format!("batch-{i}")), &org, &system()).await) })
        })
        .collect();
    let mut failed = Vec::new();
    for p in puts {
        let (i, r) = p.await.expect("join");
        match r {
            Ok(stored) => assert_eq!(stored.version, 1),
            Err(_) => failed.push(i),
        }
    }
    if db.backend() == sharedcare_kit::db::Backend::Postgres {
        assert_eq!(failed, vec![7], "only the refused put fails");
    } else {
        assert!(failed.is_empty(), "SQLite stores the NUL as given: {failed:?}");
    }
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM resources WHERE id LIKE 'batch-%'")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 16 - failed.len() as i64);
}

fn observation(id: &str, patient: &str, labels: &[&str]) -> fhir::Resource {
    let security: Vec<serde_json::Value> = labels
        .iter()
        .map(|l| serde_json::json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": l}))
        .collect();
    let body = serde_json::json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "subject": {"reference": format!("Patient/{patient}")},
        "meta": {"security": security},
    });
    fhir::parse(&body.to_string()).expect("valid observation")
}

async fn accesses(db: &Db) -> Vec<AccessRecorded> {
    outbox_events(db)
        .await
        .iter()
        .filter(|e| e.r#type == "sharedcare.events.v1.AccessRecorded")
        .map(|e| AccessRecorded::decode(e.data.as_slice()).expect("decode"))
        .collect()
}

async fn staff_reads_are_decided_by_consent_and_every_outcome_is_audited(db: Db) {
    let (s, consent) = stores(&db).await;
    s.put(patient("p1"), "A81001", &system()).await.expect("put patient");
    s.put(observation("o1", "p1", &[]), "A81001", &system())
        .await
        .expect("put obs");
    let nurse = trust_nurse("TREAT");
    let err = s
        .get("Observation", "o1", &nurse)
        .await
        .expect_err("no relationship yet");
    assert!(
        matches!(&err, RecordsError::Denied(why) if why.contains("no legitimate care relationship")),
        "{err}"
    );
    let denied = accesses(&db).await.pop().expect("the denial is audited");
    assert_eq!(
        (
            denied.outcome.as_str(),
            denied.actor.as_str(),
            denied.actor_organisation.as_str()
        ),
        ("denied", "nurse-1", "RX1")
    );
    assert!(denied.reason.contains("relationship:none"), "{}", denied.reason);

    let actor = sharedcare_consent::store::Actor { id: "test", org: "" };
    let episode = Relationship {
        org: "RX1".into(),
        kind: "episode_of_care".into(),
        start: chrono::Utc::now().timestamp() - 60,
        end: None,
    };
    consent
        .add_relationship("rel-1", NHS, &episode, &actor)
        .await
        .expect("relationship");
    let got = s
        .get("Observation", "o1", &nurse)
        .await
        .expect("the trust now cares for the patient");
    assert_eq!(got.id, "o1");
    let read = accesses(&db).await.pop().expect("audited");
    assert_eq!((read.outcome.as_str(), read.purpose.as_str()), ("success", "TREAT"));
    assert!(
        read.reason.contains("relationship:episode_of_care:RX1"),
        "{}",
        read.reason
    );

    // Another organisation's nurse, in an emergency: refused until break-glass, then BTG.
    let stranger = Actor {
        id: "nurse-2".into(),
        organisation: "VN1C4".into(),
        ..trust_nurse("ETREAT")
    };
    assert!(matches!(
        s.get("Observation", "o1", &stranger).await,
        Err(RecordsError::Denied(_))
    ));
    let now = chrono::Utc::now().timestamp();
    consent
        .break_glass(&sharedcare_consent::store::Grant {
            id: "bg-1".into(),
            nhs_number: NHS.into(),
            grant: BreakGlass {
                person: "nurse-2".into(),
                org: "VN1C4".into(),
                start: now - 1,
                end: now + 3600,
            },
            reason_code: "unconscious-patient".into(),
            reason_text: "found collapsed".into(),
        })
        .await
        .expect("break-glass");
    s.get("Observation", "o1", &stranger)
        .await
        .expect("break-glass permits");
    let glass = accesses(&db).await.pop().expect("audited");
    assert_eq!(glass.purpose, "BTG");
    assert!(
        glass.reason.contains("unconscious-patient: found collapsed"),
        "{}",
        glass.reason
    );
}

async fn withheld_categories_are_refused_without_being_named(db: Db) {
    let (s, consent) = stores(&db).await;
    s.put(patient("p1"), "A81001", &system()).await.expect("put patient");
    s.put(observation("plain", "p1", &[]), "A81001", &system())
        .await
        .expect("put");
    s.put(observation("clinic", "p1", &["SEX"]), "A81001", &system())
        .await
        .expect("put");
    let actor = sharedcare_consent::store::Actor { id: NHS, org: "" };
    let withhold = Directive {
        id: "no-sex".into(),
        status: "active".into(),
        provision: Provision {
            kind: Some(Effect::Deny),
            security_labels: vec!["SEX".into()],
            ..Provision::default()
        },
    };
    consent.put_directive(NHS, &withhold, &actor).await.expect("directive");
    let err = s.get("Observation", "clinic", &system()).await.expect_err("withheld");
    assert!(matches!(err, RecordsError::Withheld), "{err}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        !status.message().contains("SEX"),
        "the category is not named to the caller: {}",
        status.message()
    );
    let audit = accesses(&db).await.pop().expect("audited");
    assert_eq!(audit.outcome, "withheld");
    assert!(
        audit.reason.contains("SEX"),
        "the audit entry says what was withheld: {}",
        audit.reason
    );
    s.get("Observation", "plain", &system())
        .await
        .expect("the rest of the record is readable");
}

async fn patient_data_must_name_a_patient_the_record_holds(db: Db) {
    let s = store(&db).await;
    let err = s
        .put(observation("orphan", "ghost", &[]), "A81001", &system())
        .await
        .expect_err("unknown patient");
    assert!(
        matches!(&err, RecordsError::Invalid { field, .. } if field == "subject.reference"),
        "{err}"
    );
    let nameless = fhir::parse(r#"{"resourceType":"Patient","id":"anon"}"#).expect("parses");
    let err = s.put(nameless, "A81001", &system()).await.expect_err("no NHS number");
    assert!(
        matches!(&err, RecordsError::Invalid { field, .. } if field == "identifier"),
        "{err}"
    );
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM resources")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "nothing stored");
}

async fn without_a_consent_decision_no_data_leaves(db: Db) {
    let s = store(&db).await;
    s.put(patient("p1"), "A81001", &system()).await.expect("put");
    // The same records, now with consent unreachable (nothing listens on port 9).
    let token =
        sharedcare_kit::auth::ServiceToken::new("http://127.0.0.1:9/oauth2/token", "records", "x", "consent.decide");
    let pdp = sharedcare_records::consent::GrpcPdp::new("http://127.0.0.1:9", token, Duration::from_millis(500))
        .expect("endpoint");
    let cut_off = store_with(&db, Arc::new(pdp)).await;
    let err = cut_off
        .get("Patient", "p1", &system())
        .await
        .expect_err("no decision, no data");
    assert!(matches!(err, RecordsError::Consent(_)), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
    let audit = accesses(&db).await.pop().expect("the failed attempt is audited");
    assert_eq!(audit.outcome, "error");
    let err = cut_off
        .put(patient("p1"), "A81001", &system())
        .await
        .expect_err("no decision, no write");
    assert!(matches!(err, RecordsError::Consent(_)), "{err}");
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM resources WHERE id = 'p1'")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "the refused write stored nothing");
}

sharedcare_kit::store_suite!(
    "records";
    every_put_is_a_new_version_and_get_returns_the_newest,
    changes_and_accesses_leave_events_keyed_by_nhs_number,
    an_unknown_resource_is_not_found_and_the_attempt_is_audited,
        concurrent_puts_never_lose_or_repeat_a_version,
        concurrent_reads_each_get_their_own_answer_and_audit,
    a_refused_put_does_not_fail_the_others_in_its_batch,
    staff_reads_are_decided_by_consent_and_every_outcome_is_audited,
    withheld_categories_are_refused_without_being_named,
    patient_data_must_name_a_patient_the_record_holds,
    without_a_consent_decision_no_data_leaves,
);

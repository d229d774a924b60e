//! The records store, run on SQLite and on Postgres.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

use prost::Message;
use sharedcare_consent::policy::{BreakGlass, Directive, Effect, Provision, Relationship};
use sharedcare_kit::bus::Envelope;
use sharedcare_kit::db::Db;
use sharedcare_kit::edge::Refusal;
use sharedcare_kit::outbox::{Outbox, OutboxConfig};
use sharedcare_kit::service::Service as _;
use sharedcare_kit::testing;
use sharedcare_proto::consent::v1::{DecideRequest, DecideResponse};
use sharedcare_proto::events::v1::{AccessRecorded, RecordChanged, RecordState};
use sharedcare_records::RecordsError;
use sharedcare_records::consent::{Pdp, PdpError};
use sharedcare_records::export_storage::{ExportStorage, FsExportStorage};
use sharedcare_records::fhir;
use sharedcare_records::store::{Actor, Page, Query, Sort, Store, Stored};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

const NHS: &str = "9434765919";

fn nhs(n: &str) -> sharedcare_kit::nhs::NhsNumber {
    sharedcare_kit::nhs::NhsNumber::parse(n).expect("a valid test NHS number")
}

/// The consent service's own decision code over its own tables (a second database of the same
/// kind), standing where the gRPC client stands in a running platform.
struct ConsentPdp {
    store: sharedcare_consent::store::Store,
    _dir: Option<tempfile::TempDir>,
}

#[tonic::async_trait]
impl Pdp for ConsentPdp {
    async fn decide(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, PdpError> {
        sharedcare_consent::grpc::decide_many(&self.store, &asks)
            .await
            .map_err(|s| PdpError::Call {
                code: s.code(),
                message: s.message().to_string(),
            })
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
    cdb.migrate(sharedcare_consent::Consent::new(Vec::new()).migrations())
        .await
        .expect("migrate consent");
    let consent = sharedcare_consent::store::Store::new(cdb);
    let pdp = Arc::new(ConsentPdp {
        store: consent.clone(),
        _dir: dir,
    });
    (store_with(db, pdp).await, consent)
}

async fn store_with(db: &Db, pdp: Arc<dyn Pdp>) -> Store {
    db.migrate(sharedcare_records::Records::new(Default::default()).migrations())
        .await
        .expect("migrate");
    // Test stores' tasks end with the store; nothing waits for them.
    let tasks = sharedcare_kit::tasks::Tasks::new();
    Store::new(
        db.clone(),
        Outbox::new(db.clone(), OutboxConfig::default(), &tasks),
        pdp,
        sharedcare_records::RecordsConfig::default().care_policy(&[]),
        &tasks,
    )
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
    assert_eq!(s.put(patient("p1"), "A81001", &a, 0).await.expect("put").version, 1);
    assert_eq!(s.put(patient("p1"), "A81001", &a, 0).await.expect("put").version, 2);
    let got = s.get("Patient", "p1", &a).await.expect("get");
    assert_eq!((got.version, got.nhs_number.as_str()), (2, NHS));
    let body: serde_json::Value = serde_json::from_str(&got.body).expect("json");
    assert_eq!(body["meta"]["versionId"], "2");
    // A FHIR read serves the body as stored: it must be what parsing and writing it gives.
    assert_eq!(body.to_string(), got.body, "stored JSON is already in the form served");
    let provenance: Vec<(String, String)> =
        sqlx::query("SELECT source_organisation, author FROM resources WHERE id = 'p1' ORDER BY version")
            .fetch_all(db.pool())
            .await
            .expect("provenance")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(
        provenance,
        vec![("A81001".to_string(), "gp-system".to_string()); 2],
        "who wrote each version, and from where"
    );
}

async fn changes_and_accesses_leave_events_keyed_by_nhs_number(db: Db) {
    let s = store(&db).await;
    let a = system();
    s.put(patient("p1"), "A81001", &a, 0).await.expect("put patient");
    let obs =
        fhir::parse(r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"bp"},"subject":{"reference":"Patient/p1"}}"#).expect("obs");
    assert_eq!(
        s.put(obs, "RXX01", &a, 0).await.expect("put obs").nhs_number,
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
            "sharedcare.events.v1.RecordState",
            "sharedcare.events.v1.RecordChanged",
            "sharedcare.events.v1.AccessRecorded",
            "sharedcare.events.v1.RecordState",
            "sharedcare.events.v1.AccessRecorded",
        ]
    );
    assert!(
        events.iter().all(|e| e.key == NHS),
        "every event about the patient is keyed by the NHS number"
    );
    let changed = RecordChanged::decode(events[3].data.as_slice()).expect("RecordChanged");
    assert_eq!(
        (changed.resource_type.as_str(), changed.source_organisation.as_str()),
        ("Observation", "RXX01")
    );
    // The state for read models carries the stored body, on its own topic.
    let state = RecordState::decode(events[5].data.as_slice()).expect("RecordState");
    let body: serde_json::Value = serde_json::from_str(&state.resource_json).expect("json");
    assert_eq!(
        (body["id"].as_str(), body["meta"]["versionId"].as_str()),
        (Some("o1"), Some("1"))
    );
    let topics: Vec<String> = sqlx::query("SELECT topic FROM kit_outbox ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .expect("topics")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(topics[5], sharedcare_records::STATE_TOPIC);
    assert_eq!(topics[3], "sharedcare.records.v1");
    let read = AccessRecorded::decode(events[6].data.as_slice()).expect("AccessRecorded");
    assert_eq!(
        (read.action.as_str(), read.resources[0].as_str()),
        ("read", "Observation/o1/_history/1")
    );
}

async fn an_unknown_resource_is_not_found_and_the_attempt_is_audited(db: Db) {
    let s = store(&db).await;
    let err = s.get("Patient", "nobody", &system()).await.expect_err("not found");
    assert!(
        matches!(err, RecordsError::Refused(Refusal::NotFound(ref r)) if r == "Patient/nobody not found"),
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
            tokio::spawn(async move { s.put(patient("race"), "", &system(), 0).await })
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
        s.put(patient(&format!("p{i}")), "", &a, 0).await.expect("put");
        s.put(patient(&format!("p{i}")), "", &a, 0).await.expect("put again");
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
            Err(RecordsError::Refused(Refusal::NotFound(r))) => {
                assert!(i >= 5, "p{i} exists");
                assert_eq!(r, format!("Patient/p{i} not found"));
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
            tokio::spawn(async move { (i, s.put(patient(&format!("batch-{i}")), &org, &system(), 0).await) })
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

/// Updates that name the version they were based on, all in flight at once (so the writer
/// takes them as one batch): one of them follows that version, every other is refused as
/// based on an old version, and nothing else is stored.
async fn concurrent_updates_from_the_same_version_store_exactly_one(db: Db) {
    let s = store(&db).await;
    s.put(patient("contended"), "", &system(), 0)
        .await
        .expect("first version");
    let puts: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.put(patient("contended"), "", &system(), 1).await })
        })
        .collect();
    let (mut stored, mut refused) = (Vec::new(), 0);
    for p in puts {
        match p.await.expect("join") {
            Ok(v) => stored.push(v.version),
            Err(RecordsError::VersionMismatch { expected: 1, .. }) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((stored, refused), (vec![2], 7), "one update follows version 1");
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM resources WHERE id = 'contended'")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 2);
}

/// Transactions (all-or-nothing units) in flight together are written in one commit, yet each
/// is stored whole or not at all: one refused by the record (its Observation names a patient
/// it does not hold), and on Postgres one the database refuses (a NUL in its organisation),
/// fail alone, at the position that stopped them, and store nothing.
async fn transactions_in_flight_together_are_stored_whole_or_not_at_all(db: Db) {
    let s = store(&db).await;
    let postgres = db.backend() == sharedcare_kit::db::Backend::Postgres;
    let units: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            let subject = if i == 3 {
                "nobody".to_string()
            } else {
                format!("tx-{i}")
            };
            let org = if i == 5 && postgres { "A\u{0}B01" } else { "A81001" };
            tokio::spawn(async move {
                let puts = vec![
                    (patient(&format!("tx-{i}")), 0),
                    (observation(&format!("tx-obs-{i}"), &subject, &[]), 0),
                ];
                (i, s.put_all(puts, org, &system()).await)
            })
        })
        .collect();
    let mut failed = Vec::new();
    for u in units {
        let (i, r) = u.await.expect("join");
        match r {
            Ok(stored) => {
                let ids: Vec<&str> = stored.iter().map(|v| v.id.as_str()).collect();
                assert_eq!(
                    ids,
                    [format!("tx-{i}"), format!("tx-obs-{i}")],
                    "unit {i}: its own versions, in order"
                );
            }
            Err((at, e)) => failed.push((
                i,
                at,
                matches!(e, RecordsError::Unavailable(_) | RecordsError::Storage(_)),
            )),
        }
    }
    let mut expected = vec![(3, 1, false)];
    if postgres {
        expected.push((5, 0, true));
    }
    assert_eq!(failed, expected, "(unit, position, a storage failure)");
    let stored: Vec<String> = sqlx::query("SELECT id FROM resources WHERE id LIKE 'tx-%' ORDER BY id")
        .fetch_all(db.pool())
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut want: Vec<String> = (0..12)
        .filter(|i| !expected.iter().any(|(u, _, _)| u == i))
        .flat_map(|i| [format!("tx-{i}"), format!("tx-obs-{i}")])
        .collect();
    want.sort();
    assert_eq!(stored, want, "nothing of a failed unit is stored");
}

/// A put only if absent (a laboratory feed's sparse Patient) leaves a resource the record
/// holds as it is and writes it when absent; the rest of its unit is written either way; held
/// or not, consent decides it.
async fn a_put_only_if_absent_leaves_a_held_resource_as_it_is(db: Db) {
    use sharedcare_records::store::ONLY_IF_ABSENT;
    let s = store(&db).await;
    let a = system();
    let full = fhir::parse(&format!(
        r#"{{"resourceType":"Patient","id":"kept","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{NHS}"}}],"name":[{{"family":"Fuller"}}],"address":[{{"postalCode":"NB3 4CD"}}]}}"#
    ))
    .expect("patient");
    s.put(full, "RX1", &a, 0).await.expect("the PAS's Patient");
    let stored = s
        .put_all(
            vec![
                (patient("kept"), ONLY_IF_ABSENT),
                (observation("kept-obs", "kept", &[]), 0),
            ],
            "RX1",
            &a,
        )
        .await
        .expect("the lab's message");
    assert!(stored[0].unchanged && stored[0].version == 1, "{:?}", stored[0]);
    assert!(!stored[1].unchanged && stored[1].version == 1);
    // Held or not, consent decides it as an update: a nurse with no relationship with the
    // patient learns nothing, not even that the record holds the Patient.
    let refused = s
        .put_all(vec![(patient("kept"), ONLY_IF_ABSENT)], "RX1", &trust_nurse("TREAT"))
        .await
        .expect_err("no relationship");
    assert!(
        matches!(refused, (0, RecordsError::Denied(_) | RecordsError::Withheld)),
        "{refused:?}"
    );
    let kept = s.get("Patient", "kept", &a).await.expect("read");
    assert_eq!(kept.version, 1);
    assert!(kept.body.contains("NB3 4CD"), "the fuller Patient stays: {}", kept.body);
    let versions: i64 = sqlx::query("SELECT COUNT(*) FROM resources WHERE id = 'kept'")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(versions, 1);

    let units: Vec<_> = (0..6)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.put_all(vec![(patient("raced"), ONLY_IF_ABSENT)], "RX1", &system())
                    .await
            })
        })
        .collect();
    // Those in the first one's batch are written after it (they could not know it would be
    // stored); any later is answered with the version held. Never an `unchanged` for a
    // version that was not stored, and no version lost or repeated.
    let mut written = Vec::new();
    let mut held = Vec::new();
    for u in units {
        let stored = u.await.expect("join").expect("put");
        match stored[0].unchanged {
            true => held.push(stored[0].version),
            false => written.push(stored[0].version),
        }
    }
    written.sort();
    assert_eq!(written, (1..=written.len() as i64).collect::<Vec<_>>(), "{written:?}");
    let versions: i64 = sqlx::query("SELECT COUNT(*) FROM resources WHERE id = 'raced'")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(versions, written.len() as i64);
    assert!(held.iter().all(|v| *v >= 1 && *v <= versions), "{held:?}");
    assert_eq!(written.len() + held.len(), 6);
}

fn observation(id: &str, patient: &str, labels: &[&str]) -> fhir::Resource {
    let security: Vec<serde_json::Value> = labels
        .iter()
        .map(|l| serde_json::json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": l}))
        .collect();
    let body = serde_json::json!({
        "resourceType": "Observation", "id": id, "status": "final", "code": {"text": "observation"},
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
    s.put(patient("p1"), "A81001", &system(), 0).await.expect("put patient");
    s.put(observation("o1", "p1", &[]), "A81001", &system(), 0)
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
        .add_relationship("rel-1", &nhs(NHS), &episode, &actor)
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
    s.put(patient("p1"), "A81001", &system(), 0).await.expect("put patient");
    s.put(observation("plain", "p1", &[]), "A81001", &system(), 0)
        .await
        .expect("put");
    s.put(observation("clinic", "p1", &["SEX"]), "A81001", &system(), 0)
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
    consent
        .put_directive(&nhs(NHS), &withhold, None, &actor)
        .await
        .expect("directive");
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
        .put(observation("orphan", "ghost", &[]), "A81001", &system(), 0)
        .await
        .expect_err("unknown patient");
    assert!(
        matches!(&err, RecordsError::Refused(Refusal::Invalid { field, .. }) if field == "subject.reference"),
        "{err}"
    );
    let nameless = fhir::parse(r#"{"resourceType":"Patient","id":"anon"}"#).expect("parses");
    let err = s
        .put(nameless, "A81001", &system(), 0)
        .await
        .expect_err("no NHS number");
    assert!(
        matches!(&err, RecordsError::Refused(Refusal::Invalid { field, .. }) if field == "identifier"),
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
    s.put(patient("p1"), "A81001", &system(), 0).await.expect("put");
    // The same records, now with consent unreachable (nothing listens on port 9).
    let token =
        sharedcare_kit::auth::ServiceToken::new("http://127.0.0.1:9/oauth2/token", "records", "x", "consent.decide")
            .expect("a token source");
    let pdp = sharedcare_records::consent::GrpcPdp::new(
        "http://127.0.0.1:9",
        "records.consent_url",
        token,
        Duration::from_millis(500),
    )
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
        .put(patient("p1"), "A81001", &system(), 0)
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

fn dated(id: &str, patient: &str, resource_type: &str, date: &str, code: &str) -> fhir::Resource {
    let mut body = serde_json::json!({
        "resourceType": resource_type, "id": id,
        "subject": {"reference": format!("Patient/{patient}")},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
    });
    // A Condition has an onset and no status; an Observation a status and an effective time.
    if resource_type == "Condition" {
        body["onsetDateTime"] = date.into();
    } else {
        body["status"] = "final".into();
        body["effectiveDateTime"] = date.into();
    }
    fhir::parse(&body.to_string()).expect("valid")
}

fn ids(page: &Page) -> Vec<String> {
    page.items
        .iter()
        .map(|s| format!("{}/{}", s.resource_type, s.id))
        .collect()
}

async fn search_filters_by_type_date_and_code_and_pages_with_a_cursor(db: Db) {
    let s = store(&db).await;
    let a = system();
    s.put(patient("p1"), "A81001", &a, 0).await.expect("patient");
    for (i, date) in ["2026-01-05", "2026-02-05", "2026-03-05", "2026-04-05"]
        .iter()
        .enumerate()
    {
        let code = if i % 2 == 0 { "75367002" } else { "27113001" };
        s.put(
            dated(&format!("o{i}"), "p1", "Observation", date, code),
            "A81001",
            &a,
            0,
        )
        .await
        .expect("obs");
    }
    s.put(
        dated("c1", "p1", "Condition", "2026-02-10", "38341003"),
        "A81001",
        &a,
        0,
    )
    .await
    .expect("condition");
    // A later version replaces the earlier one in search.
    s.put(
        dated("o3", "p1", "Observation", "2026-04-06", "75367002"),
        "A81001",
        &a,
        0,
    )
    .await
    .expect("o3 v2");
    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query {
            nhs_number: NHS.into(),
            page_size: 50,
            ..Query::default()
        };
        f(&mut q);
        q
    };
    let all = s.search(&q(&|_| {}), &a).await.expect("search");
    assert_eq!(
        ids(&all),
        [
            "Condition/c1",
            "Observation/o0",
            "Observation/o1",
            "Observation/o2",
            "Observation/o3",
            "Patient/p1"
        ]
    );
    assert!(!all.some_withheld);
    assert_eq!(all.items[4].version, 2, "the current version");
    let by_patient_id = s
        .search(
            &q(&|q| {
                q.nhs_number.clear();
                q.patient = "p1".into();
                q.types = vec!["Condition".into()];
            }),
            &a,
        )
        .await
        .expect("by Patient id");
    assert_eq!(ids(&by_patient_id), ["Condition/c1"]);
    let spring = s
        .search(
            &q(&|q| {
                q.types = vec!["Observation".into()];
                q.date_from = Some(1_769_904_000_000_000); // 2026-02-01
                q.date_to = Some(1_772_323_200_000_000); // 2026-03-01
            }),
            &a,
        )
        .await
        .expect("dates");
    assert_eq!(ids(&spring), ["Observation/o1"]);
    let bp = s
        .search(&q(&|q| q.code = "http://snomed.info/sct|75367002".into()), &a)
        .await
        .expect("code");
    assert_eq!(ids(&bp), ["Observation/o0", "Observation/o2", "Observation/o3"]);
    let bare = s
        .search(&q(&|q| q.code = "27113001".into()), &a)
        .await
        .expect("bare code");
    assert_eq!(ids(&bare), ["Observation/o1"]);
    // Pages of two, each continuing where the last stopped.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = s
            .search(
                &q(&|q| {
                    q.page_size = 2;
                    q.cursor = cursor.clone();
                }),
                &a,
            )
            .await
            .expect("page");
        seen.extend(ids(&page));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, ids(&all));
    let audit = accesses(&db).await.pop().expect("audited");
    assert_eq!((audit.action.as_str(), audit.resources.len()), ("search", 2));
    // Sorted, in pages of two: each page carries on in that order.
    let (store_ref, q_ref, a_ref) = (&s, &q, &a);
    let sorted = |sort: Sort| async move {
        let (s, q, a) = (store_ref, q_ref, a_ref);
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = s
                .search(
                    &q(&|q| {
                        q.page_size = 2;
                        q.cursor = cursor.clone();
                        q.sort = sort;
                    }),
                    a,
                )
                .await
                .expect("sorted page");
            seen.extend(ids(&page));
            if page.next_cursor.is_empty() {
                return seen;
            }
            cursor = page.next_cursor;
        }
    };
    let newest_first = [
        "Observation/o3",
        "Observation/o2",
        "Condition/c1",
        "Observation/o1",
        "Observation/o0",
        "Patient/p1",
    ];
    assert_eq!(
        sorted(Sort::DateDesc).await,
        newest_first,
        "by clinical date, newest first"
    );
    let mut oldest_first = newest_first;
    oldest_first.reverse();
    assert_eq!(sorted(Sort::Date).await, oldest_first);
    let mut by_id_desc = ids(&all);
    by_id_desc.reverse();
    assert_eq!(sorted(Sort::IdDesc).await, by_id_desc);
    assert_eq!(
        sorted(Sort::UpdatedDesc).await[0],
        "Observation/o3",
        "the last written first"
    );
    let err = s
        .search(
            &q(&|q| {
                q.nhs_number.clear();
                q.patient = "nobody".into();
            }),
            &a,
        )
        .await
        .expect_err("unknown patient");
    assert!(matches!(err, RecordsError::Refused(Refusal::NotFound(_))), "{err}");
}

async fn search_leaves_out_withheld_resources_and_says_so_whatever_the_record_holds(db: Db) {
    let (s, consent) = stores(&db).await;
    let a = system();
    s.put(patient("p1"), "A81001", &a, 0).await.expect("patient");
    s.put(observation("plain", "p1", &[]), "A81001", &a, 0)
        .await
        .expect("put");
    s.put(observation("clinic", "p1", &["SEX"]), "A81001", &a, 0)
        .await
        .expect("put");
    let everything = Query {
        nhs_number: NHS.into(),
        page_size: 50,
        ..Query::default()
    };
    assert_eq!(s.search(&everything, &a).await.expect("search").items.len(), 3);
    let patient_actor = sharedcare_consent::store::Actor { id: NHS, org: "" };
    let withhold = |id: &str, provision: Provision| Directive {
        id: id.into(),
        status: "active".into(),
        provision,
    };
    let no_sex = withhold(
        "no-sex",
        Provision {
            kind: Some(Effect::Deny),
            security_labels: vec!["SEX".into()],
            ..Provision::default()
        },
    );
    consent
        .put_directive(&nhs(NHS), &no_sex, None, &patient_actor)
        .await
        .expect("directive");
    let page = s.search(&everything, &a).await.expect("search");
    assert_eq!(ids(&page), ["Observation/plain", "Patient/p1"]);
    assert!(page.some_withheld);
    let audit = accesses(&db).await.pop().expect("audited");
    assert!(audit.reason.contains("withheld SEX"), "{}", audit.reason);
    // Another patient with the same directive and nothing sensitive gets the same notice.
    const OTHER: &str = "9000000009";
    let other = fhir::parse(&format!(
        r#"{{"resourceType":"Patient","id":"p2","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{OTHER}"}}]}}"#
    ))
    .expect("patient");
    s.put(other, "A81001", &a, 0).await.expect("p2");
    consent
        .put_directive(
            &nhs(OTHER),
            &withhold("no-sex-2", no_sex.provision.clone()),
            None,
            &sharedcare_consent::store::Actor { id: OTHER, org: "" },
        )
        .await
        .expect("directive");
    let q2 = Query {
        nhs_number: OTHER.into(),
        page_size: 50,
        ..Query::default()
    };
    let page = s.search(&q2, &a).await.expect("search p2");
    assert_eq!(ids(&page), ["Patient/p2"]);
    assert!(
        page.some_withheld,
        "the notice does not depend on what the record holds"
    );
    // An opt-out denies the search as a whole.
    let out = withhold(
        "out",
        Provision {
            kind: Some(Effect::Deny),
            ..Provision::default()
        },
    );
    consent
        .put_directive(&nhs(NHS), &out, None, &patient_actor)
        .await
        .expect("opt out");
    let err = s.search(&everything, &a).await.expect_err("denied");
    assert!(matches!(err, RecordsError::Denied(_)), "{err}");
    assert_eq!(accesses(&db).await.pop().expect("audited").outcome, "denied");
}

async fn history_lists_versions_newest_first_and_vread_reads_one(db: Db) {
    let s = store(&db).await;
    let a = system();
    for _ in 0..3 {
        s.put(patient("p1"), "A81001", &a, 0).await.expect("put");
    }
    let first = s.history("Patient", "p1", 2, "", &a).await.expect("history");
    assert_eq!(first.items.iter().map(|v| v.version).collect::<Vec<_>>(), [3, 2]);
    assert_eq!(first.next_cursor, "2");
    let rest = s
        .history("Patient", "p1", 2, &first.next_cursor, &a)
        .await
        .expect("page 2");
    assert_eq!(rest.items.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    assert!(rest.next_cursor.is_empty());
    let audit = accesses(&db).await.pop().expect("audited");
    assert_eq!(
        (audit.action.as_str(), audit.resources.as_slice()),
        ("history", &["Patient/p1/_history/1".to_string()][..])
    );
    let v2 = s.vread("Patient", "p1", 2, &a).await.expect("vread");
    let body: serde_json::Value = serde_json::from_str(&v2.body).expect("json");
    assert_eq!(body["meta"]["versionId"], "2");
    let err = s.vread("Patient", "p1", 9, &a).await.expect_err("no version 9");
    assert!(
        matches!(&err, RecordsError::Refused(Refusal::NotFound(r)) if r == "Patient/p1/_history/9 not found"),
        "{err}"
    );
    assert!(matches!(
        s.history("Patient", "nobody", 5, "", &a).await,
        Err(RecordsError::Refused(Refusal::NotFound(_)))
    ));
}

async fn configured_codes_label_resources_so_directives_cover_them(db: Db) {
    let (s, consent) = stores(&db).await;
    let s = s.with_labels(sharedcare_records::labels::Labeller::new(
        &sharedcare_records::labels::defaults(),
    ));
    s.put(patient("p1"), "A81001", &system(), 0).await.expect("patient");
    let hiv = fhir::parse(
        r#"{"resourceType":"Condition","id":"c-hiv","subject":{"reference":"Patient/p1"},
            "code":{"coding":[{"system":"http://snomed.info/sct","code":"86406008"}]}}"#,
    )
    .expect("condition");
    let stored = s.put(hiv, "A81001", &system(), 0).await.expect("put");
    let body: serde_json::Value = serde_json::from_str(&stored.body).expect("json");
    assert_eq!(body["meta"]["security"][0]["code"], "HIV", "labelled from its code");
    let no_hiv = Directive {
        id: "no-hiv".into(),
        status: "active".into(),
        provision: Provision {
            kind: Some(Effect::Deny),
            security_labels: vec!["HIV".into()],
            ..Provision::default()
        },
    };
    consent
        .put_directive(
            &nhs(NHS),
            &no_hiv,
            None,
            &sharedcare_consent::store::Actor { id: NHS, org: "" },
        )
        .await
        .expect("directive");
    let err = s.get("Condition", "c-hiv", &system()).await.expect_err("withheld");
    assert!(matches!(err, RecordsError::Withheld), "{err}");
}

/// A Patient with a name, birth date, gender and postcode.
fn person(id: &str, nhs: &str, family: &str, given: &str, born: &str, gender: &str) -> fhir::Resource {
    let body = serde_json::json!({"resourceType": "Patient", "id": id,
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
        "name": [{"family": family, "given": [given]}], "birthDate": born, "gender": gender,
        "address": [{"postalCode": "LS1 4AP"}]});
    fhir::parse(&body.to_string()).expect("valid patient")
}

async fn patients_are_found_by_name_and_birth_date_and_only_those_the_caller_may_see(db: Db) {
    use sharedcare_records::demographics::PatientQuery;
    let (s, consent) = stores(&db).await;
    let people = [
        ("evans", "9434765919", "Evans", "Margaret", "1941-03-12", "female"),
        ("evanson", "9000000009", "Evanson", "Mark", "1941-03-12", "male"),
        ("evans2", "9990000018", "Evans", "Gwen", "1970", "female"),
        ("jones", "9876543210", "Jones", "Margaret", "1941-03-12", "female"),
    ];
    for (id, n, family, given, born, gender) in people {
        s.put(person(id, n, family, given, born, gender), "A81001", &system(), 0)
            .await
            .expect("put patient");
    }
    // A new version renames a patient: the old name no longer finds her.
    s.put(
        person("jones", "9876543210", "Jones-Smith", "Margaret", "1941-03-12", "female"),
        "A81001",
        &system(),
        0,
    )
    .await
    .expect("rename");
    let find = |params: &[(&str, &str)]| {
        let mut q = PatientQuery::default();
        for (k, v) in params {
            q.add(k, v).expect("valid parameter");
        }
        q
    };
    let ids = |f: &sharedcare_records::store::Found| f.patients.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    let sys = system();
    let got = s
        .find_patients(&find(&[("family", "evan")]), 50, "", &sys)
        .await
        .expect("search");
    assert_eq!(
        ids(&got),
        ["evans", "evans2", "evanson"],
        "starts-with, case-insensitive"
    );
    let got = s
        .find_patients(&find(&[("family:exact", "Evans")]), 50, "", &sys)
        .await
        .expect("search");
    assert_eq!(ids(&got), ["evans", "evans2"]);
    let got = s
        .find_patients(&find(&[("family:exact", "evans")]), 50, "", &sys)
        .await
        .expect("search");
    assert!(got.patients.is_empty(), ":exact keeps case");
    let got = s
        .find_patients(&find(&[("family", "evans"), ("birthdate", "1941-03-12")]), 50, "", &sys)
        .await
        .expect("search");
    assert_eq!(ids(&got), ["evans", "evanson"]);
    let got = s
        .find_patients(&find(&[("name", "margaret"), ("gender", "female")]), 50, "", &sys)
        .await
        .expect("search");
    assert_eq!(ids(&got), ["evans", "jones"]);
    let got = s
        .find_patients(&find(&[("family", "jones-s")]), 50, "", &sys)
        .await
        .expect("search");
    assert_eq!(ids(&got), ["jones"]);
    let got = s
        .find_patients(&find(&[("family:exact", "Jones")]), 50, "", &sys)
        .await
        .expect("search");
    assert!(got.patients.is_empty(), "the old name is gone");
    let got = s
        .find_patients(&find(&[("birthdate", "ge1960")]), 50, "", &sys)
        .await
        .expect("search");
    assert_eq!(ids(&got), ["evans2"]);
    let got = s
        .find_patients(&find(&[("name:contains", "VANS")]), 50, "", &sys)
        .await
        .expect("search");
    assert_eq!(ids(&got), ["evans", "evans2", "evanson"]);
    let got = s
        .find_patients(&find(&[("address-postalcode", "ls1")]), 50, "", &sys)
        .await
        .expect("search");
    assert_eq!(got.patients.len(), 4);
    // Paging by id.
    let first = s
        .find_patients(&find(&[("family", "evan")]), 2, "", &sys)
        .await
        .expect("page 1");
    assert_eq!(
        (ids(&first), first.next_cursor.as_str()),
        (vec!["evans".to_string(), "evans2".to_string()], "evans2")
    );
    let second = s
        .find_patients(&find(&[("family", "evan")]), 2, &first.next_cursor, &sys)
        .await
        .expect("page 2");
    assert_eq!(
        (ids(&second), second.next_cursor.as_str()),
        (vec!["evanson".to_string()], "")
    );

    // Staff see only patients consent lets them: the trust's nurse cares for one Evans.
    let before = accesses(&db).await.len();
    let nurse = trust_nurse("TREAT");
    let got = s
        .find_patients(&find(&[("family", "evan")]), 50, "", &nurse)
        .await
        .expect("search");
    assert!(got.patients.is_empty(), "no relationship: no patient revealed");
    let actor = sharedcare_consent::store::Actor { id: "test", org: "" };
    let episode = Relationship {
        org: "RX1".into(),
        kind: "episode_of_care".into(),
        start: chrono::Utc::now().timestamp() - 60,
        end: None,
    };
    consent
        .add_relationship("rel-evans", &nhs("9434765919"), &episode, &actor)
        .await
        .expect("relationship");
    let got = s
        .find_patients(&find(&[("family", "evan")]), 1, "", &nurse)
        .await
        .expect("search");
    assert_eq!(ids(&got), ["evans"]);
    assert_eq!(
        got.next_cursor, "",
        "nothing more she may see, and nothing says who else matched"
    );
    // Audited: the patient shown in her own trail, the searches in the service trail.
    let audited: Vec<AccessRecorded> = accesses(&db).await.split_off(before);
    let shown: Vec<&AccessRecorded> = audited.iter().filter(|a| !a.nhs_number.is_empty()).collect();
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (
            shown[0].nhs_number.as_str(),
            shown[0].action.as_str(),
            shown[0].actor.as_str()
        ),
        ("9434765919", "search", "nurse-1")
    );
    let searches: Vec<&AccessRecorded> = audited.iter().filter(|a| a.nhs_number.is_empty()).collect();
    assert_eq!(searches.len(), 2);
    assert_eq!(searches[1].resources, ["Patient/evans"]);

    // Patients stored before the index existed (index row at version 0, no names) are
    // indexed at start, once.
    sqlx::query("UPDATE patients SET indexed_version = 0, birth_lo = '', birth_hi = '' WHERE id = 'evanson'")
        .execute(db.writer())
        .await
        .expect("age the row");
    sqlx::query("DELETE FROM patient_names WHERE patient_id = 'evanson'")
        .execute(db.writer())
        .await
        .expect("drop its names");
    let got = s
        .find_patients(&find(&[("family", "evanson")]), 50, "", &sys)
        .await
        .expect("search");
    assert!(got.patients.is_empty(), "not indexed yet");
    assert_eq!(s.index_patients().await.expect("index"), 1);
    assert_eq!(s.index_patients().await.expect("again"), 0, "nothing left to do");
    let got = s
        .find_patients(
            &find(&[("family", "evanson"), ("birthdate", "1941-03-12")]),
            50,
            "",
            &sys,
        )
        .await
        .expect("search");
    assert_eq!(ids(&got), ["evanson"]);

    // No criteria: refused by name.
    let e = s
        .find_patients(&PatientQuery::default(), 50, "", &sys)
        .await
        .expect_err("no criteria");
    assert!(e.to_string().starts_with("family: "), "{e}");
}

async fn a_delete_is_a_new_version_reads_are_gone_and_history_keeps_it(db: Db) {
    let s = store(&db).await;
    s.put(patient("p1"), "A81001", &system(), 0).await.expect("put patient");
    s.put(observation("o1", "p1", &[]), "A81001", &system(), 0)
        .await
        .expect("put obs");
    // Staff with no care relationship may not delete: refused by consent, and audited.
    let err = s
        .delete("Observation", "o1", "RX1", &trust_nurse("TREAT"))
        .await
        .expect_err("no relationship");
    assert!(matches!(err, RecordsError::Denied(_)), "{err}");
    let refused = accesses(&db).await.pop().expect("audited");
    assert_eq!(
        (refused.action.as_str(), refused.outcome.as_str()),
        ("delete", "denied")
    );

    let gone = s
        .delete("Observation", "o1", "A81001", &system())
        .await
        .expect("delete");
    assert_eq!((gone.version, gone.deleted), (2, true));
    let deleted = accesses(&db).await.pop().expect("audited");
    assert_eq!(
        (
            deleted.action.as_str(),
            deleted.resources[0].as_str(),
            deleted.outcome.as_str()
        ),
        ("delete", "Observation/o1/_history/2", "success")
    );
    let states: Vec<RecordState> = outbox_events(&db)
        .await
        .iter()
        .filter(|e| e.r#type == "sharedcare.events.v1.RecordState")
        .map(|e| RecordState::decode(e.data.as_slice()).expect("state"))
        .collect();
    let last = states.last().expect("state");
    assert!(
        last.deleted && last.id == "o1" && last.version == 2,
        "read models are told"
    );

    let err = s.get("Observation", "o1", &system()).await.expect_err("deleted");
    assert!(matches!(&err, RecordsError::Gone(r) if r == "Observation/o1"), "{err}");
    assert_eq!(accesses(&db).await.pop().expect("audited").outcome, "not-found");
    assert!(matches!(
        s.vread("Observation", "o1", 2, &system()).await,
        Err(RecordsError::Gone(_))
    ));
    let v1 = s
        .vread("Observation", "o1", 1, &system())
        .await
        .expect("version 1 stays");
    assert!(!v1.deleted && v1.body.contains("observation"));
    let history = s
        .history("Observation", "o1", 10, "", &system())
        .await
        .expect("history");
    let versions: Vec<(i64, bool)> = history.items.iter().map(|v| (v.version, v.deleted)).collect();
    assert_eq!(versions, [(2, true), (1, false)]);
    let q = Query {
        patient: "p1".into(),
        page_size: 50,
        ..Query::default()
    };
    let found = s.search(&q, &system()).await.expect("search");
    assert_eq!(ids(&found), ["Patient/p1"], "a deleted resource leaves search");

    // Again: nothing changes. Unknown: not found.
    let again = s.delete("Observation", "o1", "A81001", &system()).await.expect("again");
    assert_eq!(again.version, 2);
    assert!(matches!(
        s.delete("Observation", "nope", "A81001", &system()).await,
        Err(RecordsError::Refused(Refusal::NotFound(_)))
    ));
    // Written again after a delete: a new version, readable.
    let back = s
        .put(observation("o1", "p1", &[]), "A81001", &system(), 0)
        .await
        .expect("again");
    assert_eq!((back.version, back.deleted), (3, false));
    assert_eq!(s.get("Observation", "o1", &system()).await.expect("read").version, 3);
}

/// A Bulk Data export: every patient decided for the purpose named (the national data
/// opt-out keeps one out of research), a withheld category left out, directory data included,
/// one audit entry per patient, and the files hold exactly what the manifest counts.
async fn an_export_writes_what_consent_permits_and_audits_each_patient(db: Db) {
    use sharedcare_records::store::{ExportRequest, Level};
    let (s, consent) = stores(&db).await;
    let a = system();
    const OTHER: &str = "9000000009";
    s.put(patient("p1"), "A81001", &a, 0).await.expect("p1");
    let other = fhir::parse(&format!(
        r#"{{"resourceType":"Patient","id":"p2","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{OTHER}"}}]}}"#
    ))
    .expect("patient");
    s.put(other, "A81001", &a, 0).await.expect("p2");
    for (id, pid, labels) in [
        ("o1", "p1", vec![]),
        ("o2", "p1", vec![]),
        ("o3", "p1", vec!["SEX"]),
        ("o4", "p2", vec![]),
    ] {
        s.put(observation(id, pid, &labels), "A81001", &a, 0)
            .await
            .expect("obs");
    }
    let org = fhir::parse(r#"{"resourceType":"Organization","id":"org1","name":"Riverside"}"#).expect("org");
    s.put(org, "A81001", &a, 0).await.expect("org");
    let actor = sharedcare_consent::store::Actor { id: NHS, org: "" };
    consent
        .put_directive(
            &nhs(NHS),
            &Directive {
                id: "no-sex".into(),
                status: "active".into(),
                provision: Provision {
                    kind: Some(Effect::Deny),
                    security_labels: vec!["SEX".into()],
                    ..Provision::default()
                },
            },
            None,
            &actor,
        )
        .await
        .expect("directive");
    consent
        .set_flags(&nhs(OTHER), true, false, &actor)
        .await
        .expect("opt-out");
    let dir = tempfile::tempdir().expect("tmp");
    let researcher = Actor {
        kind: "service",
        id: "population-health".into(),
        purpose: "HRESCH".into(),
        ..Actor::default()
    };
    let req = ExportRequest {
        level: Level::System,
        types: Vec::new(),
        since_us: None,
        request_url: "http://x/fhir/R4/$export".into(),
    };
    let storage: std::sync::Arc<dyn ExportStorage> = std::sync::Arc::new(FsExportStorage::new(dir.path()));
    let id = s.start_export(req, &researcher, storage).await.expect("kick-off");
    let status = loop {
        let st = s.export_status(&id, &researcher).await.expect("status");
        if st.status != "in-progress" {
            break st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status.status, "completed", "{status:?}");
    assert_eq!(
        status.files,
        [
            ("Observation".to_string(), 2),
            ("Organization".to_string(), 1),
            ("Patient".to_string(), 1)
        ]
    );
    let observations = std::fs::read_to_string(dir.path().join(&id).join("Observation.ndjson")).expect("file");
    let mut ids: Vec<String> = observations
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a resource per line")["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["o1", "o2"],
        "the opted-out patient and the withheld result stay out"
    );
    let trail: Vec<AccessRecorded> = accesses(&db)
        .await
        .into_iter()
        .filter(|e| e.action == "export")
        .collect();
    let of = |n: &str| trail.iter().find(|e| e.nhs_number == n).expect("an entry per patient");
    assert_eq!(
        (of(NHS).outcome.as_str(), of(NHS).resources.len()),
        ("withheld", 3),
        "Patient/p1, o1, o2"
    );
    assert_eq!((of(OTHER).outcome.as_str(), of(OTHER).resources.len()), ("denied", 0));
    assert!(
        s.export_status(&id, &system()).await.is_err(),
        "another system cannot follow it"
    );
}

/// Exports across replicas: a starting replica fails only the exports it ran itself; one
/// whose runner went quiet is failed by any replica; finished ones expire with their files.
async fn an_export_belongs_to_its_runner_and_finished_ones_expire(db: Db) {
    use sharedcare_records::store::export::{EXPORT_STALE_SECS, runner};
    use tokio::io::AsyncWriteExt;
    let s = store(&db).await;
    let dir = tempfile::tempdir().expect("tmp");
    let storage = FsExportStorage::new(dir.path());
    let now = sharedcare_kit::db::now_us();
    let owner = system();
    for (id, status, who, beat, finished) in [
        ("mine", "in-progress", runner(), now, 0),
        ("another-pods", "in-progress", "records-7d9f-abcde", now, 0),
        (
            "a-gone-pods",
            "in-progress",
            "records-7d9f-gone",
            now - (EXPORT_STALE_SECS + 1) * 1_000_000,
            0,
        ),
        ("old", "completed", "records-7d9f-abcde", now, now - 2 * 3_600_000_000),
        ("recent", "completed", "records-7d9f-abcde", now, now - 60_000_000),
    ] {
        sqlx::query(
            "INSERT INTO exports (id, client_id, request, status, error, transaction_us, finished_us, patients, resources, runner, heartbeat_us) \
             VALUES ($1, $2, 'x', $3, '', $4, $5, 0, 0, $6, $7)",
        )
        .bind(id)
        .bind(owner.id.clone())
        .bind(status)
        .bind(now)
        .bind(finished)
        .bind(who)
        .bind(beat)
        .execute(db.writer())
        .await
        .expect("an export");
        let mut f = storage.create(id, "Patient.ndjson").await.expect("file");
        f.write_all(b"{}\n").await.expect("write");
        f.finish().await.expect("finish");
    }
    let status = |id: &'static str| {
        let (s, owner) = (s.clone(), owner.clone());
        async move { s.export_status(id, &owner).await.map(|e| e.status) }
    };
    assert_eq!(s.fail_interrupted_exports().await.expect("at start"), 1);
    assert_eq!(
        status("mine").await.expect("kept"),
        "failed",
        "this process's own, interrupted"
    );
    assert_eq!(
        status("another-pods").await.expect("kept"),
        "in-progress",
        "another replica's runs on"
    );
    let (failed, removed) = s
        .sweep_exports(std::time::Duration::from_secs(3600), &storage)
        .await
        .expect("sweep");
    assert_eq!((failed, removed), (1, 1));
    assert_eq!(
        status("a-gone-pods").await.expect("kept"),
        "failed",
        "its runner went quiet"
    );
    assert_eq!(status("another-pods").await.expect("kept"), "in-progress");
    assert!(status("old").await.is_err(), "expired: gone");
    assert!(storage.open("old", "Patient.ndjson").await.is_err(), "with its files");
    assert_eq!(status("recent").await.expect("kept"), "completed");
    assert!(storage.open("recent", "Patient.ndjson").await.is_ok());
}

/// `person` linked `replaced-by` the Patient `survivor` (a merge).
fn merged_person(id: &str, nhs: &str, survivor: &str) -> fhir::Resource {
    let body = serde_json::json!({"resourceType": "Patient", "id": id, "active": false,
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
        "link": [{"other": {"reference": format!("Patient/{survivor}")}, "type": "replaced-by"}]});
    fhir::parse(&body.to_string()).expect("valid patient")
}

async fn a_merge_finds_both_records_through_either_number_and_is_never_undone(db: Db) {
    use sharedcare_records::demographics::PatientQuery;
    const OLD: &str = "9434765013";
    const THIRD: &str = "9434765021";
    let s = store(&db).await;
    let a = system();
    for (id, n, given) in [
        ("surv", NHS, "Ann"),
        ("old", OLD, "Anne"),
        ("gp-old", OLD, "Anne"),
        ("third", THIRD, "Bob"),
    ] {
        s.put(person(id, n, "Merge", given, "1960-01-01", "female"), "A81001", &a, 0)
            .await
            .expect("patient");
    }
    for (id, p) in [("o-surv", "surv"), ("o-old", "old")] {
        s.put(observation(id, p, &[]), "A81001", &a, 0)
            .await
            .expect("observation");
    }
    let observations = |patient: &str, nhs: &str| Query {
        patient: patient.into(),
        nhs_number: nhs.into(),
        types: vec!["Observation".into()],
        page_size: 50,
        ..Query::default()
    };
    let before = s.search(&observations("surv", ""), &a).await.expect("search");
    assert_eq!(ids(&before), ["Observation/o-surv"], "two people before the merge");

    // The merge: the old Patient, replaced by the survivor.
    let merged = s
        .put(merged_person("old", OLD, "surv"), "A81001", &a, 0)
        .await
        .expect("merge");
    assert_eq!(merged.version, 2);
    let changed: Vec<RecordChanged> = outbox_events(&db)
        .await
        .into_iter()
        .filter(|e| e.r#type == "sharedcare.events.v1.RecordChanged")
        .map(|e| RecordChanged::decode(e.data.as_slice()).expect("changed"))
        .filter(|c| !c.merged_into.is_empty())
        .collect();
    assert_eq!(changed.len(), 1, "one merge event");
    assert_eq!(
        (changed[0].nhs_number.as_str(), changed[0].merged_into.as_str()),
        (OLD, NHS)
    );

    // Either person's data is the whole person's, by Patient id or by NHS number.
    for (patient, nhs) in [("surv", ""), ("old", ""), ("", NHS), ("", OLD)] {
        let page = s.search(&observations(patient, nhs), &a).await.expect("search");
        assert_eq!(
            ids(&page),
            ["Observation/o-old", "Observation/o-surv"],
            "{patient}{nhs}"
        );
    }
    // A search by the old NHS number finds the survivor's Patient; a name search shows the
    // person once.
    let mut by_number = PatientQuery::default();
    by_number.add("family", "merge").expect("family");
    by_number.nhs_number = Some(OLD.into());
    let found = s.find_patients(&by_number, 50, "", &a).await.expect("find");
    assert_eq!(
        found.patients.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["surv"]
    );
    let mut by_name = PatientQuery::default();
    by_name.add("family", "merge").expect("family");
    let found = s.find_patients(&by_name, 50, "", &a).await.expect("find");
    assert_eq!(
        found.patients.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["surv", "third"]
    );
    // Reading the old Patient points to the survivor.
    let old = s.get("Patient", "old", &a).await.expect("read");
    assert!(
        old.body.contains(r#""replaced-by""#) && old.body.contains("Patient/surv"),
        "{}",
        old.body
    );
    // So does another writer's copy of the merged number, written without a link.
    let copy = s.get("Patient", "gp-old", &a).await.expect("read");
    let copy: serde_json::Value = serde_json::from_str(&copy.body).expect("json");
    assert_eq!(copy["link"][0]["type"], "replaced-by");
    assert_eq!(copy["link"][0]["other"]["reference"], "Patient/surv");

    // Written again with its link: nothing changes but the version.
    s.put(merged_person("old", OLD, "surv"), "A81001", &a, 0)
        .await
        .expect("same merge again");
    // Undone, moved elsewhere or chained: refused, naming the field and why, nothing stored.
    let refused = |r: Result<Stored, RecordsError>| match r {
        Err(RecordsError::Refused(Refusal::Invalid { field, reason })) => format!("{field}: {reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let unmerge = refused(
        s.put(
            person("old", OLD, "Merge", "Anne", "1960-01-01", "female"),
            "A81001",
            &a,
            0,
        )
        .await,
    );
    assert!(
        unmerge.starts_with("link: NHS number 9434765013 was merged into NHS number 9434765919"),
        "{unmerge}"
    );
    assert!(unmerge.contains("unmerge"), "{unmerge}");
    let elsewhere = refused(s.put(merged_person("old", OLD, "third"), "A81001", &a, 0).await);
    assert!(
        elsewhere.contains("already merged into NHS number 9434765919"),
        "{elsewhere}"
    );
    let chained = refused(s.put(merged_person("third", THIRD, "old"), "A81001", &a, 0).await);
    assert!(
        chained.starts_with("link[0].other.reference: Patient/old (NHS number 9434765013) was itself merged"),
        "{chained}"
    );
    let missing = refused(s.put(merged_person("third", THIRD, "nobody"), "A81001", &a, 0).await);
    assert!(
        missing.contains("Patient/nobody is not in the shared care record"),
        "{missing}"
    );
    let itself = serde_json::json!({"resourceType": "Patient", "id": "third",
        "link": [{"other": {"reference": "Patient/third"}, "type": "replaced-by"}]});
    let same = fhir::parse(&itself.to_string()).expect_err("refused");
    assert!(same.to_string().contains("cannot be replaced by itself"), "{same}");
    assert_eq!(
        s.get("Patient", "old", &a).await.expect("read").version,
        3,
        "no refused version stored"
    );

    // Merging the survivor on moves the whole group: one lookup still finds everything.
    s.put(merged_person("surv", NHS, "third"), "A81001", &a, 0)
        .await
        .expect("merge the survivor");
    let page = s.search(&observations("old", ""), &a).await.expect("search");
    assert_eq!(ids(&page), ["Observation/o-old", "Observation/o-surv"]);
    let found = s.find_patients(&by_name, 50, "", &a).await.expect("find");
    assert_eq!(
        found.patients.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["third"]
    );
}

sharedcare_kit::store_suite!(
    "records";
    a_merge_finds_both_records_through_either_number_and_is_never_undone,
    an_export_writes_what_consent_permits_and_audits_each_patient,
    an_export_belongs_to_its_runner_and_finished_ones_expire,
    a_delete_is_a_new_version_reads_are_gone_and_history_keeps_it,
    patients_are_found_by_name_and_birth_date_and_only_those_the_caller_may_see,
    every_put_is_a_new_version_and_get_returns_the_newest,
    changes_and_accesses_leave_events_keyed_by_nhs_number,
    an_unknown_resource_is_not_found_and_the_attempt_is_audited,
        concurrent_puts_never_lose_or_repeat_a_version,
        concurrent_reads_each_get_their_own_answer_and_audit,
    a_refused_put_does_not_fail_the_others_in_its_batch,
    concurrent_updates_from_the_same_version_store_exactly_one,
    transactions_in_flight_together_are_stored_whole_or_not_at_all,
    a_put_only_if_absent_leaves_a_held_resource_as_it_is,
    staff_reads_are_decided_by_consent_and_every_outcome_is_audited,
    withheld_categories_are_refused_without_being_named,
    patient_data_must_name_a_patient_the_record_holds,
    without_a_consent_decision_no_data_leaves,
    search_filters_by_type_date_and_code_and_pages_with_a_cursor,
    search_leaves_out_withheld_resources_and_says_so_whatever_the_record_holds,
    history_lists_versions_newest_first_and_vread_reads_one,
    configured_codes_label_resources_so_directives_cover_them,
);

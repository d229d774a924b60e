//! The records store, run on SQLite and on Postgres.

use prost::Message;
use sharedcare_kit::bus::Envelope;
use sharedcare_kit::db::Db;
use sharedcare_kit::outbox::{Outbox, OutboxConfig};
use sharedcare_proto::events::v1::{AccessRecorded, RecordChanged};
use sharedcare_records::RecordsError;
use sharedcare_records::fhir;
use sharedcare_records::store::{Actor, Store};
use sqlx::Row;

const NHS: &str = "9434765919";

async fn store(db: &Db) -> Store {
    sharedcare_records::migrate(db).await.expect("migrate");
    Store::new(db.clone(), Outbox::new(db.clone(), OutboxConfig::default()))
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
    let a = Actor::default();
    assert_eq!(s.put(patient("p1"), "A81001", &a).await.expect("put").version, 1);
    assert_eq!(s.put(patient("p1"), "A81001", &a).await.expect("put").version, 2);
    let got = s.get("Patient", "p1", &a).await.expect("get");
    assert_eq!((got.version, got.nhs_number.as_str()), (2, NHS));
    let body: serde_json::Value = serde_json::from_str(&got.body).expect("json");
    assert_eq!(body["meta"]["versionId"], "2");
}

async fn changes_and_accesses_leave_events_keyed_by_nhs_number(db: Db) {
    let s = store(&db).await;
    let a = Actor::default();
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
    let err = s
        .get("Patient", "nobody", &Actor::default())
        .await
        .expect_err("not found");
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
            tokio::spawn(async move { s.put(patient("race"), "", &Actor::default()).await })
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
    let a = Actor::default();
    for i in 0..5 {
        s.put(patient(&format!("p{i}")), "", &a).await.expect("put");
        s.put(patient(&format!("p{i}")), "", &a).await.expect("put again");
    }
    let before = outbox_events(&db).await.len();
    let reads: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { (i, s.get("Patient", &format!("p{i}"), &Actor::default()).await) })
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
            tokio::spawn(async move { (i, s.put(patient(&format!("batch-{i}")), &org, &Actor::default()).await) })
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

sharedcare_kit::store_suite!(
    "records";
    every_put_is_a_new_version_and_get_returns_the_newest,
    changes_and_accesses_leave_events_keyed_by_nhs_number,
    an_unknown_resource_is_not_found_and_the_attempt_is_audited,
        concurrent_puts_never_lose_or_repeat_a_version,
        concurrent_reads_each_get_their_own_answer_and_audit,
    a_refused_put_does_not_fail_the_others_in_its_batch,
);

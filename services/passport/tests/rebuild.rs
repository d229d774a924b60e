//! `sharedcare passport rebuild` on the embedded bus and SQLite: an interrupted run resumes
//! where it stopped, and the model it leaves equals a rebuild from scratch.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use sharedcare_kit::bus::embedded::EmbeddedBus;
use sharedcare_kit::bus::{self, Bus, Outgoing};
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::service::Service as _;
use sharedcare_proto::events::v1::{CareRelationship, RecordState, SharingState};
use sqlx::Row;

const PATIENTS: usize = 40;
const PER_PATIENT: usize = 250;

/// The first `PATIENTS` valid NHS numbers from 943000000 on (9 digits, then the modulus 11
/// check digit; numbers whose check digit would be 10 are skipped).
fn patients() -> Vec<String> {
    (943_000_000u64..)
        .filter_map(|n| {
            let sum: u64 = n
                .to_string()
                .bytes()
                .zip((2..=10).rev())
                .map(|(d, w)| u64::from(d - b'0') * w)
                .sum();
            match 11 - sum % 11 {
                10 => None,
                11 => Some(format!("{n}0")),
                check => Some(format!("{n}{check}")),
            }
        })
        .take(PATIENTS)
        .collect()
}

fn events() -> Vec<Outgoing> {
    let mut out = Vec::new();
    for (p, nhs) in patients().into_iter().enumerate() {
        for i in 0..PER_PATIENT {
            let id = format!("c-{p}-{}", i % (PER_PATIENT / 2));
            let version = (i / (PER_PATIENT / 2)) as i64 + 1;
            let body = serde_json::json!({"resourceType": "Condition", "id": id,
                "code": {"text": format!("problem {i} v{version}")}, "clinicalStatus": {"coding": [{"code": "active"}]}});
            let state = RecordState {
                resource_type: "Condition".into(),
                id: id.clone(),
                version,
                nhs_number: nhs.clone(),
                source_organisation: "A81001".into(),
                last_updated: Some(db::timestamp(1_700_000_000_000_000 + i as i64)),
                resource_json: body.to_string(),
                labels: Vec::new(),
                deleted: false,
                ..Default::default()
            };
            let e = bus::envelope(sharedcare_passport::events::RECORD_STATE, "records", &id, &nhs, &state);
            out.push(Outgoing::new(sharedcare_passport::RECORD_STATE_TOPIC, &e));
        }
        let sharing = SharingState {
            nhs_number: nhs.clone(),
            relationships: vec![CareRelationship {
                id: format!("r-{p}"),
                ods_code: "A81001".into(),
                kind: "gp_registration".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = bus::envelope(
            sharedcare_passport::events::SHARING_STATE,
            "consent",
            &nhs,
            &nhs,
            &sharing,
        );
        out.push(Outgoing::new(sharedcare_passport::SHARING_STATE_TOPIC, &e));
    }
    out
}

async fn store(dir: &std::path::Path, name: &str) -> Db {
    let db = Db::connect(&db::sqlite_url(dir, name), name, 4, Duration::from_secs(5))
        .await
        .expect("open");
    db.migrate(sharedcare_passport::Passport::new(Default::default()).migrations())
        .await
        .expect("migrate");
    db
}

async fn model(db: &Db) -> Vec<(String, i64, String)> {
    let rows = sqlx::query("SELECT id, version, summary FROM entries ORDER BY id")
        .fetch_all(db.pool())
        .await
        .expect("entries");
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

fn poison() -> prometheus_client::metrics::counter::Counter {
    Default::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_resumes_and_equals_one_from_scratch() {
    let dir = tempfile::tempdir().expect("tmp");
    let log: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&dir.path().join("events.db")).await.expect("log"));
    for chunk in events().chunks(1000) {
        log.publish(chunk).await.expect("publish");
    }
    let quiet = |_: String| {};

    // Interrupt the first run part-way (as Ctrl-C or a crash would).
    let db = store(dir.path(), "passport").await;
    let run = {
        let (db, log) = (db.clone(), log.clone());
        tokio::spawn(async move { sharedcare_passport::rebuild::run(db, log, false, poison(), &quiet).await })
    };
    let total = (PATIENTS * PER_PATIENT / 2) as i64;
    loop {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM entries")
            .fetch_one(db.pool())
            .await
            .expect("count")
            .get(0);
        assert!(
            n < total,
            "the run finished before it could be interrupted; use more events"
        );
        if n > 0 {
            run.abort();
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(run.await.is_err(), "the run was interrupted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let partial = model(&db).await.len() as i64;
    assert!(partial > 0 && partial < total, "{partial} of {total}");

    let resumed = sharedcare_passport::rebuild::run(db.clone(), log.clone(), false, poison(), &quiet)
        .await
        .expect("resume");
    assert!(resumed.resumed);
    assert!(
        resumed.events < (PATIENTS * (PER_PATIENT + 1)) as u64,
        "it went on from where it stopped: {} events",
        resumed.events
    );
    assert_eq!((resumed.entries, resumed.people), (total, PATIENTS as i64));

    let scratch = store(dir.path(), "passport_scratch").await;
    let fresh = sharedcare_passport::rebuild::run(scratch.clone(), log.clone(), true, poison(), &quiet)
        .await
        .expect("from scratch");
    assert!(!fresh.resumed);
    assert_eq!(fresh.events, (PATIENTS * (PER_PATIENT + 1)) as u64);
    let (a, b) = (model(&db).await, model(&scratch).await);
    assert_eq!(a.len() as i64, total);
    assert!(a == b, "the resumed model differs from one rebuilt from scratch");
    assert!(
        a.iter()
            .all(|(_, version, summary)| *version == 2 && summary.ends_with("v2"))
    );

    // Run again with nothing interrupted: it starts afresh (the model emptied) and ends the same.
    let again = sharedcare_passport::rebuild::run(db.clone(), log, false, poison(), &quiet)
        .await
        .expect("again");
    assert!(!again.resumed);
    assert!(model(&db).await == b);
}

//! The message store on both back ends: a message is kept with its ACK and raw text, a
//! second delivery of the same control id keeps the first answer, and messages past their
//! retention are forgotten.
// Test code: a panic is a failed test.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use sharedcare_connectors::store::{Received, Store};
use sharedcare_kit::db::{Db, Migrations};
use sharedcare_kit::testing;

fn received(control_id: &str, at: i64, ack: &str) -> Received {
    Received {
        sender: "PAS@RX1".into(),
        control_id: control_id.into(),
        received_at: at,
        message_type: "ADT^A01".into(),
        nhs_number: "9434765919".into(),
        ack_code: "AA".into(),
        ack: ack.into(),
        produced: "Patient/rx1-patient-9434765919".into(),
        raw: format!("MSH|^~\\&|PAS|RX1|||{at}||ADT^A01|{control_id}|P|2.4\rPID|1"),
    }
}

async fn keeps_answers_and_forgets_old_messages(db: Db) {
    db.migrate(Migrations::Portable(sqlx::migrate!("./migrations")))
        .await
        .expect("migrate");
    let store = Store::new(db);
    assert_eq!(store.answered("PAS@RX1", "M1").await.expect("read"), None);
    let first = store.record(&received("M1", 1_000, "ACK one")).await.expect("record");
    assert_eq!(first, "ACK one");
    let again = store.record(&received("M1", 2_000, "ACK two")).await.expect("record");
    assert_eq!(again, "ACK one", "the first answer stands");
    let kept = store.get("PAS@RX1", "M1").await.expect("read").expect("kept");
    assert!(kept.raw.contains("|M1|P|2.4"), "the raw message is kept: {}", kept.raw);
    assert_eq!(
        (kept.received_at, kept.produced.as_str()),
        (1_000, "Patient/rx1-patient-9434765919")
    );
    store.record(&received("M2", 5_000, "ACK M2")).await.expect("record");
    assert_eq!(store.forget_before(3_000).await.expect("forget"), 1);
    assert_eq!(store.answered("PAS@RX1", "M1").await.expect("read"), None);
    assert_eq!(
        store.answered("PAS@RX1", "M2").await.expect("read").as_deref(),
        Some("ACK M2")
    );
}

/// The trust's local patient numbers are kept with the NHS number of the applied message
/// that named them (the latest wins), never from a refused one, and per organisation.
async fn keeps_local_numbers_of_applied_messages(db: Db) {
    db.migrate(Migrations::Portable(sqlx::migrate!("./migrations")))
        .await
        .expect("migrate");
    let store = Store::new(db);
    let local = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    store
        .record_with_numbers(&received("N1", 1_000, "ACK"), "RX1", &local(&["RX7001", "RX7002"]))
        .await
        .expect("record");
    let mut refused = received("N2", 2_000, "ACK AE");
    refused.ack_code = "AE".into();
    refused.nhs_number = "9434765013".into();
    store
        .record_with_numbers(&refused, "RX1", &local(&["RX7003"]))
        .await
        .expect("record");
    let mut later = received("N3", 3_000, "ACK");
    later.nhs_number = "9434765013".into();
    store
        .record_with_numbers(&later, "RX1", &local(&["RX7002"]))
        .await
        .expect("record");
    let found = store
        .nhs_numbers_of("RX1", &local(&["RX7001", "RX7002", "RX7003", "RX7004"]))
        .await
        .expect("read");
    let mut found: Vec<(String, String)> = found.into_iter().collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("RX7001".to_string(), "9434765919".to_string()),
            ("RX7002".to_string(), "9434765013".to_string()),
        ]
    );
    assert!(
        store
            .nhs_numbers_of("RXA", &local(&["RX7001"]))
            .await
            .expect("read")
            .is_empty(),
        "another organisation's numbers are its own"
    );
}

#[tokio::test]
async fn on_sqlite() {
    let (db, _dir) = testing::sqlite_db("connectors").await;
    keeps_answers_and_forgets_old_messages(db).await;
    let (db, _dir) = testing::sqlite_db("connectors").await;
    keeps_local_numbers_of_applied_messages(db).await;
}

#[tokio::test]
async fn on_postgres() {
    keeps_answers_and_forgets_old_messages(testing::postgres_db("connectors").await).await;
    keeps_local_numbers_of_applied_messages(testing::postgres_db("connectors").await).await;
}

//! The audit store, run on SQLite and on Postgres.

use sharedcare_audit::store::Store;
use sharedcare_kit::bus::{self, Delivery};
use sharedcare_kit::db::Db;
use sharedcare_proto::events::v1::AccessRecorded;

const NHS: &str = "9434765919";

fn delivery(n: usize, nhs: &str) -> (Delivery, AccessRecorded) {
    let event = AccessRecorded {
        actor: format!("person-{n}"),
        action: "read".into(),
        resources: vec![format!("Patient/p/_history/{n}")],
        nhs_number: nhs.into(),
        outcome: "success".into(),
        ..AccessRecorded::default()
    };
    let envelope = bus::envelope(
        "sharedcare.events.v1.AccessRecorded",
        "records",
        "Patient/p",
        nhs,
        &event,
    );
    (
        Delivery {
            envelope,
            topic: "sharedcare.records.v1".into(),
            partition: 0,
            offset: n as i64,
        },
        event,
    )
}

async fn store(db: &Db) -> Store {
    sharedcare_audit::migrate(db).await.expect("migrate");
    Store::new(db.clone())
}

async fn a_redelivered_event_is_appended_once(db: Db) {
    let s = store(&db).await;
    let (d, e) = delivery(1, NHS);
    assert!(s.append(&d, &e).await.expect("append"));
    assert!(
        !s.append(&d, &e).await.expect("append again"),
        "the inbox recognises the redelivery"
    );
    assert_eq!(s.list_by_patient(NHS, 0, 100).await.expect("list").len(), 1);
}

async fn entries_are_listed_by_patient_newest_first_in_pages(db: Db) {
    let s = store(&db).await;
    for n in 0..25 {
        let (d, e) = delivery(n, NHS);
        s.append(&d, &e).await.expect("append");
        let (d, e) = delivery(n, "9000000009");
        s.append(&d, &e).await.expect("append other patient");
    }
    let page1 = s.list_by_patient(NHS, 0, 10).await.expect("page 1");
    assert_eq!(page1.len(), 10);
    assert!(page1.iter().all(|e| e.nhs_number == NHS), "only this patient's entries");
    assert_eq!(page1[0].actor, "person-24", "newest first");
    let mut all = page1.clone();
    let mut before = page1.last().map(|e| e.sequence as i64).unwrap_or(0);
    loop {
        let page = s.list_by_patient(NHS, before, 10).await.expect("page");
        if page.is_empty() {
            break;
        }
        before = page.last().map(|e| e.sequence as i64).unwrap_or(0);
        all.extend(page);
    }
    let actors: Vec<String> = all.iter().map(|e| e.actor.clone()).collect();
    let want: Vec<String> = (0..25).rev().map(|n| format!("person-{n}")).collect();
    assert_eq!(actors, want, "paging visits every entry once");
}

sharedcare_kit::store_suite!(
    "audit";
    a_redelivered_event_is_appended_once,
    entries_are_listed_by_patient_newest_first_in_pages,
);

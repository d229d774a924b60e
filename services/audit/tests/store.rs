//! The audit store, run on SQLite and on Postgres.

use prost::Message;
use sharedcare_audit::store::{AlertRules, Filter, Store};
use sharedcare_kit::bus::{self, Delivery};
use sharedcare_kit::db::Db;
use sharedcare_kit::service::Service as _;
use sharedcare_proto::events::v1::{AccessRecorded, AuditAlert};
use sqlx::Row;

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
    db.migrate(sharedcare_audit::Audit::new(Default::default()).migrations())
        .await
        .expect("migrate");
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

// ---- the verifiable log ----------------------------------------------------------------

/// An independent RFC 9162 verifier, written from the RFC rather than shared with the service.
mod independent {
    use sha2::{Digest, Sha256};

    pub fn leaf(data: &[u8]) -> [u8; 32] {
        Sha256::new().chain_update([0u8]).chain_update(data).finalize().into()
    }

    fn node(l: &[u8], r: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update([1u8])
            .chain_update(l)
            .chain_update(r)
            .finalize()
            .into()
    }

    /// RFC 9162 §2.1.3.2.
    pub fn inclusion(index: u64, size: u64, leaf: [u8; 32], path: &[Vec<u8>], root: &[u8]) -> bool {
        if index >= size {
            return false;
        }
        let (mut fn_, mut sn) = (index, size - 1);
        let mut r = leaf;
        for p in path {
            if sn == 0 {
                return false;
            }
            if fn_ % 2 == 1 || fn_ == sn {
                r = node(p, &r);
                while fn_ % 2 == 0 && fn_ != 0 {
                    fn_ /= 2;
                    sn /= 2;
                }
            } else {
                r = node(&r, p);
            }
            fn_ /= 2;
            sn /= 2;
        }
        sn == 0 && r.as_slice() == root
    }

    /// RFC 9162 §2.1.4.2.
    pub fn consistency(first: u64, second: u64, first_root: &[u8], second_root: &[u8], proof: &[Vec<u8>]) -> bool {
        if first == 0 || first > second || proof.is_empty() {
            return first == second && proof.is_empty() && first_root == second_root;
        }
        let mut path = proof.to_vec();
        if first & (first - 1) == 0 {
            path.insert(0, first_root.to_vec());
        }
        let (mut fn_, mut sn) = (first - 1, second - 1);
        while fn_ % 2 == 1 {
            fn_ /= 2;
            sn /= 2;
        }
        let mut fr: [u8; 32] = path[0].as_slice().try_into().unwrap_or([0; 32]);
        let mut sr = fr;
        for c in &path[1..] {
            if sn == 0 {
                return false;
            }
            if fn_ % 2 == 1 || fn_ == sn {
                fr = node(c, &fr);
                sr = node(c, &sr);
                while fn_ % 2 == 0 && fn_ != 0 {
                    fn_ /= 2;
                    sn /= 2;
                }
            } else {
                sr = node(&sr, c);
            }
            fn_ /= 2;
            sn /= 2;
        }
        sn == 0 && fr.as_slice() == first_root && sr.as_slice() == second_root
    }
}

async fn log_with(db: &Db, n: usize) -> sharedcare_audit::log::Log {
    let s = store(db).await;
    for i in 0..n {
        let (d, e) = delivery(i, NHS);
        s.append(&d, &e).await.expect("append");
    }
    sharedcare_audit::log::Log::open(s).await.expect("log")
}

async fn proofs_from_the_log_check_with_an_independent_verifier(db: Db) {
    let log = log_with(&db, 7).await;
    let first = log.sign_head().await.expect("head at 7");
    assert_eq!(first.tree_size, 7);
    // The head's signature is Ed25519 over the documented bytes.
    let msg = sharedcare_audit::log::signed_bytes(
        first.tree_size,
        first.timestamp_us,
        &first.root_hash.clone().try_into().expect("32"),
    );
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &first.public_key)
        .verify(&msg, &first.signature)
        .expect("tree head signature verifies");
    let s = Store::new(db.clone());
    for i in 7..12 {
        let (d, e) = delivery(i, NHS);
        s.append(&d, &e).await.expect("append");
    }
    let second = log.sign_head().await.expect("head at 12");
    assert_eq!(second.tree_size, 12);
    for index in [0u64, 3, 6, 11] {
        let (entry, path) = log.inclusion(index, 12).await.expect("inclusion");
        // The verifier rebuilds the leaf from the entry's fields as documented.
        let data = sharedcare_audit::log::leaf_data(&entry);
        let path: Vec<Vec<u8>> = path.iter().map(|h| h.to_vec()).collect();
        assert!(
            independent::inclusion(index, 12, independent::leaf(data.as_bytes()), &path, &second.root_hash),
            "entry {index}"
        );
        assert!(!independent::inclusion(
            index,
            12,
            independent::leaf(b"forged"),
            &path,
            &second.root_hash
        ));
    }
    let proof: Vec<Vec<u8>> = log
        .consistency(7, 12)
        .await
        .expect("consistency")
        .iter()
        .map(|h| h.to_vec())
        .collect();
    assert!(independent::consistency(
        7,
        12,
        &first.root_hash,
        &second.root_hash,
        &proof
    ));
    assert!(!independent::consistency(
        7,
        12,
        &second.root_hash,
        &second.root_hash,
        &proof
    ));
    assert!(
        log.inclusion(12, 12).await.is_err(),
        "leaf_index must be below tree_size"
    );
}

async fn problems(db: &Db) -> Vec<String> {
    let log = sharedcare_audit::log::Log::open(Store::new(db.clone()))
        .await
        .expect("log");
    log.verify().await.expect("verify").2
}

async fn verify_names_an_altered_a_removed_and_a_reordered_entry(db: Db) {
    let log = log_with(&db, 6).await;
    log.sign_head().await.expect("head");
    assert!(problems(&db).await.is_empty(), "an untouched log verifies");

    // Altered: someone rewrites who looked.
    sqlx::query("UPDATE entries SET actor = 'nobody' WHERE leaf_index = 2")
        .execute(db.writer())
        .await
        .expect("tamper");
    let found = problems(&db).await;
    assert!(
        found.iter().any(|p| p.starts_with("entry 2 ") && p.contains("altered")),
        "{found:?}"
    );
    assert!(found.iter().any(|p| p.starts_with("tree head 6")), "{found:?}");
    sqlx::query("UPDATE entries SET actor = 'person-2' WHERE leaf_index = 2")
        .execute(db.writer())
        .await
        .expect("restore");
    assert!(problems(&db).await.is_empty(), "restored");

    // Reordered: two entries swap places.
    sqlx::query("UPDATE entries SET leaf_index = -1 WHERE leaf_index = 3")
        .execute(db.writer())
        .await
        .expect("a");
    sqlx::query("UPDATE entries SET leaf_index = 3 WHERE leaf_index = 4")
        .execute(db.writer())
        .await
        .expect("b");
    sqlx::query("UPDATE entries SET leaf_index = 4 WHERE leaf_index = -1")
        .execute(db.writer())
        .await
        .expect("c");
    let found = problems(&db).await;
    assert!(
        found.iter().any(|p| p.starts_with("entry 3 ")) && found.iter().any(|p| p.starts_with("entry 4 ")),
        "{found:?}"
    );

    // Removed: an entry disappears.
    sqlx::query("DELETE FROM entries WHERE leaf_index = 1")
        .execute(db.writer())
        .await
        .expect("delete");
    let found = problems(&db).await;
    assert!(found.iter().any(|p| p.contains("position 1 is missing")), "{found:?}");
}

/// An access by `actor` at `org` (staff when `role` is set) to `nhs`'s record.
fn access(
    n: usize,
    actor: &str,
    org: &str,
    role: &str,
    nhs: &str,
    outcome: &str,
    time_us: i64,
) -> (Delivery, AccessRecorded) {
    let (mut d, _) = delivery(n, nhs);
    let event = AccessRecorded {
        actor: actor.into(),
        actor_organisation: org.into(),
        actor_role: role.into(),
        action: "read".into(),
        resources: vec![format!("Observation/o{n}/_history/1")],
        nhs_number: nhs.into(),
        purpose: "TREAT".into(),
        reason: if outcome == "denied" {
            "no relationship [relationship:none]".into()
        } else {
            String::new()
        },
        outcome: outcome.into(),
        time: Some(sharedcare_kit::db::timestamp(time_us)),
        ..AccessRecorded::default()
    };
    d.envelope = bus::envelope(
        "sharedcare.events.v1.AccessRecorded",
        "records",
        "Observation",
        nhs,
        &event,
    );
    (d, event)
}

fn patient_number(i: u32) -> String {
    sharedcare_kit::nhs::NhsNumber::from_stem(943_476_500 + i)
        .map(|n| n.to_string())
        .unwrap_or_else(|| patient_number(i + 1000))
}

async fn queries_select_by_person_organisation_outcome_and_time(db: Db) {
    let s = store(&db).await;
    let t0 = 1_790_000_000_000_000i64;
    let rows = [
        ("gp-1", "A81001", NHS, "success", t0),
        ("gp-1", "A81001", "9000000009", "success", t0 + 1_000_000),
        ("nurse-1", "RX1", NHS, "denied", t0 + 2_000_000),
        ("nurse-1", "RX1", NHS, "success", t0 + 3_000_000),
    ];
    for (n, (actor, org, nhs, outcome, t)) in rows.iter().enumerate() {
        let (d, e) = access(n, actor, org, "R8000", nhs, outcome, *t);
        s.append(&d, &e).await.expect("append");
    }
    let q = |f: Filter| {
        let s = s.clone();
        async move {
            s.query(&Filter { limit: 100, ..f })
                .await
                .expect("query")
                .into_iter()
                .map(|e| (e.actor, e.nhs_number, e.outcome))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        q(Filter {
            actor: "gp-1".into(),
            ..Filter::default()
        })
        .await
        .len(),
        2
    );
    assert_eq!(
        q(Filter {
            actor_organisation: "RX1".into(),
            outcome: "denied".into(),
            ..Filter::default()
        })
        .await,
        vec![("nurse-1".to_string(), NHS.to_string(), "denied".to_string())]
    );
    let window = q(Filter {
        nhs_number: NHS.into(),
        from_us: Some(t0 + 1),
        to_us: Some(t0 + 2_500_000),
        ..Filter::default()
    })
    .await;
    assert_eq!(
        window,
        vec![("nurse-1".to_string(), NHS.to_string(), "denied".to_string())]
    );
    let page = s
        .query(&Filter {
            actor_organisation: "A81001".into(),
            limit: 1,
            ..Filter::default()
        })
        .await
        .expect("page");
    assert_eq!(page[0].nhs_number, "9000000009", "newest first");
}

async fn outbox_alerts(db: &Db) -> Vec<AuditAlert> {
    sqlx::query("SELECT payload FROM kit_outbox ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .expect("outbox")
        .into_iter()
        .map(|r| bus::Envelope::decode(r.get::<Vec<u8>, _>(0).as_slice()).expect("envelope"))
        .filter(|e| e.r#type == "sharedcare.events.v1.AuditAlert")
        .map(|e| AuditAlert::decode(e.data.as_slice()).expect("alert"))
        .collect()
}

async fn denials_break_glass_and_one_person_viewing_many_patients_raise_alerts_once(db: Db) {
    db.migrate(sharedcare_audit::Audit::new(Default::default()).migrations())
        .await
        .expect("migrate");
    let s = Store::new(db.clone()).with_rules(AlertRules {
        window_secs: 600,
        distinct_patients: 5,
    });
    let t0 = sharedcare_kit::db::now_us();
    // A denial alerts; redelivered, it does not alert again.
    let (d, e) = access(0, "nurse-1", "RX1", "R8001", NHS, "denied", t0);
    s.append(&d, &e).await.expect("append");
    s.append(&d, &e).await.expect("redelivered");
    // Break-glass (as consent reports it) alerts.
    let (mut d, mut e) = access(1, "carer-1", "VH2D7", "R8003", NHS, "success", t0);
    e.action = "break-glass".into();
    e.purpose = "BTG".into();
    e.reason = "patient-collapsed: found on the floor".into();
    d.envelope = bus::envelope("sharedcare.events.v1.AccessRecorded", "consent", NHS, NHS, &e);
    s.append(&d, &e).await.expect("append");
    // A member of staff reads seven patients' records in a minute: one alert, at the fifth.
    for i in 0..7u32 {
        let (d, e) = access(
            10 + i as usize,
            "gp-9",
            "A81001",
            "R8000",
            &patient_number(i),
            "success",
            t0 + i64::from(i) * 1_000_000,
        );
        s.append(&d, &e).await.expect("append");
    }
    // A system reading many patients is not a person browsing.
    for i in 0..7u32 {
        let (d, e) = access(
            20 + i as usize,
            "ics-integration",
            "",
            "",
            &patient_number(i),
            "success",
            t0,
        );
        s.append(&d, &e).await.expect("append");
    }
    let kinds: Vec<String> = outbox_alerts(&db).await.into_iter().map(|a| a.kind).collect();
    assert_eq!(kinds, ["access-denied", "break-glass", "many-patients"]);
    let stored = s.alerts("", 100).await.expect("alerts");
    assert_eq!(stored.len(), 3);
    let many = stored
        .iter()
        .find(|a| a.kind == "many-patients")
        .expect("many-patients");
    assert_eq!(
        (many.actor.as_str(), many.actor_organisation.as_str()),
        ("gp-9", "A81001")
    );
    assert!(
        many.detail.starts_with("5 patients' records viewed within 10 minutes"),
        "{}",
        many.detail
    );
    assert_eq!(s.alerts("RX1", 100).await.expect("by organisation").len(), 1);
}

async fn entries_export_as_fhir_audit_events(db: Db) {
    let s = store(&db).await;
    let (d, e) = access(
        0,
        "nurse-1",
        "RX1",
        "S8000:G8000:R8001",
        NHS,
        "denied",
        1_790_000_000_000_000,
    );
    s.append(&d, &e).await.expect("append");
    let entries = s
        .query(&Filter {
            nhs_number: NHS.into(),
            limit: 10,
            ..Filter::default()
        })
        .await
        .expect("query");
    let bundle = sharedcare_audit::fhir::bundle(&entries);
    let ev = &bundle["entry"][0]["resource"];
    assert_eq!(ev["resourceType"], "AuditEvent");
    assert_eq!((ev["action"].as_str(), ev["outcome"].as_str()), (Some("R"), Some("4")));
    assert_eq!(ev["subtype"][0]["code"], "read");
    assert_eq!(ev["agent"][0]["who"]["identifier"]["value"], "nurse-1");
    assert_eq!(ev["agent"][0]["location"]["identifier"]["value"], "RX1");
    assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    assert_eq!(ev["entity"][1]["what"]["identifier"]["value"], NHS);
    assert!(
        ev["outcomeDesc"]
            .as_str()
            .is_some_and(|d| d.starts_with("denied: no relationship"))
    );
}

sharedcare_kit::store_suite!(
    "audit";
    queries_select_by_person_organisation_outcome_and_time,
    denials_break_glass_and_one_person_viewing_many_patients_raise_alerts_once,
    entries_export_as_fhir_audit_events,
    a_redelivered_event_is_appended_once,
    entries_are_listed_by_patient_newest_first_in_pages,
    proofs_from_the_log_check_with_an_independent_verifier,
    verify_names_an_altered_a_removed_and_a_reordered_entry,
);

//! The audit store, run on SQLite and on Postgres.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

use prost::Message;
use sharedcare_audit::store::{AlertRules, Filter, Store};
use sharedcare_kit::bus::{self, Delivery};
use sharedcare_kit::db::Db;
use sharedcare_kit::service::Service as _;
use sharedcare_proto::events::v1::{AccessRecorded, AuditAlert};
use sqlx::Row;

const NHS: &str = "9434765919";
const ORIGIN: &str = "sharedcare.test.example/audit";

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
    Store::new(db.clone(), sealer())
}

/// This test run's key-encryption key, of random bytes: keys are sealed as in production.
fn sealer() -> sharedcare_kit::sealing::Sealer {
    static KEK: std::sync::OnceLock<sharedcare_kit::sealing::Sealer> = std::sync::OnceLock::new();
    KEK.get_or_init(|| std::sync::Arc::new(sharedcare_kit::sealing::LocalKek::random().expect("random bytes")))
        .clone()
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
    // Both copies of one event in a single batch (a producer's resend after a lost
    // acknowledgement, fetched together): one entry, and the batch is not refused (found by
    // `bench chaos`: the unique event id refused the batch, retried for ever).
    let (d2, e2) = delivery(2, NHS);
    let (d3, e3) = delivery(3, NHS);
    assert_eq!(
        s.append_all(&[(&d2, e2.clone()), (&d3, e3), (&d2, e2)])
            .await
            .expect("a batch holding one event twice"),
        2
    );
    assert_eq!(s.list_by_patient(NHS, 0, 100).await.expect("list").len(), 3);
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
    sharedcare_audit::log::Log::open(s, ORIGIN).await.expect("log")
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
    let s = Store::new(db.clone(), sealer());
    for i in 7..12 {
        let (d, e) = delivery(i, NHS);
        s.append(&d, &e).await.expect("append");
    }
    let second = log.sign_head().await.expect("head at 12");
    assert_eq!(second.tree_size, 12);
    for index in [0u64, 3, 6, 11] {
        let (entry, path) = log.inclusion(index, 12).await.expect("inclusion");
        // The verifier rebuilds the leaf from the entry's fields as documented.
        let data = sharedcare_audit::leaf::leaf_data(&entry);
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
    let log = sharedcare_audit::log::Log::open(Store::new(db.clone(), sealer()), ORIGIN)
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
    sqlx::query("UPDATE entries SET actor = 'person-2' WHERE leaf_index = 2")
        .execute(db.writer())
        .await
        .expect("restore");
    assert!(problems(&db).await.is_empty(), "restored");

    // A tile's hash is changed (to hide an altered entry, say): the entry no longer matches
    // it, and the signed head no longer matches the tiles.
    let tile = |bytes: Vec<u8>| {
        sqlx::query("UPDATE tiles SET hashes = $1 WHERE level = 0 AND idx = 0")
            .bind(bytes)
            .execute(db.writer())
    };
    let original: Vec<u8> = sqlx::query("SELECT hashes FROM tiles WHERE level = 0 AND idx = 0")
        .fetch_one(db.pool())
        .await
        .expect("tile 0/0")
        .get(0);
    let mut forged = original.clone();
    forged[5 * 32] ^= 1;
    tile(forged).await.expect("tamper with tile");
    let found = problems(&db).await;
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("entry 5 ") && p.contains("tile 0/0")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("tree head 6: the tiles now stored")),
        "{found:?}"
    );
    tile(original).await.expect("restore tile");
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
    let s = Store::new(db.clone(), sealer()).with_rules(AlertRules {
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

/// Appends `n` entries from `from` in batches of `batch`.
async fn append_batches(s: &Store, from: usize, n: usize, batch: usize) {
    let all: Vec<(Delivery, AccessRecorded)> = (from..from + n).map(|i| delivery(i, NHS)).collect();
    for chunk in all.chunks(batch) {
        let refs: Vec<(&Delivery, AccessRecorded)> = chunk.iter().map(|(d, e)| (d, e.clone())).collect();
        assert_eq!(s.append_all(&refs).await.expect("append"), chunk.len());
    }
}

/// Leaf hashes recomputed from the stored entries, independently of the tiles.
async fn leaves_of(s: &Store, n: i64) -> Vec<[u8; 32]> {
    s.entries_between(0, n)
        .await
        .expect("entries")
        .iter()
        .map(|e| independent::leaf(sharedcare_audit::leaf::leaf_data(e).as_bytes()))
        .collect()
}

/// MTH over leaf hashes, written here from RFC 6962 rather than taken from the crate.
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - (n - 1).leading_zeros() - 1);
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(mth(&leaves[..k]));
            h.update(mth(&leaves[k..]));
            h.finalize().into()
        }
    }
}

async fn tiles_hold_the_tree_across_tile_boundaries_and_checkpoints_verify(db: Db) {
    let s = store(&db).await;
    // Batches of 100 cross the tile boundaries at 256 and 512 mid-batch.
    append_batches(&s, 0, 600, 100).await;
    let log = sharedcare_audit::log::Log::open(s.clone(), ORIGIN).await.expect("log");
    let head = log.sign_head().await.expect("head");
    let leaves = leaves_of(&s, 600).await;
    assert_eq!(head.tree_size, 600);
    assert_eq!(head.root_hash, mth(&leaves).to_vec(), "the tiles give RFC 6962's root");

    // The checkpoint is the same head, as a signed note the pinned key opens.
    let key = sharedcare_audit::note::VerifierKey::parse(&head.verifier_key).expect("verifier key");
    assert_eq!(key.name, ORIGIN);
    let cp = sharedcare_audit::note::open_checkpoint(&head.checkpoint, &key).expect("checkpoint opens");
    assert_eq!((cp.size, cp.root.to_vec()), (600, head.root_hash.clone()));
    assert_eq!(log.checkpoint().await.expect("served"), head.checkpoint);

    // Tiles: full ones and the partial right edge, cut to any width the tree has reached.
    let id = |level, index| sharedcare_audit::tiles::TileId { level, index };
    let full = log.tile(id(0, 1), 256).await.expect("tile").expect("0/1 is full");
    assert_eq!(full, leaves[256..512].concat());
    let edge = log.tile(id(0, 2), 88).await.expect("tile").expect("0/2 has 88");
    assert_eq!(edge, leaves[512..600].concat());
    assert_eq!(
        log.tile(id(0, 2), 40).await.expect("tile"),
        Some(leaves[512..552].concat())
    );
    assert_eq!(log.tile(id(0, 2), 89).await.expect("tile"), None, "beyond the tree");
    assert_eq!(log.tile(id(0, 3), 1).await.expect("tile"), None, "beyond the tree");
    let level1 = log.tile(id(1, 0), 2).await.expect("tile").expect("1/0 has 2");
    assert_eq!(level1, [mth(&leaves[..256]), mth(&leaves[256..512])].concat());

    // Proofs in the current tree and in an older one.
    for (size, index) in [
        (600u64, 0u64),
        (600, 255),
        (600, 256),
        (600, 599),
        (300, 299),
        (257, 100),
    ] {
        let (entry, path) = log.inclusion(index, size).await.expect("inclusion");
        let path: Vec<Vec<u8>> = path.iter().map(|h| h.to_vec()).collect();
        let leaf = independent::leaf(sharedcare_audit::leaf::leaf_data(&entry).as_bytes());
        assert!(
            independent::inclusion(index, size, leaf, &path, &mth(&leaves[..size as usize])),
            "{index} in {size}"
        );
    }
    for first in [1u64, 255, 256, 300, 512, 599] {
        let proof: Vec<Vec<u8>> = log
            .consistency(first, 600)
            .await
            .expect("consistency")
            .iter()
            .map(|h| h.to_vec())
            .collect();
        assert!(
            independent::consistency(first, 600, &mth(&leaves[..first as usize]), &head.root_hash, &proof),
            "{first} -> 600"
        );
    }
    let e = log.inclusion(0, 601).await.expect_err("beyond the log");
    assert!(e.to_string().contains("tree_size"), "{e}");
    assert!(log.verify().await.expect("verify").2.is_empty());
}

async fn two_entries_with_the_same_visible_fields_hash_differently(db: Db) {
    let s = store(&db).await;
    // The same access twice: the same person, patient, action, resources and time.
    let (d1, e) = delivery(1, NHS);
    let (mut d2, _) = delivery(1, NHS);
    d2.offset = 2;
    assert_ne!(d1.envelope.id, d2.envelope.id, "each event has its own random id");
    let mut e = e;
    e.time = Some(sharedcare_kit::db::timestamp(1_700_000_000_000_000));
    s.append_all(&[(&d1, e.clone()), (&d2, e)]).await.expect("append");
    let entries = s.entries_between(0, 2).await.expect("entries");
    let visible = |x: &sharedcare_proto::audit::v1::AuditEntry| {
        (
            x.actor.clone(),
            x.nhs_number.clone(),
            x.action.clone(),
            x.resources.clone(),
            x.time,
        )
    };
    assert_eq!(visible(&entries[0]), visible(&entries[1]));
    let [a, b] = [&entries[0], &entries[1]].map(|x| independent::leaf(sharedcare_audit::leaf::leaf_data(x).as_bytes()));
    assert_ne!(a, b, "a leaf commits to the entry's unguessable event id");
}

async fn a_log_stored_before_tiles_is_converted_without_changing_a_root(db: Db) {
    use base64::Engine;
    use ring::signature::KeyPair;
    let s = store(&db).await;
    // The layout before tiles: entries carrying their leaf hash, a log key, and a tree head
    // signed over the documented bytes — written as the previous release wrote them.
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let b64 = base64::engine::general_purpose::STANDARD;
    sqlx::query("INSERT INTO log_keys (id, pkcs8, public_key) VALUES (1, $1, $2)")
        .bind(b64.encode(pkcs8.as_ref()))
        .bind(b64.encode(pair.public_key().as_ref()))
        .execute(db.writer())
        .await
        .expect("key");
    let hex = |h: &[u8]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut old_leaves = Vec::new();
    for i in 0..300i64 {
        let entry = sharedcare_proto::audit::v1::AuditEntry {
            event_id: format!("old-event-{i}"),
            nhs_number: NHS.into(),
            actor: format!("person-{i}"),
            action: "read".into(),
            resources: vec![format!("Patient/p/_history/{i}")],
            outcome: "success".into(),
            time: Some(sharedcare_kit::db::timestamp(1_700_000_000_000_000 + i)),
            leaf_index: i as u64,
            ..Default::default()
        };
        let leaf = independent::leaf(sharedcare_audit::leaf::leaf_data(&entry).as_bytes());
        old_leaves.push(leaf);
        sqlx::query(
            "INSERT INTO entries (event_id, nhs_number, actor, actor_organisation, actor_role, action, resources, \
             purpose, reason, outcome, time_us, trace_id, service, leaf_index, leaf_hash) \
             VALUES ($1, $2, $3, '', '', 'read', $4, '', '', 'success', $5, '', '', $6, $7)",
        )
        .bind(entry.event_id.clone())
        .bind(NHS)
        .bind(entry.actor.clone())
        .bind(serde_json::to_string(&entry.resources).expect("json"))
        .bind(1_700_000_000_000_000 + i)
        .bind(i)
        .bind(hex(&leaf))
        .execute(db.writer())
        .await
        .expect("old entry");
    }
    let old_root = mth(&old_leaves);
    let ts = 1_700_000_000_000_999i64;
    let sig = pair.sign(&sharedcare_audit::log::signed_bytes(300, ts, &old_root));
    sqlx::query("INSERT INTO tree_heads (tree_size, root_hash, timestamp_us, signature) VALUES (300, $1, $2, $3)")
        .bind(hex(&old_root))
        .bind(ts)
        .bind(b64.encode(sig.as_ref()))
        .execute(db.writer())
        .await
        .expect("old head");

    // Starting the service converts the log; then it grows.
    let log = sharedcare_audit::log::Log::open(s.clone(), ORIGIN)
        .await
        .expect("open converts");
    let tiles: i64 = sqlx::query("SELECT COUNT(*) FROM tiles")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(tiles, 3, "two leaf tiles and one level-1 tile");
    append_batches(&s, 1000, 400, 128).await;
    let head = log.sign_head().await.expect("head");
    assert_eq!(head.tree_size, 700);
    let proof: Vec<Vec<u8>> = log
        .consistency(300, 700)
        .await
        .expect("proof")
        .iter()
        .map(|h| h.to_vec())
        .collect();
    assert!(
        independent::consistency(300, 700, &old_root, &head.root_hash, &proof),
        "the head signed before the migration is consistent with the head after it"
    );
    // The old head kept its root and signature, and gained its checkpoint.
    let heads = s.heads_after(-1, 100).await.expect("heads");
    let old = heads.iter().find(|h| h.size == 300).expect("old head kept");
    assert_eq!(old.root, hex(&old_root));
    let key = sharedcare_audit::note::VerifierKey::parse(&head.verifier_key).expect("key");
    let cp = sharedcare_audit::note::open_checkpoint(old.checkpoint.as_deref().expect("checkpoint"), &key)
        .expect("old head's checkpoint");
    assert_eq!((cp.size, cp.root), (300, old_root));
    assert!(log.verify().await.expect("verify").2.is_empty());
}

async fn a_merged_persons_trail_holds_both_numbers_under_either(db: Db) {
    const MERGED: &str = "9434765013";
    const OTHER: &str = "9000000009";
    let s = store(&db).await;
    for (n, nhs) in [(1, NHS), (2, MERGED), (3, OTHER)] {
        let (d, e) = delivery(n, nhs);
        s.append(&d, &e).await.expect("append");
    }
    assert_eq!(
        s.list_by_patient(NHS, 0, 100).await.expect("list").len(),
        1,
        "apart before the merge"
    );
    s.merge(MERGED, NHS).await.expect("merge");
    s.merge(MERGED, NHS).await.expect("a redelivered merge changes nothing");
    for asked in [NHS, MERGED] {
        let trail = s.list_by_patient(asked, 0, 100).await.expect("list");
        let numbers: Vec<&str> = trail.iter().map(|e| e.nhs_number.as_str()).collect();
        assert_eq!(
            numbers,
            [MERGED, NHS],
            "{asked}: both trails, newest first, nobody else's"
        );
    }
}

/// `audit verify` on a log that is being appended to and signed (an operator checking a live
/// system) finds nothing wrong with what was there when it began.
async fn verify_on_a_live_log_reports_no_false_problems(db: Db) {
    let s = store(&db).await;
    append_batches(&s, 0, 300, 50).await;
    let log = sharedcare_audit::log::Log::open(s.clone(), ORIGIN).await.expect("log");
    log.sign_and_store_head().await.expect("head");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (s, log, stop) = (s.clone(), log.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 300;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                append_batches(&s, n, 37, 37).await;
                n += 37;
                if n % 111 == 0 {
                    log.sign_and_store_head().await.expect("head");
                }
            }
            n
        })
    };
    for _ in 0..20 {
        let (entries, _, problems) = log.verify().await.expect("verify");
        assert!(
            problems.is_empty(),
            "verify at {entries} entries, while appending: {problems:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = writer.await.expect("writer");
    assert!(appended > 300, "entries were appended while it verified");
    assert!(log.verify().await.expect("verify").2.is_empty());
}

sharedcare_kit::store_suite!(
    "audit";
    verify_on_a_live_log_reports_no_false_problems,
    a_merged_persons_trail_holds_both_numbers_under_either,
    tiles_hold_the_tree_across_tile_boundaries_and_checkpoints_verify,
    two_entries_with_the_same_visible_fields_hash_differently,
    a_log_stored_before_tiles_is_converted_without_changing_a_root,
    queries_select_by_person_organisation_outcome_and_time,
    denials_break_glass_and_one_person_viewing_many_patients_raise_alerts_once,
    entries_export_as_fhir_audit_events,
    a_redelivered_event_is_appended_once,
    entries_are_listed_by_patient_newest_first_in_pages,
    proofs_from_the_log_check_with_an_independent_verifier,
    verify_names_an_altered_a_removed_and_a_reordered_entry,
);

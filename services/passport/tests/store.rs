//! The passport's read model, run on SQLite and on Postgres: applied from records'
//! `RecordState` events once each, the newest version kept whatever the delivery order, a
//! version entered in error taken out of the view.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

use serde_json::json;
use sharedcare_kit::bus::{self, Delivery};
use sharedcare_kit::db::Db;
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::service::Service as _;
use sharedcare_passport::store::Store;
use sharedcare_proto::events::v1::{CareRelationship, RecordState, SharingState};

const NHS: &str = "9434765919";
const OTHER: &str = "9000000009";

fn nhs(n: &str) -> NhsNumber {
    NhsNumber::parse(n).expect("a valid test NHS number")
}

fn state(offset: i64, nhs: &str, id: &str, version: i64, body: serde_json::Value) -> (Delivery, RecordState) {
    let event = RecordState {
        resource_type: body["resourceType"].as_str().expect("type").into(),
        id: id.into(),
        version,
        nhs_number: nhs.into(),
        source_organisation: "A81001".into(),
        last_updated: Some(sharedcare_kit::db::timestamp(1_700_000_000_000_000 + version)),
        resource_json: body.to_string(),
        labels: Vec::new(),
        deleted: false,
        ..Default::default()
    };
    let envelope = bus::envelope(sharedcare_passport::events::RECORD_STATE, "records", id, nhs, &event);
    let d = Delivery {
        envelope,
        topic: sharedcare_passport::RECORD_STATE_TOPIC.into(),
        partition: 0,
        offset,
    };
    (d, event)
}

fn condition(text: &str) -> serde_json::Value {
    json!({"resourceType": "Condition", "code": {"text": text}, "clinicalStatus": {"coding": [{"code": "active"}]}})
}

async fn store(db: &Db) -> Store {
    db.migrate(sharedcare_passport::Passport::new(Default::default()).migrations())
        .await
        .expect("migrate");
    Store::new(db.clone())
}

async fn apply(s: &Store, events: &[(Delivery, RecordState)]) -> usize {
    let refs: Vec<(&Delivery, RecordState)> = events.iter().map(|(d, e)| (d, e.clone())).collect();
    s.apply(&refs).await.expect("apply")
}

async fn a_redelivered_event_changes_nothing(db: Db) {
    let s = store(&db).await;
    let e = [state(1, NHS, "c1", 1, condition("Asthma"))];
    assert_eq!(apply(&s, &e).await, 1);
    assert_eq!(apply(&s, &e).await, 0, "the inbox recognises the redelivery");
    let entries = s.entries(&nhs(NHS)).await.expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].summary.as_str(), entries[0].place.as_str()),
        ("Asthma", "problems")
    );
}

async fn the_newest_version_wins_whatever_the_order(db: Db) {
    let s = store(&db).await;
    apply(&s, &[state(1, NHS, "c1", 2, condition("Asthma, resolved"))]).await;
    apply(&s, &[state(2, NHS, "c1", 1, condition("Asthma"))]).await;
    let entries = s.entries(&nhs(NHS)).await.expect("entries");
    assert_eq!(
        (entries[0].version, entries[0].summary.as_str()),
        (2, "Asthma, resolved"),
        "an older version delivered late does not replace a newer one"
    );
}

async fn one_batch_with_several_versions_of_a_resource_keeps_the_newest(db: Db) {
    let s = store(&db).await;
    let batch = [
        state(1, NHS, "c1", 1, condition("Asthma")),
        state(2, NHS, "c1", 3, condition("Asthma, resolved")),
        state(3, NHS, "c1", 2, condition("Asthma, in remission")),
        state(4, NHS, "c2", 1, condition("Eczema")),
    ];
    assert_eq!(apply(&s, &batch).await, 4);
    let entries = s.entries(&nhs(NHS)).await.expect("entries");
    let mut got: Vec<(String, i64, String)> = entries.into_iter().map(|e| (e.id, e.version, e.summary)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("c1".to_string(), 3, "Asthma, resolved".to_string()),
            ("c2".to_string(), 1, "Eczema".to_string())
        ]
    );
}

async fn a_version_entered_in_error_or_deleted_leaves_the_view(db: Db) {
    let s = store(&db).await;
    apply(
        &s,
        &[state(
            1,
            NHS,
            "o1",
            1,
            json!({"resourceType": "Observation", "status": "final"}),
        )],
    )
    .await;
    assert_eq!(s.entries(&nhs(NHS)).await.expect("entries").len(), 1);
    apply(
        &s,
        &[state(
            2,
            NHS,
            "o1",
            2,
            json!({"resourceType": "Observation", "status": "entered-in-error"}),
        )],
    )
    .await;
    assert!(s.entries(&nhs(NHS)).await.expect("entries").is_empty());
    // A version that deletes a resource takes it out too; writing it again brings it back.
    let c = json!({"resourceType": "Condition", "code": {"text": "Asthma"}});
    apply(&s, &[state(3, NHS, "c1", 1, c.clone())]).await;
    let (d, mut deleted) = state(4, NHS, "c1", 2, c.clone());
    deleted.deleted = true;
    apply(&s, &[(d, deleted)]).await;
    assert!(s.entries(&nhs(NHS)).await.expect("entries").is_empty(), "deleted");
    apply(&s, &[state(5, NHS, "c1", 3, c)]).await;
    assert_eq!(s.entries(&nhs(NHS)).await.expect("entries").len(), 1, "written again");
}

async fn each_patient_sees_only_their_own_entries_and_unknown_types_are_not_kept(db: Db) {
    let s = store(&db).await;
    apply(
        &s,
        &[
            state(1, NHS, "c1", 1, condition("Asthma")),
            state(2, OTHER, "c2", 1, condition("Gout")),
            state(3, NHS, "org", 1, json!({"resourceType": "Organization"})),
        ],
    )
    .await;
    let mine: Vec<String> = s
        .entries(&nhs(NHS))
        .await
        .expect("entries")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(mine, ["c1"]);
    let theirs: Vec<String> = s
        .entries(&nhs(OTHER))
        .await
        .expect("entries")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(theirs, ["c2"], "the Organization is not kept for anyone");
}

fn sharing(offset: i64, nhs: &str, opt_out: bool, relationships: &[&str]) -> (Delivery, SharingState) {
    let event = SharingState {
        nhs_number: nhs.into(),
        time: Some(sharedcare_kit::db::timestamp(1_700_000_000_000_000 + offset)),
        national_opt_out: opt_out,
        relationships: relationships
            .iter()
            .map(|id| CareRelationship {
                id: id.to_string(),
                ods_code: "A81001".into(),
                kind: "gp_registration".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let envelope = bus::envelope(sharedcare_passport::events::SHARING_STATE, "consent", nhs, nhs, &event);
    let d = Delivery {
        envelope,
        topic: sharedcare_passport::SHARING_STATE_TOPIC.into(),
        partition: 0,
        offset,
    };
    (d, event)
}

async fn the_latest_sharing_state_replaces_the_last_once_per_event(db: Db) {
    let s = store(&db).await;
    let first = sharing(1, NHS, false, &["r1"]);
    let second = sharing(2, NHS, true, &["r1", "r2"]);
    let apply_sharing = |events: Vec<(Delivery, SharingState)>| {
        let s = s.clone();
        async move {
            let refs: Vec<(&Delivery, SharingState)> = events.iter().map(|(d, e)| (d, e.clone())).collect();
            s.apply_sharing(&refs).await.expect("apply")
        }
    };
    assert_eq!(apply_sharing(vec![first.clone()]).await, 1);
    assert_eq!(apply_sharing(vec![second.clone()]).await, 1);
    assert_eq!(apply_sharing(vec![first]).await, 0, "a redelivery changes nothing");
    // Two states for one person in one batch: the later one stands.
    let batch = vec![sharing(3, OTHER, true, &["x"]), sharing(4, OTHER, false, &[])];
    assert_eq!(apply_sharing(batch).await, 2);
    let held = s.held(&nhs(NHS)).await.expect("held");
    assert_eq!(held.sharing, Some(second.1), "stored whole, byte for byte");
    assert!(held.entries.is_empty() && !held.is_empty());
    let other = s.held(&nhs(OTHER)).await.expect("held");
    let other = other.sharing.expect("other's");
    assert!(other.relationships.is_empty() && !other.national_opt_out);
    assert!(s.held(&nhs("9990000018")).await.expect("held").is_empty());
}

async fn a_merge_is_found_with_what_is_held_for_either_number(db: Db) {
    const MERGED: &str = "9434765013";
    const THIRD: &str = "9434765021";
    let s = store(&db).await;
    let patient = |nhs: &str| json!({"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]});
    let (d, mut merge) = state(3, MERGED, "p-merged", 2, patient(MERGED));
    merge.merged_into = NHS.into();
    let events = [
        state(1, NHS, "c-survivor", 1, condition("Asthma")),
        state(2, MERGED, "c-merged", 1, condition("Gout")),
        (d, merge),
    ];
    assert_eq!(apply(&s, &events).await, 3);
    for asked in [NHS, MERGED] {
        let (held, groups) = s.held_people(&[nhs(asked)]).await.expect("held");
        assert_eq!(
            groups[asked],
            vec![NHS.to_string(), MERGED.to_string()],
            "{asked}: survivor first"
        );
        assert_eq!(held.len(), 1, "{asked}: only the number asked about is read");
    }
    let (_, groups) = s.held_people(&[nhs(THIRD)]).await.expect("held");
    assert!(groups.is_empty(), "a number never merged is alone");
    // Merging the survivor on moves the group.
    let (d, mut on) = state(4, NHS, "p-survivor", 2, patient(NHS));
    on.merged_into = THIRD.into();
    assert_eq!(apply(&s, &[(d, on)]).await, 1);
    let (_, groups) = s.held_people(&[nhs(MERGED)]).await.expect("held");
    assert_eq!(
        groups[MERGED],
        vec![THIRD.to_string(), MERGED.to_string(), NHS.to_string()]
    );
}

sharedcare_kit::store_suite!(
    "passport";
    a_merge_is_found_with_what_is_held_for_either_number,
    the_latest_sharing_state_replaces_the_last_once_per_event,
    a_redelivered_event_changes_nothing,
    the_newest_version_wins_whatever_the_order,
    one_batch_with_several_versions_of_a_resource_keeps_the_newest,
    a_version_entered_in_error_or_deleted_leaves_the_view,
    each_patient_sees_only_their_own_entries_and_unknown_types_are_not_kept,
);

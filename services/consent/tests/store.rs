//! Consent's storage, run on SQLite and on Postgres.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

use sharedcare_consent::policy::{BreakGlass, Directive, Effect, Provision, Relationship};
use sharedcare_consent::store::{Actor, Grant, Store};
use sharedcare_kit::db::Db;
use sharedcare_kit::service::Service as _;
use sqlx::Row;

const NHS: &str = "9434765919";

fn nhs() -> sharedcare_kit::nhs::NhsNumber {
    sharedcare_kit::nhs::NhsNumber::parse(NHS).expect("a valid test NHS number")
}
const ACTOR: Actor<'static> = Actor {
    id: "ics-integration",
    org: "",
};

async fn store(db: &Db) -> Store {
    db.migrate(sharedcare_consent::Consent::new(Vec::new()).migrations())
        .await
        .expect("migrate");
    Store::new(db.clone())
}

async fn events(db: &Db) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM kit_outbox WHERE topic = 'sharedcare.consent.v1'")
        .fetch_one(db.pool())
        .await
        .expect("outbox")
        .get(0)
}

/// The `SharingState` events in the outbox, oldest first.
async fn states(db: &Db) -> Vec<sharedcare_proto::events::v1::SharingState> {
    use prost::Message;
    let rows = sqlx::query("SELECT payload FROM kit_outbox WHERE topic = $1 ORDER BY seq")
        .bind(sharedcare_consent::state::STATE_TOPIC)
        .fetch_all(db.pool())
        .await
        .expect("outbox");
    rows.iter()
        .map(|r| {
            let payload: Vec<u8> = r.get(0);
            let envelope = sharedcare_proto::events::v1::Envelope::decode(payload.as_slice()).expect("envelope");
            assert_eq!(envelope.r#type, sharedcare_consent::state::SHARING_STATE);
            sharedcare_proto::events::v1::SharingState::decode(envelope.data.as_slice()).expect("state")
        })
        .collect()
}

/// The `PatientNotification` events in the outbox, oldest first.
async fn notifications(db: &Db) -> Vec<sharedcare_proto::events::v1::PatientNotification> {
    use prost::Message;
    let rows = sqlx::query("SELECT payload FROM kit_outbox WHERE topic = 'sharedcare.consent.v1' ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .expect("outbox");
    rows.iter()
        .filter_map(|r| {
            let payload: Vec<u8> = r.get(0);
            let envelope = sharedcare_proto::events::v1::Envelope::decode(payload.as_slice()).expect("envelope");
            (envelope.r#type == "sharedcare.events.v1.PatientNotification").then(|| {
                assert_eq!(envelope.key, NHS, "keyed by NHS number");
                sharedcare_proto::events::v1::PatientNotification::decode(envelope.data.as_slice())
                    .expect("notification")
            })
        })
        .collect()
}

async fn facts_round_trip_and_every_change_writes_its_event(db: Db) {
    let s = store(&db).await;
    let provision = Provision {
        kind: Some(Effect::Permit),
        provision: vec![Provision {
            kind: Some(Effect::Deny),
            security_labels: vec!["MH".into()],
            ..Provision::default()
        }],
        ..Provision::default()
    };
    let d = Directive {
        id: "d1".into(),
        status: "active".into(),
        provision: provision.clone(),
    };
    s.put_directive(&nhs(), &d, None, &ACTOR).await.expect("directive");
    s.put_directive(
        &nhs(),
        &Directive {
            status: "inactive".into(),
            ..d.clone()
        },
        None,
        &ACTOR,
    )
    .await
    .expect("replace");
    s.set_flags(&nhs(), true, false, &ACTOR).await.expect("flags");
    s.set_flags(&nhs(), true, true, &ACTOR).await.expect("flags again");
    let rel = Relationship {
        org: "A81001".into(),
        kind: "gp_registration".into(),
        start: 10,
        end: None,
    };
    s.add_relationship("r1", &nhs(), &rel, &ACTOR)
        .await
        .expect("relationship");
    s.end_relationship("r1", 20, &ACTOR).await.expect("end");
    let grant = Grant {
        id: "g1".into(),
        nhs_number: NHS.into(),
        grant: BreakGlass {
            person: "555000000003".into(),
            org: "VH2D7".into(),
            start: 5,
            end: 50,
        },
        reason_code: "unconscious-patient".into(),
        reason_text: "found collapsed".into(),
    };
    s.break_glass(&grant).await.expect("grant");

    let f = s.facts(&nhs()).await.expect("facts");
    assert_eq!(f.directives.len(), 1, "a put with the same id replaces");
    assert_eq!(
        (f.directives[0].status.as_str(), &f.directives[0].provision),
        ("inactive", &provision)
    );
    assert!(f.national_opt_out && f.gp_dissent);
    assert_eq!(f.relationships, vec![Relationship { end: Some(20), ..rel }]);
    assert_eq!(f.break_glass, vec![grant.grant.clone()]);
    assert_eq!(s.grants("", true).await.expect("queue").len(), 1);
    assert_eq!(
        events(&db).await,
        8,
        "one ConsentEvent per change, and the patient's notification of the break-glass, in the same transaction"
    );
    // The notification for the NHS App: what happened, where, and the page to read; no reason,
    // no staff member, nothing clinical.
    let notes = notifications(&db).await;
    assert_eq!(notes.len(), 1);
    let n = &notes[0];
    assert_eq!(
        (
            n.kind.as_str(),
            n.nhs_number.as_str(),
            n.organisation.as_str(),
            n.link.as_str()
        ),
        ("break_glass", NHS, "VH2D7", "/passport/access-log")
    );
    assert_eq!(n.notice_id, grant.id);
    // And after each change, the person's whole sharing state, the last one as it now stands.
    let states = states(&db).await;
    assert_eq!(states.len(), 7, "one SharingState per change");
    assert!(states[0].directives[0].status == "active" && !states[0].national_opt_out);
    let last = states.last().expect("last");
    assert_eq!(last.nhs_number, NHS);
    assert_eq!(last.directives.len(), 1);
    assert_eq!(last.directives[0].status, "inactive");
    assert_eq!(
        last.directives[0].summary,
        "Share my whole record with anyone. Except: do not share my mental health records with anyone."
    );
    assert!(last.national_opt_out && last.gp_dissent);
    let r = &last.relationships[0];
    assert_eq!(
        (r.id.as_str(), r.ods_code.as_str(), r.kind.as_str()),
        ("r1", "A81001", "gp_registration")
    );
    assert_eq!(r.end.as_ref().map(|t| t.seconds), Some(20));
    let g = &last.break_glass[0];
    assert_eq!(
        (g.ods_code.as_str(), g.reason_code.as_str(), g.reviewed),
        ("VH2D7", "unconscious-patient", false)
    );
    assert!(
        s.facts(&sharedcare_kit::nhs::NhsNumber::parse("9000000009").expect("valid"))
            .await
            .expect("other")
            .directives
            .is_empty()
    );
    let other = s
        .put_directive(
            &sharedcare_kit::nhs::NhsNumber::parse("9000000009").expect("valid"),
            &d,
            None,
            &ACTOR,
        )
        .await
        .expect_err("another patient's id");
    assert!(
        other.to_string().starts_with("id: is already in use") && !other.to_string().contains("patient"),
        "{other}"
    );
}

/// Every write of a Consent is a new version, kept for vread and history; a directive stored
/// before Consent was the format (version 0) is rendered as a Consent once, at start-up.
async fn consents_are_versioned_and_old_directives_become_consents(db: Db) {
    let s = store(&db).await;
    let d = Directive {
        id: "c1".into(),
        status: "active".into(),
        provision: Provision {
            kind: Some(Effect::Deny),
            ..Provision::default()
        },
    };
    let first = s.put_directive(&nhs(), &d, None, &ACTOR).await.expect("v1");
    let withdrawn = Directive {
        status: "inactive".into(),
        ..d.clone()
    };
    let second = s.put_directive(&nhs(), &withdrawn, None, &ACTOR).await.expect("v2");
    assert_eq!((first.version, second.version), (1, 2));
    let current = s.consent("c1").await.expect("read").expect("held");
    assert_eq!(current, second);
    let body: serde_json::Value = serde_json::from_str(&current.resource).expect("json");
    assert_eq!(
        (body["id"].as_str(), body["meta"]["versionId"].as_str()),
        (Some("c1"), Some("2"))
    );
    assert_eq!(body["status"], "inactive");
    let history = s.consent_versions("c1", None).await.expect("history");
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(s.consent_versions("c1", Some(1)).await.expect("vread"), [first]);
    assert!(s.consent("nope").await.expect("read").is_none());
    let active = s.consents_of(&nhs(), Some("active")).await.expect("search");
    assert!(active.is_empty(), "withdrawn: {active:?}");
    assert_eq!(s.consents_of(&nhs(), None).await.expect("search").len(), 1);

    // A directive as stored before: no resource, version 0.
    sqlx::query(
        "INSERT INTO directives (id, nhs_number, status, provision, updated_at) VALUES ('old', $1, 'active', $2, 1700000000)",
    )
    .bind(NHS)
    .bind(r#"{"type":"permit","provision":[{"type":"deny","securityLabel":["MH"],"organisations":["RX1"]}]}"#)
    .execute(db.pool())
    .await
    .expect("legacy row");
    assert_eq!(s.version_directives().await.expect("backfill"), 1);
    assert_eq!(s.version_directives().await.expect("again"), 0, "once only");
    let old = s.consent("old").await.expect("read").expect("rendered");
    let parsed = sharedcare_consent::fhir::parse(&old.resource).expect("a valid Consent");
    assert_eq!(parsed.provision.provision[0].organisations, ["RX1"]);
    assert_eq!(parsed.provision.provision[0].security_labels, ["MH"]);
    assert_eq!(s.consent_versions("old", None).await.expect("history").len(), 1);
    let facts = s.facts(&nhs()).await.expect("facts");
    assert_eq!(facts.directives.len(), 2, "both still decide");
}

/// A staff member's read of `nhs`, asked as records asks it.
fn staff_read(org: &str, nhs: &str, categories: &[&str]) -> sharedcare_proto::consent::v1::DecideRequest {
    sharedcare_proto::consent::v1::DecideRequest {
        principal_kind: "staff".into(),
        person_id: "555000000001".into(),
        ods_code: org.into(),
        role_code: "R8000".into(),
        nhs_number: nhs.into(),
        action: "read".into(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        purpose: "TREAT".into(),
        ..Default::default()
    }
}

async fn a_merge_joins_relationships_and_the_stricter_directive_wins(db: Db) {
    use sharedcare_proto::consent::v1::decide_response::Effect as Answer;
    const MERGED: &str = "9434765013";
    let s = store(&db).await;
    let merged = sharedcare_kit::nhs::NhsNumber::parse(MERGED).expect("valid");
    // The merged record: a hospital's relationship, and a directive withholding mental health.
    let rel = Relationship {
        org: "RX1".into(),
        kind: "encounter".into(),
        start: 10,
        end: None,
    };
    s.add_relationship("Encounter/e1", &merged, &rel, &ACTOR)
        .await
        .expect("relationship");
    let withhold_mh = Directive {
        id: "d-mh".into(),
        status: "active".into(),
        provision: Provision {
            kind: Some(Effect::Permit),
            provision: vec![Provision {
                kind: Some(Effect::Deny),
                security_labels: vec!["MH".into()],
                ..Provision::default()
            }],
            ..Provision::default()
        },
    };
    s.put_directive(&merged, &withhold_mh, None, &ACTOR)
        .await
        .expect("directive");
    // The survivor: registered with a practice, no directive.
    let gp = Relationship {
        org: "A81001".into(),
        kind: "gp_registration".into(),
        start: 10,
        end: None,
    };
    s.add_relationship("gp", &nhs(), &gp, &ACTOR)
        .await
        .expect("registration");
    let effect = |d: &sharedcare_proto::consent::v1::DecideResponse| Answer::try_from(d.effect).expect("effect");
    let asks = [
        staff_read("RX1", NHS, &["MH"]),
        staff_read("A81001", MERGED, &["MH"]),
        staff_read("A81001", NHS, &["MH"]),
    ];
    let before = sharedcare_consent::grpc::decide_many(&s, &asks).await.expect("decide");
    assert_eq!(
        effect(&before[0]),
        Answer::Deny,
        "the hospital has no relationship with the survivor yet"
    );
    assert_eq!(
        effect(&before[1]),
        Answer::Deny,
        "nor the practice with the merged number"
    );
    assert_eq!(
        effect(&before[2]),
        Answer::Permit,
        "the survivor chose nothing: mental health is shown"
    );

    // Records merges the hospital's number into the survivor's.
    let change = sharedcare_proto::events::v1::RecordChanged {
        resource_type: "Patient".into(),
        id: "RX1-patient-9434765013".into(),
        version: 2,
        nhs_number: MERGED.into(),
        source_organisation: "RX1".into(),
        merged_into: NHS.into(),
        ..Default::default()
    };
    let envelope = sharedcare_kit::bus::envelope(
        "sharedcare.events.v1.RecordChanged",
        "records",
        "Patient/x",
        MERGED,
        &change,
    );
    let delivery = sharedcare_kit::bus::Delivery {
        envelope,
        topic: "sharedcare.records.v1".into(),
        partition: 0,
        offset: 1,
    };
    assert_eq!(
        s.apply_care_events(&[(&delivery, change.clone())])
            .await
            .expect("merge"),
        1
    );
    assert_eq!(
        s.apply_care_events(&[(&delivery, change)]).await.expect("again"),
        0,
        "applied once"
    );
    let (known, groups) = s.people(&[MERGED]).await.expect("people");
    assert_eq!(
        groups[MERGED],
        vec![NHS.to_string(), MERGED.to_string()],
        "survivor first"
    );
    assert_eq!(
        known[NHS].facts.relationships.len(),
        1,
        "the survivor's facts are read too"
    );

    let after = sharedcare_consent::grpc::decide_many(&s, &asks).await.expect("decide");
    for (n, d) in after.iter().enumerate() {
        assert_eq!(
            effect(d),
            Answer::PermitWithWithholding,
            "ask {n}: both relationships apply to the one person, and the merged record's withholding binds it: {d:?}"
        );
        assert_eq!(d.withheld_categories, vec!["MH".to_string()], "ask {n}");
        assert!(
            d.rules.iter().any(|r| r == &format!("merged:{NHS}+{MERGED}")),
            "ask {n}: {:?}",
            d.rules
        );
    }
    // Nobody else gains anything: an organisation with no relationship to either is refused.
    let stranger = sharedcare_consent::grpc::decide_many(&s, &[staff_read("RYJ", NHS, &[])])
        .await
        .expect("decide");
    assert_eq!(effect(&stranger[0]), Answer::Deny);
    // The person, signed in with the survivor's number, sees the merged number's record as theirs.
    let own = sharedcare_proto::consent::v1::DecideRequest {
        principal_kind: "patient".into(),
        principal_nhs_number: NHS.into(),
        proofing_level: "P9".into(),
        nhs_number: MERGED.into(),
        action: "read".into(),
        purpose: "PATRQT".into(),
        ..Default::default()
    };
    let own = sharedcare_consent::grpc::decide_many(&s, &[own]).await.expect("decide");
    assert_ne!(effect(&own[0]), Answer::Deny, "{:?}", own[0]);
    // Information governance sees the merge in both trails.
    let kinds: Vec<String> =
        sqlx::query("SELECT payload FROM kit_outbox WHERE topic = 'sharedcare.consent.v1' ORDER BY seq")
            .fetch_all(db.pool())
            .await
            .expect("outbox")
            .iter()
            .filter_map(|r| {
                use prost::Message;
                let payload: Vec<u8> = r.get(0);
                let e = sharedcare_proto::events::v1::Envelope::decode(payload.as_slice()).ok()?;
                let c = sharedcare_proto::events::v1::ConsentEvent::decode(e.data.as_slice()).ok()?;
                (c.kind == "patients_merged").then_some(c.nhs_number)
            })
            .collect();
    assert_eq!(kinds, vec![MERGED.to_string(), NHS.to_string()]);
}

sharedcare_kit::store_suite!("consent"; facts_round_trip_and_every_change_writes_its_event, consents_are_versioned_and_old_directives_become_consents, a_merge_joins_relationships_and_the_stricter_directive_wins);

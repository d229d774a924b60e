//! Consent over gRPC in `sharedcare up`: decisions from relationships, directives, flags and
//! break-glass, with tokens from the real identity service.

use std::time::Duration;

use serde_json::Value;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::decide_response::Effect;
use sharedcare_proto::consent::v1::{
    AddRelationshipRequest, BreakGlassRequest, DecideRequest, Directive, EndRelationshipRequest, ListBreakGlassRequest,
    PutDirectiveRequest, Relationship, ReviewBreakGlassRequest, SetFlagsRequest,
};

use crate::harness::{fhir_consent, labels, service_token_for, up, user_token, with_token};
use serde_json::json;

/// A `PutDirectiveRequest` (an empty id lets the service make one).
fn directive(id: &str, nhs: &str, status: &str, provision: serde_json::Value) -> PutDirectiveRequest {
    PutDirectiveRequest {
        directive: Some(Directive {
            resource_json: fhir_consent(id, nhs, status, provision).to_string(),
            ..Default::default()
        }),
    }
}

/// Breaks the glass for `nhs` as the holder of `token`, for an unconscious patient.
async fn break_glass(
    c: &mut ConsentClient<tonic::transport::Channel>,
    token: &str,
    nhs: &str,
) -> sharedcare_proto::consent::v1::BreakGlassGrant {
    c.break_glass(with_token(
        BreakGlassRequest {
            nhs_number: nhs.into(),
            reason_code: "unconscious-patient".into(),
            reason_text: "Found collapsed at home, no GP record available".into(),
        },
        token,
    ))
    .await
    .expect("break-glass")
    .into_inner()
}

fn staff_ask(nhs: &str, org: &str, purpose: &str) -> DecideRequest {
    DecideRequest {
        principal_kind: "staff".into(),
        person_id: "555000000001".into(),
        ods_code: org.into(),
        role_code: "S8000:G8000:R8000".into(),
        nhs_number: nhs.into(),
        action: "read".into(),
        purpose: purpose.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn decisions_follow_relationships_directives_flags_and_break_glass_and_a_revocation_binds_the_next_one() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    let nhs = demo["patients"][2]["nhs_number"].as_str().expect("nhs").to_string();
    let service = service_token_for(&p.http, "consent.decide consent.write").await;
    let mut c = ConsentClient::new(p.channel().await);
    let deciding = c.clone();
    let decide = |ask: DecideRequest| {
        let (mut c, service) = (deciding.clone(), service.clone());
        async move { c.decide(with_token(ask, &service)).await.expect("decide").into_inner() }
    };

    // Aisha Rahman (demo patient 3) is registered at the GP practice only: the trust has no
    // relationship with her yet.
    let first = decide(staff_ask(&nhs, "RX1", "TREAT")).await;
    assert_eq!(first.effect(), Effect::Deny);
    assert!(first.rules.contains(&"relationship:none".to_string()), "{first:?}");

    let rel = c
        .add_relationship(with_token(
            AddRelationshipRequest {
                relationship: Some(Relationship {
                    nhs_number: nhs.clone(),
                    ods_code: "RX1".into(),
                    kind: "episode_of_care".into(),
                    start: 1_600_000_000,
                    ..Default::default()
                }),
            },
            &service,
        ))
        .await
        .expect("relationship")
        .into_inner();
    assert_eq!(decide(staff_ask(&nhs, "RX1", "TREAT")).await.effect(), Effect::Permit);

    // The patient (P9, their own token) opts out; the very next decision denies.
    let patient = user_token(&p, "patient3", "demo-patient3-password", "nhs_number").await;
    c.put_directive(with_token(
        directive("optout", &nhs, "active", json!({"type": "deny"})),
        &patient,
    ))
    .await
    .expect("patient's own directive");
    let denied = decide(staff_ask(&nhs, "RX1", "TREAT")).await;
    assert_eq!(denied.effect(), Effect::Deny);
    assert!(denied.rules.contains(&"directive:optout".to_string()));
    // Withdrawn again: permitted at once.
    c.put_directive(with_token(
        directive("optout", &nhs, "inactive", json!({"type": "deny"})),
        &patient,
    ))
    .await
    .expect("withdraw");
    assert_eq!(decide(staff_ask(&nhs, "RX1", "TREAT")).await.effect(), Effect::Permit);

    // Another patient's directive and a P5 account are refused; bad provisions name the field.
    let other = demo["patients"][1]["nhs_number"].as_str().expect("nhs").to_string();
    let not_yours = c
        .put_directive(with_token(
            directive("", &other, "active", json!({"type": "deny"})),
            &patient,
        ))
        .await
        .expect_err("not their record");
    assert_eq!(not_yours.code(), tonic::Code::PermissionDenied);
    let bad = c
        .put_directive(with_token(
            directive("", &nhs, "active", json!({"provision": []})),
            &patient,
        ))
        .await
        .expect_err("no type");
    assert!(
        bad.message()
            .starts_with("provision.type: the root provision needs a type"),
        "{}",
        bad.message()
    );

    // Mental health withheld from everyone but the GP practice's own data view.
    c.put_directive(with_token(
        directive(
            "mh",
            &nhs,
            "active",
            json!({"type": "permit", "provision": [{"type": "deny", "securityLabel": labels(&["MH"])}]}),
        ),
        &patient,
    ))
    .await
    .expect("withhold MH");
    let mut ask = staff_ask(&nhs, "RX1", "TREAT");
    ask.categories = vec!["MH".into(), "N".into()];
    let withheld = decide(ask).await;
    assert_eq!(withheld.effect(), Effect::PermitWithWithholding);
    assert_eq!(withheld.withheld_categories, vec!["MH".to_string()]);
    let listed = c
        .list_directives(with_token(
            sharedcare_proto::consent::v1::ListDirectivesRequest {
                nhs_number: nhs.clone(),
            },
            &patient,
        ))
        .await
        .expect("the patient lists their directives")
        .into_inner()
        .directives;
    let mut seen: Vec<(String, String)> = listed.into_iter().map(|d| (d.id, d.status)).collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![("mh".into(), "active".into()), ("optout".into(), "inactive".into())]
    );

    // National data opt-out: research refused, direct care not.
    c.set_flags(with_token(
        SetFlagsRequest {
            nhs_number: nhs.clone(),
            national_opt_out: true,
            gp_dissent: false,
        },
        &service,
    ))
    .await
    .expect("flags");
    assert_eq!(decide(staff_ask(&nhs, "RX1", "HRESCH")).await.effect(), Effect::Deny);
    assert_ne!(decide(staff_ask(&nhs, "RX1", "TREAT")).await.effect(), Effect::Deny);

    // Break-glass: the care worker has no relationship; they state why and are let in, audited.
    let careworker = user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let short = c
        .break_glass(with_token(
            BreakGlassRequest {
                nhs_number: nhs.clone(),
                reason_code: "unconscious-patient".into(),
                reason_text: "short".into(),
            },
            &careworker,
        ))
        .await
        .expect_err("reason too short");
    assert!(short.message().starts_with("reason_text:"));
    let grant = break_glass(&mut c, &careworker, &nhs).await;
    assert_eq!(
        (grant.person_id.as_str(), grant.ods_code.as_str()),
        ("555000000003", "VH2D7")
    );
    let mut emergency = staff_ask(&nhs, "VH2D7", "ETREAT");
    emergency.person_id = "555000000003".into();
    let glass = decide(emergency.clone()).await;
    assert_eq!(glass.effect(), Effect::Permit);
    assert!(
        glass.break_glass && glass.break_glass_reason.starts_with("unconscious-patient:"),
        "{glass:?}"
    );
    emergency.purpose = "TREAT".into();
    assert_eq!(
        decide(emergency).await.effect(),
        Effect::Deny,
        "break-glass is for emergencies only"
    );
    let queue = c
        .list_break_glass(with_token(ListBreakGlassRequest {}, &service))
        .await
        .expect("review queue")
        .into_inner();
    assert!(queue.grants.iter().any(|g| g.id == grant.id));
    // The IG lead reviews it: it leaves the queue; a review needs a note, is recorded as the
    // caller's (naming someone else is refused), is never one's own and is never redone.
    let named = c
        .review_break_glass(with_token(
            ReviewBreakGlassRequest {
                id: grant.id.clone(),
                reviewer: "ig-lead-1".into(),
                note: "justified: patient found collapsed at home".into(),
            },
            &service,
        ))
        .await
        .expect_err("the reviewer is the caller");
    assert!(named.message().starts_with("reviewer:"), "{}", named.message());
    let ig = user_token(&p, "icsadmin", "demo-icsadmin-password", "selectedrole").await;
    let short_note = c
        .review_break_glass(with_token(
            ReviewBreakGlassRequest {
                id: grant.id.clone(),
                reviewer: String::new(),
                note: "ok".into(),
            },
            &ig,
        ))
        .await
        .expect_err("a note is required");
    assert!(short_note.message().starts_with("note:"), "{}", short_note.message());
    let own = c
        .break_glass(with_token(
            BreakGlassRequest {
                nhs_number: nhs.clone(),
                reason_code: "unconscious-patient".into(),
                reason_text: "Called to the ward, patient unresponsive".into(),
            },
            &ig,
        ))
        .await
        .expect("the IG lead breaks the glass herself")
        .into_inner();
    let review = |id: &str| ReviewBreakGlassRequest {
        id: id.to_string(),
        reviewer: String::new(),
        note: "justified: patient found collapsed at home".into(),
    };
    let self_review = c
        .review_break_glass(with_token(review(&own.id), &ig))
        .await
        .expect_err("no self-review");
    assert_eq!(
        self_review.code(),
        tonic::Code::PermissionDenied,
        "{}",
        self_review.message()
    );
    c.review_break_glass(with_token(review(&grant.id), &ig))
        .await
        .expect("review");
    let again = c
        .review_break_glass(with_token(review(&grant.id), &service))
        .await
        .expect_err("a review is never overwritten");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{}", again.message());
    let queue = c
        .list_break_glass(with_token(ListBreakGlassRequest {}, &service))
        .await
        .expect("review queue")
        .into_inner();
    assert!(
        !queue.grants.iter().any(|g| g.id == grant.id),
        "reviewed grants leave the queue"
    );
    // The patient's audit trail shows who broke the glass, and why.
    let auditor = service_token_for(&p.http, "audit.read").await;
    let audit = sharedcare_proto::audit::v1::audit_client::AuditClient::new(p.channel().await);
    let entry = crate::harness::eventually(Duration::from_secs(20), "the break-glass audit entry", || {
        let (mut audit, auditor, nhs) = (audit.clone(), auditor.clone(), nhs.clone());
        async move {
            let r = audit
                .list_by_patient(with_token(
                    sharedcare_proto::audit::v1::ListByPatientRequest {
                        nhs_number: nhs,
                        ..Default::default()
                    },
                    &auditor,
                ))
                .await
                .ok()?
                .into_inner();
            r.entries
                .into_iter()
                .find(|e| e.action == "break-glass" && e.actor == "555000000003")
        }
    })
    .await;
    assert_eq!(entry.actor_organisation, "VH2D7");
    assert_eq!(entry.purpose, "BTG");
    assert!(
        entry.reason.starts_with("unconscious-patient: Found collapsed"),
        "{entry:?}"
    );
    assert!(
        entry.reason.contains(&format!("(grant {} from ", grant.id)) && entry.reason.contains(" until "),
        "the trail records when the grant starts and ends: {entry:?}"
    );

    // The relationship ends: the next decision denies.
    c.end_relationship(with_token(EndRelationshipRequest { id: rel.id, end: 0 }, &service))
        .await
        .expect("end");
    let ended = decide(staff_ask(&nhs, "RX1", "TREAT")).await;
    assert_eq!(ended.effect(), Effect::Deny);
    assert!(ended.rules.contains(&"relationship:ended".to_string()), "{ended:?}");

    // Decide needs consent.decide.
    let weak = service_token_for(&p.http, "records.read").await;
    let refused = c
        .decide(with_token(staff_ask(&nhs, "RX1", "TREAT"), &weak))
        .await
        .expect_err("scope");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn an_encounter_in_the_record_is_a_care_relationship_until_it_finishes() {
    use sharedcare_proto::records::v1::PutRequest;

    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let nhs = crate::harness::nhs_number();
    let service = service_token_for(&p.http, "consent.decide").await;
    let mut records = p.records().await;
    records
        .put(PutRequest {
            resource_json: crate::harness::patient("enc-p", &nhs),
            source_organisation: "A81001".into(),
            ..Default::default()
        })
        .await
        .expect("patient");
    let encounter = |status: &str, end: &str| {
        serde_json::json!({
            "resourceType": "Encounter", "id": "enc-1", "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
            "subject": {"reference": "Patient/enc-p"},
            "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RX1"}},
            "period": if end.is_empty() { serde_json::json!({"start": "2026-01-01T08:00:00Z"}) }
                      else { serde_json::json!({"start": "2026-01-01T08:00:00Z", "end": end}) },
        })
        .to_string()
    };
    let mut c = ConsentClient::new(p.channel().await);
    assert_eq!(
        c.decide(with_token(staff_ask(&nhs, "RX1", "TREAT"), &service))
            .await
            .expect("decide")
            .into_inner()
            .effect(),
        Effect::Deny,
        "no relationship before the encounter"
    );
    records
        .put(PutRequest {
            resource_json: encounter("in-progress", ""),
            source_organisation: "RX1".into(),
            ..Default::default()
        })
        .await
        .expect("encounter");
    let permitted = crate::harness::eventually(Duration::from_secs(20), "relationship from the encounter", || {
        let (mut c, service, nhs) = (c.clone(), service.clone(), nhs.clone());
        async move {
            let d = c
                .decide(with_token(staff_ask(&nhs, "RX1", "TREAT"), &service))
                .await
                .ok()?
                .into_inner();
            (d.effect() == Effect::Permit).then_some(d)
        }
    })
    .await;
    assert!(
        permitted.rules.contains(&"relationship:encounter:RX1".to_string()),
        "{permitted:?}"
    );
    records
        .put(PutRequest {
            resource_json: encounter("finished", "2026-01-02T08:00:00Z"),
            source_organisation: "RX1".into(),
            ..Default::default()
        })
        .await
        .expect("finished");
    let ended = crate::harness::eventually(
        Duration::from_secs(20),
        "the relationship ends with the encounter",
        || {
            let (mut c, service, nhs) = (c.clone(), service.clone(), nhs.clone());
            async move {
                let d = c
                    .decide(with_token(staff_ask(&nhs, "RX1", "TREAT"), &service))
                    .await
                    .ok()?
                    .into_inner();
                (d.effect() == Effect::Deny).then_some(d)
            }
        },
    )
    .await;
    assert!(ended.rules.contains(&"relationship:ended".to_string()), "{ended:?}");
}

/// A care worker breaks the glass for a patient they have no relationship with, then writes
/// Encounters naming their own care home and a hospital: the writes are stored (emergency care
/// is recorded) but neither organisation gains a relationship, and naming another organisation
/// as the writer is refused. The integration engine, a configured feed, still starts one.
#[tokio::test]
async fn a_write_under_break_glass_grants_no_organisation_a_relationship() {
    use sharedcare_proto::records::v1::PutRequest;
    use sharedcare_proto::records::v1::records_client::RecordsClient;

    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let nhs = crate::harness::nhs_number();
    let service = service_token_for(&p.http, "consent.decide").await;
    let mut feed = p.records().await;
    feed.put(PutRequest {
        resource_json: crate::harness::patient("glass-p", &nhs),
        source_organisation: "A81001".into(),
        ..Default::default()
    })
    .await
    .expect("patient");
    let careworker = user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let mut c = ConsentClient::new(p.channel().await);
    break_glass(&mut c, &careworker, &nhs).await;
    let encounter = |id: &str, org: &str| {
        json!({
            "resourceType": "Encounter", "id": id, "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
            "subject": {"reference": "Patient/glass-p"},
            "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": org}},
            "period": {"start": "2020-01-01T08:00:00Z"},
        })
        .to_string()
    };
    let mut staff_records = RecordsClient::new(p.channel().await);
    let staff_put = |id: &str, org: &str, source: &str| {
        with_token(
            PutRequest {
                resource_json: encounter(id, org),
                source_organisation: source.into(),
                purpose: "ETREAT".into(),
                ..Default::default()
            },
            &careworker,
        )
    };
    staff_records
        .put(staff_put("glass-own", "VH2D7", ""))
        .await
        .expect("emergency care is recorded");
    staff_records
        .put(staff_put("glass-other", "RX1", ""))
        .await
        .expect("stored, naming a hospital");
    let spoofed = staff_records
        .put(staff_put("glass-spoof", "RX1", "RX1"))
        .await
        .expect_err("staff cannot write as another organisation");
    assert_eq!(spoofed.code(), tonic::Code::InvalidArgument);
    assert!(
        spoofed.message().starts_with("source_organisation:"),
        "{}",
        spoofed.message()
    );
    // The feed's admission to RXX01 comes after them in the patient's stream: once consent has
    // applied it, it has seen the care worker's writes too.
    feed.put(PutRequest {
        resource_json: encounter("glass-feed", "RXX01"),
        source_organisation: "RXX01".into(),
        ..Default::default()
    })
    .await
    .expect("admission");
    let decide = |org: &'static str| {
        let (mut c, service, nhs) = (c.clone(), service.clone(), nhs.clone());
        async move {
            c.decide(with_token(staff_ask(&nhs, org, "TREAT"), &service))
                .await
                .expect("decide")
                .into_inner()
        }
    };
    crate::harness::eventually(Duration::from_secs(20), "the feed's relationship", || async {
        (decide("RXX01").await.effect() == Effect::Permit).then_some(())
    })
    .await;
    for org in ["VH2D7", "RX1"] {
        let d = decide(org).await;
        assert_eq!(
            d.effect(),
            Effect::Deny,
            "{org} gained nothing from the break-glass writes: {d:?}"
        );
    }
}

#[tokio::test]
async fn an_authorised_representative_manages_the_patients_choices_and_may_read() {
    use sharedcare_proto::consent::v1::{AddRepresentativeRequest, Representative};
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    let nhs = |i: usize| demo["patients"][i]["nhs_number"].as_str().expect("nhs").to_string();
    let (aisha, david) = (nhs(2), nhs(1));
    let service = service_token_for(&p.http, "consent.decide consent.write").await;
    let mut c = ConsentClient::new(p.channel().await);
    // David (P9) is not yet Aisha's representative: he may not change her choices.
    let david_token = user_token(&p, "patient2", "demo-patient2-password", "nhs_number").await;
    let refused = c
        .put_directive(with_token(
            directive("", &aisha, "active", json!({"type": "deny"})),
            &david_token,
        ))
        .await
        .expect_err("not her representative yet");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let bad = c
        .add_representative(with_token(
            AddRepresentativeRequest {
                representative: Some(Representative {
                    nhs_number: aisha.clone(),
                    representative_nhs_number: david.clone(),
                    kind: "friend".into(),
                    start: 1_600_000_000,
                    ..Default::default()
                }),
            },
            &service,
        ))
        .await
        .expect_err("unknown kind");
    assert!(bad.message().starts_with("representative.kind:"), "{}", bad.message());
    let added = c
        .add_representative(with_token(
            AddRepresentativeRequest {
                representative: Some(Representative {
                    nhs_number: aisha.clone(),
                    representative_nhs_number: david.clone(),
                    kind: "lpa_health_welfare".into(),
                    start: 1_600_000_000,
                    ..Default::default()
                }),
            },
            &service,
        ))
        .await
        .expect("lasting power of attorney recorded")
        .into_inner();
    c.put_directive(with_token(
        directive(
            "by-attorney",
            &aisha,
            "active",
            json!({"type": "permit", "provision": [{"type": "deny", "securityLabel": labels(&["PSY"])}]}),
        ),
        &david_token,
    ))
    .await
    .expect("the attorney manages her directives");
    let ask = DecideRequest {
        principal_kind: "patient".into(),
        principal_nhs_number: david.clone(),
        proofing_level: "P9".into(),
        nhs_number: aisha.clone(),
        action: "read".into(),
        purpose: "PATRQT".into(),
        ..Default::default()
    };
    let d = c
        .decide(with_token(ask.clone(), &service))
        .await
        .expect("decide")
        .into_inner();
    assert_eq!(d.effect(), Effect::Permit);
    assert!(d.rules.contains(&"patient:representative".to_string()), "{d:?}");

    // The power of attorney is revoked: from the next request David may do neither.
    c.end_representative(with_token(
        sharedcare_proto::consent::v1::EndRepresentativeRequest {
            id: added.id.clone(),
            end: 0,
        },
        &service,
    ))
    .await
    .expect("end");
    let refused = c
        .put_directive(with_token(
            directive("", &aisha, "active", json!({"type": "deny"})),
            &david_token,
        ))
        .await
        .expect_err("no longer her representative");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let d = c.decide(with_token(ask, &service)).await.expect("decide").into_inner();
    assert_eq!(d.effect(), Effect::Deny, "{d:?}");
}

/// A privacy officer reviews break-glass only for the organisations they cover: their role's
/// organisation and those under it in identity's directory. The ICB's (QN1, the parent of
/// every demo provider) sees and reviews a home care provider's grant; a trust's (RX1) neither
/// sees it in the queue nor may review it.
#[tokio::test]
async fn a_reviewer_sees_and_reviews_only_grants_at_organisations_they_cover() {
    use crate::harness::{
        admin, browser, enrol_totp, exchange, password_login, register_app, relying_party, staff_auth_url,
    };
    use openidconnect::OAuth2TokenResponse;
    use sharedcare_proto::identity::v1::{CreatePersonRequest, IssueEnrolmentRequest, RoleProfile};

    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let nhs = crate::harness::nhs_number();
    let careworker = user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let mut c = ConsentClient::new(p.channel().await);
    let grant = break_glass(&mut c, &careworker, &nhs).await;
    assert_eq!(grant.ods_code, "VH2D7");

    // The trust's privacy officer, with a second factor enrolled through the pages.
    let mut a = admin(&p).await;
    let uid = a
        .create_person(CreatePersonRequest {
            username: "rx.privacy".into(),
            given_name: "Rhys".into(),
            family_name: "Privacy".into(),
            password: "a-long-privacy-officer-password".into(),
            role_profiles: vec![RoleProfile {
                ods_code: "RX1".into(),
                role_code: "S8001:G8005:R0001".into(),
                role_name: "Privacy Officer".into(),
                activity_codes: vec![sharedcare_kit::auth::BREAK_GLASS_REVIEW_ACTIVITY.into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("person")
        .into_inner()
        .uid;
    let code = a
        .issue_enrolment(IssueEnrolmentRequest { uid })
        .await
        .expect("enrolment")
        .into_inner()
        .enrolment_code;
    let redirect = "http://127.0.0.1:9/review";
    let (id, secret) = register_app(&p, "Review app", redirect, "").await;
    let rp = relying_party(&p.http, &id, &secret, redirect).await;
    let auth = || staff_auth_url(&rp);
    let b = browser();
    password_login(&b, &p.http, &auth(), "rx.privacy", "a-long-privacy-officer-password").await;
    let (status, _) = enrol_totp(&b, &p.http, &code).await;
    assert_eq!(status, 200, "enrolled");
    // The same browser's session now has its second factor: the next token is AAL2.
    let (back, _, _) = crate::harness::follow(&b, &p.http, &auth()).await;
    let rx = exchange(&rp, &back).await.access_token().secret().clone();
    assert_eq!(crate::harness::claims_of(&rx)["acr"], "AAL2");

    let lister = c.clone();
    let queue = |token: String| {
        let mut c = lister.clone();
        async move {
            c.list_break_glass(with_token(ListBreakGlassRequest {}, &token))
                .await
                .expect("queue")
                .into_inner()
                .grants
                .into_iter()
                .map(|g| g.id)
                .collect::<Vec<_>>()
        }
    };
    assert!(
        !queue(rx.clone()).await.contains(&grant.id),
        "the trust's officer does not see it"
    );
    let review = ReviewBreakGlassRequest {
        id: grant.id.clone(),
        reviewer: String::new(),
        note: "looked at it from the wrong organisation".into(),
    };
    let refused = c
        .review_break_glass(with_token(review.clone(), &rx))
        .await
        .expect_err("outside their cover");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{}", refused.message());
    let ig = user_token(&p, "icsadmin", "demo-icsadmin-password", "selectedrole").await;
    assert!(queue(ig.clone()).await.contains(&grant.id), "the ICB's officer sees it");
    // So with the audit log and the staff directory: the ICB's officer reads what the grant's
    // holder did at the home care provider, and who they are; the trust's does not.
    let opened = sharedcare_proto::audit::v1::QueryRequest {
        nhs_number: nhs.clone(),
        actor: grant.person_id.clone(),
        actor_organisation: grant.ods_code.clone(),
        ..Default::default()
    };
    let mut audit = sharedcare_proto::audit::v1::audit_client::AuditClient::new(p.channel().await);
    audit
        .query(with_token(opened.clone(), &ig))
        .await
        .expect("the ICB's officer reads the home care provider's accesses");
    let refused = audit
        .query(with_token(opened, &rx))
        .await
        .expect_err("outside the trust's cover");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{}", refused.message());
    let who = sharedcare_proto::identity::v1::GetPersonRequest {
        uid: grant.person_id.clone(),
    };
    let mut identity =
        sharedcare_proto::identity::v1::identity_admin_client::IdentityAdminClient::new(p.channel().await);
    let named = identity
        .get_person(with_token(who.clone(), &ig))
        .await
        .expect("the staff directory")
        .into_inner();
    assert_eq!(
        (named.given_name.as_str(), named.family_name.as_str()),
        ("Jo", "Williams")
    );
    let stranger = identity
        .get_person(with_token(who, &careworker))
        .await
        .expect_err("a care worker has no business in the staff directory");
    assert_eq!(stranger.code(), tonic::Code::PermissionDenied);
    c.review_break_glass(with_token(review, &ig))
        .await
        .expect("the ICB's officer reviews it");
}

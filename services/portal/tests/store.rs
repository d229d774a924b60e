//! The portal's sessions, run on SQLite and on Postgres.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

use sharedcare_kit::db::Db;
use sharedcare_kit::service::Service as _;
use sharedcare_portal::oidc::{Pending, Tokens};
use sharedcare_portal::session::{Session, Sessions, Who};

async fn sessions(db: &Db) -> Sessions {
    let portal = sharedcare_portal::Portal::new(Default::default(), ("demo", "secret"));
    db.migrate(portal.migrations()).await.expect("migrate");
    Sessions::new(db.clone())
}

fn session(name: &str, sid: &str) -> Session {
    Session::new(
        Who::Patient {
            name: name.into(),
            nhs_number: "9434765919".into(),
            proofing: sharedcare_kit::nhs::ProofingLevel::P9,
        },
        Tokens {
            access_token: "at".into(),
            refresh_token: "rt".into(),
            id_token: "id".into(),
            expires_at: 0,
            claims: serde_json::json!({ "sid": sid }),
        },
    )
}

async fn a_session_is_found_by_its_cookie_and_ended_by_logout_or_back_channel(db: Db) {
    let s = sessions(&db).await;
    let a = s.create(&session("Margaret", "sid-1")).await.expect("create");
    let b = s
        .create(&session("Margaret, on her phone", "sid-1"))
        .await
        .expect("create");
    let c = s.create(&session("David", "sid-2")).await.expect("create");
    assert_ne!(a, b, "each browser its own token");
    let got = s.get(&a).await.expect("get").expect("found");
    assert_eq!(got.who, session("Margaret", "sid-1").who);
    assert!(s.get("not-a-token").await.expect("get").is_none());
    // A second replica reads the same row, including what was saved.
    let other = Sessions::new(db.clone());
    let mut changed = got.clone();
    changed.glass.push("9434765919".into());
    s.save(&a, &changed).await.expect("save");
    assert_eq!(other.get(&a).await.expect("get").expect("found").glass, ["9434765919"]);
    // Back-channel logout ends every session of that SSO session, here and in the table.
    assert_eq!(s.end_sid("sid-1").await.expect("end"), 2);
    assert!(s.get(&a).await.expect("get").is_none() && s.get(&b).await.expect("get").is_none());
    assert!(Sessions::new(db.clone()).get(&b).await.expect("get").is_none());
    assert!(
        s.get(&c).await.expect("get").is_some(),
        "another SSO session is untouched"
    );
    s.end(&c).await.expect("logout");
    assert!(s.get(&c).await.expect("get").is_none());
}

async fn a_sign_in_is_taken_once_and_idle_sessions_are_swept(db: Db) {
    let s = sessions(&db).await;
    let p = Pending {
        verifier: "v".into(),
        nonce: "n".into(),
        return_to: "/portal/".into(),
        browser: sharedcare_kit::jose::sha256_b64("binding-of-this-browser"),
    };
    s.park("state-1", &p).await.expect("park");
    let taken = s.take("state-1").await.expect("take").expect("parked");
    assert_eq!(taken.nonce, "n");
    assert!(
        taken.same_browser(Some("binding-of-this-browser")),
        "the binding is kept"
    );
    assert!(!taken.same_browser(Some("another-browser's-binding")) && !taken.same_browser(None));
    assert!(
        s.take("state-1").await.expect("take").is_none(),
        "a replayed callback finds nothing"
    );
    let live = s.create(&session("Live", "sid-live")).await.expect("create");
    let idle = s.create(&session("Idle", "sid-idle")).await.expect("create");
    // The idle one was last used two hours ago (as another replica would see it).
    sqlx::query("UPDATE sessions SET seen_us = seen_us - 7200000000 WHERE sid = 'sid-idle'")
        .execute(db.pool())
        .await
        .expect("age it");
    assert_eq!(s.sweep().await.expect("sweep"), 1);
    let fresh = Sessions::new(db.clone());
    assert!(fresh.get(&idle).await.expect("get").is_none());
    assert!(fresh.get(&live).await.expect("get").is_some());
    // Notices: seen once is seen.
    s.notice_seen("9434765919", "VN1C4-100").await.expect("seen");
    s.notice_seen("9434765919", "VN1C4-100").await.expect("seen again");
    let seen = s.notices_seen("9434765919").await.expect("notices");
    assert!(seen.contains("VN1C4-100") && seen.len() == 1);
    assert!(s.notices_seen("9000000009").await.expect("notices").is_empty());
}

async fn one_replica_at_a_time_claims_a_sessions_refresh(db: Db) {
    let (a, b) = (sessions(&db).await, Sessions::new(db.clone()));
    let token = a.create(&session("Margaret", "sid-r")).await.expect("create");
    // Two replicas ask at the same instant: exactly one wins.
    let (x, y) = tokio::join!(a.claim_refresh(&token), b.claim_refresh(&token));
    let won = [x.expect("claim"), y.expect("claim")];
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    assert!(
        !a.claim_refresh(&token).await.expect("claim") && !b.claim_refresh(&token).await.expect("claim"),
        "held"
    );
    // The winner saves the new tokens, which releases the claim; the other reads them.
    let mut refreshed = a.get(&token).await.expect("get").expect("found");
    refreshed.tokens.refresh_token = "rt-2".into();
    a.save(&token, &refreshed).await.expect("save");
    assert_eq!(
        b.get(&token).await.expect("get").expect("found").tokens.refresh_token,
        "rt-2"
    );
    assert!(b.claim_refresh(&token).await.expect("claim"), "released by the save");
    // A claim whose replica died expires and can be taken over.
    sqlx::query("UPDATE sessions SET refresh_claim_us = refresh_claim_us - $1")
        .bind(sharedcare_portal::session::REFRESH_CLAIM_MS * 1000 + 1)
        .execute(db.writer())
        .await
        .expect("age the claim");
    assert!(
        a.claim_refresh(&token).await.expect("claim"),
        "an expired claim is taken over"
    );
    assert!(
        !a.claim_refresh("not-a-token").await.expect("claim"),
        "no session, no claim"
    );
}

sharedcare_kit::store_suite!("portal"; a_session_is_found_by_its_cookie_and_ended_by_logout_or_back_channel, a_sign_in_is_taken_once_and_idle_sessions_are_swept, one_replica_at_a_time_claims_a_sessions_refresh);

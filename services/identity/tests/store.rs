//! Identity's storage and key ring, run on SQLite and on Postgres.

use sharedcare_identity::keys::KeyRing;
use sharedcare_identity::model::{Grant, SubjectKind};
use sharedcare_identity::store::{Session, Store};
use sharedcare_kit::db::Db;

async fn store(db: &Db) -> Store {
    sharedcare_identity::migrate(db).await.expect("migrate");
    Store::new(db.clone())
}

fn grant(session: &str) -> Grant {
    Grant {
        client_id: "app".into(),
        session_id: session.into(),
        subject_kind: SubjectKind::Staff,
        subject: "555000000001".into(),
        scope: "openid".into(),
        nonce: String::new(),
        redirect_uri: "https://app/cb".into(),
        code_challenge: String::new(),
        auth_time: 1,
        amr: vec!["pwd".into()],
        selected_role: String::new(),
    }
}

fn session(id: &str) -> Session {
    Session {
        id: id.into(),
        subject_kind: SubjectKind::Staff,
        subject: "555000000001".into(),
        auth_time: 1,
        last_seen: 1,
        expires_at: i64::MAX / 2,
        amr: vec!["pwd".into()],
        mfa_pending: false,
        selected_role: String::new(),
        revoked: false,
    }
}

async fn keys_rotate_on_schedule_and_old_keys_stay_published_until_their_tokens_expire(db: Db) {
    let s = store(&db).await;
    let ring = KeyRing::load(s.clone(), 3600, 600).await.expect("load");
    let first = ring.active().kid().to_string();
    let now = chrono::Utc::now().timestamp();
    ring.maintain(now + 1800).await.expect("not due yet");
    assert_eq!(ring.active().kid(), first, "no rotation before key_rotation_hours");
    ring.maintain(now + 3601).await.expect("due");
    let second = ring.active().kid().to_string();
    assert_ne!(second, first, "a new key after key_rotation_hours");
    let kids: Vec<String> = ring
        .jwks()
        .keys
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        kids.contains(&first) && kids.contains(&second),
        "both published: {kids:?}"
    );
    // Once every token the old key signed has expired (600 s + leeway), it leaves the set.
    ring.maintain(now + 3601 + 700).await.expect("later");
    let kids: Vec<String> = ring
        .jwks()
        .keys
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kids, vec![second.clone()]);
    // A second replica loading the same tables signs with the same key.
    let replica = KeyRing::load(s, 3600, 600).await.expect("replica");
    assert_eq!(replica.active().kid(), ring.active().kid());
}

async fn a_code_is_redeemed_once(db: Db) {
    let s = store(&db).await;
    s.insert_session(&session("s1"), "cookie-hash").await.expect("session");
    s.put_code("code-hash", &grant("s1"), i64::MAX / 2).await.expect("code");
    assert!(s.take_code("code-hash", 10).await.expect("take").is_ok());
    assert!(
        matches!(s.take_code("code-hash", 10).await.expect("again"), Err(true)),
        "second use is a replay"
    );
    assert!(matches!(s.take_code("unknown", 10).await.expect("unknown"), Err(false)));
}

async fn reusing_a_rotated_refresh_token_revokes_its_family(db: Db) {
    let s = store(&db).await;
    s.insert_session(&session("s1"), "c1").await.expect("session");
    s.put_refresh("r1", "fam", &grant("s1"), i64::MAX / 2)
        .await
        .expect("r1");
    let (family, _) = s.use_refresh("r1", 10).await.expect("use").expect("valid");
    s.put_refresh("r2", &family, &grant("s1"), i64::MAX / 2)
        .await
        .expect("r2");
    assert!(
        matches!(s.use_refresh("r1", 10).await.expect("replay"), Err(true)),
        "reuse detected"
    );
    assert!(
        matches!(s.use_refresh("r2", 10).await.expect("after"), Err(false)),
        "the whole family is revoked"
    );
}

async fn ending_a_session_revokes_its_refresh_tokens_and_names_its_clients(db: Db) {
    let s = store(&db).await;
    s.insert_session(&session("s1"), "c1").await.expect("session");
    s.put_code("k", &grant("s1"), i64::MAX / 2)
        .await
        .expect("code notes the client");
    s.put_refresh("r1", "fam", &grant("s1"), i64::MAX / 2)
        .await
        .expect("r1");
    assert_eq!(
        s.revoke_session("s1", 10).await.expect("revoke"),
        vec!["app".to_string()]
    );
    assert!(matches!(s.use_refresh("r1", 10).await.expect("use"), Err(false)));
    assert!(s.revoke_session("s1", 10).await.expect("again").is_empty(), "only once");
    assert!(s.session("s1").await.expect("read").expect("exists").revoked);
}

sharedcare_kit::store_suite!("identity";
    keys_rotate_on_schedule_and_old_keys_stay_published_until_their_tokens_expire,
    a_code_is_redeemed_once,
    reusing_a_rotated_refresh_token_revokes_its_family,
    ending_a_session_revokes_its_refresh_tokens_and_names_its_clients,
);

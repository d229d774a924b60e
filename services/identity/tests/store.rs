//! Identity's storage and key ring, run on SQLite and on Postgres.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

use sharedcare_identity::keys::KeyRing;
use sharedcare_identity::model::{Grant, SubjectKind};
use sharedcare_identity::store::{Session, Store};
use sharedcare_kit::db::Db;
use sharedcare_kit::service::Service as _;

async fn store(db: &Db) -> Store {
    db.migrate(sharedcare_identity::Identity::new(Default::default()).migrations())
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

async fn keys_rotate_on_schedule_published_before_they_sign_and_kept_until_their_tokens_expire(db: Db) {
    let s = store(&db).await;
    let kids = |ring: &KeyRing| -> Vec<String> {
        ring.jwks()
            .keys
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let ring = KeyRing::load(s.clone(), 3600, 600, 300).await.expect("load");
    let first = ring.active().kid().to_string();
    let now = chrono::Utc::now().timestamp();
    ring.maintain(now + 1800).await.expect("not due yet");
    assert_eq!(
        (ring.active().kid(), kids(&ring).len()),
        (first.as_str(), 1),
        "nothing new before it is due"
    );
    // 300 s before the hour: the next key is published but does not sign yet.
    ring.maintain(now + 3400).await.expect("pre-publish");
    let published = kids(&ring);
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(ring.active().kid(), first, "the published key waits");
    let second = published.iter().find(|k| **k != first).expect("the next key").clone();
    ring.maintain(now + 3400 + 299).await.expect("still waiting");
    assert_eq!(ring.active().kid(), first);
    ring.maintain(now + 3400 + 300).await.expect("activates");
    assert_eq!(
        ring.active().kid(),
        second,
        "the pre-published key signs from its activation"
    );
    assert_eq!(kids(&ring).len(), 2, "the old key stays while its tokens may be live");
    // Once every token the old key signed has expired (600 s + leeway), it leaves the set.
    ring.maintain(now + 3700 + 700).await.expect("later");
    assert_eq!(kids(&ring), vec![second.clone()]);
    // A second replica loading the same tables signs with the same key at the same moment.
    let now2 = now + 4400;
    let replica = KeyRing::load(s, 3600, 600, 300).await.expect("replica");
    replica.maintain(now2).await.expect("replica at the same time");
    ring.maintain(now2).await.expect("ring at the same time");
    assert_eq!(replica.active().kid(), ring.active().kid());
    // An administrator's rotation takes effect at once.
    let third = ring.rotate(now2).await.expect("rotate");
    assert_eq!(ring.active().kid(), third);
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

async fn a_deactivated_organisation_s_roles_are_not_offered_and_it_comes_back_whole(db: Db) {
    use sharedcare_identity::model::{Organisation, Person};
    use sharedcare_kit::auth::RoleProfile;
    let s = store(&db).await;
    let org = |code: &str| Organisation {
        ods_code: code.into(),
        name: code.into(),
        kind: "care_home".into(),
        parent: String::new(),
        active: true,
    };
    s.insert_organisation(&org("VAA01")).await.expect("org");
    s.insert_organisation(&org("VAA02")).await.expect("org");
    let role = |id: &str, ods: &str| RoleProfile {
        person_roleid: id.into(),
        org_code: ods.into(),
        role_code: "S8000:G8000:R8000".into(),
        role_name: "Care worker".into(),
        activity_codes: Vec::new(),
        person_orgid: String::new(),
    };
    let person = Person {
        uid: "555000000009".into(),
        username: "two.homes".into(),
        given_name: "Two".into(),
        family_name: "Homes".into(),
        email: String::new(),
        totp_secret: String::new(),
        security_keys: 0,
        roles: vec![role("r1", "VAA01"), role("r2", "VAA02")],
    };
    s.insert_person(&person, "hash").await.expect("person");
    let roles = |p: Option<(Person, String, sharedcare_identity::store::Lock)>| -> Vec<String> {
        p.expect("person")
            .0
            .roles
            .into_iter()
            .map(|r| r.person_roleid)
            .collect()
    };
    assert_eq!(
        roles(s.person("uid", "555000000009").await.expect("read")),
        ["r1", "r2"]
    );
    let mut off = org("VAA01");
    off.active = false;
    assert!(s.update_organisation(&off).await.expect("deactivate"));
    assert_eq!(
        roles(s.person("uid", "555000000009").await.expect("read")),
        ["r2"],
        "a role at an inactive organisation is not offered"
    );
    assert!(!s.organisation("VAA01").await.expect("read").expect("kept").active);
    off.active = true;
    s.update_organisation(&off).await.expect("reactivate");
    assert_eq!(
        roles(s.person("uid", "555000000009").await.expect("read")),
        ["r1", "r2"]
    );
}

/// 32 concurrent redemptions of one code (a replayed redirect raced against the real one):
/// exactly one gets the grant and every other one is told it was a replay. Ten rounds, so the
/// pool's connections are all open and the redemptions really overlap.
async fn concurrent_redemptions_of_one_code_give_exactly_one_success(db: Db) {
    let s = store(&db).await;
    s.insert_session(&session("s1"), "cookie-hash").await.expect("session");
    for round in 0..10 {
        let code = format!("code-hash-{round}");
        s.put_code(&code, &grant("s1"), i64::MAX / 2).await.expect("code");
        let tries = (0..32).map(|_| {
            let (s, code) = (s.clone(), code.clone());
            tokio::spawn(async move { s.take_code(&code, 10).await.expect("take") })
        });
        let outcomes = futures::future::join_all(tries).await;
        let wins = outcomes.iter().filter(|o| matches!(o, Ok(Ok(_)))).count();
        let replays = outcomes.iter().filter(|o| matches!(o, Ok(Err(true)))).count();
        assert_eq!((wins, replays), (1, 31), "round {round}: one redemption, 31 replays");
    }
}

/// 32 concurrent presentations of one refresh token: exactly one rotates it, the others are
/// reuse (or find the family already revoked by one), and reuse revokes the family.
async fn concurrent_uses_of_one_refresh_token_give_exactly_one_success(db: Db) {
    let s = store(&db).await;
    s.insert_session(&session("s1"), "c1").await.expect("session");
    for round in 0..10 {
        let (token, family) = (format!("r-{round}"), format!("fam-{round}"));
        s.put_refresh(&token, &family, &grant("s1"), i64::MAX / 2)
            .await
            .expect("token");
        let tries = (0..32).map(|_| {
            let (s, token) = (s.clone(), token.clone());
            tokio::spawn(async move { s.use_refresh(&token, 10).await.expect("use") })
        });
        let outcomes = futures::future::join_all(tries).await;
        let wins = outcomes.iter().filter(|o| matches!(o, Ok(Ok(_)))).count();
        let reuse = outcomes.iter().filter(|o| matches!(o, Ok(Err(true)))).count();
        let refused = outcomes.iter().filter(|o| matches!(o, Ok(Err(false)))).count();
        assert_eq!(wins, 1, "round {round}: exactly one rotation");
        // The first reuse revokes the family; later ones find it revoked.
        assert!(
            reuse >= 1 && reuse + refused == 31,
            "round {round}: {reuse} reuses, {refused} refused"
        );
        s.put_refresh(&format!("{token}-next"), &family, &grant("s1"), i64::MAX / 2)
            .await
            .expect("successor");
        assert!(
            matches!(
                s.use_refresh(&format!("{token}-next"), 10).await.expect("after"),
                Err(false)
            ),
            "round {round}: the reuse revoked the family"
        );
    }
}

/// 32 wrong passwords (or security codes) at once on one account: each is counted, in the
/// database every replica shares, and at most `after` are let through to be checked before
/// the lock; the lock grows with each lockout but stays capped.
async fn parallel_guesses_each_count_and_the_lock_is_capped(db: Db) {
    use sharedcare_identity::model::Person;
    use sharedcare_identity::store::LockPolicy;
    let s = store(&db).await;
    let person = Person {
        uid: "555000000042".into(),
        username: "guessed".into(),
        given_name: "G".into(),
        family_name: "Uessed".into(),
        email: String::new(),
        totp_secret: String::new(),
        security_keys: 0,
        roles: Vec::new(),
    };
    s.insert_person(&person, "hash").await.expect("person");
    let policy = LockPolicy {
        after: 5,
        base_secs: 60,
        max_secs: 900,
    };
    let now = 1_000_000;
    let tries = (0..32).map(|_| {
        let s = s.clone();
        tokio::spawn(async move {
            s.count_attempt(SubjectKind::Staff, "555000000042", now, &policy)
                .await
                .expect("count")
        })
    });
    let outcomes = futures::future::join_all(tries).await;
    let checked: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().and_then(|l| l.as_ref()).map(|l| l.failed))
        .collect();
    assert_eq!(
        checked.len(),
        5,
        "only five guesses reach the password check: {checked:?}"
    );
    let mut sorted = checked.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3, 4, 5], "each counted once");
    let (_, _, lock) = s.person("uid", "555000000042").await.expect("read").expect("person");
    assert_eq!((lock.failed, lock.until), (5, now + 60), "locked for the first period");
    // Further lockouts double the lock, up to the cap, never days.
    let mut t = now;
    let mut lengths = Vec::new();
    for _ in 0..6 {
        t += 1_000;
        let mut last = None;
        for _ in 0..5 {
            last = s
                .count_attempt(SubjectKind::Staff, "555000000042", t, &policy)
                .await
                .expect("count");
        }
        lengths.push(last.expect("counted").until - t);
    }
    assert_eq!(lengths, [120, 240, 480, 900, 900, 900]);
    // A right answer clears it.
    s.clear_failures(SubjectKind::Staff, "555000000042")
        .await
        .expect("clear");
    let (_, _, lock) = s.person("uid", "555000000042").await.expect("read").expect("person");
    assert_eq!((lock.failed, lock.until), (0, 0));
    // The per-address count is shared too: 32 at once give 32 distinct counts.
    let tries = (0..32).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.count_address("198.51.100.7", 42).await.expect("count") })
    });
    let mut counts: Vec<i64> = futures::future::join_all(tries)
        .await
        .into_iter()
        .map(|c| c.expect("task"))
        .collect();
    counts.sort();
    assert_eq!(counts, (1..=32).collect::<Vec<i64>>());
    s.uncount_address("198.51.100.7", 42).await.expect("take back");
    assert_eq!(s.count_address("198.51.100.7", 42).await.expect("count"), 32);
}

/// WebAuthn state: a ceremony's challenge is taken once, by its owner, before it expires, so a
/// replayed or late answer finds nothing; a credential id belongs to one account, and the
/// person read for sign-in knows how many keys they have.
async fn security_keys_are_unique_and_ceremonies_are_taken_once(db: Db) {
    use sharedcare_identity::model::Person;
    use sharedcare_identity::store::SecurityKey;
    let s = store(&db).await;
    for (uid, username) in [("555000000051", "keyed"), ("555000000052", "other")] {
        let person = Person {
            uid: uid.into(),
            username: username.into(),
            given_name: "K".into(),
            family_name: "Eyed".into(),
            email: String::new(),
            totp_secret: String::new(),
            security_keys: 0,
            roles: Vec::new(),
        };
        s.insert_person(&person, "hash").await.expect("person");
    }
    s.put_ceremony("sess:sign-in", "555000000051", "state-1", 100)
        .await
        .expect("put");
    // A new start replaces the last.
    s.put_ceremony("sess:sign-in", "555000000051", "state-2", 100)
        .await
        .expect("put");
    assert_eq!(
        s.take_ceremony("sess:sign-in", "555000000051", 50)
            .await
            .expect("take")
            .as_deref(),
        Some("state-2")
    );
    assert_eq!(
        s.take_ceremony("sess:sign-in", "555000000051", 50).await.expect("take"),
        None,
        "once"
    );
    s.put_ceremony("late", "555000000051", "state", 100).await.expect("put");
    assert_eq!(
        s.take_ceremony("late", "555000000051", 100).await.expect("take"),
        None,
        "expired"
    );
    s.put_ceremony("theirs", "555000000051", "state", 100)
        .await
        .expect("put");
    assert_eq!(
        s.take_ceremony("theirs", "555000000052", 50).await.expect("take"),
        None,
        "another's"
    );
    assert_eq!(
        s.take_ceremony("theirs", "555000000051", 50).await.expect("take"),
        None,
        "and gone"
    );

    let key = |id: &str| SecurityKey {
        cred_id: id.into(),
        name: "Work laptop".into(),
        passkey: "{}".into(),
        created_at: 10,
        last_used: 0,
    };
    assert!(s.add_security_key("555000000051", &key("cred-a")).await.expect("add"));
    assert!(
        !s.add_security_key("555000000051", &key("cred-a")).await.expect("again"),
        "registered already"
    );
    assert!(
        !s.add_security_key("555000000052", &key("cred-a"))
            .await
            .expect("theirs"),
        "one account only"
    );
    s.used_security_key("555000000052", "cred-a", "{\"stolen\":1}", 20)
        .await
        .expect("no-op");
    s.used_security_key("555000000051", "cred-a", "{\"counter\":1}", 30)
        .await
        .expect("used");
    let keys = s.security_keys("555000000051").await.expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0].passkey.as_str(), keys[0].last_used),
        ("{\"counter\":1}", 30),
        "only its owner updates it"
    );
    assert!(s.security_keys("555000000052").await.expect("keys").is_empty());
    let (p, _, _) = s.person("uid", "555000000051").await.expect("read").expect("person");
    assert_eq!(p.security_keys, 1);
    assert!(p.has_second_factor());
    let (p, _, _) = s.person("username", "other").await.expect("read").expect("person");
    assert!(!p.has_second_factor());
}

/// Private keys are stored sealed; a copy of the database under another key-encryption key
/// cannot sign; a key kept in the clear by an older release, or under a previous KEK, is
/// re-sealed under the current one and signs on.
async fn signing_keys_are_sealed_at_rest_and_a_copy_without_the_kek_cannot_sign(db: Db) {
    use sharedcare_kit::sealing::{LocalKek, Sealer, random_kek};
    use sqlx::Row;
    let old = random_kek().expect("random");
    let sealed_by = |current: [u8; 32], previous: Vec<[u8; 32]>| -> Sealer {
        std::sync::Arc::new(LocalKek::new(current, previous))
    };
    db.migrate(sharedcare_identity::Identity::new(Default::default()).migrations())
        .await
        .expect("migrate");
    let s = Store::new(db.clone(), sealed_by(old, Vec::new()));
    let ring = KeyRing::load(s.clone(), 3600, 600, 300).await.expect("load");
    let kid = ring.active().kid().to_string();
    s.put_rp_key("nhs-login", "relying-party-secret").await.expect("rp key");
    let stored: Vec<String> = sqlx::query("SELECT secret FROM signing_keys UNION ALL SELECT secret FROM rp_keys")
        .fetch_all(db.pool())
        .await
        .expect("read")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    assert_eq!(stored.len(), 2);
    for v in &stored {
        assert!(v.starts_with("kek:v1:") && !v.contains("relying-party-secret"), "{v}");
    }

    // The database without its KEK: nothing opens, and the error says which KEK it needs.
    let other = random_kek().expect("random");
    let copy = Store::new(db.clone(), sealed_by(other, Vec::new()));
    let refused = KeyRing::load(copy.clone(), 3600, 600, 300)
        .await
        .err()
        .expect("cannot load");
    assert!(
        refused.to_string().contains("signing_keys.secret")
            && refused.to_string().contains("which this process does not have"),
        "{refused}"
    );
    assert!(copy.rp_key("nhs-login").await.is_err(), "nor the relying-party key");

    // Rotation of the KEK: the new one current, the old one previous; reseal moves every key.
    let rotating = Store::new(db.clone(), sealed_by(other, vec![old]));
    assert_eq!(rotating.reseal_keys().await.expect("reseal"), 2);
    assert_eq!(rotating.reseal_keys().await.expect("again"), 0, "nothing left to move");
    let after = Store::new(db.clone(), sealed_by(other, Vec::new()));
    let ring = KeyRing::load(after.clone(), 3600, 600, 300)
        .await
        .expect("loads under the new KEK alone");
    assert_eq!(ring.active().kid(), kid, "the same signing key, re-sealed");
    assert_eq!(
        after.rp_key("nhs-login").await.expect("opens").as_deref(),
        Some("relying-party-secret")
    );

    // A key an older release kept in the clear is sealed at the next start.
    sqlx::query("UPDATE rp_keys SET secret = $1 WHERE upstream = $2")
        .bind("clear-secret")
        .bind("nhs-login")
        .execute(db.writer())
        .await
        .expect("write");
    assert_eq!(after.reseal_keys().await.expect("reseal"), 1);
    let row = sqlx::query("SELECT secret FROM rp_keys WHERE upstream = $1")
        .bind("nhs-login")
        .fetch_one(db.pool())
        .await
        .expect("read");
    assert!(row.get::<String, _>(0).starts_with("kek:v1:"));
    assert_eq!(
        after.rp_key("nhs-login").await.expect("opens").as_deref(),
        Some("clear-secret")
    );
}

sharedcare_kit::store_suite!("identity";
    signing_keys_are_sealed_at_rest_and_a_copy_without_the_kek_cannot_sign,
    a_deactivated_organisation_s_roles_are_not_offered_and_it_comes_back_whole,
    keys_rotate_on_schedule_published_before_they_sign_and_kept_until_their_tokens_expire,
    a_code_is_redeemed_once,
    concurrent_redemptions_of_one_code_give_exactly_one_success,
    concurrent_uses_of_one_refresh_token_give_exactly_one_success,
    parallel_guesses_each_count_and_the_lock_is_capped,
    reusing_a_rotated_refresh_token_revokes_its_family,
    ending_a_session_revokes_its_refresh_tokens_and_names_its_clients,
    security_keys_are_unique_and_ceremonies_are_taken_once,
);

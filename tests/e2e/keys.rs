//! Keys at rest: identity's signing keys and audit's log key are stored sealed under a
//! key-encryption key (KEK) from the environment or a file. A copy of the data without the KEK
//! cannot sign; `sharedcare keys rewrap` moves every key to a new KEK; Postgres without a KEK
//! is refused at start.

use std::time::Duration;

use sqlx::Row;

use crate::harness::{Proc, fresh_database, http, run, service_token_for};

const KEK_1: &str = "UlkL9FXMX9O_oSq-0xIPUmn-C-XB3rP9m9TO3zia9Oc";
const KEK_2: &str = "oYj2be-7G1jr0yMz7Igsog-apmUTFCKOJExJxGwvL_4";

/// The `kid`s identity publishes.
async fn kids(p: &Proc) -> Vec<String> {
    let jwks: serde_json::Value = http()
        .get(format!("{}/oauth2/jwks", p.http))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every value of `sql` in the embedded store `name` under `data`.
async fn stored(data: &std::path::Path, name: &str, sql: &str) -> Vec<String> {
    let db = sharedcare_kit::db::Db::connect(
        &sharedcare_kit::db::sqlite_url(data, name),
        name,
        1,
        Duration::from_secs(5),
    )
    .await
    .expect("open");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(db.pool())
        .await
        .expect("read");
    let values = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    db.close().await;
    values
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

#[tokio::test]
async fn keys_are_sealed_at_rest_a_copy_without_the_kek_cannot_sign_and_the_kek_rotates() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = data.path().to_str().expect("utf-8").to_string();
    let with = |kek: &str| vec![("SHAREDCARE_KEY_ENCRYPTION__KEY", kek.to_string())];
    let p = Proc::start(&["up", "--data", &dir], &with(KEK_1));
    let token = service_token_for(&p.http, "records.read").await;
    assert!(!token.is_empty(), "identity signs under the KEK");
    let before = kids(&p).await;
    let (status, _) = p.terminate();
    assert!(status.success());

    // What is on disk is sealed: no PKCS#8 in the clear.
    let signing = stored(data.path(), "identity", "SELECT secret FROM signing_keys").await;
    let log = stored(data.path(), "audit", "SELECT pkcs8 FROM log_keys").await;
    assert!(!signing.is_empty() && log.len() == 1);
    for v in signing.iter().chain(&log) {
        assert!(v.starts_with("kek:v1:"), "sealed: {v}");
    }
    // A KEK given inline is not printed.
    let (_, shown, _) = run(&["--dump-config", "up"], &with(KEK_1), Duration::from_secs(30));
    assert!(!shown.contains(KEK_1) && shown.contains("<redacted>"), "{shown}");

    // A copy of the data without the KEK: identity cannot open its keys, so `up` stops,
    // saying which KEK the keys need; nothing is signed.
    let copy = tempfile::tempdir().expect("tmp");
    copy_dir(data.path(), copy.path());
    let (status, _, err) = run(
        &["up", "--data", copy.path().to_str().expect("utf-8")],
        &[],
        Duration::from_secs(60),
    );
    assert!(!status.success(), "started without the KEK: {err}");
    assert!(
        err.contains("signing_keys.secret") && err.contains("which this process does not have"),
        "{err}"
    );

    // Rotation: the new KEK current, the old one previous; rewrap moves every key.
    let rotating = vec![
        ("SHAREDCARE_KEY_ENCRYPTION__KEY", KEK_2.to_string()),
        ("SHAREDCARE_KEY_ENCRYPTION__PREVIOUS_KEYS", format!("[\"{KEK_1}\"]")),
    ];
    let (status, out, err) = run(&["keys", "rewrap", "--data", &dir], &rotating, Duration::from_secs(60));
    assert!(status.success(), "{err}");
    assert!(
        out.contains("re-sealed under key-encryption key") && out.contains("audit 1 key(s)"),
        "{out}"
    );
    let (_, again, _) = run(&["keys", "rewrap", "--data", &dir], &rotating, Duration::from_secs(60));
    assert!(again.contains("identity 0 key(s), audit 0 key(s)"), "{again}");

    // The old KEK alone no longer opens anything; the new one alone signs with the same keys.
    let (status, _, err) = run(&["up", "--data", &dir], &with(KEK_1), Duration::from_secs(60));
    assert!(
        !status.success() && err.contains("which this process does not have"),
        "{err}"
    );
    let p = Proc::start(&["up", "--data", &dir], &with(KEK_2));
    assert_eq!(kids(&p).await, before, "the same signing keys, re-sealed");
    assert!(!service_token_for(&p.http, "records.read").await.is_empty());
    drop(p);
}

#[tokio::test]
async fn the_embedded_default_keeps_its_kek_beside_the_data_and_postgres_needs_one() {
    // With nothing configured, `up` makes a KEK in its data directory (mode 0600) and seals
    // under it: a copied database file alone opens nothing.
    let data = tempfile::tempdir().expect("tmp");
    let dir = data.path().to_str().expect("utf-8").to_string();
    let p = Proc::start(&["up", "--data", &dir], &[]);
    assert!(!service_token_for(&p.http, "records.read").await.is_empty());
    drop(p);
    let kek = data.path().join("key-encryption-key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kek).expect("kept").permissions());
    assert_eq!(mode & 0o777, 0o600);
    let signing = stored(data.path(), "identity", "SELECT secret FROM signing_keys").await;
    assert!(signing.iter().all(|v| v.starts_with("kek:v1:")), "{signing:?}");

    // On Postgres a KEK must be configured: the keys would sit in a shared database.
    let database = fresh_database().await;
    let (status, _, err) = run(
        &["serve", "identity", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
        &[
            ("SHAREDCARE_DATABASE__URL", database),
            ("SHAREDCARE_KAFKA__BROKERS", crate::harness::kafka_brokers()),
            ("SHAREDCARE_KAFKA__NAMESPACE", crate::harness::namespace()),
        ],
        Duration::from_secs(60),
    );
    assert!(!status.success(), "{err}");
    assert!(err.contains("key_encryption.key_file"), "{err}");
}
